"""The rows of the RL data: one prompt each, in the fixed :data:`COLUMNS` schema.

:class:`PromptBuilder` caches item texts and prompt pieces for a build; :func:`judgement_rows`,
:func:`selection_row` and :func:`preference_row` write the three tasks' rows (the schema is
described in :mod:`rl.datasets`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from vragent.agents.backends.base import ChatPrompt
from vragent.agents.ip_agent import ItemText
from vragent.agents.persona import build_persona, item_line
from vragent.agents.preference import preference_prompt
from vragent.agents.prompts import PersonaView, judgement_prompt
from vragent.agents.selection import selection_prompt, shown_titles
from vragent.environments.schema import Dataset
from vragent.sandbox.perception import item_texts
from vragent.sandbox.world import user_profiles

LIKE_RATING = 4  # explicit data: a rating at or above this is a "Yes"
CANDIDATE_LINE = "\nCandidate video:\n"  # how agents.prompts.user_turn appends the candidate
PREFERENCE_PROTOCOL = "open"  # preference rows have no negatives

COLUMNS = ("task", "protocol", "m", "group_id", "user_id", "item_ids", "history_ids",
           "history_titles", "prompt", "assistant_prefix", "candidates", "label",
           "correct_index", "source", "split")


class RLDataError(ValueError):
    """An RL data folder is missing or unreadable, or a build setting is invalid."""


@dataclass(frozen=True)
class UserSample:
    """One user's real data for the RL rows.

    Attributes:
        user_id: the user.
        sequence: the full real sequence (before any cut): no negative may come from it.
        history: the cut sequence without its last item, oldest first.
        target: the real next item (the cut sequence's last item).
        before_target: every item of the full sequence before the target (the history
            before the cut included): the hard recommender masks these.
    """

    user_id: int
    sequence: frozenset[int]
    history: tuple[int, ...]
    target: int
    before_target: frozenset[int]


_SLOT_MARK = "@@vragent-candidate-"
_SLOT = _SLOT_MARK + "{}@@"


class PromptBuilder:
    """Item texts and prompt pieces, built once per build and cached per item.

    Args:
        dataset: the dataset (items and users).
        history_len: history items a prompt shows.
        users: users whose profiles are needed.
    """

    def __init__(self, dataset: Dataset, history_len: int, users: Iterable[int]) -> None:
        self.texts = item_texts(dataset.items)
        self.history_len = history_len
        self.profiles = user_profiles(dataset.users, users)
        self._lines: dict[int, str] = {}
        self._shown: dict[int, str] = {}
        self._selection: tuple[tuple[tuple[int, ...], int], ChatPrompt] | None = None

    def text(self, item: int) -> ItemText:
        """The item's text (an empty one for items without a row)."""
        return self.texts.get(item) or ItemText(item, "")

    def line(self, item: int) -> str:
        """The judgement candidate line (sanitised title and category)."""
        line = self._lines.get(item)
        if line is None:
            line = self._lines[item] = item_line(self.text(item))
        return line

    def title(self, item: int) -> str:
        """The raw title for a selection prompt (cleaned there); never empty."""
        return self.text(item).title or f"item {item}"

    def shown_title(self, item: int) -> str:
        """The title as a selection prompt shows it (``shown_titles`` of :meth:`title`)."""
        shown = self._shown.get(item)
        if shown is None:
            shown = self._shown[item] = shown_titles([self.title(item)])[0]
        return shown

    def selection_chat(self, history: Sequence[int], items: Sequence[int]) -> ChatPrompt:
        """``selection_prompt`` of these history and candidate items, built fast.

        Cleaning titles dominates the build, and a user's history is the same for every
        protocol: the prompt is built once per history with slot markers for the candidates,
        which are then filled with the cleaned titles, exactly what ``selection_prompt`` would
        write there. Titles that contain a marker take the direct path.
        """
        key = (tuple(history), len(items))
        if self._selection is None or self._selection[0] != key:
            slots = [_SLOT.format(k) for k in range(len(items))]
            template = selection_prompt([self.title(i) for i in history], slots, thinking=True)
            self._selection = key, template
        template = self._selection[1]
        titles = [self.shown_title(i) for i in items]
        texts = [c for _, c in template.messages if isinstance(c, str)]
        clean = (len(texts) == len(template.messages)
                 and all("".join(texts).count(_SLOT.format(k)) == 1 for k in range(len(items)))
                 and not any(_SLOT_MARK in t for t in titles))
        if not clean:
            return selection_prompt([self.title(i) for i in history],
                                    [self.title(i) for i in items], thinking=True)
        messages = []
        for role, content in template.messages:
            for k, title in enumerate(titles):
                content = content.replace(_SLOT.format(k), title)
            messages.append((role, content))
        return ChatPrompt(messages=tuple(messages), assistant_prefix=template.assistant_prefix)

    def shown_history(self, sample: UserSample) -> list[int]:
        """The history items a prompt shows, oldest first."""
        return list(sample.history[-self.history_len:]) if self.history_len > 0 else []

    def persona(self, sample: UserSample) -> PersonaView:
        """The judgement persona, as the simulation builds it (profile + real history)."""
        history = [self.text(i) for i in sample.history]
        return build_persona(self.profiles.get(sample.user_id, {}), history, self.history_len)


def _row(prompts: PromptBuilder, **values: Any) -> dict[str, Any]:
    # Every row carries its history's titles as a selection prompt shows them, so evaluation
    # rebuilds a prompt variant from fields, never from the rendered text.
    values["history_titles"] = [prompts.shown_title(i) for i in values["history_ids"]]
    missing = set(COLUMNS) - set(values)
    if missing:
        raise AssertionError(f"row lacks {sorted(missing)}")
    return {c: values[c] for c in COLUMNS}


def group_id(split: str, source: str, user: int, task: str, protocol: str, m: int) -> str:
    """The id shared by one positive and its negatives."""
    return f"{split}:{source}:{user}:{task}:{protocol}:{m}"


def judgement_rows(
    prompts: PromptBuilder,
    persona: PersonaView,
    sample: UserSample,
    negatives: Sequence[int],
    *,
    split: str,
    protocol: str,
    source: str = "real",
) -> list[dict[str, Any]]:
    """One 1:m judgement group: the positive ("Yes") first, then each negative ("No").

    Args:
        prompts: the build's prompt builder.
        persona: the user's persona (:meth:`PromptBuilder.persona`).
        sample: the user's history and positive.
        negatives: the m negatives.
        split: ``"train"`` or ``"eval"``.
        protocol: the negative protocol.
        source: ``"real"`` or ``"run:<id>"``.

    Returns:
        1 + m rows.
    """
    m = len(negatives)
    gid = group_id(split, source, sample.user_id, "judgement", protocol, m)
    shown = prompts.shown_history(sample)
    rows = []
    for item, label in [(sample.target, "Yes"), *((n, "No") for n in negatives)]:
        line = prompts.line(item)
        chat = judgement_prompt(persona, line, think=True)
        rows.append(_row(
            prompts, task="judgement", protocol=protocol, m=m, group_id=gid, user_id=sample.user_id,
            item_ids=[int(item)], history_ids=shown, prompt=chat.as_dicts(),
            assistant_prefix=chat.assistant_prefix, candidates=[line], label=label,
            correct_index=-1, source=source, split=split,
        ))
    return rows


def selection_row(
    prompts: PromptBuilder,
    sample: UserSample,
    negatives: Sequence[int],
    rng: np.random.Generator,
    *,
    split: str,
    protocol: str,
    source: str = "real",
) -> dict[str, Any]:
    """One next-video selection prompt: the real next item and the negatives, shuffled.

    Args:
        prompts: the build's prompt builder.
        sample: the user's history and positive.
        negatives: the (3) negatives.
        rng: shuffles the candidates.
        split: ``"train"`` or ``"eval"``.
        protocol: the negative protocol.
        source: ``"real"`` or ``"run:<id>"``.

    Returns:
        The row; ``label`` is the real item's shown title.
    """
    items = [sample.target, *(int(n) for n in negatives)]
    items = [items[k] for k in rng.permutation(len(items))]
    correct = items.index(sample.target)
    shown = prompts.shown_history(sample)
    chat = prompts.selection_chat(shown, items)
    titles = [prompts.shown_title(i) for i in items]
    return _row(
        prompts, task="selection", protocol=protocol, m=len(negatives),
        group_id=group_id(split, source, sample.user_id, "selection", protocol, len(negatives)),
        user_id=sample.user_id, item_ids=items, history_ids=shown, prompt=chat.as_dicts(),
        assistant_prefix=chat.assistant_prefix, candidates=titles, label=titles[correct],
        correct_index=correct, source=source, split=split,
    )


def preference_row(
    prompts: PromptBuilder, sample: UserSample, *, split: str, source: str = "real"
) -> dict[str, Any]:
    """One open-ended preference prompt (the paper's ``video_preference``): history only.

    Args:
        prompts: the build's prompt builder.
        sample: the user's history and real next item.
        split: ``"train"`` or ``"eval"``.
        source: ``"real"`` or ``"run:<id>"``.

    Returns:
        The row: ``protocol`` :data:`PREFERENCE_PROTOCOL`, ``m`` 0, no candidates, ``label``
        the real next item's shown title (what the reward's embedding similarity compares
        the ``Next_video`` description with), ``item_ids`` that item.
    """
    shown = prompts.shown_history(sample)
    chat = preference_prompt([prompts.title(i) for i in shown], thinking=True)
    return _row(
        prompts, task="preference", protocol=PREFERENCE_PROTOCOL, m=0,
        group_id=group_id(split, source, sample.user_id, "preference", PREFERENCE_PROTOCOL, 0),
        user_id=sample.user_id, item_ids=[int(sample.target)], history_ids=shown,
        prompt=chat.as_dicts(), assistant_prefix=chat.assistant_prefix, candidates=[],
        label=prompts.shown_title(sample.target), correct_index=-1, source=source, split=split,
    )
