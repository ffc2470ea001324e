"""The trace explorer's reads: users of a run and arm, one user's decisions, reasoning text.

Cached, read-only queries in the manner of :mod:`dashboards.data` (its engine and helpers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import case, exists, func, or_, select
from vragent.dashboards.data import (
    TTL_S,
    _frame,
    _like_pattern,
    _rows,
    engine,
    has,
    has_column,
    item_titles,
    present,
    step_numbers,
)
from vragent.sandbox.store import Decision, Impression, SessionEvent, SimUser

BEHAVIOURS = ("any", "left", "stayed", "liked ≥ N", "watched ≥ N", "watched nothing",
              "has reasoning")


def _users_query(url: str, run_id: str, arm: str, text: str, behaviour: str, n: int,
                 reasoning: str = "") -> Any:
    u = SimUser.__table__
    cols = [u.c.user_id, u.c.persona]
    frm: Any = u
    agg = None
    if has(url, "sessions"):
        e = SessionEvent.__table__
        agg = (select(e.c.user_id.label("uid"), func.count().label("slates"),
                      func.sum(e.c.n_watch).label("watches"), func.sum(e.c.n_like).label("likes"),
                      func.min(case((e.c.left.is_(True), e.c.step))).label("left_at"))
               .where(e.c.run_id == run_id, e.c.arm == arm).group_by(e.c.user_id).subquery())
        frm = u.outerjoin(agg, agg.c.uid == u.c.user_id)
        cols += [agg.c.slates, agg.c.watches, agg.c.likes, agg.c.left_at]
    q = select(*cols).select_from(frm).where(u.c.run_id == run_id)
    text = text.strip()
    if text.isdigit():
        q = q.where(u.c.user_id == int(text))
    elif text:
        q = q.where(u.c.persona.ilike(_like_pattern(text), escape="\\"))
    if agg is not None:
        if behaviour == "left":
            q = q.where(agg.c.left_at.is_not(None))
        elif behaviour == "stayed":
            q = q.where(agg.c.slates > 0, agg.c.left_at.is_(None))
        elif behaviour == "liked ≥ N":
            q = q.where(agg.c.likes >= n)
        elif behaviour == "watched ≥ N":
            q = q.where(agg.c.watches >= n)
        elif behaviour == "watched nothing":
            q = q.where(agg.c.slates > 0, agg.c.watches == 0)
    reasoning = reasoning.strip()
    if (behaviour == "has reasoning" or reasoning) and has(url, "decisions"):
        # A correlated EXISTS walks the (run, arm, user) index of each candidate user only.
        d = Decision.__table__
        cond = [d.c.run_id == run_id, d.c.arm == arm, d.c.user_id == u.c.user_id,
                d.c.traced.is_(True)]
        if reasoning:
            pattern = _like_pattern(reasoning)
            cond.append(or_(d.c.think.ilike(pattern, escape="\\"),
                            d.c.answer.ilike(pattern, escape="\\")))
        q = q.where(exists(select(d.c.id).where(*cond)))
    return q


@st.cache_data(ttl=TTL_S, show_spinner=False)
def users_page(url: str, run_id: str, arm: str, text: str = "", behaviour: str = "any",
               n: int = 1, limit: int = 50, offset: int = 0,
               reasoning: str = "") -> tuple[pd.DataFrame, int]:
    """A page of a run's users, filtered by id or persona text and by behaviour in one arm.

    Args:
        url: the store.
        run_id: the run.
        arm: the arm whose sessions the behaviour filter reads.
        text: a user id (digits only), or text the persona contains (case-insensitive).
        behaviour: one of :data:`BEHAVIOURS`.
        n: the N of ``liked ≥ N`` and ``watched ≥ N``.
        limit: page size.
        offset: first row of the page.
        reasoning: text that one of the user's stored reasonings (think or answer) contains.

    Returns:
        The page (``user_id, persona, slates, watches, likes, left_at``) and the number of
        users that match.
    """
    cols = ["user_id", "persona", "slates", "watches", "likes", "left_at"]
    if not has(url, "users"):
        return pd.DataFrame(columns=cols), 0
    q = _users_query(url, run_id, arm, text, behaviour, n, reasoning)
    with engine(url).connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(q.subquery())).scalar() or 0)
        res = conn.execute(q.order_by(SimUser.__table__.c.user_id).limit(limit).offset(offset))
        df = pd.DataFrame([tuple(r) for r in res], columns=list(res.keys()))
    for c in cols:
        if c not in df.columns:
            df[c] = None
    return df[cols], total


@st.cache_data(ttl=TTL_S, show_spinner=False)
def user_info(url: str, run_id: str, user_id: int) -> dict[str, Any] | None:
    """A simulated user's persona, profile, real history (with titles) and friends."""
    if not has(url, "users"):
        return None
    u = SimUser.__table__
    with engine(url).connect() as conn:
        row = conn.execute(select(*present(url, u)).where(u.c.run_id == run_id,
                                                           u.c.user_id == user_id)
                           ).mappings().first()
    if row is None:
        return None
    out = dict(row)
    history = [int(i) for i in (out.get("history") or [])]
    out["history"] = history
    titles = item_titles(url, run_id, tuple(history))
    out["history_titles"] = [(i, titles.get(i, "")) for i in history]
    return out


def real_positives(info: dict[str, Any] | None) -> set[int]:
    """The items the real log says the user liked: the stored real history.

    A ``heldout`` list (``users.heldout`` when a store has that column, or ``profile.heldout``)
    counts too, so held-out items make the disagreement filter sharper once they are stored.
    """
    if not info:
        return set()
    out = {int(i) for i in info.get("history") or []}
    for extra in (info.get("heldout"), (info.get("profile") or {}).get("heldout")):
        if isinstance(extra, list):
            out |= {int(i) for i in extra if isinstance(i, int | float)}
    return out


EXPLAIN_COLUMNS = ("rule", "draw", "like_cut", "trace_role", "trace_ok")


def user_decisions_stmt(run_id: str, arm: str, user_id: int, steps: Sequence[int],
                        extra: Sequence[str] = ()) -> Any:
    """The query of one user's decisions (prompts left out), with the ``extra`` columns.

    ``step IN (…)`` names every step of the run, so the unique ``(run, arm, step, user,
    position)`` key is searched on all four columns: without it SQLite walks that key over
    the whole arm to return rows in step order (80 ms instead of 0.3 ms at 500,000 decisions
    per arm).
    """
    d = Decision.__table__
    cond = [d.c.run_id == run_id, d.c.arm == arm, d.c.user_id == user_id]
    if steps:
        cond.append(d.c.step.in_(list(steps)))
    return (select(d.c.step, d.c.position, d.c.item_id, d.c.action, d.c.p_like, d.c.format_ok,
                   d.c.fallback, d.c.traced, d.c.think, d.c.answer, d.c.model_id, d.c.tokens_in,
                   d.c.tokens_out, d.c.latency_ms, *(d.c[c] for c in extra))
            .where(*cond).order_by(d.c.step, d.c.position))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def user_decisions(url: str, run_id: str, arm: str, user_id: int) -> pd.DataFrame:
    """Every decision of one user in one arm, without prompts (index ``run, arm, user``).

    Columns: ``step, position, item_id, title, action, p_like, format_ok, fallback, traced,
    think, answer, model_id, tokens_in, tokens_out, latency_ms``, what decided the action
    (``rule, draw, like_cut, trace_role, trace_ok``: NULL in stores older than those columns),
    ``rec_score, source``, and the slate's end: ``left`` (the user left the session after this
    step's slate), ``leave_prob`` and ``leave_draw``.
    """
    cols = ["step", "position", "item_id", "title", "action", "p_like", "format_ok", "fallback",
            "traced", "think", "answer", "model_id", "tokens_in", "tokens_out", "latency_ms",
            *EXPLAIN_COLUMNS, "rec_score", "source", "left", "leave_prob", "leave_draw"]
    if not has(url, "decisions"):
        return pd.DataFrame(columns=cols)
    extra = [c for c in EXPLAIN_COLUMNS if has_column(url, "decisions", c)]
    df = _frame(url, user_decisions_stmt(run_id, arm, user_id, step_numbers(url, run_id),
                                         extra))
    if df.empty:
        return pd.DataFrame(columns=cols)
    for c in EXPLAIN_COLUMNS:
        if c not in df.columns:
            df[c] = None
    steps = sorted({int(s) for s in df["step"]})
    titles = item_titles(url, run_id, tuple(int(i) for i in df["item_id"]))
    df["title"] = [titles.get(int(i), "") for i in df["item_id"]]
    df["rec_score"] = None
    df["source"] = None
    df["left"] = False
    with engine(url).connect() as conn:
        if has(url, "impressions"):
            # step IN (...) lets the unique (run, arm, step, user, position) key do the work.
            im = Impression.__table__
            extra = [im.c.source] if has_column(url, "impressions", "source") else []
            rows = conn.execute(select(im.c.step, im.c.position, im.c.rec_score, *extra).where(
                im.c.run_id == run_id, im.c.arm == arm, im.c.step.in_(steps),
                im.c.user_id == user_id)).all()
            imp = {(int(r[0]), int(r[1])): r[2:] for r in rows}
            keys = list(zip(df["step"].astype(int), df["position"].astype(int), strict=True))
            df["rec_score"] = [imp.get(k, (None,))[0] for k in keys]
            if extra:
                df["source"] = [(imp.get(k, (None, None))[1] or "rec") if k in imp else None
                                for k in keys]
        df["leave_prob"] = None
        df["leave_draw"] = None
        if has(url, "sessions"):
            e = SessionEvent.__table__
            draw = [e.c.leave_draw] if has_column(url, "sessions", "leave_draw") else []
            ends = {int(r[0]): r[1:] for r in conn.execute(
                select(e.c.step, e.c.left, e.c.leave_prob, *draw).where(
                    e.c.run_id == run_id, e.c.arm == arm, e.c.step.in_(steps),
                    e.c.user_id == user_id))}
            at = [ends.get(int(s)) for s in df["step"]]
            df["left"] = [bool(r[0]) if r else False for r in at]
            df["leave_prob"] = [r[1] if r else None for r in at]
            df["leave_draw"] = [r[2] if r and len(r) > 2 else None for r in at]
    return df[cols]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def decision_texts(url: str, run_id: str, arm: str, user_id: int,
                   steps: tuple[int, ...]) -> dict[tuple[int, int], tuple[str, str | None]]:
    """``(step, position) -> (prompt, completion)`` of one user's decisions at these steps."""
    if not steps or not has(url, "decisions"):
        return {}
    d = Decision.__table__
    rows = _rows(url, select(d.c.step, d.c.position, d.c.prompt, d.c.completion).where(
        d.c.run_id == run_id, d.c.arm == arm, d.c.user_id == user_id,
        d.c.step.in_(list(steps))))
    return {(int(s), int(p)): (prompt or "", completion) for s, p, prompt, completion in rows}


def disagreement(decisions: pd.DataFrame, positives: set[int]) -> pd.Series:
    """Whether each decision disagrees with the real log.

    A decision disagrees when it skips a real-positive item (one in the user's real history)
    or watches or likes an item that is not a real positive.
    """
    if decisions.empty:
        return pd.Series([], dtype=bool)
    real = decisions["item_id"].astype(int).isin(positives)
    engaged = decisions["action"].isin(("watch", "like"))
    return (~engaged & real) | (engaged & ~real)
