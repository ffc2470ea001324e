r"""The one parser of the US agent's ``<think>…</think><answer>…</answer>`` completions.

The simulator (:mod:`agents.us_agent`), the selection agent (:mod:`agents.reranker`), the
evaluation (:mod:`rl.evaluation`) and the rewards (:mod:`rl.rewards`) all read completions
here, so a bare answer means the same thing to the policy that acts and to the reward that
trains it. The completion is parsed *on its own* (plus the assistant prefix we wrote), never
together with the prompt, so nothing in an item title can inject tags into what we parse.

Rules, following the paper's reward code (notes §3.4):

* :func:`scan_completion` finds the tags in one linear pass (any case). The scored answer is
  the body of the **last closed** ``<answer>…</answer>`` block, found as the paper's
  ``re.findall(r"<answer>(.*?)</answer>")`` finds it. A trailing unclosed block (a generation
  cut off at its token limit) is kept apart: the simulator may act on it, the reward does not
  (the paper pays a flat 0.0 without a closed block).
* :func:`tag_problems`: ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` must each occur
  exactly once and in order (first occurrences, a missing tag at −1, as in the paper). A turn
  that opens with ``<answer>`` (the no-thinking ablation) needs only the answer tags.
* :func:`read_judgement` reads Yes/No from an answer body, in this order: the field
  ``Prediction: Yes|No``; the paper's ``user_like: 1|0``; a bare leading ``Yes``/``No``
  (``"No, the user would not enjoy it"`` is No); then the first polarity word
  (``yes``/``enjoy…`` against ``no``/``dislike…``), where a negated ``enjoy``/``dislike``
  (``not``, ``never``, ``n't`` up to two words before) flips. The paper tries ``enjoy|yes``
  anywhere before ``dislike|no`` and has no negation, so it reads "would not enjoy" as Yes.
* :func:`match_candidate` maps a selection answer to a candidate (exact, bare number,
  substring, word-Jaccard > 0.3).
* :func:`parse_judgement`, :func:`parse_selection` and :func:`parse_preference` (the paper's
  open-ended task) put these together for each task; the rewards use the same pieces.

Nothing here raises on any completion text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
TAGS_OUT_OF_ORDER = "tags out of order"
_ANSWER_OPEN, _ANSWER_CLOSE = TAGS[2], TAGS[3]

# One linear pass finds every tag; the regexes below avoid adjacent ambiguous quantifiers so a
# megabyte of spaces or tags cannot make them backtrack quadratically.
_TAG = re.compile(r"</?(?:think|answer)>", re.I)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S | re.I)
_PREDICTION_VALUE = re.compile(r"\bprediction[\s*:：]*(yes|no)\b", re.I)
_PREDICTION_FIELD = re.compile(r"\bprediction[\s*]*(?:[:：]|(?:yes|no)\b)", re.I)
_USER_LIKE = re.compile(r"user_like:?\s*(\d+)", re.I)  # the paper's pattern
_BARE = re.compile(r"^[\W_]*(yes|no)\b", re.I)
_POLARITY = re.compile(r"\b(yes|no|enjoy\w*|dislike\w*)\b", re.I)
_NEGATED = re.compile(r"(?:\bnot|\bnever|n't|\bno)(?:\s+\w+){0,2}\s+$", re.I)
_PREFERENCE_VALUE = re.compile(r"user_preferences?\s*[:：]?\s*(.*?)(?:\(2\)|\n|$)", re.I | re.S)
_PREFERENCE_FIELD = re.compile(r"user_preferences?\s*[:：]", re.I)
_NUMBERING = re.compile(r"[(（]\s*[12]\s*[)）]")
# The selection field; "next video" with a space only with its colon, so "My next video idea"
# in a title is not taken for the field.
_NEXT_VIDEO = re.compile(r"next_video\s*[:：]?|next video\s*[:：]", re.I)
_SECOND_ITEM = re.compile(r"\(\s*2\s*\)")  # opens the prediction when its name is left out
_PREFERENCE = re.compile(r"user_?preferences?", re.I)
_NUMBER = re.compile(
    r"^(?:candidate|video|option|number|no\.?)?\s*[#(\[]?\s*(\d{1,3})\s*[.):\]]?$"
)
_LABEL_PREFIX = re.compile(r"^[#(\[]?\s*(\d{1,3})\s*[.):\]]\s+(?=\S)")
_STRIP = " \t\r\n\"'`*_<>‹›«»“”‘’[]{}.,;:!"
_WORDS = re.compile(r"\w+")

JACCARD_MIN = 0.3  # the paper's threshold: a best Jaccard at or below it is no match
MIN_SUBSTRING_CHARS = 3  # shorter text ("a") would be a substring of almost any title


@dataclass(frozen=True)
class TagScan:
    """Where the tags of one completion are.

    Attributes:
        counts: occurrences of each tag (any case).
        firsts: first position of each tag, −1 when absent (the paper's ``str.find``).
        answer: body of the last closed ``<answer>…</answer>`` block, stripped; ``None``
            without one.
        trailing: body of an ``<answer>`` left open at the end, stripped; ``None`` without one.
        thinking: whether the turn needs the think tags (it does not open with ``<answer>``).
    """

    counts: dict[str, int]
    firsts: dict[str, int]
    answer: str | None
    trailing: str | None
    thinking: bool

    @property
    def body(self) -> str | None:
        """The answer to act on: the last closed block, else a trailing open one."""
        return self.answer if self.answer is not None else self.trailing


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else ""


def opens_thinking(assistant_prefix: str) -> bool:
    """Whether a turn opened with this prefix must think: any prefix but ``<answer>``."""
    return not _as_text(assistant_prefix).lstrip().lower().startswith(_ANSWER_OPEN)


def scan_completion(text: str, thinking: bool | None = None) -> TagScan:
    """Find the tags and answer blocks of ``assistant_prefix + completion``.

    Args:
        text: the assistant turn (never the prompt).
        thinking: whether the think tags are required; ``None``: unless ``text`` opens with
            ``<answer>``. Scorers pass :func:`opens_thinking` of the prefix they wrote.

    Returns:
        The scan.
    """
    text = _as_text(text)
    counts = dict.fromkeys(TAGS, 0)
    firsts = dict.fromkeys(TAGS, -1)
    answer: str | None = None
    open_at: int | None = None
    for m in _TAG.finditer(text):
        tag = m.group(0).lower()
        counts[tag] += 1
        if firsts[tag] < 0:
            firsts[tag] = m.start()
        # The first <answer>, up to the first </answer> after it; then the search resumes.
        if tag == _ANSWER_OPEN and open_at is None:
            open_at = m.end()
        elif tag == _ANSWER_CLOSE and open_at is not None:
            answer = text[open_at:m.start()].strip()
            open_at = None
    trailing = text[open_at:].strip() if open_at is not None else None
    if thinking is None:
        thinking = opens_thinking(text)
    return TagScan(counts=counts, firsts=firsts, answer=answer, trailing=trailing,
                   thinking=thinking)


def tag_problems(scan: TagScan) -> list[str]:
    """The tag checks of the paper's format reward, one line per failure.

    Each required tag whose count is not 1 gives ``"<tag> occurs n times"``; tags out of order
    (neighbouring first positions, a missing tag at −1 as in the paper) give
    :data:`TAGS_OUT_OF_ORDER`.

    Args:
        scan: from :func:`scan_completion`.

    Returns:
        The failures, empty when the tags are right.
    """
    tags = TAGS if scan.thinking else TAGS[2:]
    problems = [f"{t} occurs {scan.counts[t]} times" for t in tags if scan.counts[t] != 1]
    if any(scan.firsts[a] > scan.firsts[b] for a, b in pairwise(tags)):
        problems.append(TAGS_OUT_OF_ORDER)
    return problems


def has_prediction_field(answer: str) -> bool:
    """Whether a judgement answer has its ``Prediction`` field (``prediction yes`` too)."""
    return _PREDICTION_FIELD.search(_as_text(answer)) is not None


def has_next_video_field(answer: str) -> bool:
    """Whether a selection answer has its ``Next_video`` field (colon optional)."""
    return _NEXT_VIDEO.search(_as_text(answer)) is not None


def has_preference_field(answer: str) -> bool:
    """Whether an answer has its ``User_preference(s):`` field (the open-ended task checks it)."""
    return _PREFERENCE_FIELD.search(_as_text(answer)) is not None


def has_numbering(answer: str) -> bool:
    """Whether an answer numbers its parts with ``(1)`` or ``(2)`` (ASCII or full width)."""
    return _NUMBERING.search(_as_text(answer)) is not None


def _polarity_word(answer: str) -> str | None:
    m = _POLARITY.search(answer)
    if m is None:
        return None
    word = m.group(1).lower()
    positive = word == "yes" or word.startswith("enjoy")
    if word not in ("yes", "no") and _NEGATED.search(answer[max(0, m.start() - 40):m.start()]):
        positive = not positive  # "would not enjoy", "doesn't dislike"
    return "Yes" if positive else "No"


def read_judgement(answer: str) -> str | None:
    """The Yes/No of a judgement answer body, as everything in the project reads it.

    Order: ``Prediction: Yes|No`` (colon optional, markdown ``**`` allowed); the paper's
    ``user_like: 1|0`` (another number is read and is neither); a bare leading ``Yes``/``No``;
    the first whole polarity word (``yes``, ``enjoy…`` → Yes; ``no``, ``dislike…`` → No), a
    negated ``enjoy``/``dislike`` flipped.

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
        # Compare digit strings: int() of a huge digit run raises (int max str digits).
        digits = m.group(1).lstrip("0") or "0"
        return {"1": "Yes", "0": "No"}.get(digits)
    m = _BARE.search(answer)
    if m:
        return m.group(1).capitalize()
    return _polarity_word(answer)


@dataclass
class ParsedAnswer:
    """The parts of one judgement completion."""

    think: str
    answer: str
    prediction: str | None  # "Yes" | "No" | None
    user_preference: str
    format_ok: bool
    problems: list[str] = field(default_factory=list)


def _start(completion: str, assistant_prefix: str) -> tuple[str, TagScan, list[str]]:
    completion = _as_text(completion)
    text = _as_text(assistant_prefix) + completion
    scan = scan_completion(text, opens_thinking(assistant_prefix))
    problems = [] if completion.strip() else ["empty completion"]
    return text, scan, problems + tag_problems(scan)


def parse_judgement(completion: str, assistant_prefix: str = "<think>") -> ParsedAnswer:
    """Parse a judgement completion.

    The answer acted on is the last closed block, else a trailing open one; its Yes/No is
    :func:`read_judgement`'s. ``format_ok`` is false on any tag problem, a missing
    ``Prediction`` field or no readable prediction (the caller's fallback: skip).

    Args:
        completion: the model's text after the prompt.
        assistant_prefix: what the assistant turn was opened with (it is part of the answer).

    Returns:
        The parsed parts; ``prediction`` is ``None`` when nothing readable was found.
    """
    text, scan, problems = _start(completion, assistant_prefix)
    think_m = _THINK.search(text)
    answer = scan.body or ""
    prediction = read_judgement(answer) if answer else None
    if prediction is None:
        problems.append("no Yes/No prediction in the answer")
    elif not has_prediction_field(answer):
        problems.append("answer lacks 'Prediction:'")
    pref_m = _PREFERENCE_VALUE.search(answer)
    return ParsedAnswer(
        think=think_m.group(1).strip() if think_m else "", answer=answer, prediction=prediction,
        user_preference=pref_m.group(1).strip() if pref_m else "",
        format_ok=not problems, problems=problems,
    )


_PREFERENCE_END = re.compile(r"\n|\(2\)|prediction|candidate video|</?answer>|</?think>", re.I)
PREFERENCE_CHARS = 300


def preference_line(completion: str) -> str:
    """The preference a model wrote after ``(1) User_preference:`` (a reasoned decision).

    Its first line, up to where the model started on the prediction, the candidate or a tag,
    at most :data:`PREFERENCE_CHARS` characters; ``""`` when nothing is left.
    """
    text = _as_text(completion)
    m = _PREFERENCE_END.search(text)
    return " ".join((text[: m.start()] if m else text).split())[:PREFERENCE_CHARS].strip()


# --- selection -------------------------------------------------------------------------------


@dataclass
class SelectionAnswer:
    """One parsed selection completion."""

    index: int | None  # index into the candidates, None when nothing matched
    format_ok: bool
    answer: str  # body of the answer block acted on ("" when there is none)
    prediction: str  # the predicted title as written (the Next_video field)
    problems: list[str] = field(default_factory=list)


def _norm(text: str) -> str:
    """Lower case, NFKC, guillemets back to brackets, one space between words."""
    text = unicodedata.normalize("NFKC", text).replace("‹", "<").replace("›", ">")
    return " ".join(text.lower().split())


def extract_prediction(text: str) -> str:
    """The predicted title in a completion or answer body.

    Takes the answer block :func:`scan_completion` acts on when there is one, then what follows
    its first ``Next_video:`` up to the end of that line (or the whole body when the field is
    missing), without surrounding quotes, brackets and punctuation. Unlike the paper's regex,
    the title is not cut at its first "." or ";", which would cut titles such as "Dr. Who recap".

    Args:
        text: a completion (with its assistant prefix) or an answer body.

    Returns:
        The prediction, possibly ``""``.
    """
    text = _as_text(text)
    body = scan_completion(text).body
    body = text if body is None else body
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
        answer_text: a completion, an answer body or just a title (:func:`extract_prediction`).
        candidates: candidate titles as shown to the model
            (:func:`agents.selection.shown_titles`).

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
    completion: str, candidates: Sequence[str], assistant_prefix: str = "<think>"
) -> SelectionAnswer:
    """Parse a selection completion and match its answer to a candidate.

    ``format_ok`` follows the paper's reward: the tag checks of :func:`tag_problems` and a
    ``Next_video`` field in the answer. Only an ``<answer>`` block is matched (the last closed
    one, else a trailing open one); reasoning alone never picks a candidate.

    Args:
        completion: the model's text after the prompt.
        candidates: candidate titles as shown to the model.
        assistant_prefix: what the assistant turn was opened with.

    Returns:
        The parsed answer; ``index`` is ``None`` when nothing matched.
    """
    _, scan, problems = _start(completion, assistant_prefix)
    answer = scan.body
    if answer is not None and not has_next_video_field(answer):
        problems.append("answer lacks 'Next_video:'")
    format_ok = not problems
    index = match_candidate(answer, candidates) if answer is not None else None
    if index is None:
        problems.append("no candidate matched")
    return SelectionAnswer(
        index=index, format_ok=format_ok, answer=answer or "",
        prediction=extract_prediction(answer) if answer is not None else "",
        problems=problems,
    )


# --- open-ended preference -------------------------------------------------------------------


@dataclass
class PreferenceAnswer:
    """One parsed open-ended preference completion (the paper's ``video_preference``)."""

    preference: str  # the User_preferences field
    prediction: str  # the Next_video description ("" when there is none)
    format_ok: bool
    answer: str  # body of the answer block acted on
    problems: list[str] = field(default_factory=list)


def parse_preference(completion: str, assistant_prefix: str = "<think>") -> PreferenceAnswer:
    """Parse an open-ended preference completion.

    ``format_ok`` follows the paper's ``video_preference`` reward: the tag checks, a
    ``User_preferences:`` field and a ``Next_video`` field. The prediction is
    :func:`extract_prediction`'s, the text the reward compares with the real next item.

    Args:
        completion: the model's text after the prompt.
        assistant_prefix: what the assistant turn was opened with.

    Returns:
        The parsed answer.
    """
    _, scan, problems = _start(completion, assistant_prefix)
    answer = scan.body
    if answer is not None:
        if not has_preference_field(answer):
            problems.append("answer lacks 'User_preferences:'")
        if not has_next_video_field(answer):
            problems.append("answer lacks 'Next_video:'")
    prediction = extract_prediction(answer) if answer is not None else ""
    if not prediction:
        problems.append("no Next_video text")
    pref_m = _PREFERENCE_VALUE.search(answer or "")
    return PreferenceAnswer(
        preference=pref_m.group(1).strip() if pref_m else "", prediction=prediction,
        format_ok=not problems, answer=answer or "", problems=problems,
    )
