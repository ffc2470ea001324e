"""The typed payloads of one simulation step, as they travel through the step graph.

``recommend`` makes a :class:`Slate` per active user and arm; the fan-out sends each group of
users as a :class:`UserTask`; ``simulate_users`` answers with a :class:`TaskOutcome` (one
:class:`UserOutcome` per user, plus the task's metered LLM calls); ``log`` writes them. They sit in
the LangGraph state, so its checkpoints hold them: :data:`CHECKPOINT_TYPES` is the list the
checkpoint serializer is allowed to rebuild (``sandbox.runner``).

Decision and LLM-call rows stay plain dicts keyed by the store's column names: they go to the
store's bulk inserts as they are (``Store.log_step``), and a typed copy of a million rows per step
would cost more than it explains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SlateEntry:
    """One shown item: the recommender's score, or an item a friend liked (``social``)."""

    item_id: int
    score: float  # 0.0 for a social item, which no recommender ranked
    social: bool = False


@dataclass(frozen=True, slots=True)
class Slate:
    """What one user is shown in one arm at one step, top first."""

    user_id: int
    entries: Sequence[SlateEntry]


@dataclass(frozen=True, slots=True)
class UserTask:
    """One fan-out task: a group of one arm's users and their slates."""

    step: int
    arm: str
    batch_key: int  # the task's index in the step: seeds its draws, orders its LLM calls
    slates: Sequence[Slate]


@dataclass(frozen=True, slots=True)
class UserOutcome:
    """What one user did with one slate, and whether the session ended."""

    arm: str
    user_id: int
    left: bool
    leave_prob: float
    leave_draw: float | None
    wall_s: float  # the task's wall time, shared equally by its users
    decisions: Sequence[dict[str, Any]]  # one row per shown item: the store's decision columns


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """A fan-out task's answer: its users' outcomes and the LLM calls it made."""

    users: Sequence[UserOutcome]
    llm_calls: Sequence[dict[str, Any]]  # the store's llm_calls columns, the step added later


CHECKPOINT_TYPES = [(__name__, cls.__name__)
                    for cls in (SlateEntry, Slate, UserTask, UserOutcome, TaskOutcome)]
