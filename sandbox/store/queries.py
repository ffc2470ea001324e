"""The store's reads, one implementation each.

The CLI, the exports, the A/B analysis, the dashboard and the benchmarks all read through
these.

Every function takes an open SQLAlchemy ``Connection``: :class:`~sandbox.store.writes.Store`
passes its own, the dashboard a read-only one (``engine.read_only_engine``) and caches the
result. Reads work on stores not yet migrated (the dashboard never migrates): a table a store
lacks reads as empty, and ``llm_totals`` falls back to summing ``llm_calls``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import Connection, Integer, case, func, inspect, select
from vragent.sandbox.store.schema import (
    IP_AGENT_LABEL,
    AbArmValue,
    AbComparison,
    Arm,
    Base,
    Decision,
    LlmCall,
    LlmTotal,
    Metric,
    Run,
    SessionEvent,
    StepRow,
)

CHUNK = 500  # ids per IN (...) list


def has_table(conn: Connection, name: str) -> bool:
    """Whether the store has table ``name`` (a store made by an older version may not)."""
    return inspect(conn).has_table(name)


def arm_order(conn: Connection, run_id: str) -> list[str]:
    """A run's arm names in creation order."""
    return list(conn.scalars(select(Arm.name).where(Arm.run_id == run_id).order_by(Arm.id)))


# ---------------------------------------------------------------------------- LLM use


def llm_call_sums(run_id: str, *where: Any) -> Any:
    """The one aggregate of a run's ``llm_calls`` per agent and arm (a select statement).

    Columns: ``agent, arm``, calls sent, cache hits, then tokens in, tokens out and latency (ms)
    summed over the calls sent; ``where`` narrows it (e.g. to one agent).
    """
    c = LlmCall.__table__
    sent = c.c.cached.is_(False)
    return (select(c.c.agent, c.c.arm, func.sum(case((sent, 1), else_=0)),
                   func.sum(case((sent, 0), else_=1)),
                   func.sum(case((sent, c.c.tokens_in), else_=0)),
                   func.sum(case((sent, c.c.tokens_out), else_=0)),
                   func.sum(case((sent, c.c.latency_ms), else_=0.0)))
            .where(c.c.run_id == run_id, *where).group_by(c.c.agent, c.c.arm))


@dataclass(frozen=True)
class LlmUse:
    """One agent's LLM use in one arm: calls sent, cache hits, and what the sent calls cost.

    Attributes:
        agent: ``"us"`` or ``"ip"``.
        arm: the arm (``""`` for the IP agent).
        calls: prompts sent to the backend.
        cache_hits: prompts served from the response cache.
        tokens_in: prompt tokens of the calls sent.
        tokens_out: completion tokens of the calls sent.
        latency_ms: latency summed over the calls sent.
    """

    agent: str
    arm: str
    calls: int
    cache_hits: int
    tokens_in: int
    tokens_out: int
    latency_ms: float

    @property
    def latency_mean_ms(self) -> float | None:
        """Mean latency of the calls sent (``None`` when none was sent)."""
        return self.latency_ms / self.calls if self.calls else None


def _use(row: Sequence[Any]) -> LlmUse:
    agent, arm, n, hits, t_in, t_out, lat = row
    return LlmUse(str(agent), str(arm), int(n or 0), int(hits or 0), int(t_in or 0),
                  int(t_out or 0), float(lat or 0.0))


def llm_use(conn: Connection, run_id: str) -> list[LlmUse]:
    """A run's LLM use per agent and arm.

    The US agent's comes from ``llm_totals`` (kept by each step's transaction: a millisecond
    where aggregating ten million calls takes seconds); the IP agent's, and every agent's in a
    store without that table, from one pass over the run's ``llm_calls``.
    """
    if not has_table(conn, LlmCall.__tablename__):
        return []
    kept: list[LlmUse] = []
    if has_table(conn, LlmTotal.__tablename__):
        t = LlmTotal.__table__
        kept = [_use(r) for r in conn.execute(select(
            t.c.agent, t.c.arm, t.c.calls, t.c.cache_hits, t.c.tokens_in, t.c.tokens_out,
            t.c.latency_ms).where(t.c.run_id == run_id))]
    # The US agent's calls are in llm_totals once any is; "ip" keeps to the index's
    # (run, agent) prefix.
    where = [LlmCall.agent != "us"] if kept else []
    return kept + [_use(r) for r in conn.execute(llm_call_sums(run_id, *where))]


def latencies(conn: Connection, run_id: str, agent: str, arm: str) -> np.ndarray:
    """Latency (ms) of every call of one agent and arm that was sent to the LLM."""
    if conn.dialect.name == "sqlite":
        # The raw cursor reads a million floats about twice as fast as SQLAlchemy rows.
        cur = conn.connection.dbapi_connection.cursor()
        try:
            cur.execute("SELECT latency_ms FROM llm_calls WHERE run_id = ? AND agent = ? "
                        "AND arm = ? AND cached = 0", (run_id, agent, arm))
            return np.fromiter((r[0] for r in cur), dtype=np.float64)
        finally:
            cur.close()
    c = LlmCall.__table__
    return np.asarray(conn.execute(select(c.c.latency_ms).where(
        c.c.run_id == run_id, c.c.agent == agent, c.c.arm == arm,
        c.c.cached.is_(False))).scalars().all(), dtype=np.float64)


def prices(config: dict | None) -> dict | None:
    """The scenario's ``backend.prices`` (per million tokens), or ``None``."""
    found = ((config or {}).get("backend") or {}).get("prices")
    return found if isinstance(found, dict) else None


def cost(price: dict | None, tokens_in: int, tokens_out: int) -> float | None:
    """What the tokens cost at ``price`` (``None`` without prices or with unreadable ones)."""
    if not price:
        return None
    try:
        return (tokens_in * float(price["input_per_1m"])
                + tokens_out * float(price["output_per_1m"])) / 1e6
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class MeterRow:
    """One row of a run's LLM metering table: an arm's US agent, or the IP agent.

    Attributes:
        arm: the arm, or ``"ip-agent"``.
        agent: ``"us"`` or ``"ip"``.
        calls: prompts sent to the backend.
        cache_hits: prompts served from the response cache.
        tokens_in: prompt tokens of the calls sent.
        tokens_out: completion tokens of the calls sent.
        latency_mean_ms: mean latency of the calls sent.
        latency_p50_ms: median latency (``None`` unless asked for, or no call was sent).
        latency_p95_ms: 95th percentile.
        latency_p99_ms: 99th percentile.
        cost: at the scenario's ``backend.prices``; ``None`` without them.
    """

    arm: str
    agent: str
    calls: int
    cache_hits: int
    tokens_in: int
    tokens_out: int
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    cost: float | None


def metering(conn: Connection, run_id: str, percentiles: bool = True) -> list[MeterRow]:
    """LLM use per arm (in the run's arm order), then the IP agent.

    Tokens, latency and cost cover the sent prompts only (a cache hit costs nothing). Calls of
    a step lost in a crash are not counted; the resumed run replays them, mostly as cache hits.

    Args:
        conn: an open connection to the store.
        run_id: the run.
        percentiles: also read every sent call's latency for p50/p95/p99 (numpy's linear
            interpolation); slower on big runs.
    """
    run = conn.execute(select(Run.config).where(Run.id == run_id)).first()
    config = (run[0] or {}) if run else {}
    ip_enabled = bool((config.get("ip_agent") or {}).get("enabled"))
    by_key = {(u.agent, u.arm): u for u in llm_use(conn, run_id)}
    order = arm_order(conn, run_id)
    keys = [("us", a) for a in order] + sorted(k for k in by_key if k[0] == "us" and k[
        1] not in order)
    if ip_enabled or ("ip", "") in by_key:
        keys.append(("ip", ""))
    price = prices(config)
    out = []
    for agent, arm in keys:
        use = by_key.get((agent, arm)) or LlmUse(agent, arm, 0, 0, 0, 0, 0.0)
        pct: list[float | None] = [None, None, None]
        if percentiles:
            lat = latencies(conn, run_id, agent, arm)
            if lat.size:
                pct = [float(v) for v in np.percentile(lat, [50, 95, 99])]
        out.append(MeterRow(IP_AGENT_LABEL if agent == "ip" else arm, agent, use.calls,
                            use.cache_hits, use.tokens_in, use.tokens_out, use.latency_mean_ms,
                            *pct, cost(price, use.tokens_in, use.tokens_out)))
    return out


# ---------------------------------------------------------------------------- metrics


class MetricPoint(NamedTuple):
    """One per-step metric of one arm of one run."""

    run_id: str
    arm: str
    step: int
    name: str
    value: float


def metric_series(conn: Connection, run_ids: Sequence[str]) -> list[MetricPoint]:
    """Per-step metrics of runs, ordered by run, arm, step and name."""
    m = Metric.__table__
    if not run_ids or not has_table(conn, m.name):
        return []
    ids = list(dict.fromkeys(run_ids))
    out: list[MetricPoint] = []
    for start in range(0, len(ids), CHUNK):
        out += [MetricPoint(*r) for r in conn.execute(
            select(m.c.run_id, m.c.arm, m.c.step, m.c.name, m.c.value)
            .where(m.c.run_id.in_(ids[start:start + CHUNK])))]
    return sorted(out, key=lambda p: (p.run_id, p.arm, p.step, p.name))


# ---------------------------------------------------------------------------- runs


def arm_summary(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    """Per-arm totals: impressions, watch/like rates, exits, tokens, time."""
    dec = conn.execute(
        select(
            Decision.arm,
            func.count(),
            func.sum((Decision.action != "skip").cast(Integer)),
            func.sum((Decision.action == "like").cast(Integer)),
            func.sum(Decision.tokens_in),
            func.sum(Decision.tokens_out),
            func.sum(Decision.traced.cast(Integer)),
            func.sum((~Decision.format_ok).cast(Integer)),
            func.avg(Decision.p_like),
        ).where(Decision.run_id == run_id).group_by(Decision.arm)
    ).all()
    sess = dict(
        conn.execute(
            select(SessionEvent.arm, func.sum(SessionEvent.left.cast(Integer)))
            .where(SessionEvent.run_id == run_id).group_by(SessionEvent.arm)
        ).all()
    )
    users = dict(
        conn.execute(
            select(SessionEvent.arm, func.count(func.distinct(SessionEvent.user_id)))
            .where(SessionEvent.run_id == run_id).group_by(SessionEvent.arm)
        ).all()
    )
    wall = dict(
        conn.execute(
            select(StepRow.arm, func.sum(StepRow.wall_s))
            .where(StepRow.run_id == run_id).group_by(StepRow.arm)
        ).all()
    )
    order = arm_order(conn, run_id)
    by_arm = {row[0]: row for row in dec}
    out = []
    for arm in order:
        row = by_arm.get(arm)
        n = int(row[1]) if row else 0
        out.append({
            "arm": arm,
            "users": int(users.get(arm, 0)),
            "impressions": n,
            "watch_rate": (int(row[2] or 0) / n) if n else 0.0,
            "like_rate": (int(row[3] or 0) / n) if n else 0.0,
            "mean_p_like": float(row[8]) if row and row[8] is not None else None,
            "exits": int(sess.get(arm, 0) or 0),
            "tokens_in": int(row[4] or 0) if row else 0,
            "tokens_out": int(row[5] or 0) if row else 0,
            "traced": int(row[6] or 0) if row else 0,
            "format_errors": int(row[7] or 0) if row else 0,
            "wall_s": float(wall.get(arm, 0.0) or 0.0),
        })
    return out


# ---------------------------------------------------------------------------- A/B results


def ab_results(conn: Connection, experiment_id: str) -> tuple[list[dict], list[dict]]:
    """An experiment's arm values and comparisons as plain dicts, in the order stored."""
    def rows(model: type[Base]) -> list[dict]:
        t = model.__table__
        if not has_table(conn, t.name):
            return []
        cols = [c for c in t.columns if c.name != "id"]
        res = conn.execute(select(*cols).where(t.c.experiment_id == experiment_id)
                           .order_by(t.c.id))
        return [dict(r) for r in res.mappings()]
    return rows(AbArmValue), rows(AbComparison)
