"""Personas grounded in a real user's train-split history and profile fields."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache

from vragent.agents.ip_agent import ItemText
from vragent.agents.prompts import PersonaView
from vragent.agents.text_safety import clean_item_text

PROFILE_FIELDS = ("age", "gender", "occupation", "activity")
_GENDER = {"M": "male", "F": "female"}


def item_line(item: ItemText, profile_text: str | None = None) -> str:
    """How an item appears in prompts: sanitised title, then its category."""
    return _item_line(item, profile_text)


# Sanitising is the costly part of a prompt line and an item's text never changes, so every
# slate and history that shows the item again reuses the line (bounded: hostile titles can be
# long).
@lru_cache(maxsize=1 << 16)
def _item_line(item: ItemText, profile_text: str | None) -> str:
    title = clean_item_text(item.title).text or f"item {item.item_id}"
    cat = clean_item_text(item.category.replace("|", ", "), max_chars=60).text
    line = f"{title} [{cat}]" if cat else title
    if profile_text:
        line += f" — {clean_item_text(profile_text, max_chars=240).text}"
    # Quoted, so the text reads as data: the prompt's own quotes are the only double quotes
    # left (the system prompt says titles are quoted data, never instructions).
    return '"' + line.replace('"', "'") + '"'



def describe_profile(profile: Mapping[str, object], history: Sequence[ItemText]) -> str:
    """One sentence from the profile fields plus the user's favourite categories."""
    parts = []
    age, gender, job = profile.get("age"), profile.get("gender"), profile.get("occupation")
    who = " ".join(
        str(x) for x in (
            f"{int(age)}-year-old" if isinstance(age, int | float) and age == age else None,
            _GENDER.get(str(gender)),
            clean_item_text(job, 40).text if isinstance(job, str) and job != "none" else None,
        ) if x
    )
    parts.append(who or "A platform user")
    cats = Counter(
        c for it in history for c in (it.category or "").split("|") if c and c != "unknown"
    )
    if cats:
        parts.append("who mostly watches " + ", ".join(c for c, _ in cats.most_common(3)))
    activity = profile.get("activity")
    if isinstance(activity, str) and activity:
        parts.append(f"({activity} user)")
    return " ".join(parts) + "."


def build_persona(
    profile: Mapping[str, object],
    history: Sequence[ItemText],
    history_len: int = 10,
    recent: Sequence[ItemText] = (),
    recent_len: int = 5,
) -> PersonaView:
    """A persona: the profile sentence, real history titles and recent platform watches.

    The real history and the description built from it stay fixed during a run; only the
    platform watches grow. Prompts therefore share a long, stable prefix from step to step,
    which the backends reuse (docs/performance.md).

    Args:
        profile: the user's profile fields (any of age, gender, occupation, activity).
        history: the user's real watched items in time order (train split).
        history_len: how many of the most recent real items the prompt shows.
        recent: items watched in the simulation, in time order.
        recent_len: the prompt shows between ``recent_len`` and ``2 * recent_len - 1`` of the
            latest simulated watches: the window starts at a multiple of ``recent_len`` and
            moves only once per ``recent_len`` new watches, so the prompt mostly grows at
            its end instead of shifting every step.

    Returns:
        The persona view used in prompts.
    """
    shown = list(history)[-history_len:] if history_len > 0 else []
    latest: list[ItemText] = []
    if recent_len > 0:
        start = max(0, (len(recent) - recent_len) // recent_len * recent_len)
        latest = list(recent)[start:]
    return PersonaView(
        description=describe_profile(profile, history),
        history_titles=tuple(item_line(it) for it in shown),
        recent_titles=tuple(item_line(it) for it in latest),
    )
