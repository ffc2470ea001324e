"""``vragent rl eval``: every baseline and policy on the held-out users of an RL data folder.

Models, side by side on the same rows:

* non-LLM baselines (:mod:`rl.baselines`): random, the popularity prior (counts from
  histories only, ``popularity.json`` of the data folder), item-kNN over co-watching, a
  recommender's scores (the simulation's recommenders, fitted on histories, never targets),
  and the learned response model that drives population-scale runs;
* the frozen base model with the prompt alone (Agent4Rec-style prompting);
* registered policies (SFT, GRPO, GRPO without thinking ...).

LLMs run in ``score`` mode (one forward pass: p(Yes), or the most probable candidate letter)
on every cell, and in ``generate`` mode (reason, then answer; parsed like the simulator does)
on a smaller set of cells, because sampling 128 tokens costs about 100 forward passes. The
table goes to the store (``policy_evals``), to each policy's manifest (a summary) and to a
markdown report with the command that regenerates it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rl.baselines import (
    ItemKNNScorer,
    PopularityScorer,
    RandomScorer,
    RecommenderScorer,
    ResponseModelScorer,
    history_interactions,
)
from rl.evaluation import LLMPolicy, evaluate, results_markdown
from sandbox.policies import load_policy, update_metrics
from sandbox.store import Store
from sandbox.training_log import log_eval, new_id

Log = Callable[[str], None]


@dataclass
class EvalConfig:
    """What ``vragent rl eval`` runs.

    Attributes:
        data: an RL data folder (its ``eval`` split is evaluated; ``train`` tunes thresholds).
        policies: registered policy names.
        base_model: the frozen base model (``smollm2`` or a folder); ``None`` skips it.
        baselines: run the non-LLM baselines.
        recommender: the recommender whose scores are a baseline (any registered name).
        max_groups: users per (task, protocol, m) cell in score mode and for baselines.
        generate_groups: users per cell in generate mode (0 turns generate mode off).
        generate_ms: judgement m values evaluated in generate mode.
        generate_protocols: protocols evaluated in generate mode.
        max_new_tokens: completion budget in generate mode.
        batch_size: prompts per backend call.
        seed: subsampling and sampling seed.
        threads: torch CPU threads.
    """

    data: str
    policies: tuple[str, ...] = ()
    base_model: str | None = "smollm2"
    baselines: bool = True
    recommender: str = "mf"
    max_groups: int | None = 20
    generate_groups: int = 12
    generate_ms: tuple[int, ...] = (1,)
    generate_protocols: tuple[str, ...] = ("random", "hard")
    max_new_tokens: int = 128
    batch_size: int = 8
    seed: int = 0
    threads: int | None = None
    registry: str | None = None
    extra_models: dict[str, Any] = field(default_factory=dict)


def _baselines(cfg: EvalConfig, train_rows: list[dict], eval_rows: list[dict],
               popularity: pd.Series | None) -> dict[str, Any]:
    from environments.recommenders import make_recommender

    # Histories of every row (train users' and held-out users'), never a target.
    inter = history_interactions([*train_rows, *eval_rows])
    catalogue = None if popularity is None else [int(i) for i in popularity.index]
    pop = (PopularityScorer({int(i): int(c) for i, c in popularity.items()}, catalogue)
           if popularity is not None
           else PopularityScorer.from_interactions(inter, inter["item_id"].unique()))
    knn = ItemKNNScorer(seed=cfg.seed).fit(inter)
    rec = make_recommender(cfg.recommender, seed=cfg.seed).fit(inter)
    rec_scorer = RecommenderScorer(rec, f"{cfg.recommender} scores", seed=cfg.seed)
    out = {"random": RandomScorer(cfg.seed), "popularity": pop, "item-kNN": knn,
           f"{cfg.recommender} scores": rec_scorer}
    try:
        # The simulator's non-LLM user model: the fidelity an LLM user has to beat.
        learned = ResponseModelScorer.fit_on(inter, seed=cfg.seed)
        out[learned.name] = learned
    except ValueError:
        pass  # no history of two items or more: nothing it could learn, so no row for it
    judge_train = [r for r in train_rows if r["task"] == "judgement"]
    for name, scorer in out.items():
        if judge_train and name not in ("random", "popularity"):
            scorer.fit_threshold(judge_train)  # tuned on train users, applied to held-out
    return out


def _backend(path: Path, name: str, cfg: EvalConfig):
    from agents.backends.hf import HFBackend

    return HFBackend(path, model_name=name, batch_size=cfg.batch_size, threads=cfg.threads,
                     max_prompt_tokens=2048)


def _llms(cfg: EvalConfig) -> tuple[dict[str, Any], set[str]]:
    """The LLMs to evaluate, and the names of those trained without thinking."""
    out: dict[str, Any] = {}
    no_thinking: set[str] = set()
    if cfg.base_model:
        if cfg.base_model == "smollm2":
            from sandbox.assets import require_smollm2

            out["base (prompt only)"] = _backend(require_smollm2(), "SmolLM2-135M-Instruct", cfg)
        else:
            out["base (prompt only)"] = _backend(Path(cfg.base_model), cfg.base_model, cfg)
    for name in cfg.policies:
        pol = load_policy(name, cfg.registry)
        out[name] = _backend(pol.model_dir, pol.manifest.model_id, cfg)
        if not pol.manifest.thinking:
            no_thinking.add(name)
    out.update(cfg.extra_models)
    return out, no_thinking


def _per_m(models: dict[str, Any], rows: list[dict], groups: int | None, seed: int,
           log: Log) -> list[pd.DataFrame]:
    """Evaluate m by m, so a cap in users means the same for 1:1 and 1:9."""
    out = []
    for (task, m), part in _by(rows, ("task", "m")).items():
        cap = None if groups is None else groups * (int(m) + 1 if task == "judgement" else 1)
        out.append(evaluate(models, part, max_rows_per_group=cap, seed=seed, tasks=(task,),
                            progress=log))
    return out


def _by(rows: Sequence[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return dict(sorted(out.items()))


def run_eval(cfg: EvalConfig, store: Store | None = None, log: Log = print) -> tuple[
        pd.DataFrame, str]:
    """Evaluate baselines, the base model and policies on the data's held-out users.

    Returns:
        The long table (:func:`rl.evaluation.evaluate` columns) and the evaluation id under
        which it is stored (``policy_evals``).
    """
    from rl.datasets import RLDataError, load_popularity, load_rl_data

    dd, _ = load_rl_data(cfg.data)
    eval_rows = [dict(r) for r in dd["eval"]]
    train_rows = [dict(r) for r in dd["train"]] if "train" in dd else []
    try:
        popularity = load_popularity(cfg.data)
    except RLDataError:  # an older folder without popularity.json: count histories instead
        popularity = None
    t0 = time.perf_counter()
    frames: list[pd.DataFrame] = []
    # The open-ended preference task has no candidates: only sampled LLMs answer it.
    closed = [r for r in eval_rows if r["task"] != "preference"]
    closed_train = [r for r in train_rows if r["task"] != "preference"]
    if cfg.baselines:
        frames += _per_m(_baselines(cfg, closed_train, closed, popularity), closed,
                         cfg.max_groups, cfg.seed, log)
    llms, no_thinking = _llms(cfg)
    if llms:
        scoring = {n: LLMPolicy(b, modes=("score",), seed=cfg.seed, batch_size=cfg.batch_size)
                   for n, b in llms.items()}
        frames += _per_m(scoring, closed, cfg.max_groups, cfg.seed, log)
        if cfg.generate_groups > 0:
            sampling = {n: LLMPolicy(b, modes=("generate",), seed=cfg.seed,
                                     max_new_tokens=cfg.max_new_tokens,
                                     batch_size=cfg.batch_size, thinking=n not in no_thinking)
                        for n, b in llms.items()}
            gen_rows = [r for r in eval_rows if r["task"] == "preference"
                        or (r["protocol"] in cfg.generate_protocols
                            and (r["task"] == "selection" or r["m"] in cfg.generate_ms))]
            frames += _per_m(sampling, gen_rows, cfg.generate_groups, cfg.seed, log)
    table = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    eval_id = new_id()
    if store is not None:
        log_eval(store, eval_id, table.to_dict("records"), policy=None, data=str(cfg.data))
    for name in cfg.policies:
        update_metrics(name, f"eval:{Path(cfg.data).name}", headline(table, name), cfg.registry)
    log(f"evaluated {len(table)} cells in {time.perf_counter() - t0:.0f} s (eval {eval_id})")
    return table, eval_id


def _cell(df: pd.DataFrame, model: str, mode: str, task: str, protocol: str, m: int,
          metric: str) -> float | None:
    hit = df[(df.model == model) & (df["mode"] == mode) & (df.task == task)
             & (df.protocol == protocol) & (df.m == m)]
    if hit.empty or pd.isna(hit.iloc[0][metric]):
        return None
    return float(hit.iloc[0][metric])


HEADLINE = (
    # (column, mode for LLMs, task, protocol, m, metric)
    ("judge acc 1:1 random", "score", "judgement", "random", 1, "accuracy"),
    ("judge acc 1:1 popular", "score", "judgement", "popular", 1, "accuracy"),
    ("judge acc 1:1 hard", "score", "judgement", "hard", 1, "accuracy"),
    ("judge AUC 1:9 random", "score", "judgement", "random", 9, "auc"),
    ("select acc random", "score", "selection", "random", 3, "accuracy"),
    ("select acc hard", "score", "selection", "hard", 3, "accuracy"),
    ("gen judge acc 1:1 random", "generate", "judgement", "random", 1, "accuracy"),
    ("gen select acc hard", "generate", "selection", "hard", 3, "accuracy"),
    ("gen format ok", "generate", "judgement", "random", 1, "format_rate"),
    ("gen words", "generate", "judgement", "random", 1, "answer_words"),
    ("gen preference sim", "generate", "preference", "open", 0, "similarity"),
)


def headline(df: pd.DataFrame, model: str) -> dict[str, float | None]:
    """One model's key figures (the before/after table's row)."""
    is_llm = set(df[df.model == model]["mode"]) != {"scorer"}
    out = {}
    for col, mode, task, proto, m, metric in HEADLINE:
        if mode == "generate" and not is_llm:
            continue
        out[col] = _cell(df, model, mode if is_llm else "scorer", task, proto, m, metric)
    return out


def headline_markdown(df: pd.DataFrame) -> str:
    """The before/after table: one row per model, the key cells as columns."""
    cols = [c for c, *_ in HEADLINE]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for model in dict.fromkeys(df.model):
        h = headline(df, model)
        cells = ["–" if h.get(c) is None else f"{h[c]:.3f}" if c != "gen words"
                 else f"{h[c]:.0f}" for c in cols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(df: pd.DataFrame, title: str, command: str) -> str:
    """The headline table followed by every cell (:func:`rl.evaluation.results_markdown`)."""
    full = results_markdown(df, title, command)
    head, _, rest = full.partition("\n## ")
    return (f"{head}\n### Key figures\n\n{headline_markdown(df)}\n"
            f"Score mode for LLMs unless marked gen (sampled at temperature 0.8, top-p 0.95, "
            f"parsed as in the simulator).\n\n## {rest}")


def table_from_store(store: Store, eval_id: str) -> pd.DataFrame:
    """An evaluation's table rebuilt from ``policy_evals`` (the :func:`run_eval` layout).

    Raises:
        KeyError: no evaluation with this id in the store.
    """
    from rl.evaluation import COLUMNS
    from sandbox.training_log import eval_rows

    rows = eval_rows(store, eval_id)
    if not rows:
        raise KeyError(f"no evaluation {eval_id!r} in {store.url}")
    keys = ["model", "mode", "task", "protocol", "m"]
    long = pd.DataFrame(rows)
    order = list(dict.fromkeys(long["model"]))
    # Only the (model, mode, cell) combinations that exist; NaN metrics stay NaN.
    wide = long.groupby([*keys, "metric"], sort=False)["value"].first().unstack(
        "metric").reset_index()
    for col in COLUMNS:
        if col not in wide.columns:
            wide[col] = float("nan")
    wide["model"] = pd.Categorical(wide["model"], categories=order, ordered=True)
    wide = wide.sort_values(keys).reset_index(drop=True)
    wide["model"] = wide["model"].astype(str)
    return wide[list(COLUMNS)].astype({"m": "int64", "n": "int64"})


def results_section(df: pd.DataFrame, title: str, command: str, data_manifest: dict) -> str:
    """The key figures of an evaluation as a section of docs/results.md."""
    users = (data_manifest.get("users") or {}).get("eval")
    return (f"### {title}\n\n```\n{command}\n```\n\n"
            f"Held-out users in the data: {users}; per cell at most the users given by the "
            f"command's caps. LLMs in score mode unless marked gen.\n\n"
            f"{headline_markdown(df)}")
