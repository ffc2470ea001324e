"""Start, resume and finish simulation runs."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform as pyplatform
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agents.backends.base import LLMBackend
from sandbox import faults
from sandbox.config import Scenario, ScenarioError, load_scenario, parse_scenario
from sandbox.graph import build_step_graph
from sandbox.paths import vragent_home
from sandbox.runtime import SimulationRuntime
from sandbox.store import Arm, Run, Store

TRACKED_PACKAGES = ("vragent", "torch", "transformers", "langgraph", "mesa", "networkx",
                    "sqlalchemy", "pydantic", "numpy", "pandas")
REPO_ROOT = Path(__file__).resolve().parent.parent


class RunError(RuntimeError):
    """A run cannot start or continue (unknown id, already finished …)."""


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's results, plus Python's."""
    out = {"python": pyplatform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_revision() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def checkpoint_path(store: Store) -> Path:
    """The LangGraph checkpoint file beside a SQLite store, else under ``$VRAGENT_HOME``."""
    db = store.sqlite_path()
    if db is not None:
        return db.with_name(db.stem + ".checkpoints.sqlite")
    return vragent_home() / "checkpoints.sqlite"


def _saver(path: Path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    return saver, conn


def create_run(store: Store, scenario: Scenario, yaml_text: str, source: str | None) -> str:
    """Record a new run and its arms; return its id."""
    run_id = uuid.uuid4().hex[:12]
    run = Run(
        id=run_id, scenario_name=scenario.name, scenario_path=source, scenario_yaml=yaml_text,
        config=scenario.model_dump(mode="json"), seed=scenario.seed, versions=package_versions(),
        git_revision=git_revision(), status="created", n_steps=scenario.simulation.steps,
    )
    arms = [Arm(run_id=run_id, name=a.name, recommender=a.recommender, params=a.params)
            for a in scenario.arms]
    store.create_run(run, arms)
    return run_id


def execute(
    store: Store,
    run_id: str,
    *,
    backend: LLMBackend | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a stored run to its end.

    Args:
        store: the run store.
        run_id: a run created by :func:`create_run` (fresh or interrupted).
        backend: an LLM backend to use instead of the scenario's.
        progress: ``progress(event, done, total)``; events are ``"users"`` and ``"step"``.

    Returns:
        Per-arm summary rows (see :meth:`Store.arm_summary`).
    """
    run = store.get_run(run_id)
    if run is None:
        raise RunError(f"no run {run_id!r} in {store.url}")
    if run.status == "finished":
        raise RunError(f"run {run_id} is already finished")
    scenario = parse_scenario(yaml.safe_load(run.scenario_yaml), f"run {run_id}")
    t0 = time.perf_counter()
    prior_wall = run.wall_s or 0.0
    store.update_run(run_id, status="running", error=None)
    total_users = scenario.population.size * len(scenario.arms) * scenario.simulation.steps
    done_users = [0]

    def on_users(n: int) -> None:
        faults.checkpoint("decide")
        done_users[0] += n
        if progress:
            progress("users", done_users[0], total_users)

    saver = conn = None
    try:
        rt = SimulationRuntime(scenario, store, run_id, backend=backend, on_progress=on_users)
        rt.register()
        n_done = rt.replay_from_store()
        done_users[0] = n_done * scenario.population.size * len(scenario.arms)
        saver, conn = _saver(checkpoint_path(store))
        graph = build_step_graph(rt, saver)
        # In-process models share one set of cores and one global sampler RNG: run their
        # fan-out tasks one at a time so results are reproducible. Servers take many at once.
        concurrency = scenario.backend.max_concurrency if rt.backend.kind == "openai" else 1
        cfg = {"configurable": {"thread_id": run_id}, "recursion_limit": 10_000,
               "max_concurrency": concurrency}
        state = graph.get_state(cfg)
        fresh = {"step": 0, "n_steps": scenario.simulation.steps}
        inp: dict | None = None if state.values else fresh
        while True:
            graph.invoke(inp, cfg, durability="exit")
            inp = None
            state = graph.get_state(cfg)
            step = state.values.get("step", 0)
            store.update_run(run_id, wall_s=prior_wall + time.perf_counter() - t0)
            if progress:
                progress("step", step, scenario.simulation.steps)
            if not state.next:
                break
    except KeyboardInterrupt:
        store.update_run(run_id, status="interrupted", wall_s=prior_wall + time.perf_counter() - t0)
        raise
    except Exception as exc:
        store.update_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}",
                         wall_s=prior_wall + time.perf_counter() - t0)
        raise
    finally:
        if conn is not None:
            conn.close()
    store.update_run(run_id, status="finished", finished_at=dt.datetime.now(dt.UTC),
                     wall_s=prior_wall + time.perf_counter() - t0)
    return store.arm_summary(run_id)


def start(
    scenario_ref: str,
    db_url: str,
    *,
    backend: LLMBackend | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Load a scenario (name or path), create a run and execute it.

    Returns:
        The run id and the per-arm summary.

    Raises:
        ScenarioError: the scenario is invalid.
    """
    scenario, text, path = load_scenario(scenario_ref)
    store = Store(db_url)
    run_id = create_run(store, scenario, text, str(path))
    return run_id, execute(store, run_id, backend=backend, progress=progress)


__all__ = ["RunError", "ScenarioError", "create_run", "execute", "start"]
