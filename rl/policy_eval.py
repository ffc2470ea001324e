"""``vragent rl eval``: every baseline and policy on the held-out users of an RL data folder.

Models, side by side on the same rows:

* non-LLM baselines (:mod:`rl.baselines`, :mod:`rl.fitted_baselines`): random, the
  popularity prior, item-kNN over co-watching, recommenders' scores (MF and SASRec by
  default) and the learned response model that drives population-scale runs, all fitted on
  **all** logged interactions of the data's source dataset except the rows' targets: every
  user's full sequence, the held-out users' and the train users' cut before their target
  (the train users' rows tune the judgement thresholds, so their targets stay out too: one
  interaction per train user). ``fit_on="histories"`` fits on the prompts' histories only
  (the layout before, and the fallback for data folders that name no dataset);
* the frozen base model with the prompt alone (Agent4Rec-style prompting);
* registered policies (SFT, GRPO, GRPO without thinking ...).

LLMs run in ``score`` mode (one forward pass: p(Yes), or the most probable candidate letter)
on every cell, and in ``generate`` mode (reason, then answer; parsed like the simulator does)
on a smaller set of cells, because sampling 128 tokens costs about 100 forward passes. The
table goes to the store (``policy_evals``), to each policy's manifest (a summary) and to a
markdown report with the command that regenerates it. Every cell carries 95 % bootstrap
intervals and the paired difference to the cell's best baseline (:mod:`rl.eval_stats`).

Score mode scores every cell's rows in one user-ordered pass
(:meth:`rl.evaluation.LLMPolicy.prescore`): a user's rows share the prompt prefix, which the
``hf`` backend runs once and reuses, and the prompts repeated across cells run once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field
from vragent.environments.schema import Dataset
from vragent.rl.eval_report import headline
from vragent.rl.eval_stats import add_intervals
from vragent.rl.evaluation import COLUMNS, LLMPolicy, evaluate
from vragent.rl.fitted_baselines import (
    fit_baselines,
    history_interactions,
    row_targets,
    training_interactions,
)
from vragent.sandbox.config import ConfigModel
from vragent.sandbox.policies import load_policy, update_metrics
from vragent.sandbox.progress import Tracker
from vragent.sandbox.store import Store
from vragent.sandbox.training_log import log_eval, new_id

Log = Callable[[str], None]


class EvalConfig(ConfigModel):
    """What ``vragent rl eval`` runs.

    Attributes:
        data: an RL data folder (its ``eval`` split is evaluated; ``train`` tunes thresholds).
        policies: registered policy names.
        base_model: the frozen base model (``smollm2`` or a folder); ``None`` skips it.
        baselines: run the non-LLM baselines.
        recommenders: recommenders whose scores are baselines (registered names).
        fit_on: ``"full"`` fits the baselines on all logged interactions but the rows'
            targets (the data's source dataset); ``"histories"`` on the prompts' histories.
        dataset_path: the source dataset's folder when the default
            (``$VRAGENT_DATA_DIR``, or the MovieLens asset) is not it.
        judgement_ms: judgement m values to evaluate (``None``: all in the data).
        llm_tasks: the tasks the LLMs are evaluated on (the baselines run on every task).
        max_groups: users per (task, protocol, m) cell in score mode and for baselines.
        generate_groups: users per cell in generate mode (0 turns generate mode off).
        generate_ms: judgement m values evaluated in generate mode.
        generate_protocols: protocols evaluated in generate mode.
        max_new_tokens: completion budget in generate mode.
        batch_size: prompts per backend call.
        seed: subsampling and sampling seed.
        threads: torch CPU threads.
        n_boot: bootstrap resamples of the intervals.
    """

    data: str = Field(min_length=1)
    policies: tuple[str, ...] = ()
    base_model: str | None = "smollm2"
    baselines: bool = True
    recommenders: tuple[str, ...] = ("mf", "sasrec")
    fit_on: Literal["full", "histories"] = "full"
    dataset_path: str | None = None
    judgement_ms: tuple[int, ...] | None = None
    llm_tasks: tuple[str, ...] = ("judgement", "selection")
    max_groups: int | None = Field(20, ge=1)
    generate_groups: int = Field(12, ge=0)
    generate_ms: tuple[int, ...] = (1,)
    generate_protocols: tuple[str, ...] = ("random", "hard")
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    n_boot: int = Field(1000, ge=1)
    registry: str | None = None
    extra_models: dict[str, Any] = Field(default_factory=dict)


def _source(cfg: EvalConfig, manifest: dict[str, Any]) -> Dataset:
    """The data's source dataset, loaded with the build's settings.

    Raises:
        ValueError: the manifest names no dataset.
    """
    import os

    from vragent.rl.datasets import RLDataConfig, load_source

    config = dict(manifest.get("config") or {})
    if not config.get("dataset"):
        raise ValueError("the data's manifest names no source dataset")
    config.update(dataset_path=cfg.dataset_path, store_url=None, store_runs=())
    build = RLDataConfig.from_dict(config)
    if (build.dataset_path is None and build.dataset.lower() in ("movielens-100k", "ml-100k")
            and not os.environ.get("VRAGENT_DATA_DIR")):
        from vragent.sandbox.assets import require_movielens

        build.dataset_path = str(require_movielens())
    return load_source(build)


def _source_sequences(cfg: EvalConfig, manifest: dict[str, Any]) -> tuple[dict, list[int]]:
    """The data's source dataset as user sequences and catalogue (the build's settings)."""
    from vragent.environments.splits import as_sequences

    ds = _source(cfg, manifest)
    catalogue = sorted(int(i) for i in ds.interactions["item_id"].unique())
    return as_sequences(ds), catalogue


def _baselines(cfg: EvalConfig, manifest: dict[str, Any], train_rows: list[dict],
               eval_rows: list[dict], popularity: pd.Series | None, log: Log) -> dict[str, Any]:
    """Every baseline, fitted on all logs (``fit_on="full"``) or on the prompts' histories."""
    # Real rows only: a logged row's item (a simulated decision on a real item) is no target.
    tune = [r for r in train_rows if r["task"] == "judgement" and r.get("source") == "real"]
    if cfg.fit_on == "full" and (manifest.get("config") or {}).get("dataset"):
        sequences, catalogue = _source_sequences(cfg, manifest)
        inter = training_interactions(sequences, row_targets([*eval_rows, *tune]))
        log(f"baselines: fitted on all logs but the rows' targets ({len(inter)} interactions "
            f"of {sum(len(s) for s in sequences.values())}, {len(sequences)} users)")
    else:
        if cfg.fit_on == "full":
            log("baselines: the data's manifest names no dataset; fitted on the prompts' "
                "histories")
        elif cfg.fit_on != "histories":
            raise ValueError(f"fit_on must be 'full' or 'histories', got {cfg.fit_on!r}")
        # Histories of every row (train users' and held-out users'), never a target.
        inter = history_interactions([*train_rows, *eval_rows])
        catalogue = ([int(i) for i in popularity.index] if popularity is not None
                     else sorted(int(i) for i in inter["item_id"].unique()))
    return fit_baselines(inter, catalogue, recommenders=cfg.recommenders, threshold_rows=tune,
                         seed=cfg.seed, log=log)


def _backend(path: Path, name: str, cfg: EvalConfig):
    from vragent.agents.backends.hf import HFBackend

    return HFBackend(path, model_name=name, batch_size=cfg.batch_size, threads=cfg.threads,
                     max_prompt_tokens=2048)


def _llms(cfg: EvalConfig) -> tuple[dict[str, Any], set[str]]:
    """The LLMs to evaluate, and the names of those trained without thinking."""
    out: dict[str, Any] = {}
    no_thinking: set[str] = set()
    if cfg.base_model:
        if cfg.base_model == "smollm2":
            from vragent.sandbox.assets import require_smollm2

            out["base (prompt only)"] = _backend(require_smollm2(), "SmolLM2-135M-Instruct", cfg)
        else:
            out["base (prompt only)"] = _backend(Path(cfg.base_model), cfg.base_model, cfg)
    for name in cfg.policies:
        pol = load_policy(name, cfg.registry)
        if pol.is_head:  # scored through rl.grounded.GroundedPolicyScorer instead
            continue
        out[name] = _backend(pol.model_dir, pol.manifest.model_id, cfg)
        if not pol.manifest.thinking:
            no_thinking.add(name)
    out.update(cfg.extra_models)
    return out, no_thinking


def _head_policies(cfg: EvalConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Head policies (the grounded LLM users) as scorers on the data's source dataset."""
    heads = [p for p in (load_policy(n, cfg.registry) for n in cfg.policies) if p.is_head]
    if not heads:
        return {}
    from vragent.rl.grounded import head_policy_scorer

    ds = _source(cfg, manifest)
    return {p.manifest.name: head_policy_scorer(p, ds, seed=cfg.seed, threads=cfg.threads)
            for p in heads}


def _cap(groups: int | None) -> Any:
    """Cell caps in users: ``groups`` users of 1 + m rows (judgement) or of one row."""
    if groups is None:
        return None
    return lambda task, m: groups * (int(m) + 1 if task == "judgement" else 1)


def run_eval(cfg: EvalConfig, store: Store | None = None, log: Log = print,
             tracker: Tracker | None = None) -> tuple[pd.DataFrame, str]:
    """Evaluate baselines, the base model and policies on the data's held-out users.

    ``log`` gets one line per (model, mode, cell) and per scored batch of users;
    ``tracker`` also counts the cells of the baselines, score mode and generate mode.

    Returns:
        The long table (:func:`rl.evaluation.evaluate` columns) and the evaluation id under
        which it is stored (``policy_evals``).
    """
    from vragent.rl.datasets import RLDataError, load_popularity, load_rl_data

    dd, manifest = load_rl_data(cfg.data)
    eval_rows = [dict(r) for r in dd["eval"]]
    if cfg.judgement_ms is not None:
        eval_rows = [r for r in eval_rows
                     if r["task"] != "judgement" or int(r["m"]) in cfg.judgement_ms]
    train_rows = [dict(r) for r in dd["train"]] if "train" in dd else []
    try:
        popularity = load_popularity(cfg.data)
    except RLDataError:  # an older folder without popularity.json: count histories instead
        popularity = None
    t0 = time.perf_counter()
    frames: list[pd.DataFrame] = []
    outcomes: dict = {}
    common = {"seed": cfg.seed, "progress": log, "outcomes": outcomes, "n_boot": cfg.n_boot}

    def cells(label: str) -> Any:
        return tracker.task(label, unit="cells").update if tracker is not None else None
    # The open-ended preference task has no candidates: only sampled LLMs answer it.
    closed = [r for r in eval_rows if r["task"] != "preference"]
    closed_train = [r for r in train_rows if r["task"] != "preference"]
    models = (_baselines(cfg, manifest, closed_train, closed, popularity, log)
              if cfg.baselines else {})
    if models:
        frames.append(evaluate(models, closed, max_rows_per_group=_cap(cfg.max_groups),
                               on_cell=cells("baselines"), **common))
    # Head policies are LLMs scored through the scorer interface: the LLM tasks only.
    heads = _head_policies(cfg, manifest)
    if heads:
        frames.append(evaluate(heads, closed, max_rows_per_group=_cap(cfg.max_groups),
                               tasks=cfg.llm_tasks, on_cell=cells("head policies"), **common))
    llms, no_thinking = _llms(cfg)
    if llms:
        scoring = {n: LLMPolicy(b, modes=("score",), seed=cfg.seed, batch_size=cfg.batch_size)
                   for n, b in llms.items()}
        t1 = time.perf_counter()
        frames.append(evaluate(scoring, closed, max_rows_per_group=_cap(cfg.max_groups),
                               tasks=cfg.llm_tasks, on_cell=cells("score mode"), **common))
        n_rows = int(frames[-1]["n"].sum())
        log(f"score mode: {n_rows} rows in {time.perf_counter() - t1:.0f} s "
            f"({n_rows / max(time.perf_counter() - t1, 1e-9):.2f} rows/s, all LLMs)")
        if cfg.generate_groups > 0:
            sampling = {n: LLMPolicy(b, modes=("generate",), seed=cfg.seed,
                                     max_new_tokens=cfg.max_new_tokens,
                                     batch_size=cfg.batch_size, thinking=n not in no_thinking)
                        for n, b in llms.items()}
            gen_rows = [r for r in eval_rows if r["task"] == "preference"
                        or (r["protocol"] in cfg.generate_protocols
                            and (r["task"] == "selection" or r["m"] in cfg.generate_ms))]
            frames.append(evaluate(sampling, gen_rows, tasks=(*cfg.llm_tasks, "preference"),
                                   max_rows_per_group=_cap(cfg.generate_groups),
                                   on_cell=cells("generate mode"), **common))
    table = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    # Intervals again over every model: the paired differences span the separate calls.
    table = add_intervals(table, outcomes, seed=cfg.seed, n_boot=cfg.n_boot)[list(COLUMNS)]
    eval_id = new_id()
    if store is not None:
        log_eval(store, eval_id, table.to_dict("records"), policy=None, data=str(cfg.data))
    for name in cfg.policies:
        update_metrics(name, f"eval:{Path(cfg.data).name}", headline(table, name), cfg.registry)
    log(f"evaluated {len(table)} cells in {time.perf_counter() - t0:.0f} s (eval {eval_id})")
    return table, eval_id
