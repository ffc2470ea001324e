"""Simulated A/B experiments: every arm, the same users, several seeds (``vragent ab``).

One experiment is one run per seed of the same scenario (the scenario's ``seed`` replaced by
each seed). Inside a run every arm sees the same sampled users and catalogue, and each user's
random draws are keyed by (seed, step, user), never by arm: common random numbers, so the
comparison is paired. The experiment is recorded in ``ab_experiments`` before its first run
starts, and each run id as soon as it exists, so an interrupted experiment resumes
(``vragent ab --resume ID``): finished runs are kept, an interrupted one is resumed, missing
ones are started.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field
from vragent.agents.backends.base import LLMBackend
from vragent.sandbox.ab_analysis import AbAnalysis, analyse, load_run_data, step_series
from vragent.sandbox.config import ConfigModel, Scenario, load_scenario, parse_scenario
from vragent.sandbox.progress import RunProgress, Tracker
from vragent.sandbox.runner import create_run, execute
from vragent.sandbox.store import AbExperiment, Store


class AbError(RuntimeError):
    """An experiment cannot start or resume (unknown id, bad baseline …)."""


class AbSettings(ConfigModel):
    """How an experiment is analysed.

    Attributes:
        baseline: the arm the others are compared with (default: the first arm).
        confidence: level of every interval.
        n_resamples: bootstrap and permutation resamples.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str | None = None
    confidence: float = Field(0.95, gt=0, lt=1)
    n_resamples: int = Field(2000, ge=1)


def scenario_for_seed(text: str, seed: int) -> tuple[Scenario, str]:
    """The experiment's scenario with ``seed`` in place of its own, and its YAML text."""
    data = yaml.safe_load(text)
    data["seed"] = int(seed)
    new_text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return parse_scenario(data, f"seed {seed}"), new_text


def create_experiment(store: Store, scenario_ref: str, seeds: Sequence[int], *,
                      overrides: Sequence[str] = (), settings: AbSettings | None = None,
                      command: str | None = None) -> str:
    """Validate the scenario and record a new experiment; return its id.

    Raises:
        ScenarioError: the scenario or an override is invalid (one line).
        AbError: no seeds, repeated seeds, or a baseline that is not an arm.
    """
    settings = settings or AbSettings()
    scenario, text, path = load_scenario(scenario_ref, overrides)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise AbError(f"seeds must be distinct and at least one, got {seeds}")
    arms = [a.name for a in scenario.arms]
    if len(arms) < 2:
        raise AbError(f"{path}: an A/B experiment needs at least two arms, got {arms}")
    baseline = settings.baseline or arms[0]
    if baseline not in arms:
        raise AbError(f"baseline {baseline!r} is not an arm of {path} ({', '.join(arms)})")
    exp_id = "ab-" + uuid.uuid4().hex[:10]
    store.create_experiment(AbExperiment(
        id=exp_id, scenario_name=scenario.name, scenario_yaml=text, baseline=baseline,
        arms=arms, seeds=seeds, run_ids=[None] * len(seeds),
        settings={"confidence": settings.confidence, "n_resamples": settings.n_resamples,
                  "scenario_path": str(path), "overrides": list(overrides),
                  "command": command},
        status="created"))
    return exp_id


def run_experiment(
    store: Store,
    experiment_id: str,
    *,
    backend: LLMBackend | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    on_run: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Run (or resume) every seed's run of an experiment.

    Args:
        store: the store.
        experiment_id: from :func:`create_experiment`.
        backend: one LLM backend for every run (loaded once) instead of the scenario's.
        progress: passed to :func:`sandbox.runner.execute`.
        on_run: called with ``(seed, run_id)`` before each run starts or resumes.

    Returns:
        The run ids, in seed order.
    """
    exp = store.get_experiment(experiment_id)
    if exp is None:
        raise AbError(f"no experiment {experiment_id!r} in {store.url}")
    run_ids = list(exp.run_ids)
    store.update_experiment(experiment_id, status="running")
    try:
        for k, seed in enumerate(exp.seeds):
            run_id = run_ids[k]
            run = store.get_run(run_id) if run_id else None
            if run is None:
                scenario, text = scenario_for_seed(exp.scenario_yaml, seed)
                run_id = create_run(store, scenario, text, exp.settings.get("scenario_path"))
                run_ids[k] = run_id
                store.update_experiment(experiment_id, run_ids=list(run_ids))
                run = store.get_run(run_id)
            assert run is not None
            if on_run:
                on_run(seed, run_id)
            if run.status != "finished":
                execute(store, run_id, backend=backend, progress=progress)
    except BaseException:
        store.update_experiment(experiment_id, status="interrupted")
        raise
    return run_ids


def experiment_progress(store: Store, experiment_id: str, tracker: Tracker) -> dict[str, Any]:
    """:func:`run_experiment`'s ``progress`` and ``on_run`` showing seeds, arms and steps.

    One count runs over every seed's steps (the estimate covers the whole experiment); the
    label names the seed, its rank, the arms and the run.

    Raises:
        AbError: no such experiment.
    """
    exp = store.get_experiment(experiment_id)
    if exp is None:
        raise AbError(f"no experiment {experiment_id!r} in {store.url}")
    seeds = list(exp.seeds)
    view = RunProgress(tracker, experiment_id, runs=len(seeds))

    def on_run(seed: int, run_id: str) -> None:
        view.next_run(f"{experiment_id} seed {seed} ({seeds.index(seed) + 1}/{len(seeds)}) · "
                      f"{len(exp.arms)} arms · run {run_id}")

    return {"progress": view, "on_run": on_run}


def analyse_experiment(store: Store, experiment_id: str,
                       settings: AbSettings | None = None) -> AbAnalysis:
    """Analyse a finished experiment and store its results (replacing earlier ones)."""
    exp = store.get_experiment(experiment_id)
    if exp is None:
        raise AbError(f"no experiment {experiment_id!r} in {store.url}")
    missing = [s for s, r in zip(exp.seeds, exp.run_ids, strict=True)
               if not _finished(store, r)]
    if missing:
        raise AbError(f"experiment {experiment_id} has unfinished runs for seeds {missing}; "
                      f"resume it with `vragent ab --resume {experiment_id}`")
    cfg = exp.settings or {}
    settings = settings or AbSettings(baseline=exp.baseline,
                                      confidence=cfg.get("confidence", 0.95),
                                      n_resamples=cfg.get("n_resamples", 2000))
    cache: dict = {}
    runs = [load_run_data(store, r, cache) for r in exp.run_ids]
    result = analyse(runs, baseline=settings.baseline or exp.baseline,
                     confidence=settings.confidence, n_resamples=settings.n_resamples,
                     seed=exp.seeds[0], steps=step_series(store, exp.run_ids))
    store.save_ab_results(experiment_id, result.arm_values, result.comparisons)
    store.update_experiment(experiment_id, status="finished",
                            finished_at=dt.datetime.now(dt.UTC))
    return result


def _finished(store: Store, run_id: str | None) -> bool:
    run = store.get_run(run_id) if run_id else None
    return run is not None and run.status == "finished"


def default_report_dir(experiment_id: str) -> Path:
    """``runs/ab/<experiment id>``."""
    return Path("runs") / "ab" / experiment_id
