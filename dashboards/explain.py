"""Why a simulated user did what they did, in one sentence per decision and per slate end.

The US agent stores what decided each action (``agents.us_agent.DecisionRecord``: the rule,
the seeded uniform ``draw``, the like threshold ``like_cut``; per slate the leave probability
and its draw). These functions turn those fields into the sentences the trace explorer shows,
for example ``skip: u = 0.95 ≥ p(watch) = 0.91``. Stores older than those fields get a sentence
that says so instead of a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vragent.dashboards.data import finite

TRACE_LABELS = {
    "decided": "✎ reasoning that decided this action",
    "separate": "✎ a separate generation, stored for inspection: it did not decide this action",
}
OLD_TRACE = "✎ reasoning (this older store does not record whether it decided the action)"


def decision_sentence(row: Mapping[str, Any]) -> str:
    """The rule and numbers that turned a decision into its action.

    Args:
        row: a decision with ``action, rule, draw, like_cut, p_like, answer, fallback`` (as
            ``dashboards.traces_data.user_decisions`` returns it).
    """
    action, rule = str(row.get("action")), row.get("rule")
    u, cut, p = finite(row.get("draw")), finite(row.get("like_cut")), finite(row.get("p_like"))
    if rule == "draw" and u is not None and p is not None and cut is not None:
        if action == "like":
            return f"like: u = {u:.2f} < p(watch) × like share = {cut:.2f}"
        if action == "watch":
            return f"watch: p(watch) × like share = {cut:.2f} ≤ u = {u:.2f} < p(watch) = {p:.2f}"
        return f"skip: u = {u:.2f} ≥ p(watch) = {p:.2f}"
    if rule == "answer":
        head = f" (p(Yes) = {p:.2f})" if p is not None else ""
        if action == "skip":
            return f"skip: the answer was No{head}"
        if u is not None and cut is not None:
            sign = "<" if action == "like" else "≥"
            return f"{action}: the answer was Yes{head}; like draw u = {u:.2f} {sign} like share " \
                   f"{cut:.2f}"
        return f"{action}: the answer was Yes{head}"
    if rule == "invalid" or row.get("fallback") == "invalid":
        return "skip: no readable Yes/No answer after the format retries"
    return f"{action}: this older store does not record the draw that decided it"


def leave_sentence(left: bool, leave_prob: Any, leave_draw: Any, watched: int) -> str:
    """Whether the user left after the slate, and the draw that decided it."""
    p, u = finite(leave_prob), finite(leave_draw)
    why = " (nothing on the slate was watched)" if watched == 0 else ""
    if p is None or u is None:
        return ("⏏ left the session after this slate" if left else "stayed for the next slate") \
            + (f"; p(leave) = {p:.2f}{why}" if p is not None else "")
    if left:
        return f"⏏ left: u = {u:.2f} < p(leave) = {p:.2f}{why}"
    return f"stayed: u = {u:.2f} ≥ p(leave) = {p:.2f}{why}"


def trace_label(row: Mapping[str, Any]) -> str:
    """What a stored reasoning is: the one that decided, or a separate generation."""
    return TRACE_LABELS.get(str(row.get("trace_role")), OLD_TRACE)


def trace_format(row: Mapping[str, Any]) -> str:
    """The trace's own format flag, kept apart from the decision's."""
    ok = row.get("trace_ok")
    if ok is None or (isinstance(ok, float) and math.isnan(ok)):
        ok = row.get("format_ok")
    return "✔ well-formed trace" if bool(ok) else "✘ malformed trace"
