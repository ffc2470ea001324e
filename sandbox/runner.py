"""Start, resume and finish simulation runs."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform as pyplatform
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from vragent.agents.backends.base import LLMBackend
from vragent.sandbox import faults
from vragent.sandbox.config import Scenario, ScenarioError, load_scenario, parse_scenario
from vragent.sandbox.graph import build_step_graph
from vragent.sandbox.paths import vragent_home
from vragent.sandbox.payloads import CHECKPOINT_TYPES
from vragent.sandbox.run_lock import RunBusyError, RunLock
from vragent.sandbox.runtime import SimulationRuntime
from vragent.sandbox.store import Arm, Run, Store
from vragent.sandbox.version import git_revision

TRACKED_PACKAGES = ("vragent", "torch", "transformers", "langgraph", "mesa", "networkx",
                    "sqlalchemy", "pydantic", "numpy", "pandas")


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


def checkpoint_path(store: Store) -> Path:
    """The LangGraph checkpoint file beside a SQLite store, else under ``$VRAGENT_HOME``."""
    db = store.sqlite_path()
    if db is not None:
        return db.with_name(db.stem + ".checkpoints.sqlite")
    return vragent_home() / "checkpoints.sqlite"


def _saver(path: Path):
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.checkpoint.sqlite import SqliteSaver

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    # The step's payloads are the only classes a checkpoint may rebuild.
    saver = SqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=CHECKPOINT_TYPES))
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


class RunDriver:
    """Drives a stored run one simulation step at a time (what :func:`execute` loops over).

    Building it loads the runtime (dataset, recommenders, LLM), replays what the store already
    holds and opens the LangGraph checkpointer; :meth:`step` runs one step; :meth:`close` marks
    the run finished when it is. Used as a context manager, a failure marks the run ``failed``
    (``interrupted`` on Ctrl-C) and it stays resumable. From its start until :meth:`close` or
    :meth:`fail` it holds the run's lock (sandbox/run_lock.py): one process executes a run.

    Args:
        store: the run store.
        run_id: a run created by :func:`create_run` (fresh or interrupted).
        backend: an LLM backend to use instead of the scenario's.
        progress: ``progress(event, done, total)`` (:class:`sandbox.progress.RunProgress`
            shows it): ``"start"`` (steps already done, steps) once the run is loaded,
            ``"users"`` after each fan-out task, ``"items"`` (IP-agent profiles of the step:
            ``(0, n)`` as they start, then per batch) and ``"step"`` after each step.

    Raises:
        RunBusyError: another live process executes the run (nothing was changed).
        RunError: no such run, or it is finished.
    """

    def __init__(self, store: Store, run_id: str, *, backend: LLMBackend | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        if store.get_run(run_id) is None:
            raise RunError(f"no run {run_id!r} in {store.url}")
        # One owner at a time (sandbox/run_lock.py), taken before anything is written: a second
        # process must leave the run exactly as the owner has it, status included.
        self.lock = RunLock(store, run_id)
        self.lock.acquire()
        try:
            self._open(store, run_id, backend, progress)
        except BaseException:
            self.lock.release()  # a process that goes on (tests, sweeps) may resume it
            raise

    def _open(self, store: Store, run_id: str, backend: LLMBackend | None,
              progress: Callable[[str, int, int], None] | None) -> None:
        run = store.get_run(run_id)  # again, now that no one else can change it
        if run is None or run.status == "finished":
            raise RunError(f"run {run_id} is already finished" if run else
                           f"no run {run_id!r} in {store.url}")
        self.store, self.run_id, self.progress = store, run_id, progress
        self.scenario = parse_scenario(yaml.safe_load(run.scenario_yaml), f"run {run_id}")
        self.t0 = time.perf_counter()
        self.prior_wall = run.wall_s or 0.0
        self.conn: sqlite3.Connection | None = None
        sc = self.scenario
        self.total_users = sc.population.size * len(sc.arms) * sc.simulation.steps
        self.done_users = 0
        store.update_run(run_id, status="running", error=None)
        try:
            self.rt = SimulationRuntime(sc, store, run_id, backend=backend,
                                        on_progress=self._on_users,
                                        on_perceive=self._on_items)
            self.rt.register()
            n_done = self.rt.replay_from_store()
            self.done_users = n_done * sc.population.size * len(sc.arms)
            saver, self.conn = _saver(checkpoint_path(store))
            self.graph = build_step_graph(self.rt, saver)
            n_steps = sc.simulation.steps
            # In-process models share one set of cores and one global sampler RNG: run their
            # fan-out tasks one at a time so results are reproducible. Servers take many.
            concurrency = sc.backend.max_concurrency if self.rt.backend.kind == "openai" else 1
            self.cfg = {"configurable": {"thread_id": run_id}, "recursion_limit": 10_000,
                        "max_concurrency": concurrency}
            state = self.graph.get_state(self.cfg)
            # The store decides where the run goes on: at the first step it does not hold.
            # The checkpoint agrees after a clean stop between steps. After a failure or a
            # kill inside a step it does not: LangGraph saved the step half done (its exit
            # checkpoint), or the step's write committed and the checkpoint after it never
            # came. Memory was rebuilt for the step boundary only, so the step starts over.
            at_boundary = (state.values.get("step") == n_done
                           and state.next == (("perceive",) if n_done < n_steps else ()))
            self.done = n_done >= n_steps
            self._input: dict | None = None
            if not self.done and not at_boundary:
                if state.values:
                    saver.delete_thread(run_id)
                self._input = {"step": n_done, "n_steps": n_steps}
            if progress:
                progress("start", n_done, n_steps)
        except BaseException as exc:
            self.fail(exc)
            raise

    def _on_users(self, n: int) -> None:
        faults.checkpoint("decide")
        self.done_users += n
        if self.progress:
            self.progress("users", self.done_users, self.total_users)

    def _on_items(self, done: int, total: int) -> None:
        if self.progress:
            self.progress("items", done, total)

    def _wall(self) -> float:
        return self.prior_wall + time.perf_counter() - self.t0

    def step(self) -> int:
        """Run the next simulation step; return the number of steps done."""
        self.graph.invoke(self._input, self.cfg, durability="exit")
        self._input = None
        state = self.graph.get_state(self.cfg)
        step = state.values.get("step", 0)
        self.store.update_run(self.run_id, wall_s=self._wall())
        if self.progress:
            self.progress("step", step, self.scenario.simulation.steps)
        self.done = not state.next
        return step

    def fail(self, exc: BaseException) -> None:
        """Record a failure (or an interrupt) and release the checkpointer.

        When the store itself is what failed (locked, full, gone), the status cannot be
        written either; the run then stays ``running`` in the store, which resumes the same way.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            if isinstance(exc, KeyboardInterrupt):
                self.store.update_run(self.run_id, status="interrupted", wall_s=self._wall())
            else:
                self.store.update_run(self.run_id, status="failed",
                                      error=f"{type(exc).__name__}: {exc}", wall_s=self._wall())
        except SQLAlchemyError:
            pass  # the original error is the one to report
        finally:
            self._close_conn()
            self.lock.release()

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        """Release the checkpointer; mark the run finished when every step is done."""
        self._close_conn()
        try:
            if self.done:
                self.store.update_run(self.run_id, status="finished",
                                      finished_at=dt.datetime.now(dt.UTC), wall_s=self._wall())
        finally:
            self.lock.release()

    def __enter__(self) -> RunDriver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.fail(exc)
        else:
            self.close()


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
        progress: ``progress(event, done, total)``, see :class:`RunDriver`.

    Returns:
        Per-arm summary rows (see :meth:`Store.arm_summary`).
    """
    with RunDriver(store, run_id, backend=backend, progress=progress) as driver:
        while not driver.done:
            driver.step()
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


__all__ = ["RunBusyError", "RunDriver", "RunError", "ScenarioError", "create_run", "execute",
           "start"]
