"""``vragent rl …`` and ``vragent loop``: RL data, training, evaluation and the closed loop.

Registered on the core CLI through the ``vragent.cli`` entry point (pyproject.toml), so
``sandbox`` never imports ``rl``. Heavy imports (torch, transformers, trl) happen inside the
commands, never at start-up.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from vragent.sandbox.cli_common import (
    ColumnOption,
    DatasetOption,
    DbOption,
    ItemsPathOption,
    LikeThresholdOption,
    console,
    dataset_options,
    err,
    shown_url,
)
from vragent.sandbox.cli_common import fail as _fail
from vragent.sandbox.paths import DEFAULT_DB_URL

rl_app = typer.Typer(help="RL alignment of the US agent: data, SFT/GRPO, evaluation.",
                     no_args_is_help=True)
RegistryOption = Annotated[str | None, typer.Option(
    "--registry", help="Policy registry folder (default $VRAGENT_POLICIES or runs/policies).")]


def _command_line(marker: str) -> str:
    args = sys.argv[sys.argv.index(marker) + 1:] if marker in sys.argv else []
    return " ".join([f"vragent rl {marker}", *map(shlex.quote, args)])


@rl_app.command("build-data")
def build_data(
    out: Annotated[Path, typer.Option(help="Folder to write (HF datasets + manifest.json).")],
    dataset: DatasetOption = "movielens-100k",
    path: Annotated[str | None, typer.Option(help="Data folder or file (MovieLens: or its "
                                             ".zip; interactions: the CSV or Parquet log). "
                                             "Default: the embedded MovieLens asset or "
                                             "$VRAGENT_DATA_DIR.")] = None,
    items_path: ItemsPathOption = None,
    column: ColumnOption = None,
    like_threshold: LikeThresholdOption = None,
    seed: int = 0,
    eval_users: Annotated[float, typer.Option(help="Held-out users (count, or fraction < 1).")
                          ] = 500,
    train_users: Annotated[int, typer.Option(help="At most this many train users.")] = 2000,
    hard_recommender: Annotated[str, typer.Option(help="Recommender of the hard negatives.")
                                ] = "itemknn",
    history_len: Annotated[int, typer.Option(help="History items shown in a prompt.")] = 10,
    task: Annotated[list[str] | None, typer.Option(
        help="judgement / selection / preference (repeatable; default judgement and "
             "selection; preference is the paper's open-ended task).")] = None,
    from_run: Annotated[list[str] | None, typer.Option(
        "--from-run", help="Add the logged decisions of this run (repeatable) to train.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML of RLDataConfig fields; flags "
                                                "given on the command line win.")] = None,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Build judgement (1:m), selection and preference data from real logs (and runs)."""
    import yaml
    from vragent.environments.schema import DataFormatError
    from vragent.rl.datasets import (
        BuildStats,
        RLDataConfig,
        RLDataError,
        build_rl_data,
        rl_manifest,
        save_rl_data,
    )
    from vragent.sandbox.progress import Tracker

    try:
        options = dataset_options(dataset, items_path, column, like_threshold)
    except ValueError as exc:
        _fail(str(exc), 2)
    try:
        base = yaml.safe_load(config.read_text()) if config else {}
        if not isinstance(base, dict):
            raise RLDataError(f"{config}: expected a mapping of RLDataConfig fields")
        if options:
            base["dataset_params"] = {**base.get("dataset_params", {}), **options}
        data_path = path
        if data_path is None and dataset == "movielens-100k":
            from vragent.sandbox.assets import require_movielens

            data_path = str(require_movielens())
        base.update({"dataset": dataset, "dataset_path": data_path, "seed": seed,
                     "eval_users": int(eval_users) if eval_users >= 1 else eval_users,
                     "train_users": train_users, "hard_recommender": hard_recommender,
                     "history_len": history_len})
        if task:
            base["tasks"] = list(task)
        if from_run:
            base.update({"store_url": db, "store_runs": list(from_run)})
        cfg = RLDataConfig.from_dict(base)
        stats = BuildStats()
        with Tracker(err) as tracker:
            users = tracker.task("RL data: users", unit="users", every=5.0)
            dd = build_rl_data(cfg, stats=stats, progress=users)
            tracker.log(f"RL data: {len(dd['train'])} train and {len(dd['eval'])} held-out "
                        f"rows built in {stats.seconds:.0f} s; saving to {out}")
        manifest = rl_manifest(dd, cfg, stats)
        folder = save_rl_data(dd, out, manifest, stats.popularity)
    except (RLDataError, DataFormatError, FileNotFoundError, OSError, yaml.YAMLError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2)
    table = Table(title=f"RL data → {folder}")
    for col in ("split", "task", "protocol", "m", "rows"):
        table.add_column(col, justify="left" if col in ("split", "task", "protocol") else "right")
    for split in dd:
        counts = dd[split].to_pandas().groupby(["task", "protocol", "m"]).size()
        for (task, proto, m), n in counts.items():
            table.add_row(split, task, proto, str(m), str(n))
    console.print(table)


@rl_app.command("train")
def train(
    data: Annotated[Path, typer.Option(help="RL data folder (vragent rl build-data).")],
    policy: Annotated[str, typer.Option(help="Name to register the trained policy under.")],
    algo: Annotated[str, typer.Option(help="sft or grpo.")] = "grpo",
    base_model: Annotated[str, typer.Option(help="smollm2, tiny-random, policy:NAME or a "
                                            "model folder.")] = "smollm2",
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    samples: Annotated[int | None, typer.Option(help="At most this many train rows.")] = None,
    task: Annotated[list[str] | None, typer.Option(help="judgement / selection / preference "
                                                   "(repeatable; default judgement and "
                                                   "selection).")] = None,
    protocol: Annotated[list[str] | None, typer.Option(help="Negative protocols to train on "
                                                       "(repeatable; default all).")] = None,
    thinking: Annotated[bool, typer.Option(help="--no-thinking: the paper's ablation.")] = True,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank; 0 = full fine-tuning.")] = None,
    num_generations: Annotated[int | None, typer.Option(help="GRPO group size.")] = None,
    prompts_per_step: Annotated[int | None, typer.Option(help="GRPO prompts per step.")] = None,
    max_completion_length: Annotated[int | None, typer.Option(help="GRPO completion tokens.")
                                     ] = None,
    missing_answer: Annotated[float | None, typer.Option(help="GRPO reward of a completion "
                                                         "with no <answer> (paper: 0.0).")
                              ] = None,
    batch_size: Annotated[int | None, typer.Option(help="SFT rows per step.")] = None,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    db: DbOption = DEFAULT_DB_URL,
    registry: RegistryOption = None,
) -> None:
    """Train the US-agent policy with SFT or GRPO (TRL, LoRA by default) and register it."""
    from dataclasses import replace

    from vragent.rl.configs import GRPORunConfig, LoraSettings, SFTRunConfig
    from vragent.rl.datasets import RLDataError
    from vragent.rl.trainers import TrainingError, train_policy
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.policies import PolicyError
    from vragent.sandbox.store import Store

    cls = GRPORunConfig if algo == "grpo" else SFTRunConfig
    cfg = cls(policy=policy, data=str(data), base_model=base_model, thinking=thinking,
              seed=seed).with_updates(
        max_steps=steps, lr=lr, max_samples=samples, threads=threads,
        tasks=tuple(task) if task else None, protocols=tuple(protocol) if protocol else None)
    if lora_r is not None:
        cfg = replace(cfg, lora=LoraSettings(r=lora_r))
    if algo == "grpo":
        cfg = cfg.with_updates(num_generations=num_generations,
                               prompts_per_step=prompts_per_step,
                               max_completion_length=max_completion_length,
                               missing_answer=missing_answer)
    elif batch_size:
        cfg = cfg.with_updates(batch_size=batch_size)
    try:
        res = train_policy(cfg, Store(db), registry=registry, log=console.print)
    except (TrainingError, RLDataError, PolicyError, AssetError) as exc:
        _fail(str(exc), 2)
    console.print(f"{algo} policy {res.policy!r}: {res.steps} steps in {res.wall_s:.0f} s "
                  f"({3600 * res.steps / max(res.wall_s, 1e-9):.0f} steps/h) from {res.rows} "
                  f"candidate rows; training run {res.training_run_id}", soft_wrap=True)
    table = Table(title="curves (mean of the first and last quarter of the logged steps)")
    for col in ("curve", "first quarter", "last quarter"):
        table.add_column(col, justify="left" if col == "curve" else "right")
    for name in sorted(res.last):
        table.add_row(name, f"{res.first[name]:.4g}", f"{res.last[name]:.4g}")
    console.print(table)


@rl_app.command("eval")
def eval_(
    data: Annotated[Path, typer.Option(help="RL data folder; its eval split is evaluated.")],
    policy: Annotated[list[str] | None, typer.Option(help="A registered policy (repeatable).")
                      ] = None,
    base_model: Annotated[str, typer.Option(help="The frozen base model compared with the "
                                            "policies: smollm2, a folder, or none.")
                          ] = "smollm2",
    baselines: Annotated[bool, typer.Option(help="Run the non-LLM baselines.")] = True,
    recommender: Annotated[list[str] | None, typer.Option(
        help="Recommender whose scores are a baseline (repeatable; default mf and sasrec).")
                           ] = None,
    fit_on: Annotated[str, typer.Option(help="Fit the baselines on all logs but the rows' "
                                        "targets (full) or on the prompts' histories.")
                      ] = "full",
    dataset_path: Annotated[str | None, typer.Option(
        help="The data's source dataset folder (default: $VRAGENT_DATA_DIR or the asset).")
                            ] = None,
    judgement_m: Annotated[list[int] | None, typer.Option(
        help="Evaluate only these judgement m values (repeatable; default all).")] = None,
    llm_task: Annotated[list[str] | None, typer.Option(
        help="Tasks the LLMs run (repeatable; default judgement and selection).")] = None,
    max_groups: Annotated[int, typer.Option(help="Held-out users per cell (score mode and "
                                            "baselines); 0 = all.")] = 20,
    generate_groups: Annotated[int, typer.Option(help="Users per cell in generate mode "
                                                 "(0 = off).")] = 12,
    max_new_tokens: Annotated[int, typer.Option(help="Generate-mode completion budget.")] = 128,
    batch_size: int = 8,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of the 95 % intervals.")
                      ] = 1000,
    report: Annotated[Path | None, typer.Option(help="Write the markdown report here.")] = None,
    results: Annotated[Path | None, typer.Option(help="Also write the key figures into this "
                                                 "file's own section (docs/results.md).")
                       ] = None,
    title: Annotated[str, typer.Option(help="The report's heading.")] = "US-agent evaluation",
    db: DbOption = DEFAULT_DB_URL,
    registry: RegistryOption = None,
) -> None:
    """Evaluate policies, the base model and baselines on held-out users."""
    from vragent.rl.datasets import RLDataError, load_rl_data
    from vragent.rl.eval_report import headline_markdown, report_markdown, results_section
    from vragent.rl.policy_eval import EvalConfig, run_eval
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.policies import PolicyError
    from vragent.sandbox.progress import Tracker
    from vragent.sandbox.report_sections import write_section
    from vragent.sandbox.store import Store

    try:
        cfg = EvalConfig(data=str(data), policies=tuple(policy or ()),
                         base_model=None if base_model == "none" else base_model,
                         baselines=baselines,
                         recommenders=tuple(recommender or ("mf", "sasrec")), fit_on=fit_on,
                         dataset_path=dataset_path,
                         judgement_ms=tuple(judgement_m) if judgement_m else None,
                         llm_tasks=tuple(llm_task or ("judgement", "selection")),
                         max_groups=max_groups or None, generate_groups=generate_groups,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                         threads=threads, n_boot=n_boot, registry=registry)
        with Tracker(err) as tracker:
            table, eval_id = run_eval(cfg, Store(db), log=tracker.log, tracker=tracker)
    except (RLDataError, PolicyError, AssetError, KeyError, ValueError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2)
    console.print(headline_markdown(table), markup=False, highlight=False)
    console.print(f"eval {eval_id} stored in {shown_url(db)}")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(report_markdown(table, title, _command_line("eval")), encoding="utf-8")
        console.print(f"report: {report}")
    if results is not None:
        section = results_section(table, title, _command_line("eval"), load_rl_data(data)[1])
        write_section(results, f"rl-eval-{data.name}", section)
        console.print(f"results: {results} (section rl-eval-{data.name})")


@rl_app.command("report")
def report_(
    eval_id: Annotated[list[str], typer.Argument(help="Evaluation ids (printed by vragent rl "
                                                  "eval); a later one's rows replace an "
                                                  "earlier one's for the same model and cell.")],
    data: Annotated[Path, typer.Option(help="The RL data folder it evaluated (for its manifest).")],
    results: Annotated[Path | None, typer.Option(help="Write the key figures into this file's "
                                                 "own section (e.g. docs/results.md).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write every cell's table here.")] = None,
    title: Annotated[str, typer.Option(help="The heading.")] = "US-agent evaluation",
    command: Annotated[str | None, typer.Option(help="The command shown as the one that "
                                                "regenerates the figures.")] = None,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Render stored evaluations again (no model runs): key figures and full tables."""
    import pandas as pd
    from vragent.rl.datasets import RLDataError, load_rl_data
    from vragent.rl.eval_report import (
        headline_markdown,
        report_markdown,
        results_section,
        table_from_store,
    )
    from vragent.sandbox.report_sections import write_section
    from vragent.sandbox.store import Store

    try:
        store = Store(db)
        table = pd.concat([table_from_store(store, e) for e in eval_id], ignore_index=True)
        table = table.drop_duplicates(["model", "mode", "task", "protocol", "m"], keep="last")
        _, manifest = load_rl_data(data)
    except (KeyError, RLDataError) as exc:
        _fail(str(exc).strip("'\""), 2)
    shown = command or _command_line("report")
    console.print(headline_markdown(table), markup=False, highlight=False)
    if results is not None:
        write_section(results, f"rl-eval-{data.name}", results_section(table, title, shown,
                                                                       manifest))
        console.print(f"results: {results} (section rl-eval-{data.name})")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(report_markdown(table, title, shown), encoding="utf-8")
        console.print(f"report: {report}")


@rl_app.command("train-head")
def train_head(
    policy: Annotated[str, typer.Option(help="Name to register the head policy under.")],
    dataset: DatasetOption = "movielens-100k",
    path: Annotated[str | None, typer.Option(help="Data folder (default: the embedded "
                                             "MovieLens asset or $VRAGENT_DATA_DIR).")] = None,
    seed: int = 0,
    eval_users: Annotated[int, typer.Option(help="Held-out users, split as build-data does "
                                            "(never trained on).")] = 500,
    train_users: Annotated[int, typer.Option(help="At most this many train users.")] = 2000,
    c: Annotated[float, typer.Option(help="The head's inverse L2 strength.")] = 0.03,
    layer: Annotated[int, typer.Option(help="The head reads the state after this many layers "
                                       "(0: all); scoring then runs only those.")] = 18,
    history_len: Annotated[int, typer.Option(help="History titles a prompt shows.")] = 10,
    check_users: Annotated[int, typer.Option(help="Held-out users scored after training "
                                             "(AUCs in the manifest).")] = 100,
    distract: Annotated[float, typer.Option(help="Share of training users whose titles carry "
                                            "appended instruction-like text (robustness to "
                                            "injected titles).")] = 0.5,
    reason: Annotated[float, typer.Option(help="Share of training users whose rows are also "
                                          "read after a preference the model wrote (traces "
                                          "that decide).")] = 0.5,
    reason_invariance: Annotated[float, typer.Option(help="Penalty on the head's change "
                                                     "between a row's plain and reasoned "
                                                     "reads.")] = 1000.0,
    distract_invariance: Annotated[float, typer.Option(help="Penalty on the head's change "
                                                       "between a row's clean and distracted "
                                                       "reads.")] = 100.0,
    registry: RegistryOption = None,
) -> None:
    """Train a grounded head policy: SmolLM2 reads the logs' evidence, a learned head decides."""
    from vragent.environments.schema import DataFormatError
    from vragent.rl.datasets import RLDataError
    from vragent.rl.head_training import HeadTrainConfig, train_head_policy
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.policies import PolicyError

    try:
        cfg = HeadTrainConfig(policy=policy, dataset=dataset, dataset_path=path, seed=seed,
                              eval_users=eval_users, train_users=train_users, c=c, layer=layer,
                              history_len=history_len, check_users=check_users,
                              distract=distract, reason=reason,
                              reason_invariance=reason_invariance,
                              distract_invariance=distract_invariance)
    except ValueError as exc:
        _fail(str(exc), 2)

    def progress(done: int, total: int) -> None:
        err.print(f"hidden states {done}/{total}")

    try:
        folder = train_head_policy(cfg, registry, progress)
    except (RLDataError, DataFormatError, AssetError, PolicyError, FileNotFoundError,
            ValueError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2)
    from vragent.sandbox.policies import load_policy

    check = load_policy(policy, registry).manifest.metrics.get("held_out", {})
    console.print(f"policy {policy} → {folder}; held-out check: {check} "
                  f"(evaluate it: vragent rl eval --policy {policy})")


@rl_app.command("policies")
def policies(registry: RegistryOption = None) -> None:
    """List the registered policies."""
    from vragent.sandbox.policies import list_policies, policy_root

    table = Table(title=f"policies in {policy_root(registry)}")
    for col in ("name", "algo", "base model", "thinking", "lora", "model id", "created"):
        table.add_column(col)
    for p in list_policies(registry):
        m = p.manifest
        table.add_row(m.name, m.algo, m.base_model, str(m.thinking), str(m.lora), m.model_id,
                      m.created_at)
    console.print(table)


def loop(
    scenario: Annotated[str, typer.Argument(help="Scenario name or YAML path.")],
    algo: Annotated[str, typer.Option(help="grpo or sft.")] = "grpo",
    policy: Annotated[str | None, typer.Option(help="Name of the trained policy "
                                               "(default <scenario>-loop).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 50,
    base_model: Annotated[str | None, typer.Option(help="Train from this model (default: "
                                                   "the scenario's).")] = None,
    eval_users: Annotated[int, typer.Option(help="Held-out users of the RL data.")] = 50,
    train_users: Annotated[int, typer.Option(help="Most real train users.")] = 500,
    eval_groups: Annotated[int, typer.Option(help="Held-out users per evaluation cell.")] = 10,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    samples: Annotated[int | None, typer.Option(help="At most this many train rows.")] = None,
    seed: int = 0,
    report: Annotated[Path | None, typer.Option(help="Write the before/after table here.")
                      ] = None,
    db: DbOption = DEFAULT_DB_URL,
    registry: RegistryOption = None,
) -> None:
    """Simulate, build data from the run + real logs, train, simulate again; show fidelity."""
    from vragent.agents.backends.base import BackendError
    from vragent.environments.schema import DataFormatError
    from vragent.rl.datasets import RLDataError
    from vragent.rl.loop import LoopConfig, loop_markdown, run_loop, write_loop_report
    from vragent.rl.trainers import TrainingError
    from vragent.sandbox.assets import AssetError
    from vragent.sandbox.config import ScenarioError
    from vragent.sandbox.policies import PolicyError
    from vragent.sandbox.progress import Tracker

    train = {k: v for k, v in {"lr": lr, "max_samples": samples}.items() if v is not None}
    try:
        cfg = LoopConfig(scenario=scenario, policy=policy, algo=algo, base_model=base_model,
                         steps=steps, eval_users=eval_users, train_users=train_users,
                         eval_groups=eval_groups, train=train, seed=seed)
    except ValueError as exc:
        _fail(str(exc), 2)
    try:
        with Tracker(err) as tracker:
            res = run_loop(cfg, db, registry, log=tracker.log, tracker=tracker)
    except (ScenarioError, RLDataError, TrainingError, PolicyError, ValueError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2)
    except (AssetError, DataFormatError, FileNotFoundError, BackendError) as exc:
        _fail(str(exc))
    args = sys.argv[sys.argv.index("loop") + 1:] if "loop" in sys.argv else []
    command = " ".join(["vragent loop", *map(shlex.quote, args)])
    console.print(loop_markdown(res, command), markup=False, highlight=False)
    if report is not None:
        console.print(f"report: {write_loop_report(res, report, command)}")


def register(app: typer.Typer) -> None:
    """Add ``vragent rl`` and ``vragent loop`` to the core CLI (the entry point's hook)."""
    app.add_typer(rl_app, name="rl")
    app.command("loop")(loop)
