r"""The paper's rule rewards for the US agent's GRPO training, and TRL reward functions.

Scheme (notes §3.4, the paper's ``video_like.py`` and ``video_ranking.py``): the total reward of
one completion is ``R_format + R_content``, in ``[-2, 3]``.

* **Format quality** ``q`` starts at 1.0 and ``valid`` at ``True``. Each of ``<think>``,
  ``</think>``, ``<answer>``, ``</answer>`` whose count is not exactly 1 halves ``q`` and clears
  ``valid``; tags out of order halve ``q`` once more and clear ``valid``. The answer body then
  pays ×0.7 for a missing field (``Prediction`` or ``Next_video``) and ×0.9 for missing
  ``(1)``/``(2)`` numbering; these two only lower ``q``, as in the paper. ``R_format = q`` when
  valid, else ``0.5·q`` (range 0 to 1).
* **Content.** Judgement: the right Yes/No gets +2, a wrong or unreadable one −2. Selection: the
  right candidate +2, another candidate −1.5 (−0.75×2), no candidate −2.
* **No** ``<answer>…</answer>`` **block**: the paper pays a flat 0.0
  (:data:`MISSING_ANSWER_REWARD`).

What is scored is ``assistant_prefix + completion``: the text the model produced after the prompt,
with the turn opener we wrote (``<think>``, or ``<answer>`` in the no-thinking ablation). The
prompt is never parsed; its item titles are hostile user text and may hold fake tags. Nothing
here raises on any completion text (``None``, empty, megabytes, control or bidi characters, fake
tags, prompt-injection text); invalid ground truth (a label that is not Yes/No, a
``correct_index`` outside the candidates) raises ``ValueError``, since that is a data bug.

Deviations from the paper's code, each on purpose:

1. Tags are counted and the answer block is found case-insensitively (``<ANSWER>`` is a tag);
   the paper's ``str.count`` is case-sensitive.
2. The paper splits the decoded prompt+response at ``<|im_start|>assistant``, which keeps the
   ``<think>`` that ends its prompt; scoring ``assistant_prefix + completion`` is the same text
   without ever reading the prompt.
3. No-thinking ablation (prefix ``<answer>``, ``thinking=False``): only the two answer tags are
   required. The paper's reward code always requires the think tags, which would dock every
   no-thinking answer ×0.25.
4. The answer-body checks read the **last** ``<answer>…</answer>`` block, the one that is scored;
   the paper checks the span from the first ``<answer>`` to the first ``</answer>``.
5. Judgement field check: ×0.7 when the body has no ``Prediction`` field (the word, then a colon
   or directly Yes/No, any case, e.g. ``Prediction: Yes``, ``prediction yes``). The paper's check,
   ``(Yes?|yes?|like?|No?|no?)`` on the lower-cased body, matches any body containing an "n",
   so it almost never applied.
6. Numbering ×0.9 applies to both tasks (the issue asks for it; the paper's code only checks it
   for selection). As in the paper's regex, it applies only when **neither** ``(1)`` nor ``(2)``
   (ASCII or full-width brackets) appears.
7. Selection field check: ``Next_video`` then a colon, any case, spaces allowed before the colon
   (the paper: literal ``next_video:`` in the lower-cased body, plus Chinese variants our English
   prompts never ask for).
8. Judgement label: our parser's ``Prediction: Yes|No`` first; without it the paper's fallback
   (``user_like:?\s*(\d+)``, then ``enjoy|yes`` → Yes, then ``dislike|no`` → No) with word
   boundaries: the paper's substring test reads "eyes" as yes and "know" or "not" as no.
   ``enjoy``/``dislike`` keep their suffixes ("enjoys", "disliked"). Negation is not understood,
   as in the paper ("won't enjoy" reads as Yes).
9. Selection matching is :func:`agents.selection.match_candidate`: the title is not cut at its
   first "." and an empty prediction matches nothing (the paper maps it to candidate 0).
10. Tag order compares first occurrences as the paper does, with a missing tag at position −1.
    This paper behaviour is kept, not changed: a ``<think>`` whose ``</think>`` is missing is
    also "out of order", so it costs ×0.5 twice (count and order).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from agents.parsing import TAGS
from agents.selection import ANSWER_PREFIX, THINK_PREFIX, match_candidate

TASKS = ("judgement", "selection")

FORMAT_WEIGHT = 1.0  # the paper's compute_score(format_reward=1)
CONTENT_WEIGHT = 2.0  # the paper's compute_score(content_reward=2.0)
TAG_COUNT_FACTOR = 0.5  # per tag whose count is not 1
TAG_ORDER_FACTOR = 0.5  # once, for tags out of order
MISSING_FIELD_FACTOR = 0.7  # no Prediction / Next_video field in the answer
MISSING_NUMBERING_FACTOR = 0.9  # neither (1) nor (2) in the answer
INVALID_FORMAT_FACTOR = 0.5  # R_format = 0.5·q when a tag check failed
WRONG_CANDIDATE_FACTOR = 0.75  # another candidate: −0.75 × content weight = −1.5
# The paper's total when the completion has no <answer>…</answer> block. Paying 0.0 there, above
# any wrong answer (≤ −1.0), rewards leaving the answer out once the policy is unsure; a trainer
# can pass ``missing_answer`` to the scorers to penalise it instead.
MISSING_ANSWER_REWARD = 0.0
REWARD_MIN = -2.0
REWARD_MAX = 3.0

# One linear pass finds every tag; the regexes below avoid adjacent ambiguous quantifiers so a
# megabyte of spaces or tags cannot make them backtrack quadratically.
_TAG = re.compile(r"</?(?:think|answer)>", re.I)
_PREDICTION_VALUE = re.compile(r"\bprediction[\s*:：]*(yes|no)\b", re.I)
_PREDICTION_FIELD = re.compile(r"\bprediction[\s*]*(?:[:：]|(?:yes|no)\b)", re.I)
_NEXT_VIDEO_FIELD = re.compile(r"next_video\s*[:：]", re.I)
_NUMBERING = re.compile(r"[(（]\s*[12]\s*[)）]")
_USER_LIKE = re.compile(r"user_like:?\s*(\d+)", re.I)  # the paper's pattern
_POSITIVE = re.compile(r"\b(?:enjoy\w*|yes)\b", re.I)
_NEGATIVE = re.compile(r"\b(?:dislike\w*|no)\b", re.I)


@dataclass
class RewardBreakdown:
    """The reward of one completion and how it was reached.

    Attributes:
        total: ``format_reward + content_reward``.
        format_reward: ``R_format`` (0.0 when the paper's missing-answer rule applies).
        content_reward: ``R_content`` (the missing-answer value when there is no answer block).
        q: format quality from :func:`format_quality`, always computed.
        valid: whether every tag check passed (the answer-body checks do not affect it).
        correct: whether the answer is the right label or candidate.
        parsed: ``"Yes"``/``"No"`` (judgement) or the matched index as a string (selection),
            ``None`` when nothing was read.
        matched_index: the matched candidate (selection), else ``None``.
        problems: one line per penalty or parse failure.
    """

    total: float
    format_reward: float
    content_reward: float
    q: float
    valid: bool
    correct: bool
    parsed: str | None
    matched_index: int | None
    problems: list[str] = field(default_factory=list)


@dataclass
class _Scan:
    counts: dict[str, int]
    firsts: dict[str, int]  # first position of each tag, −1 when absent (the paper's find())
    answer: str | None  # body of the last closed <answer>…</answer> block, stripped


def _as_text(value: object) -> str:
    # Scorers take strings, but a None or a non-string must not raise.
    return value if isinstance(value, str) else ""


def _scan(text: str) -> _Scan:
    counts = dict.fromkeys(TAGS, 0)
    firsts = dict.fromkeys(TAGS, -1)
    answer: str | None = None
    open_at: int | None = None
    for m in _TAG.finditer(text):
        tag = m.group(0).lower()
        counts[tag] += 1
        if firsts[tag] < 0:
            firsts[tag] = m.start()
        # Same blocks as the paper's re.findall(r"<answer>(.*?)</answer>"): the first <answer>,
        # up to the first </answer> after it; then the search resumes after that </answer>.
        if tag == ANSWER_PREFIX and open_at is None:
            open_at = m.end()
        elif tag == "</answer>" and open_at is not None:
            answer = text[open_at:m.start()].strip()
            open_at = None
    return _Scan(counts=counts, firsts=firsts, answer=answer)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _thinking(assistant_prefix: str) -> bool:
    # Only a turn opened with <answer> is the no-thinking ablation; "" or "<think>" need thinking.
    return not assistant_prefix.lstrip().lower().startswith(ANSWER_PREFIX)


def _quality(scan: _Scan, task: str, thinking: bool) -> tuple[float, bool, list[str]]:
    q, valid, problems = 1.0, True, []
    tags = TAGS if thinking else TAGS[2:]
    for tag in tags:
        if scan.counts[tag] != 1:
            q *= TAG_COUNT_FACTOR
            valid = False
            problems.append(f"{tag} occurs {scan.counts[tag]} times (x{TAG_COUNT_FACTOR})")
    # The paper compares neighbouring first positions with −1 for a missing tag (deviation 10).
    if any(scan.firsts[a] > scan.firsts[b] for a, b in pairwise(tags)):
        q *= TAG_ORDER_FACTOR
        valid = False
        problems.append(f"tags out of order (x{TAG_ORDER_FACTOR})")
    if scan.answer is not None:
        if task == "judgement":
            has_field, name = _PREDICTION_FIELD.search(scan.answer), "Prediction:"
        else:
            has_field, name = _NEXT_VIDEO_FIELD.search(scan.answer), "Next_video:"
        if not has_field:
            q *= MISSING_FIELD_FACTOR
            problems.append(f"answer lacks '{name}' (x{MISSING_FIELD_FACTOR})")
        if not _NUMBERING.search(scan.answer):
            q *= MISSING_NUMBERING_FACTOR
            problems.append(f"answer lacks (1)/(2) numbering (x{MISSING_NUMBERING_FACTOR})")
    return q, valid, problems


def format_quality(text: str, task: str, thinking: bool = True) -> tuple[float, bool, list[str]]:
    """The paper's format quality ``q`` of a completion.

    ``q`` starts at 1.0: ×0.5 per required tag whose count (any case) is not 1, ×0.5 once when
    the tags are out of order (first occurrences, a missing tag at −1 as in the paper), then, on
    the last ``<answer>…</answer>`` block, ×0.7 without the task's field (``Prediction`` or
    ``Next_video``) and ×0.9 without ``(1)``/``(2)`` numbering. Only the tag checks clear
    ``valid``.

    Args:
        text: ``assistant_prefix + completion``; never the prompt.
        task: ``"judgement"`` or ``"selection"``.
        thinking: require ``<think>``/``</think>`` too. ``False`` is the no-thinking ablation
            (turn opened with ``<answer>``), where only the two answer tags are required.

    Returns:
        ``(q, valid, problems)``, ``q`` in ``(0, 1]``.

    Raises:
        ValueError: unknown task.
    """
    _check_task(task)
    return _quality(_scan(_as_text(text)), task, thinking)


def format_reward(q: float, valid: bool) -> float:
    """``R_format``: ``q`` when every tag check passed, else ``0.5·q`` (range 0 to 1).

    Args:
        q: format quality from :func:`format_quality`.
        valid: whether the tag checks passed.

    Returns:
        The format reward.
    """
    return FORMAT_WEIGHT * q * (1.0 if valid else INVALID_FORMAT_FACTOR)


def _normalise_label(label: object) -> str:
    if not isinstance(label, str):
        try:  # the paper's labels are 1/0 (also numpy integers from a dataset)
            label = str(operator.index(label))
        except TypeError:
            label = ""
    text = label.strip().lower()
    if text in ("yes", "1"):
        return "Yes"
    if text in ("no", "0"):
        return "No"
    raise ValueError(f"judgement label must be 'Yes' or 'No' (or 1/0), got {label!r}")


def parse_judgement_label(answer: str) -> str | None:
    """The Yes/No read from a judgement answer body, as the reward reads it.

    Our parser's ``Prediction: Yes|No`` first (colon optional, markdown ``**`` allowed, the same
    reading as :func:`agents.parsing.parse_judgement`); without it the paper's fallback:
    ``user_like: 1|0``, else a word ``enjoy…``/``yes`` → Yes, else ``dislike…``/``no`` → No.
    Unlike the paper these are whole words, so "eyes" is not yes and "know" is not no.

    Args:
        answer: the body of the answer block.

    Returns:
        ``"Yes"``, ``"No"`` or ``None``.
    """
    answer = _as_text(answer)
    m = _PREDICTION_VALUE.search(answer)
    if m:
        return m.group(1).capitalize()
    m = _USER_LIKE.search(answer)
    if m:
        # Compare digit strings: int() of a huge digit run raises (int max str digits). As in the
        # paper, a user_like other than 0/1 is read and is wrong; no further fallback is tried.
        digits = m.group(1).lstrip("0") or "0"
        return {"1": "Yes", "0": "No"}.get(digits)
    if _POSITIVE.search(answer):
        return "Yes"
    if _NEGATIVE.search(answer):
        return "No"
    return None


def _missing(
    scan: _Scan, task: str, thinking: bool, missing_answer: float | None, extra: list[str]
) -> RewardBreakdown:
    q, valid, problems = _quality(scan, task, thinking)
    problems = [*problems, "no <answer>...</answer> block", *extra]
    if missing_answer is None:
        # The paper returns before any format scoring: the whole reward is this constant.
        fmt, content = 0.0, MISSING_ANSWER_REWARD
    else:
        fmt, content = format_reward(q, valid), float(missing_answer)
    return RewardBreakdown(
        total=fmt + content, format_reward=fmt, content_reward=content, q=q, valid=valid,
        correct=False, parsed=None, matched_index=None, problems=problems,
    )


def score_judgement(
    completion: str,
    label: str,
    assistant_prefix: str = THINK_PREFIX,
    missing_answer: float | None = None,
) -> RewardBreakdown:
    """The paper's reward for one judgement completion (``video_like``).

    Args:
        completion: the model's text after the prompt (``None`` is read as ``""``).
        label: the truth, ``"Yes"`` or ``"No"`` (any case; 1/0 also accepted).
        assistant_prefix: what the assistant turn was opened with; ``<answer>`` selects the
            no-thinking format.
        missing_answer: the content reward when there is no ``<answer>…</answer>`` block, added
            to the format reward. ``None`` (default) is the paper's rule: a flat total of
            :data:`MISSING_ANSWER_REWARD` (0.0), which beats any wrong answer and so rewards
            leaving the answer out; e.g. ``-2.0`` removes that incentive.

    Returns:
        The breakdown; ``total`` is in ``[-2, 3]`` (for ``missing_answer`` within ``[-2, 2]``).

    Raises:
        ValueError: the label is not Yes/No.
    """
    truth = _normalise_label(label)
    prefix = _as_text(assistant_prefix)
    thinking = _thinking(prefix)
    scan = _scan(prefix + _as_text(completion))
    if scan.answer is None:
        return _missing(scan, "judgement", thinking, missing_answer, [])
    q, valid, problems = _quality(scan, "judgement", thinking)
    fmt = format_reward(q, valid)
    parsed = parse_judgement_label(scan.answer)
    correct = parsed == truth
    if parsed is None:
        problems.append("no Yes/No prediction in the answer")
    elif not correct:
        problems.append(f"predicted {parsed}, truth is {truth}")
    content = CONTENT_WEIGHT if correct else -CONTENT_WEIGHT
    return RewardBreakdown(
        total=fmt + content, format_reward=fmt, content_reward=content, q=q, valid=valid,
        correct=correct, parsed=parsed, matched_index=None, problems=problems,
    )


def score_selection(
    completion: str,
    candidates: Sequence[str],
    correct_index: int,
    assistant_prefix: str = THINK_PREFIX,
    missing_answer: float | None = None,
) -> RewardBreakdown:
    """The paper's reward for one next-video selection completion (``video_ranking``).

    The last answer block is matched to a candidate with
    :func:`agents.selection.match_candidate` (exact, bare number, substring, word-Jaccard > 0.3).

    Args:
        completion: the model's text after the prompt (``None`` is read as ``""``).
        candidates: the candidate titles as the prompt showed them
            (:func:`agents.selection.shown_titles`).
        correct_index: 0-based index of the true next video.
        assistant_prefix: what the assistant turn was opened with; ``<answer>`` selects the
            no-thinking format.
        missing_answer: as in :func:`score_judgement`; ``None`` is the paper's flat 0.0.

    Returns:
        The breakdown; ``total`` is in ``[-2, 3]`` (for ``missing_answer`` within ``[-2, 2]``).

    Raises:
        ValueError: ``correct_index`` is not an index into ``candidates``.
    """
    titles = [str(c) for c in (candidates or [])]
    try:
        truth = operator.index(correct_index)
    except TypeError:
        truth = -1
    if not 0 <= truth < len(titles):
        raise ValueError(f"correct_index {correct_index!r} is not an index into "
                         f"{len(titles)} candidates")
    prefix = _as_text(assistant_prefix)
    thinking = _thinking(prefix)
    scan = _scan(prefix + _as_text(completion))
    if scan.answer is None:
        return _missing(scan, "selection", thinking, missing_answer, [])
    q, valid, problems = _quality(scan, "selection", thinking)
    fmt = format_reward(q, valid)
    index = match_candidate(scan.answer, titles)
    if index is None:
        content = -CONTENT_WEIGHT
        problems.append("no candidate matched")
    elif index == truth:
        content = CONTENT_WEIGHT
    else:
        content = -WRONG_CANDIDATE_FACTOR * CONTENT_WEIGHT
        problems.append(f"picked candidate {index}, truth is {truth}")
    return RewardBreakdown(
        total=fmt + content, format_reward=fmt, content_reward=content, q=q, valid=valid,
        correct=index == truth, parsed=None if index is None else str(index),
        matched_index=index, problems=problems,
    )


def score(
    completion: str,
    task: str,
    *,
    label: str | None = None,
    candidates: Sequence[str] | None = None,
    correct_index: int | None = None,
    assistant_prefix: str = THINK_PREFIX,
    missing_answer: float | None = None,
) -> RewardBreakdown:
    """Score one completion of either task.

    Args:
        completion: the model's text after the prompt.
        task: ``"judgement"`` (needs ``label``) or ``"selection"`` (needs ``candidates`` and
            ``correct_index``).
        label: judgement truth, ``"Yes"``/``"No"``.
        candidates: selection candidates as shown in the prompt.
        correct_index: selection truth, 0-based.
        assistant_prefix: what the assistant turn was opened with.
        missing_answer: see :func:`score_judgement`; ``None`` is the paper's rule.

    Returns:
        The breakdown.

    Raises:
        ValueError: unknown task, or ground truth missing or invalid for it.
    """
    _check_task(task)
    if task == "judgement":
        if label is None:
            raise ValueError("judgement needs a label")
        return score_judgement(completion, label, assistant_prefix, missing_answer)
    if candidates is None or correct_index is None:
        raise ValueError("selection needs candidates and correct_index")
    return score_selection(completion, candidates, correct_index, assistant_prefix,
                           missing_answer)


# --- TRL GRPOTrainer reward functions ----------------------------------------------------------


class RewardRecorder:
    """Collects per-completion format-valid and correct flags for a logging callback.

    Only the accuracy function records, so each completion is counted once. A callback calls
    :meth:`pop_means` at each logging step.
    """

    def __init__(self) -> None:
        self._valid: list[bool] = []
        self._correct: list[bool] = []

    def __len__(self) -> int:
        return len(self._valid)

    def record(self, breakdowns: Iterable[RewardBreakdown]) -> None:
        """Add the flags of scored completions.

        Args:
            breakdowns: scored completions.
        """
        for b in breakdowns:
            self._valid.append(bool(b.valid))
            self._correct.append(bool(b.correct))

    def pop_means(self) -> dict[str, float]:
        """The means since the last call, then clear.

        Returns:
            ``{"format_valid_rate", "accuracy", "n"}``; both rates are NaN when ``n`` is 0.
        """
        n = len(self._valid)
        nan = float("nan")
        out = {
            "format_valid_rate": sum(self._valid) / n if n else nan,
            "accuracy": sum(self._correct) / n if n else nan,
            "n": float(n),
        }
        self._valid.clear()
        self._correct.clear()
        return out


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):  # content parts: [{"type": "text", "text": ...}]
        return "".join(_as_text(p.get("text")) for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def completion_text(completion: object) -> str:
    """The text of a TRL completion, standard or conversational.

    Standard completions are strings. Conversational ones are message lists
    (``[{"role": "assistant", "content": ...}]``); the contents of the assistant messages are
    joined (tool messages are not the model's text). Structured reasoning fields that some chat
    templates split off (``reasoning_content``) are not re-tagged.

    Args:
        completion: one element of TRL's ``completions``.

    Returns:
        The text, ``""`` for anything unreadable.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return ""
    parts = []
    for msg in completion:
        if isinstance(msg, str):
            parts.append(msg)
        elif isinstance(msg, dict) and msg.get("role", "assistant") == "assistant":
            parts.append(_content_text(msg.get("content")))
    return "".join(parts)


def _column(kwargs: dict[str, Any], name: str, i: int, n: int, default: Any = None) -> Any:
    values = kwargs.get(name)
    if values is None:
        return default
    # One value per completion; a bare string would otherwise be indexed character by character.
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"column {name!r} must be a list with one value per completion")
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values[i]


def score_batch(
    completions: Sequence[object], missing_answer: float | None = None, **columns: Any
) -> list[RewardBreakdown]:
    """Score a TRL batch from the dataset columns.

    Args:
        completions: TRL completions (strings or message lists).
        missing_answer: see :func:`score_judgement`; ``None`` is the paper's rule.
        **columns: the dataset columns as lists, one value per completion: ``task``,
            ``label``, ``candidates``, ``correct_index`` and optionally ``assistant_prefix``
            (default ``<think>``). Other keys (TRL's ``trainer_state``, ``completion_ids``, …)
            are ignored.

    Returns:
        One breakdown per completion.

    Raises:
        ValueError: a missing ``task`` column, a column of the wrong length, or invalid truth.
    """
    n = len(completions)
    if n and "task" not in columns:
        raise ValueError("the dataset needs a 'task' column ('judgement' or 'selection')")
    out = []
    for i, completion in enumerate(completions):
        prefix = _column(columns, "assistant_prefix", i, n, THINK_PREFIX)
        out.append(score(
            completion_text(completion),
            _column(columns, "task", i, n),
            label=_column(columns, "label", i, n),
            candidates=_column(columns, "candidates", i, n),
            correct_index=_column(columns, "correct_index", i, n),
            assistant_prefix=THINK_PREFIX if prefix is None else prefix,
            missing_answer=missing_answer,
        ))
    return out


class RewardFunc:
    """One part of the reward as a TRL reward function (picklable, named for TRL's logs).

    ``format`` returns ``R_format`` and ``accuracy`` returns ``R_content``; their sum is the
    paper's total for every completion (with no answer block: 0.0 and the missing-answer
    value under the paper's rule).
    """

    def __init__(
        self,
        part: str,
        missing_answer: float | None = None,
        recorder: RewardRecorder | None = None,
    ) -> None:
        if part not in ("format", "accuracy"):
            raise ValueError(f"part must be 'format' or 'accuracy', got {part!r}")
        self.part = part
        self.missing_answer = missing_answer
        self.recorder = recorder
        self.__name__ = part  # TRL names the reward column after this

    def __call__(self, prompts: Sequence[object], completions: Sequence[object],
                 **kwargs: Any) -> list[float]:
        """Score a batch; the prompts are never read.

        Args:
            prompts: TRL's prompts (unused: item titles in them are hostile text).
            completions: TRL's completions, strings or message lists.
            **kwargs: the dataset columns (see :func:`score_batch`) and TRL extras.

        Returns:
            One reward per completion.
        """
        rows = score_batch(completions, self.missing_answer, **kwargs)
        if self.recorder is not None:
            self.recorder.record(rows)
        if self.part == "format":
            return [r.format_reward for r in rows]
        return [r.content_reward for r in rows]

    def __repr__(self) -> str:
        return f"RewardFunc({self.part!r}, missing_answer={self.missing_answer!r})"


def format_reward_func(prompts: Sequence[object], completions: Sequence[object],
                       **kwargs: Any) -> list[float]:
    """TRL reward function: ``R_format`` per completion (paper's rule for a missing answer).

    Args:
        prompts: TRL's prompts (never read).
        completions: TRL's completions, strings or message lists.
        **kwargs: dataset columns ``task``, ``label``, ``candidates``, ``correct_index``,
            ``assistant_prefix``, one value per completion; TRL extras are ignored.

    Returns:
        One reward per completion, 0 to 1.
    """
    return RewardFunc("format")(prompts, completions, **kwargs)


def accuracy_reward_func(prompts: Sequence[object], completions: Sequence[object],
                         **kwargs: Any) -> list[float]:
    """TRL reward function: ``R_content`` per completion (paper's rule for a missing answer).

    Args:
        prompts: TRL's prompts (never read).
        completions: TRL's completions, strings or message lists.
        **kwargs: dataset columns ``task``, ``label``, ``candidates``, ``correct_index``,
            ``assistant_prefix``, one value per completion; TRL extras are ignored.

    Returns:
        One reward per completion: 2.0, -1.5, -2.0, or 0.0 without an answer block.
    """
    return RewardFunc("accuracy")(prompts, completions, **kwargs)


# TRL logs each reward under its function's __name__ ("rewards/format/mean").
format_reward_func.__name__ = "format"
accuracy_reward_func.__name__ = "accuracy"


def make_reward_funcs(
    missing_answer: float | None = None, recorder: RewardRecorder | None = None
) -> list[Callable[..., list[float]]]:
    """The two TRL reward functions, ``[format, accuracy]``, summing to the paper's total.

    Args:
        missing_answer: content reward without an answer block; ``None`` is the paper's flat
            0.0 total (see :func:`score_judgement` for why a trainer may want e.g. ``-2.0``).
        recorder: receives each completion's flags; only the accuracy function records, so
            nothing is counted twice.

    Returns:
        ``[format_func, accuracy_func]``, named ``"format"`` and ``"accuracy"``.
    """
    return [RewardFunc("format", missing_answer),
            RewardFunc("accuracy", missing_answer, recorder)]
