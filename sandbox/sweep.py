"""Parameter sweeps with Mesa's ``batch_run`` (``vragent sweep``).

:class:`SweepModel` is a Mesa model whose ``step()`` is one step of a stored simulation run
(the LangGraph step graph through :class:`sandbox.runner.RunDriver`); its ``datacollector`` is
the run's population's own (:class:`sandbox.population.PopulationModel`), which records what
each step logs, so ``batch_run`` reads the very values in the store. ``mesa.batch_run`` then sweeps
any scenario keys, e.g. ``simulation.refit_every`` or ``social.inject_friends_likes``, over
seeds, and every point is also a normal run in the store (``vragent show RUN_ID``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import mesa
import pandas as pd
import yaml
from vragent.sandbox.config import ScenarioError, apply_overrides, load_scenario, parse_scenario
from vragent.sandbox.progress import RunProgress, Tracker
from vragent.sandbox.runner import RunDriver, create_run
from vragent.sandbox.store import Store


def parse_grid(params: Sequence[str]) -> dict[str, list[Any]]:
    """``["simulation.refit_every=0,1"]`` → ``{"simulation.refit_every": [0, 1]}``.

    Raises:
        ValueError: a parameter is not ``key.path=v1,v2,…``.
    """
    grid: dict[str, list[Any]] = {}
    for p in params:
        key, sep, values = p.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--param {p!r} is not key.path=v1,v2,...")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


class SweepModel(mesa.Model):
    """One sweep point: a scenario with some keys set, run step by step as a Mesa model.

    Args:
        scenario: a scenario name or path.
        db_url: the store the run goes to.
        seed: the run's seed (replaces the scenario's).
        overrides: fixed ``key.path=value`` overrides.
        progress: shows the points' runs one after another (``None``: nothing shown).
        **params: swept values by dotted scenario key.
    """

    def __init__(self, scenario: str, db_url: str, seed: int = 0,
                 overrides: Sequence[str] = (), progress: RunProgress | None = None,
                 **params: Any) -> None:
        super().__init__(rng=seed)
        sets = [*overrides, *(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                              for k, v in params.items()), f"seed={seed}"]
        sc, text, path = load_scenario(scenario, sets)
        self.store = Store(db_url)
        self.run_id = create_run(self.store, sc, text, str(path))
        self.arms = [a.name for a in sc.arms]
        if progress is not None:
            point = ", ".join(f"{k}={v}" for k, v in params.items())
            progress.next_run(f"sweep {point} seed {seed} · run {self.run_id}")
        self.driver = RunDriver(self.store, self.run_id, progress=progress)
        # One collector per run: the population's, which the runtime feeds every step.
        self.datacollector = self.driver.rt.model.datacollector

    def step(self) -> None:
        """Run one simulation step and collect its metrics."""
        try:
            self.driver.step()
        except BaseException as exc:
            self.driver.fail(exc)
            raise
        if self.driver.done:
            self.driver.close()
            self.running = False


def run_sweep(scenario: str, grid: Mapping[str, Sequence[Any]], db_url: str, *,
              iterations: int = 1, overrides: Sequence[str] = (),
              tracker: Tracker | None = None) -> pd.DataFrame:
    """Run every grid point for ``iterations`` seeds with ``mesa.batch_run``.

    ``tracker`` shows the points, seeds and steps (one count over all of them).

    Returns:
        One row per point, seed and step: Mesa's ``RunId``, ``iteration``, ``Step``, the swept
        keys, ``seed``, ``run_id`` and ``ARM/METRIC`` columns.

    Raises:
        ScenarioError: the scenario, an override or a swept value is invalid; checked for every
            point before anything runs.
    """
    sc, text, path = load_scenario(scenario)
    seeds = [sc.seed + k for k in range(iterations)]
    data = yaml.safe_load(text)
    for point in itertools.product(*grid.values()):
        sets = [*overrides, *(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                              for k, v in zip(grid, point, strict=True))]
        parse_scenario(apply_overrides(data, sets, str(path)), f"{path} (sweep {sets})")
    if any("." not in k and k != "seed" for k in grid) or "seed" in grid:
        raise ScenarioError(f"{path}: sweep keys must be section.key paths (seeds come from "
                            "--iterations)")
    params: dict[str, Any] = {"scenario": scenario, "db_url": db_url, "seed": seeds,
                              "overrides": [tuple(overrides)], **{k: list(v)
                                                                   for k, v in grid.items()}}
    if tracker is not None:
        runs = len(seeds) * len(list(itertools.product(*grid.values())))
        params["progress"] = [RunProgress(tracker, "sweep", runs=runs)]
    rows = mesa.batch_run(SweepModel, params, number_processes=1, iterations=1,
                          data_collection_period=1, max_steps=10_000, display_progress=False)
    frame = pd.DataFrame(rows)
    # Mesa's step 0 is the state before any step ran (nothing collected yet): drop it.
    inputs = ["scenario", "db_url", "overrides", "progress"]
    return frame[frame["run_id"].notna()].drop(columns=inputs,
                                                errors="ignore").reset_index(drop=True)
