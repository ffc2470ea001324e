"""The paper's third, open-ended task: describe the user's preference and the next video.

The official code's ``video_preference`` task (``usagent/utils/prepare_video_preference_data.py``)
shows the viewing history only, with no candidates, and asks the model to "recommend the next
video content they might be interested in", answering ``<answer> (1) User_preferences: ...
(2) Next_video: ... </answer>``. Its reward (``reward_score/video_preference.py``, here
:func:`rl.rewards.score_preference`) compares the ``Next_video`` text with the real next item's
text by sentence-embedding similarity (all-MiniLM-L6-v2).

We keep the paper's instruction and answer format and lay the history out like the selection
prompt (``User's viewing history:`` then ``- title`` bullets, cleaned), so the SFT target and the
no-thinking ablation of :mod:`rl.prompting` treat the three tasks alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from vragent.agents.backends.base import ChatPrompt
from vragent.agents.selection import ANSWER_PREFIX, HISTORY_HEADER, THINK_PREFIX, shown_titles

PREFERENCE_INSTRUCTION = (
    "Based on the user's viewing history, analyze their preferences and describe the next video "
    "content they might be interested in."
)
PREFERENCE_FORMAT_THINKING = (
    "First show your analysis of the user's preferences in <think> </think> tags, then return "
    "the final answer in <answer> </answer> tags, in this format: "
    "<answer> (1) User_preferences: ...\n(2) Next_video: a short description of the next video "
    "</answer>."
)
PREFERENCE_FORMAT_NO_THINKING = (
    "Return only the final answer in <answer> </answer> tags, in this format: "
    "<answer> (1) User_preferences: ...\n(2) Next_video: a short description of the next video "
    "</answer>."
)


def preference_prompt(history_titles: Sequence[object], *, thinking: bool = True) -> ChatPrompt:
    """The open-ended preference prompt: the history, no candidates.

    Args:
        history_titles: titles the user watched, oldest first (raw; cleaned here).
        thinking: open the assistant turn with ``<think>``; ``False`` is the no-thinking
            ablation, opened with ``<answer>``.

    Returns:
        The chat prompt.
    """
    lines = [PREFERENCE_INSTRUCTION, HISTORY_HEADER]
    lines += [f"- {t}" for t in shown_titles(history_titles)] or ["- (no history yet)"]
    lines.append(PREFERENCE_FORMAT_THINKING if thinking else PREFERENCE_FORMAT_NO_THINKING)
    return ChatPrompt(messages=(("user", "\n".join(lines)),),
                      assistant_prefix=THINK_PREFIX if thinking else ANSWER_PREFIX)
