"""Evaluation of US-agent policies and non-LLM baselines on held-out users.

Rows follow the evaluation-data schema built by :mod:`rl.datasets` (one dict per prompt:
``task``, ``protocol``, ``m``, ``group_id``, ``user_id``, ``item_ids``, ``history_ids``,
``prompt``, ``assistant_prefix``, ``candidates``, ``label``, ``correct_index``; an HF
``datasets.Dataset`` or a list of dicts). :func:`evaluate` scores every model on every
``(task, protocol, m)`` cell and returns one long table; :func:`results_markdown` renders it.

Metrics
    * Judgement (``Yes`` is the positive class): accuracy; precision (0 when nothing is
      predicted ``Yes``); recall (0 when no label is ``Yes``); F1 (0 when P + R = 0); and the
      pairwise AUC, the mean over every (positive, negative) pair **of the same group** of
      ``1[s_pos > s_neg] + 0.5 * 1[s_pos == s_neg]``. A missing prediction (an unreadable
      answer) counts as wrong for accuracy and as ``No`` for precision and recall.
    * Selection: accuracy, a missing pick counting as wrong, and ``none_rate``.

Modes of an LLM policy (:class:`LLMPolicy`, any :class:`~agents.backends.base.LLMBackend`)
    * ``score``: one forward pass. Judgement reads p(Yes) after the paper's no-thinking answer
      opening (the row's messages with ``SCORE_PREFIX``, ``<answer> (2) Prediction:``) and
      predicts ``Yes`` iff p(Yes) > 0.5; the AUC ranks p(Yes). Selection rebuilds the prompt
      with letter labels (:func:`~agents.selection.selection_letter_prompt`, history titles
      parsed back out of the row's user message) and picks the most probable letter.
    * ``generate``: what a trained policy does. The row's own prompt and assistant prefix
      (``<think>``) are sampled (paper's evaluation setting: temperature 0.8, top-p 0.95,
      seeded) and parsed with :func:`~agents.parsing.parse_judgement` or
      :func:`~agents.parsing.parse_selection`; the table adds the format-valid rate (the
      parser's ``format_ok``) and the mean completion length in words. There is no AUC.

Preference (the paper's open-ended task, :func:`llm_preference`)
    ``generate`` mode only: the mean sentence-embedding similarity of the answer's
    ``Next_video`` text to the real next item's title (``similarity``), and the share above the
    reward's 0.5 (``accuracy``). Non-LLM models and score mode skip its cells.

Non-LLM baselines (:mod:`rl.baselines`) run in mode ``scorer``.

Calibration (tests/test_rl_evaluation.py, the shared data in ``VRAGENT_DATA_DIR``)
    Rows: each user's real next item (the last of the time-ordered ``Dataset.sequences()``)
    against uniform random unseen catalogue items, 1:1 for judgement and 1 of 4 for
    selection. The popularity prior (``Yes`` iff count > median count over the whole
    catalogue, zero counts included; selection = most popular candidate) reproduces the
    issue's figures (MovieLens-100K 0.707 / 0.618, MicroLens-50k 0.627 / 0.442) when the
    counts come from the users' **histories only** (every user's target excluded): measured
    0.707 / 0.593 on MovieLens (mean of seeds 0-9) and 0.634 / 0.449 on MicroLens (seed 0).
    Counting the targets too gives 0.711 / 0.598 on MovieLens but 0.692 / 0.565 on MicroLens,
    far from the issue's figures; so do leave-one-out training counts (last two items
    excluded: 0.579 / 0.365 on MicroLens). MovieLens selection depends on the order of
    same-second ratings (44% of users rated their last items in the same second): ordering
    such ties by item id instead of file row moves it between 0.517 and 0.641.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from agents.backends.base import ChatPrompt, LLMBackend
from agents.parsing import parse_judgement, parse_selection
from agents.prompts import SCORE_PREFIX
from agents.selection import (
    CANDIDATES_HEADER,
    HISTORY_HEADER,
    LETTER_LABELS,
    selection_letter_prompt,
)
from rl.baselines import Scorer, as_rows, is_yes
from rl.eval_metrics import judgement_metrics, mean_words, selection_metrics
from rl.preference_eval import llm_preference

if TYPE_CHECKING:
    from rl.text_similarity import Similarity

#: The paper's evaluation sampling (notes §3.7: vLLM, temperature 0.8, top_p 0.95).
EVAL_TEMPERATURE = 0.8
EVAL_TOP_P = 0.95
MODES = ("score", "generate")
TASKS = ("judgement", "selection", "preference")
KEY_COLUMNS = ("model", "mode", "task", "protocol", "m")
METRIC_COLUMNS = ("n", "accuracy", "precision", "recall", "f1", "auc", "format_rate",
                  "answer_words", "none_rate", "similarity", "seconds")
COLUMNS = (*KEY_COLUMNS, *METRIC_COLUMNS)
_NO_HISTORY = "(no history yet)"

Row = Mapping[str, Any]
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------- prompts


def row_chat_prompt(row: Row, assistant_prefix: str | None = None) -> ChatPrompt:
    """The row's prompt as a :class:`ChatPrompt` (its own ``assistant_prefix`` by default)."""
    messages = tuple((str(m["role"]), str(m["content"])) for m in row["prompt"])
    prefix = row.get("assistant_prefix", "") if assistant_prefix is None else assistant_prefix
    return ChatPrompt(messages=messages, assistant_prefix=prefix or "")


def history_titles_from_prompt(text: str) -> list[str]:
    """The ``- title`` bullets between the history and the candidates headers of a user turn.

    Args:
        text: a selection prompt's user message (:func:`agents.selection.selection_prompt`).

    Returns:
        The history titles as shown (``[]`` for the ``(no history yet)`` placeholder).

    Raises:
        ValueError: the message lacks the history or the candidates header.
    """
    lines = text.split("\n")
    try:
        start = lines.index(HISTORY_HEADER)
        stop = lines.index(CANDIDATES_HEADER, start + 1)
    except ValueError:
        raise ValueError("selection prompt lacks the history/candidates headers "
                         f"({HISTORY_HEADER!r}, {CANDIDATES_HEADER!r})") from None
    titles = [ln[2:] for ln in lines[start + 1:stop] if ln.startswith("- ")]
    return [] if titles == [_NO_HISTORY] else titles


def judgement_score_prompt(row: Row) -> ChatPrompt:
    """The row's judgement messages opened right before the Yes/No word (``SCORE_PREFIX``)."""
    return row_chat_prompt(row, SCORE_PREFIX)


def selection_score_prompt(row: Row) -> ChatPrompt:
    """The row's selection prompt rebuilt with letter labels for one-token scoring.

    The history titles are read back from the row's last user message; the candidates are the
    row's ``candidates`` (already the shown, cleaned text; cleaning again changes nothing).
    """
    user = [m["content"] for m in row["prompt"] if m["role"] == "user"]
    if not user:
        raise ValueError(f"selection row {row.get('group_id')!r} has no user message")
    return selection_letter_prompt(history_titles_from_prompt(str(user[-1])),
                                   list(row["candidates"]))


# ---------------------------------------------------------------------------- LLM policy


@dataclass
class LLMPolicy:
    """An LLM backend and how to evaluate it.

    Attributes:
        backend: any :class:`~agents.backends.base.LLMBackend`.
        modes: which of ``"score"`` and ``"generate"`` to run.
        max_new_tokens: completion budget in generate mode.
        temperature: sampling temperature in generate mode (paper: 0.8).
        top_p: nucleus mass in generate mode (paper: 0.95).
        seed: sampling seed; batch ``k`` (rows ``start:start+batch_size``) uses
            ``seed + start``, so the same rows, batch size and seed replay exactly.
        batch_size: prompts per ``generate`` call.
        thinking: ``False`` for a policy trained without thinking (the paper's ablation): in
            generate mode it gets the answer-only instruction and an ``<answer>`` opening
            (:func:`rl.prompting.prompt_for`), as in training.
    """

    backend: LLMBackend
    modes: tuple[str, ...] = MODES
    max_new_tokens: int = 512
    temperature: float = EVAL_TEMPERATURE
    top_p: float = EVAL_TOP_P
    seed: int = 0
    batch_size: int = 16
    thinking: bool = True

    def prompt(self, row: Row) -> ChatPrompt:
        """The generate-mode prompt of a row for this policy (thinking or answer only)."""
        if self.thinking:
            return row_chat_prompt(row)
        from rl.prompting import prompt_for

        messages, prefix = prompt_for(row, thinking=False)
        return ChatPrompt(messages=tuple((m["role"], m["content"]) for m in messages),
                          assistant_prefix=prefix)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown modes {bad}; choose from {MODES}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def generate(self, rows: Sequence[Row]) -> list[str]:
        """Sample one completion per row from its own prompt, in batches.

        Raises:
            RuntimeError: the backend returned a different number of completions.
        """
        texts: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            batch = [self.prompt(r) for r in rows[start:start + self.batch_size]]
            gens = self.backend.generate(batch, max_new_tokens=self.max_new_tokens,
                                         temperature=self.temperature, top_p=self.top_p,
                                         seed=self.seed + start)
            if len(gens) != len(batch):
                raise RuntimeError(f"backend returned {len(gens)} completions for "
                                   f"{len(batch)} prompts")
            texts.extend(g.text or "" for g in gens)
        return texts

    def score(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> list[Any]:
        """Option probabilities for each prompt.

        Raises:
            RuntimeError: the backend returned a different number of scores.
        """
        scores = self.backend.score(list(prompts), tuple(options))
        if len(scores) != len(prompts):
            raise RuntimeError(f"backend returned {len(scores)} scores for "
                               f"{len(prompts)} prompts")
        return scores


def _labels(rows: Sequence[Row]) -> list[bool]:
    return [is_yes(r["label"]) for r in rows]


def _groups(rows: Sequence[Row]) -> list[str]:
    return [str(r["group_id"]) for r in rows]


def llm_judgement(policy: LLMPolicy, rows: Sequence[Row], mode: str) -> dict[str, Any]:
    """Judgement metrics of an LLM policy in ``score`` or ``generate`` mode."""
    if mode == "score":
        scores = policy.score([judgement_score_prompt(r) for r in rows], ("Yes", "No"))
        p_yes = [float(s.probs.get("Yes", 0.5)) for s in scores]
        preds: list[bool | None] = [p > 0.5 if s.found else None
                                    for p, s in zip(p_yes, scores, strict=True)]
        return judgement_metrics(_labels(rows), preds, p_yes, _groups(rows))
    texts = policy.generate(rows)
    parsed = [parse_judgement(t, policy.prompt(r).assistant_prefix)
              for t, r in zip(texts, rows, strict=True)]
    preds = [None if p.prediction is None else p.prediction == "Yes" for p in parsed]
    out = judgement_metrics(_labels(rows), preds, None, _groups(rows))
    out["format_rate"] = float(np.mean([p.format_ok for p in parsed])) if parsed else None
    out["answer_words"] = mean_words(texts)
    return out


def llm_selection(policy: LLMPolicy, rows: Sequence[Row], mode: str) -> dict[str, Any]:
    """Selection metrics of an LLM policy in ``score`` or ``generate`` mode."""
    correct = [int(r["correct_index"]) for r in rows]
    if mode == "score":
        picks: list[int | None] = [None] * len(rows)
        by_size: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            by_size.setdefault(len(r["candidates"]), []).append(k)
        # One score call per candidate count: a call scores every prompt on the same options.
        for size, idx in by_size.items():
            letters = LETTER_LABELS[:size]
            scores = policy.score([selection_score_prompt(rows[k]) for k in idx], letters)
            for k, s in zip(idx, scores, strict=True):
                if s.found:
                    probs = [float(s.probs.get(lab, 0.0)) for lab in letters]
                    picks[k] = int(np.argmax(probs))  # ties: the first letter
        return selection_metrics(correct, picks)
    texts = policy.generate(rows)
    parsed = [parse_selection(t, list(r["candidates"]), policy.prompt(r).assistant_prefix)
              for t, r in zip(texts, rows, strict=True)]
    out = selection_metrics(correct, [p.index for p in parsed])
    out["format_rate"] = float(np.mean([p.format_ok for p in parsed])) if parsed else None
    out["answer_words"] = mean_words(texts)
    return out


# ---------------------------------------------------------------------------- scorers


def scorer_judgement(scorer: Scorer, rows: Sequence[Row]) -> dict[str, Any]:
    """Judgement metrics of a non-LLM scorer (its scores also give the AUC)."""
    scores = np.asarray(scorer.judgement_scores(rows), dtype=np.float64)
    threshold = getattr(scorer, "threshold", None)
    preds = scores > threshold if threshold is not None else np.asarray(scorer.judge(rows))
    out = judgement_metrics(_labels(rows), [bool(p) for p in preds], scores, _groups(rows))
    out["none_rate"] = 0.0
    return out


def scorer_selection(scorer: Scorer, rows: Sequence[Row]) -> dict[str, Any]:
    """Selection metrics of a non-LLM scorer."""
    return selection_metrics([int(r["correct_index"]) for r in rows], scorer.select(rows))


# ---------------------------------------------------------------------------- the table


def subsample_groups(
    rows: Sequence[Row], max_rows: int | None, seed: int | Sequence[int] = 0
) -> list[Row]:
    """At most ``max_rows`` rows, keeping whole groups (``group_id``) chosen at random.

    Groups are drawn in a seeded random order and kept while they fit; at least one group is
    always kept. The kept rows stay in their original order.

    Args:
        rows: the rows of one table cell.
        max_rows: the cap; ``None`` keeps everything.
        seed: seeds the group order (non-negative; a sequence of ints is a compound seed).

    Returns:
        The kept rows.
    """
    rows = list(rows)
    if max_rows is None or len(rows) <= max_rows:
        return rows
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[str(r["group_id"])] = sizes.get(str(r["group_id"]), 0) + 1
    ids = list(sizes)
    order = np.random.default_rng(seed).permutation(len(ids))
    kept: set[str] = set()
    total = 0
    for k in order:
        gid = ids[k]
        if kept and total + sizes[gid] > max_rows:
            continue
        kept.add(gid)
        total += sizes[gid]
    return [r for r in rows if str(r["group_id"]) in kept]


def _cells(rows: Sequence[Row]) -> dict[tuple[str, str, int], list[Row]]:
    cells: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        task = str(r["task"])
        if task not in TASKS:
            raise ValueError(f"row {r.get('group_id')!r}: unknown task {task!r}")
        cells.setdefault((task, str(r["protocol"]), int(r["m"])), []).append(r)
    return dict(sorted(cells.items()))


def _as_model(model: Any) -> LLMPolicy | Scorer:
    if isinstance(model, LLMPolicy):
        return model
    if isinstance(model, LLMBackend):
        return LLMPolicy(model)
    if isinstance(model, Scorer):
        return model
    raise TypeError(f"{type(model).__name__} is neither an LLMPolicy, an LLMBackend nor a "
                    "Scorer")


def evaluate(
    models: Mapping[str, Any],
    rows: Any,
    *,
    max_rows_per_group: int | None = None,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    progress: Progress | None = None,
    similarity: Similarity | None = None,
) -> pd.DataFrame:
    """Evaluate every model on every ``(task, protocol, m)`` cell of the rows.

    Args:
        models: name → :class:`LLMPolicy`, bare :class:`LLMBackend` (evaluated with the
            :class:`LLMPolicy` defaults) or :class:`~rl.baselines.Scorer`.
        rows: the evaluation rows (HF dataset or list of dicts).
        max_rows_per_group: cap on the rows of each ``(task, protocol, m)`` cell, applied by
            :func:`subsample_groups` (whole ``group_id`` groups, seeded) once for all models,
            so every model sees the same rows. ``None`` keeps all.
        seed: seeds the subsampling (non-negative; each cell draws from ``[seed, crc32 of
            its key]``).
        tasks: the tasks to evaluate.
        progress: called with a one-line message after each (model, mode, cell).
        similarity: the preference task's text similarity (default: all-MiniLM-L6-v2).

    Returns:
        A long table, one row per (model, mode, task, protocol, m), with the columns
        :data:`COLUMNS`; metrics that do not apply are NaN.

    Raises:
        ValueError: a row has an unknown task.
        TypeError: a model is of an unknown kind.
    """
    table = []
    cells = _cells(as_rows(rows))
    wrapped = {name: _as_model(m) for name, m in models.items()}
    for (task, protocol, m), cell_rows in cells.items():
        if task not in tasks:
            continue
        key = zlib.crc32(f"{task}/{protocol}/{m}".encode())
        kept = subsample_groups(cell_rows, max_rows_per_group, seed=[int(seed), key])
        for name, model in wrapped.items():
            modes = model.modes if isinstance(model, LLMPolicy) else ("scorer",)
            if task == "preference":  # open answers: sampled LLMs only
                modes = tuple(md for md in modes if md == "generate")
            for mode in modes:
                t0 = time.perf_counter()
                if task == "preference":
                    metrics = llm_preference(model, kept, mode, similarity)
                elif isinstance(model, LLMPolicy):
                    fn = llm_judgement if task == "judgement" else llm_selection
                    metrics = fn(model, kept, mode)
                else:
                    fn2 = scorer_judgement if task == "judgement" else scorer_selection
                    metrics = fn2(model, kept)
                seconds = time.perf_counter() - t0
                record = {c: math.nan for c in COLUMNS}
                record.update(model=name, mode=mode, task=task, protocol=protocol, m=m)
                record.update({k: (math.nan if v is None else v) for k, v in metrics.items()
                               if k in METRIC_COLUMNS})
                record["seconds"] = seconds
                table.append(record)
                if progress is not None:
                    progress(f"{name} [{mode}] {task}/{protocol}/m={m}: n={record['n']} "
                             f"acc={record['accuracy']:.3f} ({seconds:.1f}s)")
    df = pd.DataFrame(table, columns=list(COLUMNS))
    return df.astype({"m": "int64", "n": "int64"}) if not df.empty else df


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def results_markdown(df: pd.DataFrame, title: str, command: str) -> str:
    """The :func:`evaluate` table as markdown, one table per ``(task, protocol, m)``.

    Args:
        df: :func:`evaluate`'s output.
        title: the document's heading.
        command: the shell command that regenerates the table (shown in a code block).

    Returns:
        Markdown text ending with a newline.
    """
    out = [f"# {title}", "", "Regenerate with:", "", "```", command, "```", ""]
    if df.empty:
        return "\n".join([*out, "(no rows)", ""])
    judgement_cols = [("accuracy", "acc"), ("precision", "P"), ("recall", "R"), ("f1", "F1"),
                      ("auc", "AUC")]
    common = [("format_rate", "format ok"), ("answer_words", "words"),
              ("none_rate", "no answer"), ("seconds", "s")]
    for (task, protocol, m), part in df.groupby(["task", "protocol", "m"], sort=True):
        shape = (f"1:{m}" if task == "judgement" else "open" if task == "preference"
                 else f"1 of {int(m) + 1}")
        cols = (judgement_cols if task == "judgement"
                else [("similarity", "sim"), ("accuracy", "sim > 0.5")] if task == "preference"
                else [("accuracy", "acc")]) + common
        out += [f"## {task} · {protocol} · {shape}", ""]
        out.append("| model | mode | n | " + " | ".join(h for _, h in cols) + " |")
        out.append("|---|---|--:|" + "--:|" * len(cols))
        for rec in part.to_dict("records"):
            cells = [_fmt(rec[c], 1 if c in ("answer_words", "seconds") else 3)
                     for c, _ in cols]
            out.append(f"| {rec['model']} | {rec['mode']} | {int(rec['n'])} | "
                       + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
