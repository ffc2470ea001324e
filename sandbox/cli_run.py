"""``vragent run``, ``runs``, ``show`` and ``export``: the commands over stored runs.

Every message prints user text (paths, run ids, store URLs) as plain text, store URLs with
their password hidden, and every failure as one line (``cli_common.fail``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text
from vragent.sandbox.cli_common import (
    DbOption,
    SetOption,
    console,
    err,
    open_store,
    resume_command,
    scrub_url,
    shown_url,
    sigterm_as_interrupt,
    store_errors,
    store_reason,
    warn,
)
from vragent.sandbox.cli_common import fail as _fail
from vragent.sandbox.paths import DEFAULT_DB_URL

if TYPE_CHECKING:
    from vragent.sandbox.store import Run, Store


def register(app: typer.Typer) -> None:
    """Add ``run``, ``runs``, ``show`` and ``export`` to the CLI."""
    for name, command in (("run", run), ("runs", runs), ("show", show), ("export", export)):
        app.command(name)(command)


def _summary_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("arm", "users", "impressions", "watch rate", "like rate", "mean p(like)",
                "exits", "tokens in", "tokens out", "traced", "format errors", "wall s"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in rows:
        table.add_row(
            r["arm"], str(r["users"]), str(r["impressions"]), f"{r['watch_rate']:.3f}",
            f"{r['like_rate']:.3f}",
            "-" if r["mean_p_like"] is None else f"{r['mean_p_like']:.3f}",
            str(r["exits"]), str(r["tokens_in"]), str(r["tokens_out"]), str(r["traced"]),
            str(r["format_errors"]), f"{r['wall_s']:.1f}",
        )
    return table


TRACE_CHARS = 800  # of a trace's think and answer printed; the dashboard shows them whole


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TRACE_CHARS else text[:TRACE_CHARS - 1] + "…"


def _print_trace(store, run_id: str) -> None:
    """Print one traced decision of the run (plain text), or say plainly why there is none."""
    from vragent.sandbox.run_trace import pick_trace

    t = pick_trace(store, run_id)
    of = f" (of the first {t.read} read)" if t.read < t.traced else ""
    counts = (f"{t.traced} traced decision(s){of}: {t.malformed} failed the format check, "
              f"{t.empty} empty")
    if t.arm is None:
        why = ("none was traced (backend.trace_rate)" if not t.traced else
               "none has a readable <think> block (small models such as the default "
               "SmolLM2-135M rarely keep the format; README.md, \"What the default users can "
               "and cannot show\")")
        console.print(Text(f"No trace to show: {why}. {counts}."))
        return
    p = "" if t.p_like is None else f", p(like) {t.p_like:.3f}"
    console.print(Text.assemble(
        ("One traced decision", "bold"),
        f" (arm {t.arm}, step {t.step}, user {t.user_id}, slot {t.position}): "
        f"{t.title or f'item {t.item_id}'} → {t.action}{p}"))
    console.print(Text(f"  think: {_clip(t.think)}"))
    check = "passed" if not t.problems else "failed: " + "; ".join(t.problems)
    console.print(Text(f"  answer: {_clip(t.answer) or '(none)'}  [format check {check}]"))
    console.print(Text(f"  {counts}; the dashboard's trace explorer shows every one."))


def _metering_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("arm", "LLM calls", "cache hits", "tokens in", "tokens out", "p50 ms", "p95 ms",
                "p99 ms", "est. cost"):
        table.add_column(col, justify="left" if col == "arm" else "right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for r in rows:
        table.add_row(
            r["arm"], str(r["calls"]), str(r["cache_hits"]), str(r["tokens_in"]),
            str(r["tokens_out"]), ms(r["latency_p50_ms"]), ms(r["latency_p95_ms"]),
            ms(r["latency_p99_ms"]), "-" if r["cost"] is None else f"{r['cost']:.4f}",
        )
    return table


def run(
    scenario: Annotated[str, typer.Argument(help="Scenario name (quickstart) or YAML path.")] = "",
    db: DbOption = DEFAULT_DB_URL,
    resume: Annotated[str | None, typer.Option(help="Continue an interrupted run.")] = None,
    sets: SetOption = None,
) -> None:
    """Run a scenario (or resume a run); print the per-arm table and one trace."""
    if not scenario and not resume:
        _fail("give a SCENARIO or --resume RUN_ID", 2)
    if resume and sets:
        _fail("--set changes a new run's scenario; a resumed run keeps the one it started "
              "with", 2)
    # SIGTERM (kill, a service manager) stops the run as Ctrl+C does: marked interrupted.
    with sigterm_as_interrupt(), _warnings_to_stderr():
        try:
            run_id = _new_or_resumed_run(scenario, db, resume, sets)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was started", 130)
        _execute_run(run_id, db)


def _new_or_resumed_run(scenario: str, db: str, resume: str | None,
                        sets: list[str] | None) -> str:
    """The id of the run to execute: ``resume``, or a new run of ``scenario``."""
    from vragent.sandbox.config import ScenarioError, load_scenario
    from vragent.sandbox.policies import PolicyError, load_policy
    from vragent.sandbox.runner import create_run
    from vragent.sandbox.store import Store

    try:
        if not resume:
            # The stored scenario text has the overrides in it, so --resume needs no --set.
            # Loaded before the store is opened: a bad scenario touches no database.
            sc, text, path = load_scenario(scenario, sets or ())
            if sc.policy:
                load_policy(sc.policy)  # fail before a run is created, naming the registry
        with store_errors(db, "; nothing was started"):
            store = Store(db)
            return resume if resume else create_run(store, sc, text, str(path))
    except (ScenarioError, PolicyError) as exc:
        _fail(f"{scenario}: policy: {exc}" if isinstance(exc, PolicyError) else str(exc), 2)


def _execute_run(run_id: str, db: str) -> None:
    """Execute a stored run with a progress bar; print its table or a one-line error."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError
    from vragent.agents.backends.base import BackendError
    from vragent.environments.schema import DataFormatError
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.config import ScenarioError
    from vragent.sandbox.policies import PolicyError
    from vragent.sandbox.progress import RunProgress, Tracker
    from vragent.sandbox.runner import RunBusyError, RunError, checkpoint_path, execute
    from vragent.sandbox.store import Store

    shown = shown_url(db)
    resumable = f"run {run_id} is resumable: {resume_command(run_id, db)}"
    console.print(Text.assemble("run ", (run_id, "bold"), f" → {shown}"))
    store = None
    try:
        store = Store(db)
        with Tracker(err) as tracker:
            rows = execute(store, run_id, progress=RunProgress(tracker, f"run {run_id}"))
    except KeyboardInterrupt:
        _fail(f"interrupted ({resumable})", 130)
    except RunBusyError as exc:
        _fail(str(exc))  # the owner goes on; this process touched nothing
    except (ScenarioError, RunError, PolicyError) as exc:
        _fail(scrub_url(str(exc), db), 2)
    except (AssetError, DataFormatError, BackendError, OSError) as exc:
        # OSError: a missing file, or a full disk or quota while writing one.
        _fail(f"{scrub_url(str(exc), db)} ({resumable})")
    except (SQLAlchemyError, ImportError) as exc:
        _fail(f"store {shown} unavailable: {store_reason(exc, db)} ({resumable})")
    except sqlite3.Error as exc:  # only the LangGraph checkpointer talks to sqlite3 directly
        where = f" {checkpoint_path(store)}" if store is not None else ""
        _fail(f"checkpoint file{where} unavailable: {exc} ({resumable})")
    console.print(_summary_table(rows, f"run {run_id}"))
    with store_errors(db):
        _print_trace(store, run_id)


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Show the ``vragent`` logger's warnings (e.g. a capped population) as one-line warnings."""

    class ToConsole(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warn(record.getMessage())

    logger = logging.getLogger("vragent")
    handler = ToConsole(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _status(store: Store, run: Run) -> str:
    """The run's stored status, but ``interrupted`` for a ``running`` run whose process is gone.

    A SIGKILL (or a lost machine) leaves no chance to record the stop; the run's lock
    (sandbox/run_lock.py) died with its process, and that is what tells.
    """
    from vragent.sandbox.run_lock import owner_alive

    if run.status == "running" and owner_alive(store, run.id) is False:
        return "interrupted"
    return run.status


def runs(db: DbOption = DEFAULT_DB_URL) -> None:
    """List the runs in the store (interrupted ones with the command that resumes them)."""
    table = Table(title=f"runs in {shown_url(db)}")
    for col in ("id", "scenario", "status", "seed", "steps", "created", "wall s"):
        table.add_column(col)
    store = open_store(db)
    with store_errors(db):
        listed = [(r, _status(store, r)) for r in store.list_runs()]
    for r, status in listed:
        table.add_row(r.id, r.scenario_name, status, str(r.seed), f"{r.steps_done}/{r.n_steps}",
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"), f"{r.wall_s:.1f}")
    console.print(table)
    for r, status in listed:
        if status == "interrupted":
            console.print(f"run {r.id} is interrupted; resume it: {resume_command(r.id, db)}")


def show(run_id: str, db: DbOption = DEFAULT_DB_URL) -> None:
    """Print a run's per-arm table, one trace and its LLM metering."""
    store = open_store(db)
    with store_errors(db):
        run_row = store.get_run(run_id)
        if run_row is None:
            _fail(f"no run {run_id!r} in {shown_url(db)}", 2)
        status = _status(store, run_row)
        summary, metering = store.arm_summary(run_id), store.metering(run_id)
    console.print(f"{run_row.scenario_name} · seed {run_row.seed} · {status} · "
                  f"git {run_row.git_revision or '?'}")
    if status == "interrupted":
        console.print(f"resume it: {resume_command(run_id, db)}")
    console.print(_summary_table(summary, f"run {run_id}"))
    with store_errors(db):
        _print_trace(store, run_id)
    console.print(_metering_table(metering, "LLM metering (tokens, latency and "
                                  "cost of the calls sent; hits cost nothing)"))


def export(
    run_id: str,
    format: Annotated[str, typer.Option("--format", help="parquet or jsonl")] = "parquet",
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an earlier export in --out.")] = False,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Export a run's tables (one file per table)."""
    from vragent.sandbox.export import ExportError, check_destination, export_run

    if format not in ("parquet", "jsonl"):
        _fail(f"--format must be parquet or jsonl, not {format!r}", 2)
    folder = out or Path("exports") / run_id
    try:
        check_destination(folder, format, force)
    except ExportError as exc:
        _fail(str(exc), 2)
    store = open_store(db)
    with store_errors(db):
        if store.get_run(run_id) is None:
            _fail(f"no run {run_id!r} in {shown_url(db)}", 2)
        try:
            files = export_run(store, run_id, folder, format)
        except OSError as exc:  # read-only, full or vanished destination
            _fail(f"--out {folder}: cannot write the export ({exc.strerror or exc})")
    for f in files:
        console.print(str(f))
