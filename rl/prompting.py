"""RL data rows as model inputs: rendered prompts, the no-thinking variant, SFT targets.

A row holds chat messages plus the assistant prefix (``<think>``). The model sees exactly what
the simulator's ``hf`` backend renders: the tokenizer's chat template with a generation prompt,
then the prefix (``HFBackend.render``). Training and simulation therefore share every token of
the prompt, so a policy trained here behaves the same when the simulator runs it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from vragent.agents.backends.base import ChatPrompt
from vragent.agents.preference import PREFERENCE_FORMAT_NO_THINKING, PREFERENCE_FORMAT_THINKING
from vragent.agents.prompts import (
    JUDGE_FORMAT_NO_THINKING,
    JUDGE_FORMAT_THINKING,
    SCORE_PREFIX,
    THINK_PREFIX,
)
from vragent.agents.selection import (
    ANSWER_PREFIX,
    FORMAT_NO_THINKING,
    FORMAT_THINKING,
    selection_letter_prompt,
)

_CATEGORY = re.compile(r"\[([^\[\]]+)\]\s*$")
HISTORY_HEADER = "User's viewing history:"


def no_thinking_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The same messages with the answer-only instruction of the no_thinking ablation."""
    out = []
    for m in messages:
        text = str(m["content"]).replace(JUDGE_FORMAT_THINKING, JUDGE_FORMAT_NO_THINKING)
        text = text.replace(FORMAT_THINKING, FORMAT_NO_THINKING)
        text = text.replace(PREFERENCE_FORMAT_THINKING, PREFERENCE_FORMAT_NO_THINKING)
        out.append({"role": str(m["role"]), "content": text})
    return out


def prompt_for(row: Mapping[str, Any], thinking: bool = True) -> tuple[list[dict[str, str]], str]:
    """A row's messages and assistant prefix, in the thinking or no-thinking variant."""
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["prompt"]]
    if thinking:
        return messages, str(row.get("assistant_prefix") or THINK_PREFIX)
    return no_thinking_messages(messages), ANSWER_PREFIX


def render(tokenizer: Any, messages: Sequence[Mapping[str, str]], prefix: str) -> str:
    """The exact prompt text: chat template with a generation prompt, then the prefix."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=True)
    return text + prefix


def history_lines(messages: Sequence[Mapping[str, str]]) -> list[str]:
    """The ``- title`` bullets after "User's viewing history:" in the user message."""
    user = next((str(m["content"]) for m in messages if m["role"] == "user"), "")
    lines = user.split("\n")
    try:
        start = lines.index(HISTORY_HEADER) + 1
    except ValueError:
        return []
    out = []
    for line in lines[start:]:
        if not line.startswith("- "):
            break
        if line != "- (no history yet)":
            out.append(line[2:].strip())
    return out


def _preference(history: Sequence[str]) -> str:
    cats = Counter(c.strip() for h in history if (m := _CATEGORY.search(h))
                   for c in m.group(1).split(",") if c.strip())
    if cats:
        return ", ".join(c for c, _ in cats.most_common(3))
    return history[-1] if history else "unknown"


def sft_target(row: Mapping[str, Any], thinking: bool = True) -> str:
    """The completion SFT teaches for a row (the text after the assistant prefix).

    It says only what the log shows: the latest history item and the candidate (judgement) in
    the reasoning, the most frequent history categories as the preference, then the real answer
    (preference: the real next item's title as the ``Next_video`` description).

    Args:
        row: an RL data row (``task``, ``prompt``, ``candidates``, ``label``).
        thinking: with the ``<think>`` part (the prefix opened it) or answer only.

    Returns:
        The target completion, without an end-of-sequence token.
    """
    history = history_lines(row["prompt"])
    task = row["task"]
    field = "Prediction" if task == "judgement" else "Next_video"
    pref = "User_preferences" if task == "preference" else "User_preference"
    answer = f" (1) {pref}: {_preference(history)}\n(2) {field}: {row['label']} </answer>"
    if not thinking:
        return answer
    recent = history[-1] if history else "nothing yet"
    cands = row["candidates"]
    seen = (f"The candidate is {cands[0]}." if task == "judgement"
            else f"There are {len(cands)} candidates." if task == "selection"
            else "The next video should fit these interests.")
    return f" The user last watched {recent}. {seen} </think>\n<answer>{answer}"


# ---------------------------------------------------------------------------- evaluation prompts

Row = Mapping[str, Any]


def row_chat_prompt(row: Row, assistant_prefix: str | None = None) -> ChatPrompt:
    """The row's prompt as a :class:`ChatPrompt` (its own ``assistant_prefix`` by default)."""
    messages = tuple((str(m["role"]), str(m["content"])) for m in row["prompt"])
    prefix = row.get("assistant_prefix", "") if assistant_prefix is None else assistant_prefix
    return ChatPrompt(messages=messages, assistant_prefix=prefix or "")


def judgement_score_prompt(row: Row) -> ChatPrompt:
    """The row's judgement messages opened right before the Yes/No word (``SCORE_PREFIX``)."""
    return row_chat_prompt(row, SCORE_PREFIX)


def selection_score_prompt(row: Row) -> ChatPrompt:
    """The row's selection prompt rebuilt with letter labels for one-token scoring.

    From the row's fields: ``history_titles`` and ``candidates`` (both already the shown,
    cleaned text; cleaning again changes nothing).
    """
    return selection_letter_prompt(list(row["history_titles"]), list(row["candidates"]))
