"""One readable trace of a run: what a simulated user thought about one recommendation.

``vragent run`` ends with the per-arm table and one traced decision, so the demo shows *why*
a user acted, not only rates. The pick is the first traced decision (arms in their scenario
order, then step, user, slot) whose completion passes the format check; failing that, the
first one with a closed, non-empty ``<think>`` block; failing that, none, and the counts say
why (a 135M model often writes no tags at all, or nothing). A head policy's reasoned decision
(:meth:`agents.us_agent.USAgent._reasoned`) has the preference it read as its reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from vragent.agents.parsing import parse_judgement
from vragent.agents.us_agent import trace_prefix
from vragent.sandbox.store import Arm, Decision, Item, Store

MAX_TRACE_TRANSCRIPTS = 2000  # traced decisions read at most; the demo needs only the first


@dataclass
class TracePick:
    """The chosen trace of a run, and what the run's traces were like.

    Attributes:
        traced: traced decisions in the run.
        read: how many of them were read (the first :data:`MAX_TRACE_TRANSCRIPTS`).
        malformed: of those read, how many failed the format check.
        empty: of those read, how many completions were empty.
        arm, step, user_id, position, item_id, title, action, p_like: the chosen decision
            (``arm`` is None when no trace has a readable ``<think>``).
        think, answer: its parsed reasoning and answer.
        problems: its format problems (empty when it passed the check).
    """

    traced: int = 0
    read: int = 0
    malformed: int = 0
    empty: int = 0
    arm: str | None = None
    step: int = 0
    user_id: int = 0
    position: int = 0
    item_id: int = 0
    title: str = ""
    action: str = ""
    p_like: float | None = None
    think: str = ""
    answer: str = ""
    problems: list[str] = field(default_factory=list)


def pick_trace(store: Store, run_id: str) -> TracePick:
    """The run's first well-formed trace, else its first readable ``<think>``, with counts."""
    traced = (Decision.run_id == run_id, Decision.traced.is_(True))
    with store.session() as s:
        total = s.scalar(select(func.count()).select_from(Decision).where(*traced)) or 0
        rows = s.execute(
            select(Decision.arm, Decision.step, Decision.user_id, Decision.position,
                   Decision.item_id, Decision.action, Decision.p_like, Decision.completion)
            .join(Arm, (Arm.run_id == Decision.run_id) & (Arm.name == Decision.arm))
            .where(*traced)
            .order_by(Arm.id, Decision.step, Decision.user_id, Decision.position)
            .limit(MAX_TRACE_TRANSCRIPTS)).all()
    out = TracePick(traced=int(total), read=len(rows))
    best, fallback = None, None
    for r in rows:
        # Parsed again from the raw completion: the stored think is the text up to the end
        # when </think> is missing, which is not a readable chain of thought.
        parsed = parse_judgement(r.completion or "", trace_prefix(r.completion))
        if not (r.completion or "").strip():
            out.empty += 1
        if not parsed.format_ok:
            out.malformed += 1
        if not parsed.think:  # a reasoned decision's reasoning is the preference it read
            parsed.think = parsed.user_preference
        closed = parsed.think and not any(p.startswith("</think>") for p in parsed.problems)
        if best is None and parsed.format_ok and parsed.think:
            best = (r, parsed)
        elif fallback is None and closed:
            fallback = (r, parsed)
    chosen = best or fallback
    if chosen is None:
        return out
    r, parsed = chosen
    with store.session() as s:
        title = s.scalar(select(Item.title).where(Item.run_id == run_id,
                                                  Item.item_id == r.item_id)) or ""
    out.arm, out.step, out.user_id, out.position = r.arm, r.step, r.user_id, r.position
    out.item_id, out.title, out.action, out.p_like = r.item_id, title, r.action, r.p_like
    out.think, out.answer, out.problems = parsed.think, parsed.answer, parsed.problems
    return out
