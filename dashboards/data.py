"""Read-only queries over the vragent store, cached for the dashboard.

Every function takes the store URL first and returns plain data (pandas frames, dicts, lists),
so ``st.cache_data`` can cache it. Nothing here writes: SQLite files are opened with
``mode=ro`` (and ``PRAGMA query_only``), other databases are only ever read. Queries are shaped
for large stores (a run with millions of decisions): pages of users or profiles use
``LIMIT/OFFSET``, decisions are read one user at a time through the
``ix_decisions_run_arm_user`` index, and run-level figures come from the small tables
(``steps``, ``sessions``, ``metrics``, ``llm_calls``), never from a scan of ``decisions``.

The Items and Training pages read through :mod:`dashboards.items_data` and
:mod:`dashboards.training_data`. Why this module is still ~810 lines: the runs, metrics, A/B and
users/decisions reads share the engine, the schema probe and the run-level helpers here; issue
19 moves the queries into the store's own query module (one read model for the CLI, the
dashboard and the benchmarks), which is where they will be split further.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import Integer, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from vragent.sandbox.paths import DEFAULT_DB_URL
from vragent.sandbox.store import (
    AbExperiment,
    Arm,
    Impression,
    Item,
    Run,
    SessionEvent,
    SimUser,
    StepRow,
    StoreMissingError,
    queries,
    read_only_engine,
)

TTL_S = 30  # cached reads live this long: a running simulation shows up within it
LIVE_TTL_S = 10  # the table list and run list: new parts appear quickly
CHUNK = 500  # ids per IN (...) list

# Named metrics of the feedback-loop page (environments/metrics.py), in display order.
FEEDBACK_METRICS = ("ild", "exposure_gini", "coverage", "profile_entropy")
FEEDBACK_EXTRA = ("novelty", "social_share")



class StoreUnavailableError(RuntimeError):
    """The store cannot be opened (missing SQLite file, unreachable server)."""


# ---------------------------------------------------------------------------- the URL


def resolve_db_url(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None
                   ) -> str:
    """The store URL: ``--db URL`` after ``--`` on the command line, then ``VRAGENT_DB``.

    Args:
        argv: the script's arguments (``sys.argv[1:]``).
        environ: the environment (``os.environ``).

    Returns:
        The SQLAlchemy URL, ``sandbox.paths.DEFAULT_DB_URL`` when nothing names one.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db", default=None)
    args, _ = parser.parse_known_args(list(argv or []))
    return args.db or environ.get("VRAGENT_DB") or DEFAULT_DB_URL


def display_url(url: str) -> str:
    """The URL with any password hidden, for the page."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: show it as given
        return url


def engine(url: str) -> Engine:
    """The store's read-only engine (``sandbox.store.read_only_engine``).

    One per URL; SQLite files open ``mode=ro``, so the dashboard never writes or creates a
    store.

    Raises:
        StoreUnavailableError: the SQLite file does not exist.
    """
    try:
        return read_only_engine(url)
    except StoreMissingError as exc:
        raise StoreUnavailableError(str(exc)) from exc


def _rows(url: str, stmt: Any) -> list[tuple]:
    with engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def _frame(url: str, stmt: Any) -> pd.DataFrame:
    with engine(url).connect() as conn:
        res = conn.execute(stmt)
        return pd.DataFrame([tuple(r) for r in res], columns=list(res.keys()))


def _chunks(ids: Sequence[Any], n: int = CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(ids), n):
        yield list(ids[start : start + n])


# ---------------------------------------------------------------------------- schema


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def schema(url: str) -> dict[str, frozenset[str]]:
    """``table -> column names`` of the store (empty for a database without tables)."""
    insp = inspect(engine(url))
    return {t: frozenset(c["name"] for c in insp.get_columns(t)) for t in insp.get_table_names()}


def has(url: str, *tables: str) -> bool:
    """Whether the store has every one of these tables."""
    have = schema(url)
    return all(t in have for t in tables)


def has_column(url: str, table: str, column: str) -> bool:
    """Whether ``table`` exists and has ``column`` (older stores lack newer columns)."""
    return column in schema(url).get(table, frozenset())


def present(url: str, table: Any) -> list[Any]:
    """The model's columns of ``table`` that the store has (an older store lacks newer ones)."""
    have = schema(url).get(table.name, frozenset())
    return [c for c in table.columns if c.name in have]


# ---------------------------------------------------------------------------- runs


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def run_ids(url: str, limit: int = 500) -> list[tuple[str, str, str]]:
    """``(id, scenario, status)`` of the newest runs, newest first."""
    if not has(url, "runs"):
        return []
    r = Run.__table__
    return _rows(url, select(r.c.id, r.c.scenario_name, r.c.status)
                 .order_by(r.c.created_at.desc(), r.c.id).limit(limit))


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def count_runs(url: str) -> int:
    """How many runs the store holds."""
    if not has(url, "runs"):
        return 0
    with engine(url).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Run.__table__)).scalar() or 0)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def runs_page(url: str, limit: int = 50, offset: int = 0) -> pd.DataFrame:
    """One page of the runs table, newest first, with totals per run.

    Decisions come from ``steps.n_decisions``, users from ``users``, tokens (in + out) and cost
    from the prompts sent to the LLM (``llm_calls``, cache hits excluded, as
    ``Store.metering``).
    """
    cols = ["run", "scenario", "status", "arms", "users", "steps", "decisions", "tokens", "cost",
            "wall_s", "llm_calls", "cache_hits", "tokens_in", "tokens_out", "seed", "created"]
    if not has(url, "runs"):
        return pd.DataFrame(columns=cols)
    r = Run.__table__
    runs = _rows(url, select(r.c.id, r.c.scenario_name, r.c.status, r.c.n_steps, r.c.steps_done,
                             r.c.wall_s, r.c.seed, r.c.created_at, r.c.config)
                 .order_by(r.c.created_at.desc(), r.c.id).limit(limit).offset(offset))
    ids = [row[0] for row in runs]
    arms: dict[str, list[str]] = {}
    users: dict[str, int] = {}
    decisions: dict[str, int] = {}
    calls: dict[str, tuple[int, int, int, int]] = {}
    if ids:
        with engine(url).connect() as conn:
            if has(url, "arms"):
                a = Arm.__table__
                for rid, name in conn.execute(select(a.c.run_id, a.c.name)
                                              .where(a.c.run_id.in_(ids)).order_by(a.c.id)):
                    arms.setdefault(rid, []).append(name)
            if has(url, "users"):
                u = SimUser.__table__
                users = dict(conn.execute(select(u.c.run_id, func.count()).where(
                    u.c.run_id.in_(ids)).group_by(u.c.run_id)).all())
            if has(url, "steps"):
                s = StepRow.__table__
                decisions = dict(conn.execute(select(s.c.run_id, func.sum(s.c.n_decisions))
                                              .where(s.c.run_id.in_(ids))
                                              .group_by(s.c.run_id)).all())
        for rid in ids:
            use = llm_use(url, rid)
            calls[rid] = (sum(u.calls for u in use), sum(u.cache_hits for u in use),
                          sum(u.tokens_in for u in use), sum(u.tokens_out for u in use))
    out = []
    for rid, name, status, n_steps, done, wall, seed, created, config in runs:
        n_sent, hits, t_in, t_out = calls.get(rid, (0, 0, 0, 0))
        out.append({
            "run": rid, "scenario": name, "status": status,
            "arms": ", ".join(arms.get(rid, [])), "users": int(users.get(rid, 0)),
            "steps": f"{done or 0}/{n_steps or 0}", "decisions": int(decisions.get(rid) or 0),
            "tokens": t_in + t_out, "llm_calls": n_sent, "cache_hits": hits, "tokens_in": t_in,
            "tokens_out": t_out,
            "cost": queries.cost(queries.prices(config), t_in, t_out), "wall_s": float(wall or 0.0),
            "seed": seed, "created": created,
        })
    return pd.DataFrame(out, columns=cols)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def run_detail(url: str, run_id: str) -> dict[str, Any] | None:
    """A run's scenario text, config, environment and arms (``None`` if unknown)."""
    if not has(url, "runs"):
        return None
    r = Run.__table__
    with engine(url).connect() as conn:
        row = conn.execute(select(*present(url, r)).where(r.c.id == run_id)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        arms = []
        if has(url, "arms"):
            a = Arm.__table__
            arms = [dict(m) for m in conn.execute(
                select(a.c.name, a.c.recommender, a.c.params).where(a.c.run_id == run_id)
                .order_by(a.c.id)).mappings()]
    out["arms"] = arms
    return out


@st.cache_data(ttl=TTL_S, show_spinner=False)
def arm_names(url: str, run_id: str) -> list[str]:
    """A run's arms in creation order (falling back on the arms its steps name)."""
    names: list[str] = []
    if has(url, "arms"):
        a = Arm.__table__
        names = [n for (n,) in _rows(url, select(a.c.name).where(a.c.run_id == run_id)
                                     .order_by(a.c.id))]
    if not names and has(url, "steps"):
        s = StepRow.__table__
        names = [n for (n,) in _rows(url, select(s.c.arm).where(s.c.run_id == run_id)
                                     .group_by(s.c.arm).order_by(s.c.arm))]
    return names


@st.cache_data(ttl=TTL_S, show_spinner=False)
def step_numbers(url: str, run_id: str) -> list[int]:
    """The logged steps of a run, in order."""
    if not has(url, "steps"):
        return []
    s = StepRow.__table__
    return [int(n) for (n,) in _rows(url, select(s.c.step).where(s.c.run_id == run_id)
                                     .group_by(s.c.step).order_by(s.c.step))]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def arm_overview(url: str, run_id: str) -> pd.DataFrame:
    """Per-arm totals of a run from the small tables (``steps``, ``sessions``, ``metrics``).

    ``watch_rate``, ``like_rate`` and ``mean_p_like`` are averages of the per-step metrics
    weighted by each step's impressions, so no ``decisions`` scan is needed.
    """
    cols = ["arm", "users", "slates", "decisions", "watch_rate", "like_rate", "exits",
            "mean_p_like", "format_ok_rate", "wall_s"]
    arms = arm_names(url, run_id)
    if not arms:
        return pd.DataFrame(columns=cols)
    steps: dict[str, tuple[int, float]] = {}
    sess: dict[str, tuple[int, int, int]] = {}
    with engine(url).connect() as conn:
        if has(url, "steps"):
            s = StepRow.__table__
            steps = {a: (int(n or 0), float(w or 0.0)) for a, n, w in conn.execute(
                select(s.c.arm, func.sum(s.c.n_decisions), func.sum(s.c.wall_s))
                .where(s.c.run_id == run_id).group_by(s.c.arm))}
        if has(url, "sessions"):
            e = SessionEvent.__table__
            sess = {a: (int(u or 0), int(n or 0), int(x or 0)) for a, u, n, x in conn.execute(
                select(e.c.arm, func.count(func.distinct(e.c.user_id)), func.count(),
                       func.sum(e.c.left.cast(Integer)))
                .where(e.c.run_id == run_id).group_by(e.c.arm))}
    series = metric_series(url, (run_id,))
    out = []
    for arm in arms:
        m = series[series["arm"] == arm] if not series.empty else series
        weights = m[m["name"] == "impressions"].set_index("step")["value"] if not m.empty else (
            pd.Series(dtype=float))

        def weighted(name: str, m: pd.DataFrame = m, weights: pd.Series = weights
                     ) -> float | None:
            if m.empty:
                return None
            v = m[m["name"] == name].set_index("step")["value"]
            if v.empty:
                return None
            w = weights.reindex(v.index).fillna(0.0)
            return float((v * w).sum() / w.sum()) if w.sum() > 0 else float(v.mean())

        n_users, n_slates, exits = sess.get(arm, (0, 0, 0))
        out.append({
            "arm": arm, "users": n_users, "slates": n_slates,
            "decisions": steps.get(arm, (0, 0.0))[0],
            "watch_rate": weighted("watch_rate"), "like_rate": weighted("like_rate"),
            "exits": exits, "mean_p_like": weighted("mean_p_like"),
            "format_ok_rate": weighted("format_ok_rate"),
            "wall_s": steps.get(arm, (0, 0.0))[1],
        })
    return pd.DataFrame(out, columns=cols)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def llm_use(url: str, run_id: str) -> list[queries.LlmUse]:
    """A run's LLM use per agent and arm (``sandbox.store.queries.llm_use``)."""
    with engine(url).connect() as conn:
        return queries.llm_use(conn, run_id)


def _metering(url: str, run_id: str, percentiles: bool) -> pd.DataFrame:
    cols = [f.name for f in dataclasses.fields(queries.MeterRow)]
    if not has(url, "llm_calls"):
        return pd.DataFrame(columns=cols)
    with engine(url).connect() as conn:
        rows = queries.metering(conn, run_id, percentiles=percentiles)
    frame = pd.DataFrame([dataclasses.astuple(r) for r in rows], columns=cols)
    if frame.empty or not (frame["calls"] + frame["cache_hits"]).any():
        return pd.DataFrame(columns=cols)
    return frame


@st.cache_data(ttl=TTL_S, show_spinner=False)
def metering_totals(url: str, run_id: str) -> pd.DataFrame:
    """LLM use of a run per arm, then the IP agent (``sandbox.store.queries.metering``).

    As ``vragent show`` prints it: calls sent, cache hits, tokens in/out, mean latency of the
    calls sent, and the cost when the scenario sets ``backend.prices``; without the latency
    percentiles (those read every call's latency; see :func:`metering`).
    """
    return _metering(url, run_id, False).drop(
        columns=["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def metering(url: str, run_id: str) -> pd.DataFrame:
    """:func:`metering_totals` with latency p50/p95/p99 in place of the mean."""
    return _metering(url, run_id, True).drop(columns=["latency_mean_ms"])


# ---------------------------------------------------------------------------- metrics


@st.cache_data(ttl=TTL_S, show_spinner=False)
def metric_series(url: str, runs: tuple[str, ...]) -> pd.DataFrame:
    """Per-step metrics of runs: columns ``run_id, arm, step, name, value``."""
    with engine(url).connect() as conn:
        points = queries.metric_series(conn, runs)
    return pd.DataFrame(points, columns=list(queries.MetricPoint._fields))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def exposure_by_arm(url: str, run_id: str) -> tuple[dict[str, np.ndarray], int]:
    """How often each shown item was shown, per arm, over the whole run; and the catalogue size.

    One ``GROUP BY`` over the run's impressions: a few seconds at ten million rows, so the page
    asks for it only on demand.
    """
    if not has(url, "impressions", "items"):
        return {}, 0
    im, it = Impression.__table__, Item.__table__
    with engine(url).connect() as conn:
        rows = conn.execute(select(im.c.arm, func.count()).where(im.c.run_id == run_id)
                            .group_by(im.c.arm, im.c.item_id)).all()
        n_items = int(conn.execute(select(func.count()).select_from(it)
                                   .where(it.c.run_id == run_id)).scalar() or 0)
    out: dict[str, list[int]] = {}
    for arm, n in rows:
        out.setdefault(str(arm), []).append(int(n))
    return {a: np.asarray(v, dtype=np.float64) for a, v in out.items()}, n_items


def mean_over_runs(series: pd.DataFrame) -> pd.DataFrame:
    """Average per (arm, step, name) over runs, with the spread across runs.

    Returns:
        Columns ``arm, step, name, mean, low, high, runs``; ``low``/``high`` are the smallest
        and largest run's value (equal to ``mean`` for a single run).
    """
    cols = ["arm", "step", "name", "mean", "low", "high", "runs"]
    if series.empty:
        return pd.DataFrame(columns=cols)
    g = series.groupby(["arm", "step", "name"], sort=True)["value"]
    out = g.agg(["mean", "min", "max", "count"]).reset_index()
    out.columns = cols
    return out


# ---------------------------------------------------------------------------- A/B


@st.cache_data(ttl=TTL_S, show_spinner=False)
def experiments(url: str) -> list[dict[str, Any]]:
    """A/B experiments, newest first, as dicts."""
    if not has(url, "ab_experiments"):
        return []
    e = AbExperiment.__table__
    with engine(url).connect() as conn:
        return [dict(m) for m in conn.execute(
            select(*present(url, e)).order_by(e.c.created_at.desc(), e.c.id)).mappings()]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def ab_results(url: str, experiment_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An experiment's per-arm values and arm-vs-baseline comparisons."""
    with engine(url).connect() as conn:
        values, comparisons = queries.ab_results(conn, experiment_id)
    return tuple(pd.DataFrame(rows).drop(columns=["experiment_id"], errors="ignore")
                 for rows in (values, comparisons))  # type: ignore[return-value]


# ---------------------------------------------------------------------------- shared reads


def _like_pattern(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


@st.cache_data(ttl=TTL_S, show_spinner=False)
def item_titles(url: str, run_id: str, item_ids: tuple[int, ...]) -> dict[int, str]:
    """``item -> title`` for items of a run's catalogue."""
    if not item_ids or not has(url, "items"):
        return {}
    t = Item.__table__
    out: dict[int, str] = {}
    with engine(url).connect() as conn:
        for chunk in _chunks(sorted(set(item_ids))):
            out.update({int(i): str(title) for i, title in conn.execute(
                select(t.c.item_id, t.c.title).where(t.c.run_id == run_id,
                                                     t.c.item_id.in_(chunk)))})
    return out


def finite(value: Any) -> float | None:
    """A float, or ``None`` for missing and non-finite values."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
