"""The paper's "Next Video Selection" prompt.

Prompt (notes §3.2, evaluation / cold-start variant): one user message asks the model to analyse
the viewing history and predict the next video from a candidate list, with reasoning in
``<think> </think>`` and the answer as ``<answer> (1) User_preference: ... (2) Next_video:
<exact title> </answer>`` (a line break before "(2)"). Candidates are numbered so a numbered
answer can be matched too.

Answers are parsed and matched to a candidate by the project's one completion parser,
:func:`agents.parsing.parse_selection` and :func:`agents.parsing.match_candidate` (the paper's
rule: exact, then substring, then word-Jaccard above 0.3, plus a bare candidate number).

Item titles are hostile user-generated text: :func:`selection_prompt` cleans every title with
:func:`~agents.text_safety.clean_item_text`, and answers are matched against those cleaned
titles (:func:`shown_titles`), which is what the model saw.
"""

from __future__ import annotations

from collections.abc import Sequence

from vragent.agents.backends.base import ChatPrompt
from vragent.agents.text_safety import clean_item_text

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
