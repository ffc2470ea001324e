r"""The paper's rule rewards for the US agent's GRPO training (TRL wrappers: rl.reward_funcs).

Scheme (notes §3.4, the paper's ``video_like.py``, ``video_ranking.py`` and
``video_preference.py``): the total reward of one completion is ``R_format + R_content``, in
``[-2, 3]``.

* **Format quality** ``q`` starts at 1.0 and ``valid`` at ``True``. Each of ``<think>``,
  ``</think>``, ``<answer>``, ``</answer>`` whose count is not exactly 1 halves ``q`` and clears
  ``valid``; tags out of order halve ``q`` once more and clear ``valid``. The answer body then
  pays ×0.7 for a missing field (``Prediction`` or ``Next_video``) and ×0.9 for missing
  ``(1)``/``(2)`` numbering; these two only lower ``q``, as in the paper. ``R_format = q`` when
  valid, else ``0.5·q`` (range 0 to 1).
* **Content.** Judgement: the right Yes/No gets +2, a wrong or unreadable one −2. Selection: the
  right candidate +2, another candidate −1.5 (−0.75×2), no candidate −2. Preference (the
  open-ended task): ``2·sim`` when the sentence-embedding cosine of the ``Next_video`` text and
  the real next item's text is above 0.5, else −1.5 (:func:`score_preference`).
* **No** ``<answer>…</answer>`` **block**: the paper pays a flat 0.0
  (:data:`MISSING_ANSWER_REWARD`).

Every completion is read by the project's one parser, :mod:`agents.parsing`: the reward reads the
same answer block, the same Yes/No and the same candidate as the simulator and the selection agent
act on. What is scored is ``assistant_prefix + completion``: the text the model produced after the
prompt, with the turn opener we wrote (``<think>``, or ``<answer>`` in the no-thinking ablation).
The prompt is never parsed; its item titles are hostile user text and may hold fake tags. Nothing
here raises on any completion text (``None``, empty, megabytes, control or bidi characters, fake
tags, prompt-injection text); invalid ground truth (a label that is not Yes/No, a ``correct_index``
outside the candidates) raises ``ValueError``, since that is a data bug.

Deviations from the paper's code, each on purpose:

1. Tags are counted and the answer block is found case-insensitively (``<ANSWER>`` is a tag);
   the paper's ``str.count`` is case-sensitive.
2. The paper splits the decoded prompt+response at ``<|im_start|>assistant``, which keeps the
   ``<think>`` that ends its prompt; scoring ``assistant_prefix + completion`` is the same text
   without ever reading the prompt.
3. No-thinking ablation (a turn opened with ``<answer>``): only the two answer tags are
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
7. Selection field check: ``Next_video`` (colon optional) or ``next video:``, any case, the
   field the parser extracts the title from (the paper: literal ``next_video:`` in the
   lower-cased body, plus Chinese variants our English prompts never ask for).
8. Judgement label: :func:`agents.parsing.read_judgement`: ``Prediction: Yes|No``, then the
   paper's ``user_like: 1|0``, then a bare leading Yes/No, then the first whole polarity word
   with negation (the paper tries ``enjoy|yes`` anywhere before ``dislike|no``, as substrings:
   it reads "No, the user would not enjoy it" as Yes, "eyes" as yes and "know" as no).
9. Selection matching is :func:`agents.parsing.match_candidate`: the title is not cut at its
   first "." and an empty prediction matches nothing (the paper maps it to candidate 0).
10. Tag order compares first occurrences as the paper does, with a missing tag at position −1.
    This paper behaviour is kept, not changed: a ``<think>`` whose ``</think>`` is missing is
    also "out of order", so it costs ×0.5 twice (count and order).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vragent.agents.parsing import (
    TAGS_OUT_OF_ORDER,
    TagScan,
    extract_prediction,
    has_next_video_field,
    has_numbering,
    has_prediction_field,
    has_preference_field,
    match_candidate,
    opens_thinking,
    read_judgement,
    scan_completion,
    tag_problems,
)

if TYPE_CHECKING:
    from vragent.rl.text_similarity import Similarity

TASKS = ("judgement", "selection", "preference")
THINK_PREFIX = "<think>"

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
# Preference (the paper's video_preference): content = 2·sim when the embedding similarity of
# the Next_video text and the real next item's text is above 0.5, else −0.75 × 2 = −1.5.
PREFERENCE_SIM_MIN = 0.5
PREFERENCE_LOW_FACTOR = 0.75
REWARD_MIN = -2.0
REWARD_MAX = 3.0


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
        similarity: preference: the embedding cosine of the prediction and the truth.
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
    similarity: float | None = None


def _as_text(value: object) -> str:
    # Scorers take strings, but a None or a non-string must not raise.
    return value if isinstance(value, str) else ""


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _quality(scan: TagScan, task: str) -> tuple[float, bool, list[str]]:
    q, problems = 1.0, []
    tag_failures = tag_problems(scan)
    for p in tag_failures:
        factor = TAG_ORDER_FACTOR if p == TAGS_OUT_OF_ORDER else TAG_COUNT_FACTOR
        q *= factor
        problems.append(f"{p} (x{factor})")
    if scan.answer is not None:
        fields = {"judgement": [(has_prediction_field, "Prediction:")],
                  "selection": [(has_next_video_field, "Next_video:")],
                  "preference": [(has_preference_field, "User_preferences:"),
                                 (has_next_video_field, "Next_video:")]}[task]
        for has_field, name in fields:
            if not has_field(scan.answer):
                q *= MISSING_FIELD_FACTOR
                problems.append(f"answer lacks '{name}' (x{MISSING_FIELD_FACTOR})")
        if not has_numbering(scan.answer):
            q *= MISSING_NUMBERING_FACTOR
            problems.append(f"answer lacks (1)/(2) numbering (x{MISSING_NUMBERING_FACTOR})")
    return q, not tag_failures, problems


def format_quality(
    text: str, task: str, thinking: bool | None = None
) -> tuple[float, bool, list[str]]:
    """The paper's format quality ``q`` of a completion.

    ``q`` starts at 1.0: ×0.5 per required tag whose count (any case) is not 1, ×0.5 once when
    the tags are out of order (first occurrences, a missing tag at −1 as in the paper), then, on
    the last ``<answer>…</answer>`` block, ×0.7 without the task's field (``Prediction`` or
    ``Next_video``) and ×0.9 without ``(1)``/``(2)`` numbering. Only the tag checks clear
    ``valid``.

    Args:
        text: ``assistant_prefix + completion``; never the prompt.
        task: ``"judgement"`` or ``"selection"``.
        thinking: require ``<think>``/``</think>`` too. ``None`` (default): unless the turn
            opens with ``<answer>`` (the no-thinking ablation), as every scorer decides.

    Returns:
        ``(q, valid, problems)``, ``q`` in ``(0, 1]``.

    Raises:
        ValueError: unknown task.
    """
    _check_task(task)
    scan = scan_completion(_as_text(text))
    if thinking is not None:
        scan = dataclasses.replace(scan, thinking=thinking)
    return _quality(scan, task)


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


def _missing(
    scan: TagScan, task: str, missing_answer: float | None, extra: list[str]
) -> RewardBreakdown:
    q, valid, problems = _quality(scan, task)
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
    scan = scan_completion(prefix + _as_text(completion), opens_thinking(prefix))
    if scan.answer is None:
        return _missing(scan, "judgement", missing_answer, [])
    q, valid, problems = _quality(scan, "judgement")
    fmt = format_reward(q, valid)
    parsed = read_judgement(scan.answer)
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
    :func:`agents.parsing.match_candidate` (exact, bare number, substring, word-Jaccard > 0.3).

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
    scan = scan_completion(prefix + _as_text(completion), opens_thinking(prefix))
    if scan.answer is None:
        return _missing(scan, "selection", missing_answer, [])
    q, valid, problems = _quality(scan, "selection")
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


def score_preference(
    completion: str,
    target: str,
    similarity: Similarity | None = None,
    assistant_prefix: str = THINK_PREFIX,
    missing_answer: float | None = None,
) -> RewardBreakdown:
    """The paper's reward for one open-ended preference completion (``video_preference``).

    Format as for selection, with the paper's extra ×0.7 for a missing ``User_preferences:``
    field. Content: the ``Next_video`` text (:func:`agents.parsing.extract_prediction`, not cut
    at its first "." as the paper's regex does) is compared with the real next item's text by
    sentence-embedding cosine similarity; above 0.5 it earns ``2·sim``, else −1.5 (an empty
    prediction too).

    Args:
        completion: the model's text after the prompt (``None`` is read as ``""``).
        target: the real next item's text (the row's ``label``).
        similarity: scores text pairs; ``None``: the offline all-MiniLM-L6-v2
            (:func:`rl.text_similarity.default_similarity`).
        assistant_prefix: what the assistant turn was opened with.
        missing_answer: as in :func:`score_judgement`; ``None`` is the paper's flat 0.0.

    Returns:
        The breakdown; ``parsed`` is the predicted text and ``similarity`` its cosine.
    """
    prefix = _as_text(assistant_prefix)
    scan = scan_completion(prefix + _as_text(completion), opens_thinking(prefix))
    if scan.answer is None:
        return _missing(scan, "preference", missing_answer, [])
    q, valid, problems = _quality(scan, "preference")
    fmt = format_reward(q, valid)
    prediction = extract_prediction(scan.answer)
    sim = None
    if prediction:
        if similarity is None:
            from vragent.rl.text_similarity import default_similarity

            similarity = default_similarity()
        sim = similarity.pairs([prediction], [_as_text(target)])[0]
    correct = sim is not None and sim > PREFERENCE_SIM_MIN
    if correct:
        content = CONTENT_WEIGHT * sim
    else:
        content = -PREFERENCE_LOW_FACTOR * CONTENT_WEIGHT
        problems.append("no Next_video text" if sim is None
                        else f"similarity {sim:.3f} <= {PREFERENCE_SIM_MIN}")
    return RewardBreakdown(
        total=fmt + content, format_reward=fmt, content_reward=content, q=q, valid=valid,
        correct=correct, parsed=prediction or None, matched_index=None, problems=problems,
        similarity=sim,
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
    similarity: Similarity | None = None,
) -> RewardBreakdown:
    """Score one completion of any task.

    Args:
        completion: the model's text after the prompt.
        task: ``"judgement"`` (needs ``label``), ``"selection"`` (needs ``candidates`` and
            ``correct_index``) or ``"preference"`` (needs ``label``, the real next item's text).
        label: judgement truth, ``"Yes"``/``"No"``; preference: the real next item's text.
        candidates: selection candidates as shown in the prompt.
        correct_index: selection truth, 0-based.
        assistant_prefix: what the assistant turn was opened with.
        missing_answer: see :func:`score_judgement`; ``None`` is the paper's rule.
        similarity: the preference task's text similarity (default: MiniLM).

    Returns:
        The breakdown.

    Raises:
        ValueError: unknown task, or ground truth missing or invalid for it.
    """
    _check_task(task)
    if task == "preference":
        if label is None:
            raise ValueError("preference needs a label (the real next item's text)")
        return score_preference(completion, label, similarity, assistant_prefix, missing_answer)
    if task == "judgement":
        if label is None:
            raise ValueError("judgement needs a label")
        return score_judgement(completion, label, assistant_prefix, missing_answer)
    if candidates is None or correct_index is None:
        raise ValueError("selection needs candidates and correct_index")
    return score_selection(completion, candidates, correct_index, assistant_prefix,
                           missing_answer)
