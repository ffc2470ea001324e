"""``vragent ab`` (simulated A/B experiments) and ``vragent sweep`` (Mesa batch_run)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text
from vragent.sandbox.cli_common import DbOption, SetOption, console, err, shown_url, store_errors
from vragent.sandbox.cli_common import fail as _fail
from vragent.sandbox.paths import DEFAULT_DB_URL

if TYPE_CHECKING:  # the command bodies import lazily so `vragent --help` stays fast
    from vragent.sandbox.ab import AbSettings
    from vragent.sandbox.ab_analysis import AbAnalysis
    from vragent.sandbox.store import Store


def _command() -> str:
    return "vragent " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _create(store: Store, scenario: str, sets: tuple[str, ...] | list[str], seeds: int,
            seed_list: str | None, settings: AbSettings) -> str:
    """A new experiment's id; a bad scenario, policy or seed list exits 2 with one line."""
    from vragent.sandbox.ab import AbError, create_experiment
    from vragent.sandbox.config import load_scenario
    from vragent.sandbox.policies import PolicyError, load_policy

    try:
        # With the overrides: --set seed=… moves the seeds, --set policy=… is checked.
        sc = load_scenario(scenario, sets)[0]
        if sc.policy:
            load_policy(sc.policy)  # fail before anything is created
        seed_values = ([int(s) for s in seed_list.split(",") if s.strip()] if seed_list
                       else [sc.seed + k for k in range(seeds)])
        return create_experiment(store, scenario, seed_values, overrides=sets,
                                 settings=settings, command=_command())
    except (ValueError, AbError) as exc:  # ScenarioError, a bad --seed-list
        _fail(str(exc), 2)
    except PolicyError as exc:
        _fail(f"{scenario}: policy: {exc}", 2)


def _report(store: Store, exp_id: str, res: AbAnalysis, run_ids: list[str],
            out: Path | None) -> None:
    """Write the report folder, record it, and print the table."""
    from vragent.sandbox.ab import default_report_dir
    from vragent.sandbox.ab_report import terminal_table, write_report

    exp = store.get_experiment(exp_id)
    assert exp is not None
    folder = out or default_report_dir(exp_id)
    write_report(res, folder, title=exp.scenario_name, experiment_id=exp_id,
                 run_ids=run_ids, command=(exp.settings or {}).get("command") or _command())
    store.update_experiment(exp_id, report_dir=str(folder))
    console.print(terminal_table(res))
    console.print(f"report: {folder / 'report.md'}")


def ab(
    scenario: Annotated[str, typer.Argument(help="Scenario name or YAML path.")] = "",
    db: DbOption = DEFAULT_DB_URL,
    seeds: Annotated[int, typer.Option(help="Number of seeds: the scenario's seed, +1, …")]
    = 1,
    seed_list: Annotated[str | None, typer.Option(
        "--seed-list", help="Explicit seeds, comma-separated (overrides --seeds).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Arm to compare with (default: the "
                                                 "first arm).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default runs/ab/ID).")]
    = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap / permutation resamples.")]
    = 2000,
    confidence: Annotated[float, typer.Option(help="Interval level.")] = 0.95,
    sets: SetOption = None,
    resume: Annotated[str | None, typer.Option(help="Continue an interrupted experiment.")]
    = None,
) -> None:
    """Run every arm on the same users for each seed; report paired intervals and tests."""
    from vragent.agents.backends.base import BackendError
    from vragent.environments.schema import DataFormatError
    from vragent.sandbox.ab import (
        AbError,
        AbSettings,
        analyse_experiment,
        experiment_progress,
        run_experiment,
    )
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.config import ScenarioError
    from vragent.sandbox.policies import PolicyError
    from vragent.sandbox.progress import Tracker
    from vragent.sandbox.runner import RunError
    from vragent.sandbox.store import Store

    if not scenario and not resume:
        _fail("give a SCENARIO or --resume EXPERIMENT_ID", 2)
    if seeds < 1:
        _fail("--seeds must be >= 1", 2)
    try:
        settings = AbSettings(baseline=baseline, confidence=confidence,
                              n_resamples=resamples)
    except ValueError as exc:  # one line naming the setting
        _fail(str(exc), 2)
    with store_errors(db):
        store = Store(db)
    exp_id = resume or _create(store, scenario, sets or (), seeds, seed_list, settings)
    console.print(Text.assemble("experiment ", (exp_id, "bold"), f" → {shown_url(db)}"))
    try:
        with Tracker(err) as tracker:
            run_ids = run_experiment(store, exp_id, **experiment_progress(store, exp_id,
                                                                         tracker))
            tracker.log(f"{exp_id}: analysing the paired differences")
        res = analyse_experiment(store, exp_id, settings if not resume else None)
    except (AbError, RunError, ScenarioError, PolicyError) as exc:
        _fail(str(exc), 2)
    except (AssetError, DataFormatError, FileNotFoundError, BackendError) as exc:
        _fail(f"{exc} (resumable: vragent ab --resume {exp_id} --db {shown_url(db)})")
    _report(store, exp_id, res, run_ids, out)


def fidelity(
    scenario: Annotated[str, typer.Argument(help="Scenario with at least 3 arms.")],
    db: DbOption = DEFAULT_DB_URL,
    seeds: Annotated[int, typer.Option(help="Seeds of the simulated A/B experiment.")] = 1,
    sets: SetOption = None,
    max_eval_users: Annotated[int, typer.Option(help="Users in the offline evaluation "
                                                "(a seeded sample).")] = 5000,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    results: Annotated[Path | None, typer.Option(help="Write the table into this "
                                                 "markdown file's own section.")] = None,
) -> None:
    """Macro fidelity: simulated A/B ordering of the arms vs offline HR@10 (Spearman)."""
    from vragent.agents.backends.base import BackendError
    from vragent.environments.schema import DataFormatError
    from vragent.sandbox.ab import AbError
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.config import ScenarioError, load_scenario
    from vragent.sandbox.fidelity import fidelity_markdown, run_fidelity
    from vragent.sandbox.progress import Tracker
    from vragent.sandbox.report_sections import write_section
    from vragent.sandbox.store import Store

    try:
        base_seed = load_scenario(scenario)[0].seed
        with Tracker(err) as tracker:
            res = run_fidelity(Store(db), scenario,
                               seeds=[base_seed + k for k in range(seeds)],
                               overrides=tuple(sets or ()), max_eval_users=max_eval_users,
                               n_resamples=resamples, tracker=tracker)
    except (ScenarioError, AbError) as exc:
        _fail(str(exc), 2)
    except (AssetError, DataFormatError, FileNotFoundError, BackendError) as exc:
        _fail(str(exc))
    md = fidelity_markdown(res, _command())
    console.print(md)
    if results:
        write_section(results, f"macro-fidelity-{res.scenario}", md)
        console.print(f"written to {results}")


def sweep(
    scenario: Annotated[str, typer.Argument(help="Scenario name or YAML path.")],
    param: Annotated[list[str], typer.Option(
        "--param", help="key.path=v1,v2,… : values to sweep (repeatable; the grid is "
        "their product).")],
    db: DbOption = DEFAULT_DB_URL,
    iterations: Annotated[int, typer.Option(help="Seeds per grid point (seed, seed+1 …)")]
    = 1,
    sets: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="CSV of every step of every point.")]
    = None,
) -> None:
    """Sweep scenario parameters with Mesa's batch_run; one run per point and seed."""
    from vragent.sandbox.config import ScenarioError
    from vragent.sandbox.progress import Tracker
    from vragent.sandbox.sweep import parse_grid, run_sweep

    try:
        grid = parse_grid(param)
        with Tracker(err) as tracker:
            frame = run_sweep(scenario, grid, db, iterations=iterations,
                              overrides=sets or (), tracker=tracker)
    except (ScenarioError, ValueError) as exc:
        _fail(str(exc), 2)
    path = out or Path("runs") / "sweeps" / f"{Path(scenario).stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    last = frame.sort_values("Step").groupby(["RunId"], as_index=False).last()
    cols = [c for c in last.columns if c in grid or c in ("seed", "run_id")] + [
        c for c in last.columns if c.endswith(("/watch_rate", "/like_rate", "/coverage"))]
    console.print(last[cols].to_string(index=False))
    console.print(f"every step: {path}")


def register(app: typer.Typer) -> None:
    """Add ``ab``, ``fidelity`` and ``sweep`` to the CLI."""
    for command in (ab, fidelity, sweep):
        app.command()(command)
