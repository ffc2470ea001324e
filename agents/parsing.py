"""Parsing the US agent's ``<think>…</think><answer>…</answer>`` completions.

The completion is parsed *on its own* (plus the assistant prefix we wrote), never together with
the prompt, so nothing in an item title can inject tags into what we parse. Rules, following the
paper's reward code:

* the tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` must each occur exactly once
  and in that order, or ``format_ok`` is false (an answer-only turn, opened with ``<answer>``,
  needs only the answer tags);
* the prediction is read from the **last** ``<answer>`` block (``Prediction: Yes|No``);
* with no readable prediction the documented fallback applies: the decision is ``skip``
  (``fallback="no_prediction"``). Nothing is ever raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S | re.I)
_PREDICTION = re.compile(r"prediction\s*[:：]?\s*\**\s*(yes|no)\b", re.I)
_PREFERENCE = re.compile(r"user_preference\s*[:：]?\s*(.*?)(?:\(2\)|\n|$)", re.I | re.S)
_BARE = re.compile(r"^\W*(yes|no)\b", re.I)


@dataclass
class ParsedAnswer:
    """The parts of one completion."""

    think: str
    answer: str
    prediction: str | None  # "Yes" | "No" | None
    user_preference: str
    format_ok: bool
    problems: list[str] = field(default_factory=list)


def parse_judgement(completion: str, assistant_prefix: str = "<think>") -> ParsedAnswer:
    """Parse a judgement completion.

    Args:
        completion: the model's text after the prompt.
        assistant_prefix: what the assistant turn was opened with (it is part of the answer).

    Returns:
        The parsed parts; ``prediction`` is ``None`` when nothing readable was found.
    """
    text = (assistant_prefix or "") + (completion or "")
    problems: list[str] = []
    if not (completion or "").strip():
        problems.append("empty completion")
    lowered = text.lower()
    # An answer-only turn (the no-thinking ablation, prefix "<answer>") needs no think tags.
    tags = TAGS[2:] if lowered.lstrip().startswith("<answer>") else TAGS
    for tag in tags:
        n = lowered.count(tag)
        if n != 1:
            problems.append(f"{tag} occurs {n} times")
    firsts = [lowered.find(t) for t in tags]
    if all(i >= 0 for i in firsts) and firsts != sorted(firsts):
        problems.append("tags out of order")

    think_m = _THINK.search(text)
    think = think_m.group(1).strip() if think_m else ""
    answers = _ANSWER.findall(text)
    answer = answers[-1].strip() if answers else ""
    pred_m = _PREDICTION.search(answer)
    if pred_m is None and answer:
        pred_m = _BARE.search(answer)  # "<answer>Yes</answer>" is clear enough to act on
        if pred_m is not None:
            problems.append("answer lacks 'Prediction:'")
    prediction = pred_m.group(1).capitalize() if pred_m else None
    if prediction is None:
        problems.append("no Yes/No prediction in the answer")
    pref_m = _PREFERENCE.search(answer)
    preference = pref_m.group(1).strip() if pref_m else ""
    return ParsedAnswer(
        think=think, answer=answer, prediction=prediction, user_preference=preference,
        format_ok=not problems, problems=problems,
    )
