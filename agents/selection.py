"""The paper's "Next Video Selection" prompt and the rule that maps an answer to a candidate.

Prompt (notes §3.2, evaluation / cold-start variant): one user message asks the model to analyse
the viewing history and predict the next video from a candidate list, with reasoning in
``<think> </think>`` and the answer as ``<answer> (1) User_preference: ... (2) Next_video:
<exact title> </answer>`` (a line break before "(2)"). Candidates are numbered so a numbered
answer can be matched too.

Matching (notes §3.4, the selection reward's candidate matching): the predicted title is
compared with the candidates by exact match (case and whitespace insensitive), then substring
either way, then the best word-Jaccard above 0.3. We add a bare candidate number ("3", "(3)",
"candidate 3") and fix two quirks of the paper's code, both documented on
:func:`extract_prediction` and :func:`match_candidate`: the title is not cut at the first "."
and an empty prediction matches nothing (the paper's code maps it to candidate 0).

Item titles are hostile user-generated text: :func:`selection_prompt` cleans every title with
:func:`~agents.text_safety.clean_item_text`, and answers are matched against those cleaned
titles (:func:`shown_titles`), which is what the model saw.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.backends.base import ChatPrompt
from agents.parsing import TAGS
from agents.text_safety import clean_item_text

SELECTION_INSTRUCTION = (
    "Based on the user's viewing history, analyze their preferences and interests, then "
    "predict the next video the user is most likely to watch from the following candidates."
)
HISTORY_HEADER = "User's viewing history:"
CANDIDATES_HEADER = "Candidate videos for the next watch:"
FORMAT_THINKING = (
    "First show your analysis of the user's interests and your reasoning in <think> </think> "
    "tags, then return the final answer in <answer> </answer> tags, in this format: "
    "<answer> (1) User_preference: ...\n(2) Next_video: copy the exact title of the video you "
    "predict </answer>."
)
FORMAT_NO_THINKING = (
    "Return only the final answer in <answer> </answer> tags, in this format: "
    "<answer> (1) User_preference: ...\n(2) Next_video: copy the exact title of the video you "
    "predict </answer>."
)
THINK_PREFIX = "<think>"
ANSWER_PREFIX = "<answer>"

# Score mode (agents/reranker.py) reads one next token: the candidate's label. Digits do not
# work: SmolLM2 (like most BPE vocabularies) spells "10" as "1","0", so candidate 10 would share
# its first token with candidate 1. Capital letters are one token each, bare and after a space
# ("A" and "ĠA" in SmolLM2), so candidates are labelled A, B, C, ... in score mode.
LETTER_LABELS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
FORMAT_LETTER = (
    "Return only the letter of the chosen candidate in <answer> </answer> tags, in this format: "
    "<answer> (2) Next_video: candidate X </answer>."
)
# Ends right before the label, so the next token is " A", " B", ...
LETTER_PREFIX = "<answer> (2) Next_video: candidate"

JACCARD_MIN = 0.3  # the paper's threshold: a best Jaccard at or below it is no match
MIN_SUBSTRING_CHARS = 3  # shorter text ("a") would be a substring of almost any title

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
# The field name; "next video" with a space only with its colon, so "My next video idea" in a
# title is not taken for the field.
_NEXT_VIDEO = re.compile(r"next_video\s*[:：]?|next video\s*[:：]", re.I)
# "(2)" opens the prediction when the model left out its name.
_SECOND_ITEM = re.compile(r"\(\s*2\s*\)")
_PREFERENCE = re.compile(r"user_?preferences?", re.I)
_NUMBER = re.compile(
    r"^(?:candidate|video|option|number|no\.?)?\s*[#(\[]?\s*(\d{1,3})\s*[.):\]]?$"
)
_LABEL_PREFIX = re.compile(r"^[#(\[]?\s*(\d{1,3})\s*[.):\]]\s+(?=\S)")
_STRIP = " \t\r\n\"'`*_<>‹›«»“”‘’[]{}.,;:!"
_WORDS = re.compile(r"\w+")


@dataclass
class SelectionAnswer:
    """One parsed selection completion."""

    index: int | None  # index into the candidates, None when nothing matched
    format_ok: bool
    answer: str  # body of the last <answer> block ("" when there is none)
    prediction: str  # the predicted title as written (the Next_video field)
    problems: list[str] = field(default_factory=list)


def shown_titles(titles: Sequence[object]) -> list[str]:
    """The titles as a selection prompt shows them (cleaned); match answers against these."""
    return [clean_item_text(t).text for t in titles]


def _user_turn(
    history_titles: Sequence[object],
    candidate_titles: Sequence[object],
    labels: Sequence[str],
    format_line: str,
) -> str:
    lines = [SELECTION_INSTRUCTION, HISTORY_HEADER]
    lines += [f"- {t}" for t in shown_titles(history_titles)] or ["- (no history yet)"]
    lines.append(CANDIDATES_HEADER)
    lines += [f"{lab}. {t}" for lab, t in zip(labels, shown_titles(candidate_titles), strict=False)]
    lines.append(format_line)
    return "\n".join(lines)


def selection_prompt(
    history_titles: Sequence[object], candidate_titles: Sequence[object], *, thinking: bool = True
) -> ChatPrompt:
    """The paper's next-video selection prompt (evaluation / cold-start layout).

    A single user message, as in the paper's evaluation scripts: the instruction, the history
    as ``- {title}`` bullets, the candidates numbered ``1.`` … ``n.``, then the answer format.

    Args:
        history_titles: titles the user watched, oldest first (raw; cleaned here).
        candidate_titles: the candidates in recommender order (raw; cleaned here).
        thinking: open the assistant turn with ``<think>``; ``False`` is the paper's
            no-thinking ablation, opened with ``<answer>``.

    Returns:
        The chat prompt.
    """
    labels = [str(i) for i in range(1, len(candidate_titles) + 1)]
    fmt = FORMAT_THINKING if thinking else FORMAT_NO_THINKING
    return ChatPrompt(
        messages=(("user", _user_turn(history_titles, candidate_titles, labels, fmt)),),
        assistant_prefix=THINK_PREFIX if thinking else ANSWER_PREFIX,
    )


def selection_letter_prompt(
    history_titles: Sequence[object], candidate_titles: Sequence[object]
) -> ChatPrompt:
    """The selection prompt for one-token scoring, candidates labelled with letters.

    Candidates are labelled ``A.``, ``B.``, … and the assistant turn ends right before the
    label (``<answer> (2) Next_video: candidate``), so the next token is the choice.

    Args:
        history_titles: titles the user watched, oldest first (raw; cleaned here).
        candidate_titles: at most 26 candidates in recommender order (raw; cleaned here).

    Returns:
        The chat prompt; score it with options ``LETTER_LABELS[:len(candidate_titles)]``.

    Raises:
        ValueError: more candidates than letters.
    """
    if len(candidate_titles) > len(LETTER_LABELS):
        raise ValueError(f"at most {len(LETTER_LABELS)} candidates can be letter-labelled, "
                         f"got {len(candidate_titles)}")
    labels = LETTER_LABELS[: len(candidate_titles)]
    return ChatPrompt(
        messages=(("user", _user_turn(history_titles, candidate_titles, labels, FORMAT_LETTER)),),
        assistant_prefix=LETTER_PREFIX,
    )


def _norm(text: str) -> str:
    """Lower case, NFKC, guillemets back to brackets, one space between words."""
    text = unicodedata.normalize("NFKC", text).replace("‹", "<").replace("›", ">")
    return " ".join(text.lower().split())


def extract_prediction(text: str) -> str:
    """The predicted title in a completion or answer body.

    Takes the last ``<answer>`` block when there is one (an unclosed block runs to the end),
    then what follows its first ``Next_video:`` up to the end of that line (or the whole body
    when the field is missing), without surrounding quotes, brackets and punctuation.
    Unlike the paper's regex, the title is not cut at its first "." or ";", which would cut
    titles such as "Dr. Who recap".

    Args:
        text: a completion (with its assistant prefix) or an answer body.

    Returns:
        The prediction, possibly ``""``.
    """
    text = text or ""
    blocks = _ANSWER_BLOCK.findall(text)
    body = blocks[-1] if blocks else text
    field_name = _NEXT_VIDEO.search(body)
    if field_name:
        # The first one: the field comes before the title, which may repeat the words.
        body = body[field_name.end():]
        body = body.strip().split("\n", 1)[0] if body.strip() else ""
    else:
        items = list(_SECOND_ITEM.finditer(body))
        if items:
            body = body[items[-1].end():]
        elif _PREFERENCE.search(body):
            body = ""  # only the preference summary: there is no prediction to match
    return body.strip(_STRIP)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _closest(pred: str, hits: list[int], titles: list[str]) -> int:
    # Several substring hits: the title whose length is closest to the prediction is the most
    # specific; ties go to the earlier candidate (recommender order).
    return min(hits, key=lambda i: (abs(len(titles[i]) - len(pred)), i))


def match_candidate(answer_text: str, candidates: Sequence[str]) -> int | None:
    """Map an answer to a candidate index with the paper's matching rule.

    Order: exact title match (case, whitespace and NFKC insensitive, with a leading ``"3. "``
    label also tried stripped); a bare candidate number (``"3"``, ``"(3)"``, ``"candidate 3"``,
    1-based); substring either way (both at least 3 characters; of several hits the title
    closest in length, where the paper's code takes the first); the best word-Jaccard above
    0.3. Remaining ties go to the earlier candidate. Text in a title never acts as an
    instruction: a title reading "answer 1" is matched as a title.

    Args:
        answer_text: a completion, an answer body or just a title; the last ``<answer>`` block
            and its ``Next_video:`` field are used when present (:func:`extract_prediction`).
        candidates: candidate titles as shown to the model (:func:`shown_titles`).

    Returns:
        The 0-based index, or ``None`` when nothing matches (an empty prediction matches
        nothing, unlike the paper's code, where "" is a substring of every title).
    """
    pred = _norm(extract_prediction(answer_text))
    if not pred or not candidates:
        return None
    titles = [_norm(str(c)).strip(_STRIP) for c in candidates]
    preds = [pred]
    label = _LABEL_PREFIX.match(pred)
    if label:  # "3. Funny cats": the model copied the numbered candidate line
        preds.append(pred[label.end():])
    for p in preds:
        for i, t in enumerate(titles):
            if t and t == p:
                return i
    # After exact titles, so a title that is itself a number ("1984") still matches as a title.
    num = _NUMBER.match(pred)
    if num and 1 <= int(num.group(1)) <= len(titles):
        return int(num.group(1)) - 1
    for p in preds:
        hits = [i for i, t in enumerate(titles)
                if min(len(t), len(p)) >= MIN_SUBSTRING_CHARS and (t in p or p in t)]
        if hits:
            return _closest(p, hits, titles)
    words = set(_WORDS.findall(preds[-1]))
    best, best_j = None, JACCARD_MIN
    for i, t in enumerate(titles):
        j = _jaccard(words, set(_WORDS.findall(t)))
        if j > best_j:
            best, best_j = i, j
    return best


def parse_selection(
    completion: str, candidates: Sequence[str], assistant_prefix: str = THINK_PREFIX
) -> SelectionAnswer:
    """Parse a selection completion and match its answer to a candidate.

    The completion is parsed with the assistant prefix we wrote and never with the prompt, so
    no tag inside a title can reach the parser. ``format_ok`` follows the paper's reward: each
    tag exactly once and in order (the think tags only when the prefix opens ``<think>``), and
    a ``Next_video:`` field in the answer. Only an ``<answer>`` block is matched; reasoning
    alone never picks a candidate. Nothing is ever raised.

    Args:
        completion: the model's text after the prompt.
        candidates: candidate titles as shown to the model (:func:`shown_titles`).
        assistant_prefix: what the assistant turn was opened with.

    Returns:
        The parsed answer; ``index`` is ``None`` when nothing matched.
    """
    text = (assistant_prefix or "") + (completion or "")
    lowered = text.lower()
    problems: list[str] = []
    if not (completion or "").strip():
        problems.append("empty completion")
    tags = TAGS if lowered.lstrip().startswith(THINK_PREFIX) else TAGS[2:]
    for tag in tags:
        n = lowered.count(tag)
        if n != 1:
            problems.append(f"{tag} occurs {n} times")
    firsts = [lowered.find(t) for t in tags]
    if all(i >= 0 for i in firsts) and firsts != sorted(firsts):
        problems.append("tags out of order")
    blocks = _ANSWER_BLOCK.findall(text)
    answer = blocks[-1].strip() if blocks else ""
    if blocks and not _NEXT_VIDEO.search(answer):
        problems.append("answer lacks 'Next_video:'")
    format_ok = not problems
    index = match_candidate(text, candidates) if blocks else None
    if index is None:
        problems.append("no candidate matched")
    return SelectionAnswer(
        index=index,
        format_ok=format_ok,
        answer=answer,
        prediction=extract_prediction(text) if blocks else "",
        problems=problems,
    )
