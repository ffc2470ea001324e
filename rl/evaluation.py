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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from vragent.agents.backends.base import ChatPrompt, LLMBackend
from vragent.agents.parsing import parse_judgement, parse_selection
from vragent.agents.selection import LETTER_LABELS
from vragent.rl.baselines import Scorer, as_rows, is_yes
from vragent.rl.eval_stats import INTERVAL_COLUMNS, RowOutcome, add_intervals
from vragent.rl.metrics import (  # noqa: F401 (pairwise_auc: re-exported for callers of this module)
    judgement_metrics,
    mean_words,
    pairwise_auc,
    selection_metrics,
)
from vragent.rl.preference_eval import llm_preference
from vragent.rl.prompting import (
    judgement_score_prompt,
    row_chat_prompt,
    selection_score_prompt,
)

if TYPE_CHECKING:
    from vragent.rl.text_similarity import Similarity

#: The paper's evaluation sampling (notes §3.7: vLLM, temperature 0.8, top_p 0.95).
EVAL_TEMPERATURE = 0.8
EVAL_TOP_P = 0.95
MODES = ("score", "generate")
TASKS = ("judgement", "selection", "preference")
KEY_COLUMNS = ("model", "mode", "task", "protocol", "m")
METRIC_COLUMNS = ("n", "accuracy", "precision", "recall", "f1", "auc", "format_rate",
                  "answer_words", "none_rate", "similarity", "seconds", *INTERVAL_COLUMNS)
#: ``vs``: the best baseline of the cell, which the ``diff_*`` columns compare against.
COLUMNS = (*KEY_COLUMNS, *METRIC_COLUMNS, "vs")

Row = Mapping[str, Any]
Progress = Callable[[str], None]


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
        users_per_call: users whose prompts share one ``score`` call in :meth:`prescore`.
        keep_scores: keep every score for reuse (``False``: the backend scores each call's
            prompts afresh, the cell-by-cell layout before :meth:`prescore`).

    Score mode keeps every score it computed (by prompt and options), so a prompt that recurs
    in several cells (the m=1 negative is the first of the m=9 ones) is scored once.
    """

    backend: LLMBackend
    modes: tuple[str, ...] = MODES
    max_new_tokens: int = 512
    temperature: float = EVAL_TEMPERATURE
    top_p: float = EVAL_TOP_P
    seed: int = 0
    batch_size: int = 16
    thinking: bool = True
    users_per_call: int = 8
    keep_scores: bool = True
    _memo: dict[tuple[ChatPrompt, tuple[str, ...]], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def prompt(self, row: Row) -> ChatPrompt:
        """The generate-mode prompt of a row for this policy (thinking or answer only)."""
        if self.thinking:
            return row_chat_prompt(row)
        from vragent.rl.prompting import prompt_for

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
        """Option probabilities for each prompt (kept ones reused, the rest in one call).

        Raises:
            RuntimeError: the backend returned a different number of scores.
        """
        opts = tuple(options)
        if not self.keep_scores:
            self._memo.clear()
        todo = list(dict.fromkeys(p for p in prompts if (p, opts) not in self._memo))
        if todo:
            scores = self.backend.score(todo, opts)
            if len(scores) != len(todo):
                raise RuntimeError(f"backend returned {len(scores)} scores for "
                                   f"{len(todo)} prompts")
            self._memo.update({(p, opts): s for p, s in zip(todo, scores, strict=True)})
        return [self._memo[(p, opts)] for p in prompts]

    def prescore(self, rows: Sequence[Row], progress: Progress | None = None) -> int:
        """Score the score-mode prompts of all these rows, grouped by user, and keep them.

        One user's judgement prompts share their whole prefix (instructions, persona, history)
        and differ only in the candidate at the end; the user's selection prompts share the
        history. Scored user by user, each prefix runs once and the candidates run behind it
        (the backend's prefix reuse, e.g. :class:`~agents.backends.hf.HFBackend`), instead of
        once per cell as the cell-by-cell order would. Identical prompts run once. The scores
        equal the one-by-one path's (the backend's prefix reuse is exact).

        Args:
            rows: evaluation rows of every cell to be scored.
            progress: called with a one-line message after each call.

        Returns:
            The number of distinct prompts scored.
        """
        by_user: dict[int, dict[tuple[str, ...], list[ChatPrompt]]] = {}
        for r in rows:
            if r["task"] == "preference":  # an open answer: nothing to score
                continue
            opts = (("Yes", "No") if r["task"] == "judgement"
                    else tuple(LETTER_LABELS[:len(r["candidates"])]))
            prompt = (judgement_score_prompt(r) if r["task"] == "judgement"
                      else selection_score_prompt(r))
            by_user.setdefault(int(r["user_id"]), {}).setdefault(opts, []).append(prompt)
        users = sorted(by_user)
        done, t0 = 0, time.perf_counter()
        for start in range(0, len(users), self.users_per_call):
            calls: dict[tuple[str, ...], list[ChatPrompt]] = {}
            for u in users[start:start + self.users_per_call]:
                for opts, prompts in by_user[u].items():
                    calls.setdefault(opts, []).extend(prompts)
            for opts, prompts in calls.items():
                before = len(self._memo)
                self.score(prompts, opts)
                done += len(self._memo) - before
            if progress is not None:
                seconds = time.perf_counter() - t0
                n_users = min(start + self.users_per_call, len(users))
                progress(f"scored {done} prompts of {n_users}/{len(users)} users in "
                         f"{seconds:.0f} s ({done / max(seconds, 1e-9):.2f}/s)")
        return done


def _labels(rows: Sequence[Row]) -> list[bool]:
    return [is_yes(r["label"]) for r in rows]


def _groups(rows: Sequence[Row]) -> list[str]:
    return [str(r["group_id"]) for r in rows]


def _judged(rows: Sequence[Row], preds: Sequence[bool | None],
            scores: Sequence[float] | None) -> dict[str, Any]:
    """Judgement metrics plus the rows' :class:`RowOutcome` (key ``outcome``)."""
    labels = _labels(rows)
    out: dict[str, Any] = judgement_metrics(labels, preds, scores, _groups(rows))
    correct = [p is not None and bool(p) == y for p, y in zip(preds, labels, strict=True)]
    out["outcome"] = RowOutcome(_groups(rows), correct, labels,
                                None if scores is None else [float(x) for x in scores])
    return out


def _selected(rows: Sequence[Row], picks: Sequence[int | None]) -> dict[str, Any]:
    """Selection metrics plus the rows' :class:`RowOutcome` (key ``outcome``)."""
    truth = [int(r["correct_index"]) for r in rows]
    out: dict[str, Any] = selection_metrics(truth, picks)
    out["outcome"] = RowOutcome(_groups(rows), [p is not None and int(p) == c
                                                for p, c in zip(picks, truth, strict=True)])
    return out


def llm_judgement(policy: LLMPolicy, rows: Sequence[Row], mode: str) -> dict[str, Any]:
    """Judgement metrics of an LLM policy in ``score`` or ``generate`` mode.

    The dict also holds the rows' :class:`~rl.eval_stats.RowOutcome` under ``outcome``.
    """
    if mode == "score":
        scores = policy.score([judgement_score_prompt(r) for r in rows], ("Yes", "No"))
        p_yes = [float(s.probs.get("Yes", 0.5)) for s in scores]
        preds: list[bool | None] = [p > 0.5 if s.found else None
                                    for p, s in zip(p_yes, scores, strict=True)]
        return _judged(rows, preds, p_yes)
    texts = policy.generate(rows)
    parsed = [parse_judgement(t, policy.prompt(r).assistant_prefix)
              for t, r in zip(texts, rows, strict=True)]
    preds = [None if p.prediction is None else p.prediction == "Yes" for p in parsed]
    out = _judged(rows, preds, None)
    out["format_rate"] = float(np.mean([p.format_ok for p in parsed])) if parsed else None
    out["answer_words"] = mean_words(texts)
    return out


def llm_selection(policy: LLMPolicy, rows: Sequence[Row], mode: str) -> dict[str, Any]:
    """Selection metrics (and ``outcome``) of an LLM policy in ``score`` or ``generate`` mode."""
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
        return _selected(rows, picks)
    texts = policy.generate(rows)
    parsed = [parse_selection(t, list(r["candidates"]), policy.prompt(r).assistant_prefix)
              for t, r in zip(texts, rows, strict=True)]
    out = _selected(rows, [p.index for p in parsed])
    out["format_rate"] = float(np.mean([p.format_ok for p in parsed])) if parsed else None
    out["answer_words"] = mean_words(texts)
    return out


# ---------------------------------------------------------------------------- scorers


def scorer_judgement(scorer: Scorer, rows: Sequence[Row]) -> dict[str, Any]:
    """Judgement metrics (and ``outcome``) of a non-LLM scorer (its scores give the AUC)."""
    scores = np.asarray(scorer.judgement_scores(rows), dtype=np.float64)
    threshold = getattr(scorer, "threshold", None)
    preds = scores > threshold if threshold is not None else np.asarray(scorer.judge(rows))
    out = _judged(rows, [bool(p) for p in preds], scores)
    out["none_rate"] = 0.0
    return out


def scorer_selection(scorer: Scorer, rows: Sequence[Row]) -> dict[str, Any]:
    """Selection metrics (and ``outcome``) of a non-LLM scorer."""
    return _selected(rows, scorer.select(rows))


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


Cap = int | None | Callable[[str, int], int | None]


def select_rows(rows: Any, max_rows_per_group: Cap = None, seed: int = 0,
                tasks: Sequence[str] = TASKS) -> dict[tuple[str, str, int], list[Row]]:
    """The rows every model is evaluated on, per ``(task, protocol, m)`` cell.

    Args:
        rows: the evaluation rows (HF dataset or list of dicts).
        max_rows_per_group: cap on each cell's rows (whole groups, :func:`subsample_groups`);
            ``None`` keeps all; a function of ``(task, m)`` gives each cell its own cap.
        seed: each cell draws from ``[seed, crc32 of its key]``.
        tasks: the tasks to keep.

    Raises:
        ValueError: a row has an unknown task.
    """
    out = {}
    for (task, protocol, m), cell_rows in _cells(as_rows(rows)).items():
        if task not in tasks:
            continue
        cap = max_rows_per_group(task, m) if callable(max_rows_per_group) else max_rows_per_group
        key = zlib.crc32(f"{task}/{protocol}/{m}".encode())
        out[(task, protocol, m)] = subsample_groups(cell_rows, cap, seed=[int(seed), key])
    return out


def evaluate(
    models: Mapping[str, Any],
    rows: Any,
    *,
    max_rows_per_group: Cap = None,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    progress: Progress | None = None,
    on_cell: Callable[[int, int], None] | None = None,
    outcomes: dict[tuple[str, str, str, str, int], RowOutcome] | None = None,
    group_prefixes: bool = True,
    n_boot: int = 1000,
    similarity: Similarity | None = None,
) -> pd.DataFrame:
    """Evaluate every model on every ``(task, protocol, m)`` cell of the rows.

    Args:
        models: name → :class:`LLMPolicy`, bare :class:`LLMBackend` (evaluated with the
            :class:`LLMPolicy` defaults) or :class:`~rl.baselines.Scorer`.
        rows: the evaluation rows (HF dataset or list of dicts).
        max_rows_per_group: cap on the rows of each ``(task, protocol, m)`` cell, applied by
            :func:`subsample_groups` (whole ``group_id`` groups, seeded) once for all models,
            so every model sees the same rows. ``None`` keeps all; a function of
            ``(task, m)`` gives each cell its own cap (:func:`select_rows`).
        seed: seeds the subsampling (non-negative; each cell draws from ``[seed, crc32 of
            its key]``) and the bootstrap.
        tasks: the tasks to evaluate.
        progress: called with a one-line message after each (model, mode, cell).
        on_cell: called with ``(done, total)`` (model, mode, cell) units after each.
        outcomes: filled with each table row's :class:`~rl.eval_stats.RowOutcome`, for
            intervals over several calls (:func:`rl.eval_stats.add_intervals`).
        group_prefixes: score-mode LLMs score the kept rows of every cell first, user by
            user (:meth:`LLMPolicy.prescore`); ``False`` scores cell by cell.
        n_boot: bootstrap resamples of the intervals (:mod:`rl.eval_stats`).
        similarity: the preference task's text similarity (default: all-MiniLM-L6-v2).

    Returns:
        A long table, one row per (model, mode, task, protocol, m), with the columns
        :data:`COLUMNS`; metrics that do not apply are NaN. For score-mode LLMs prescored
        by ``group_prefixes``, ``seconds`` leaves out the shared first pass.

    Raises:
        ValueError: a row has an unknown task.
        TypeError: a model is of an unknown kind.
    """
    table = []
    found = outcomes if outcomes is not None else {}
    cells = select_rows(rows, max_rows_per_group, seed, tasks)
    wrapped = {name: _as_model(m) for name, m in models.items()}
    say = progress or (lambda msg: None)
    if group_prefixes:
        every = [r for kept in cells.values() for r in kept]
        for name, model in wrapped.items():
            if isinstance(model, LLMPolicy) and "score" in model.modes:
                t0 = time.perf_counter()
                n = model.prescore(every, lambda msg, name=name: say(f"{name} [score] {msg}"))
                say(f"{name} [score]: {n} distinct prompts for {len(every)} rows in "
                    f"{time.perf_counter() - t0:.0f} s")
    # One unit per (cell, model, mode); open preference answers: sampled LLMs only.
    units = [(cell, kept, name, model, mode) for cell, kept in cells.items()
             for name, model in wrapped.items()
             for mode in (model.modes if isinstance(model, LLMPolicy) else ("scorer",))
             if cell[0] != "preference" or mode == "generate"]
    for done, ((task, protocol, m), kept, name, model, mode) in enumerate(units, 1):
        t0 = time.perf_counter()
        if task == "preference":
            metrics = llm_preference(model, kept, mode, similarity)
        elif isinstance(model, LLMPolicy):
            metrics = (llm_judgement if task == "judgement" else llm_selection)(model, kept, mode)
        else:
            metrics = (scorer_judgement if task == "judgement" else scorer_selection)(model, kept)
        seconds = time.perf_counter() - t0
        outcome = metrics.pop("outcome", None)  # preference: no interval yet
        if outcome is not None:
            found[(name, mode, task, protocol, m)] = outcome
        record: dict[str, Any] = {c: math.nan for c in COLUMNS}
        record.update(model=name, mode=mode, task=task, protocol=protocol, m=m, seconds=seconds)
        record.update({k: (math.nan if v is None else v) for k, v in metrics.items()
                       if k in METRIC_COLUMNS and k != "seconds"})
        table.append(record)
        say(f"{name} [{mode}] {task}/{protocol}/m={m}: n={record['n']} "
            f"acc={record['accuracy']:.3f} ({seconds:.1f}s)")
        if on_cell is not None:
            on_cell(done, len(units))
    if not table:
        return pd.DataFrame(table, columns=list(COLUMNS))
    df = add_intervals(pd.DataFrame(table, columns=list(COLUMNS)), found, seed=seed,
                       n_boot=n_boot)[list(COLUMNS)]
    return df.astype({"m": "int64", "n": "int64"})
