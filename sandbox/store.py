"""The run store: SQLAlchemy 2.0 models over any database URL (SQLite by default).

Every prompt, completion, decision and metric of a run lands here. SQLite gets WAL mode, so the
dashboard can read while a run writes. A simulation step is written in **one transaction**, and
natural unique keys (run, arm, step, user, position) make it impossible to log a step twice: a
resumed run that replays a step finds it already there and skips it.

Why one module of ~1,000 lines: schema, writes (with the running ``llm_totals``) and reports
share the models and the one-transaction-per-step rule; issue 19 splits it into schema, writes
and queries with Alembic migrations (replacing ``add_missing_columns``) and is where that
split is done and tested against stores made before it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    case,
    create_engine,
    event,
    false,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sandbox import faults

SCHEMA_VERSION = 1


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_NUL, _ESC = "\x00", "\ue000"  # NUL, and a private-use character that escapes it
_UNESCAPE = re.compile("\ue000([\ue001\ue002])")


#: Surrogate row ids: 64-bit (``bigserial``) on PostgreSQL, where one database collects many
#: runs and a population run alone writes tens of millions of rows; on SQLite an ``INTEGER``
#: primary key is already the 64-bit rowid (and only that exact type autoincrements there).
RowId = BigInteger().with_variant(Integer, "sqlite")

#: Rows per INSERT statement when a step is logged (all in the step's one transaction).
LOG_CHUNK_ROWS = 20_000


class NulSafeText(TypeDecorator):
    """``TEXT`` that round-trips NUL characters on PostgreSQL too.

    PostgreSQL text cannot hold NUL (psycopg raises ``DataError``), and a model's raw
    completion can contain it (the tiny random model emits it). On PostgreSQL NUL is stored as
    ``U+E000 U+E002`` and a literal ``U+E000`` as ``U+E000 U+E001`` (a reversible escape, so
    rows read back equal to what SQLite stores); other databases store the text unchanged.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        """Escape NUL (and the escape character) for PostgreSQL."""
        if value is None or dialect.name != "postgresql" or (
                _NUL not in value and _ESC not in value):
            return value
        return value.replace(_ESC, _ESC + "\ue001").replace(_NUL, _ESC + "\ue002")

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        """Undo :meth:`process_bind_param`."""
        if value is None or dialect.name != "postgresql" or _ESC not in value:
            return value
        return _UNESCAPE.sub(lambda m: _NUL if m.group(1) == "\ue002" else _ESC, value)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Run(Base):
    """One simulation run: its scenario, seed, environment and status."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scenario_name: Mapped[str] = mapped_column(String(200))
    scenario_path: Mapped[str | None] = mapped_column(NulSafeText)
    scenario_yaml: Mapped[str] = mapped_column(NulSafeText)
    config: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    versions: Mapped[dict] = mapped_column(JSON)
    git_revision: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="created")
    error: Mapped[str | None] = mapped_column(NulSafeText)
    n_steps: Mapped[int] = mapped_column(Integer)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)


class Arm(Base):
    """One recommender arm of a run."""

    __tablename__ = "arms"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    name: Mapped[str] = mapped_column(String(100))
    recommender: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("run_id", "name"),)


class SimUser(Base):
    """A simulated user: the real user it is grounded in and the persona it was given."""

    __tablename__ = "users"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    persona: Mapped[str] = mapped_column(NulSafeText)
    profile: Mapped[dict] = mapped_column(JSON)
    history: Mapped[list] = mapped_column(JSON)  # real train-split item ids
    friends: Mapped[list] = mapped_column(JSON)
    # The real items held out of the simulation (validation, then test): what the real user
    # went on to watch. NULL in older stores.
    heldout: Mapped[list | None] = mapped_column(JSON, nullable=True)


class Item(Base):
    """The catalogue a run uses."""

    __tablename__ = "items"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(NulSafeText)
    category: Mapped[str] = mapped_column(NulSafeText, default="")
    tags: Mapped[str] = mapped_column(NulSafeText, default="")


class ItemProfileRow(Base):
    """An IP-agent profile, cached per dataset, item and model across runs."""

    __tablename__ = "item_profiles"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(200))
    item_id: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(NulSafeText)
    tags: Mapped[str] = mapped_column(NulSafeText)
    prompt: Mapped[str] = mapped_column(NulSafeText)
    completion: Mapped[str] = mapped_column(NulSafeText)
    format_ok: Mapped[bool] = mapped_column(Boolean)
    problems: Mapped[list] = mapped_column(JSON)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    run_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # The staged pipeline's record: one dict per stage (prompt, completion, output, skipped).
    title: Mapped[str] = mapped_column(NulSafeText, default="", server_default="")
    stages: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    __table_args__ = (UniqueConstraint("dataset", "item_id", "model_id"),)


class StepRow(Base):
    """A finished simulation step of one arm."""

    __tablename__ = "steps"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    arm: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    n_users: Mapped[int] = mapped_column(Integer)
    n_decisions: Mapped[int] = mapped_column(Integer)
    wall_s: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Impression(Base):
    """One slot of a slate shown to a user."""

    __tablename__ = "impressions"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    arm: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(BigInteger)
    rec_score: Mapped[float] = mapped_column(Float)
    # Who put the item in the slate: "rec" (the arm's recommender) or "social" (a friend's
    # like injected by social.inject_friends_likes). NULL in older stores means "rec".
    source: Mapped[str | None] = mapped_column(String(10), nullable=True)
    __table_args__ = (UniqueConstraint("run_id", "arm", "step", "user_id", "position"),)


class Decision(Base):
    """What the simulated user did with one impression, and why."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    arm: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(10))
    p_like: Mapped[float | None] = mapped_column(Float)
    prompt: Mapped[str] = mapped_column(NulSafeText)
    completion: Mapped[str | None] = mapped_column(NulSafeText)
    think: Mapped[str | None] = mapped_column(NulSafeText)
    answer: Mapped[str | None] = mapped_column(NulSafeText)
    format_ok: Mapped[bool] = mapped_column(Boolean)
    fallback: Mapped[str | None] = mapped_column(String(50))
    traced: Mapped[bool] = mapped_column(Boolean)
    prompt_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    model_id: Mapped[str] = mapped_column(String(200))
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    # Every LLM result behind the decision came from the response cache.
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Generate mode: completions asked for, format retries included (NULL: older stores).
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What decided the action (agents.us_agent.DecisionRecord; NULL: older stores).
    rule: Mapped[str | None] = mapped_column(String(10), nullable=True)
    draw: Mapped[float | None] = mapped_column(Float, nullable=True)
    like_cut: Mapped[float | None] = mapped_column(Float, nullable=True)
    trace_role: Mapped[str | None] = mapped_column(String(10), nullable=True)
    trace_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    __table_args__ = (
        UniqueConstraint("run_id", "arm", "step", "user_id", "position"),
        Index("ix_decisions_run_arm_user", "run_id", "arm", "user_id"),
        # Traced decisions only (2-10 % of rows): the dashboard finds users with a reasoning,
        # and searches reasoning text, without walking every decision (its queries say
        # ``traced IS 1`` / ``IS true``, the same term, so the planners match it).
        Index("ix_decisions_traced", "run_id", "arm", "user_id",
              sqlite_where=text("traced IS 1"), postgresql_where=text("traced IS true")),
    )


class SessionEvent(Base):
    """A user's end of slate: how much they watched and whether they left."""

    __tablename__ = "sessions"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    arm: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n_watch: Mapped[int] = mapped_column(Integer)
    n_like: Mapped[int] = mapped_column(Integer)
    left: Mapped[bool] = mapped_column(Boolean)
    leave_prob: Mapped[float] = mapped_column(Float)
    leave_draw: Mapped[float | None] = mapped_column(Float, nullable=True)  # u vs leave_prob


class Metric(Base):
    """A per-step, per-arm metric (collected through Mesa's DataCollector)."""

    __tablename__ = "metrics"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    arm: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class LlmCacheEntry(Base):
    """A cached LLM result, shared by every run of the store (agents/backends/caching.py)."""

    __tablename__ = "llm_cache"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # CacheKey.digest
    backend_kind: Mapped[str] = mapped_column(String(50))
    model_id: Mapped[str] = mapped_column(String(200))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    call: Mapped[str] = mapped_column(String(10))  # score | generate
    params: Mapped[str] = mapped_column(NulSafeText)  # canonical JSON
    seed: Mapped[int | None] = mapped_column(BigInteger)
    prompt_index: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(32))  # the run that computed it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LlmCall(Base):
    """One prompt an agent put to the LLM: sent to the backend or served from the cache.

    US-agent rows are written in their step's transaction, IP-agent rows with the profiles they
    made, under unique keys, so a resumed run never counts a call twice.
    """

    __tablename__ = "llm_calls"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    agent: Mapped[str] = mapped_column(String(10))  # "us" | "ip"
    arm: Mapped[str] = mapped_column(String(100))  # "" for the IP agent
    step: Mapped[int] = mapped_column(Integer)
    task: Mapped[int] = mapped_column(Integer)  # fan-out task (batch_key) of the step
    seq: Mapped[int] = mapped_column(Integer)  # order within the task
    call: Mapped[str] = mapped_column(String(10))  # score | generate
    cached: Mapped[bool] = mapped_column(Boolean)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("run_id", "agent", "arm", "step", "task", "seq"),)


class LlmTotal(Base):
    """Running totals of a run's LLM calls per agent and arm, kept in each step's transaction.

    Reading a run's totals from ``llm_calls`` takes seconds at ten million calls; these rows
    take a millisecond. Only ``log_step`` adds to them (the US agent's calls), in the same
    transaction as the calls, so they stay exact through crashes and resumes. Latency is the
    sum over the calls sent (the mean is ``latency_ms / calls``).
    """

    __tablename__ = "llm_totals"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    agent: Mapped[str] = mapped_column(String(10), primary_key=True)
    arm: Mapped[str] = mapped_column(String(100), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)  # sent to the LLM
    cache_hits: Mapped[int] = mapped_column(BigInteger)
    tokens_in: Mapped[int] = mapped_column(BigInteger)  # of the calls sent
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[float] = mapped_column(Float)  # summed over the calls sent


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


def add_llm_totals(session: Session, run_id: str, step: int, calls: Sequence[dict]) -> None:
    """Add ``calls`` (``llm_calls`` rows of ``step``, already inserted) to the run's totals.

    A run begun before this table existed has calls but no totals: its first step logged since
    then sums all its calls once, this step's included.
    """
    t = LlmTotal.__table__
    have = {(r[0], r[1]) for r in session.execute(
        select(t.c.agent, t.c.arm).where(t.c.run_id == run_id))}
    if not have and step > 0:
        for agent, arm, n, hits, t_in, t_out, lat in session.execute(
                llm_call_sums(run_id, LlmCall.agent == "us")):
            session.execute(t.insert().values(
                run_id=run_id, agent=agent, arm=arm, calls=int(n or 0),
                cache_hits=int(hits or 0), tokens_in=int(t_in or 0), tokens_out=int(t_out or 0),
                latency_ms=float(lat or 0.0)))
        return
    agg: dict[tuple[str, str], list[float]] = {}
    for c in calls:
        a = agg.setdefault((str(c["agent"]), str(c["arm"])), [0, 0, 0, 0, 0.0])
        if c["cached"]:
            a[1] += 1
        else:
            a[0] += 1
            a[2] += int(c["tokens_in"])
            a[3] += int(c["tokens_out"])
            a[4] += float(c["latency_ms"])
    for (agent, arm), (n, hits, t_in, t_out, lat) in agg.items():
        if (agent, arm) in have:
            session.execute(t.update().where(t.c.run_id == run_id, t.c.agent == agent,
                                             t.c.arm == arm).values(
                calls=t.c.calls + n, cache_hits=t.c.cache_hits + hits,
                tokens_in=t.c.tokens_in + t_in, tokens_out=t.c.tokens_out + t_out,
                latency_ms=t.c.latency_ms + lat))
        else:
            session.execute(t.insert().values(run_id=run_id, agent=agent, arm=arm, calls=n,
                                              cache_hits=hits, tokens_in=t_in,
                                              tokens_out=t_out, latency_ms=lat))


class RunOwner(Base):
    """Who executes a run now (PostgreSQL, sandbox/run_lock.py).

    For messages only: the advisory lock, not this row, keeps a second process out.
    """

    __tablename__ = "run_owners"
    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    host: Mapped[str | None] = mapped_column(NulSafeText, nullable=True)
    since: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AbExperiment(Base):
    """A simulated A/B experiment: one run per seed of a scenario (``vragent ab``)."""

    __tablename__ = "ab_experiments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scenario_name: Mapped[str] = mapped_column(String(200))
    scenario_yaml: Mapped[str] = mapped_column(NulSafeText)
    baseline: Mapped[str] = mapped_column(String(100))  # the arm every other arm is compared to
    arms: Mapped[list] = mapped_column(JSON)
    seeds: Mapped[list] = mapped_column(JSON)
    run_ids: Mapped[list] = mapped_column(JSON)  # aligned with seeds; filled as runs start
    settings: Mapped[dict] = mapped_column(JSON)  # confidence, resamples, metrics options
    status: Mapped[str] = mapped_column(String(20), default="running")
    report_dir: Mapped[str | None] = mapped_column(NulSafeText, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AbArmValue(Base):
    """One arm's value of one metric, with its bootstrap interval (``seed`` NULL: pooled)."""

    __tablename__ = "ab_arm_values"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("ab_experiments.id"))
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    arm: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    low: Mapped[float | None] = mapped_column(Float, nullable=True)
    high: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_units: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_ab_arm_values_exp", "experiment_id"),)


class AbComparison(Base):
    """Arm minus baseline for one metric: paired bootstrap interval and permutation p."""

    __tablename__ = "ab_comparisons"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("ab_experiments.id"))
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    metric: Mapped[str] = mapped_column(String(100))
    arm: Mapped[str] = mapped_column(String(100))
    baseline: Mapped[str] = mapped_column(String(100))
    mean_arm: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean_baseline: Mapped[float | None] = mapped_column(Float, nullable=True)
    diff: Mapped[float | None] = mapped_column(Float, nullable=True)
    low: Mapped[float | None] = mapped_column(Float, nullable=True)
    high: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_units: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_ab_comparisons_exp", "experiment_id"),)


IP_AGENT_LABEL = "ip-agent"  # the metering row of the IP agent
METERING_COLUMNS = ("arm", "agent", "calls", "cache_hits", "tokens_in", "tokens_out",
                    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "cost")

#: The tables ``vragent export`` writes: every table whose rows carry the run's id
#: (``runs`` by ``id``, ``item_profiles``: the profiles the run's IP agent made) ...
TABLES_IN_EXPORT = ("runs", "arms", "users", "items", "steps", "impressions", "decisions",
                    "sessions", "metrics", "llm_calls", "item_profiles")
#: ... but these, which carry a run id without being the run's record.
RUN_TABLES_NOT_EXPORTED = {
    "llm_cache": "the store's response cache, shared by every run; the run's prompts and "
                 "completions are in decisions, item_profiles and llm_calls",
    "run_owners": "who executes a run now, for the busy message only",
    "llm_totals": "running sums of the run's llm_calls rows (exported), kept for fast reads",
}
AB_TABLES = ("ab_experiments", "ab_arm_values", "ab_comparisons")


def sqlite_busy_ms() -> int:
    """``$VRAGENT_SQLITE_BUSY_MS`` (default 30,000): SQLite's wait for a lock, in ms."""
    import os

    raw = os.environ.get("VRAGENT_SQLITE_BUSY_MS", "30000")
    return int(raw) if raw.isdigit() else 30000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable at each commit boundary
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def add_missing_columns(engine: Engine) -> list[str]:
    """Add columns that the models have and an older store lacks (``ALTER TABLE … ADD``).

    Only columns that are nullable or have a server default can be added this way.

    Returns:
        ``table.column`` of every column added.
    """
    from sqlalchemy.schema import CreateColumn

    insp = inspect(engine)
    added = []
    for table in Base.metadata.sorted_tables:
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            if not col.nullable and col.server_default is None:
                raise RuntimeError(f"store table {table.name} lacks column {col.name}, which "
                                   "cannot be added in place; use a new database")
            ddl = CreateColumn(col).compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
            added.append(f"{table.name}.{col.name}")
    return added


def insert_ignore(session: Session, model: type[Base], rows: Sequence[dict]) -> None:
    """Insert rows, skipping any that break a unique key (rows already stored win).

    Writes only, no read first: a SQLite transaction that reads and then writes can fail with
    ``SQLITE_BUSY`` under concurrent writers instead of waiting.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        session.execute(dialect_insert(model).on_conflict_do_nothing(), list(rows))
        return
    from sqlalchemy.exc import IntegrityError

    for row in rows:
        try:
            with session.begin_nested():
                session.execute(insert(model), [row])
        except IntegrityError:
            pass


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder created and WAL turned on."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # sqlite3's timeout is SQLite's busy timeout: how long a write waits for a lock another
    # connection holds before it fails ("database is locked").
    connect_args = ({"timeout": sqlite_busy_ms() / 1000} if url.startswith("sqlite") else {})
    engine = create_engine(url, future=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class StoreMissingError(LookupError):
    """No store at the URL, for a caller that must not create one (``Store(must_exist=True)``).

    Args:
        url: the store URL.
        path: the SQLite file that does not exist; ``None`` when the database exists but holds
            no runs table.
    """

    def __init__(self, url: str, path: Path | None) -> None:
        self.url, self.path = url, path
        super().__init__(f"no store at {path if path is not None else url}")


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist (connecting would create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith(
            "file:"):
        return None
    return None if Path(db).expanduser().exists() else Path(db)


class Store:
    """Typed access to the run store.

    Args:
        url: any SQLAlchemy URL (``sqlite:///runs/vragent.sqlite``, ``postgresql+psycopg://…``).
        create: create missing tables.
        must_exist: raise :class:`StoreMissingError` rather than create a store: for commands
            that only read, which must not leave an empty store behind.
    """

    def __init__(self, url: str, create: bool = True, must_exist: bool = False) -> None:
        self.url = url
        if must_exist and (missing := _missing_sqlite_file(url)) is not None:
            raise StoreMissingError(url, missing)
        self.engine = make_engine(url)
        if must_exist and not inspect(self.engine).has_table(Run.__tablename__):
            self.engine.dispose()
            raise StoreMissingError(url, None)
        if create:
            Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine)
            # create_all leaves existing tables alone, indexes included: add the new ones.
            for table in Base.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(self.engine, checkfirst=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with self._sessions.begin() as s:
            yield s

    def sqlite_path(self) -> Path | None:
        """The database file, for SQLite URLs."""
        if self.engine.dialect.name != "sqlite":
            return None
        db = self.engine.url.database
        return Path(db) if db and db != ":memory:" else None

    # ---------------------------------------------------------------- runs

    def create_run(self, run: Run, arms: Iterable[Arm]) -> None:
        """Insert a run and its arms."""
        with self.session() as s:
            s.add(run)
            s.flush()
            s.add_all(list(arms))

    def get_run(self, run_id: str) -> Run | None:
        """The run, or ``None``."""
        with self.session() as s:
            return s.get(Run, run_id)

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields on a run."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(run_id)
            for k, v in fields.items():
                setattr(run, k, v)

    def list_runs(self) -> list[Run]:
        """All runs, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Run).order_by(Run.created_at.desc())))

    def arms(self, run_id: str) -> list[Arm]:
        """A run's arms in creation order."""
        with self.session() as s:
            return list(s.scalars(select(Arm).where(Arm.run_id == run_id).order_by(Arm.id)))

    def add_users_and_items(
        self, run_id: str, users: Sequence[dict], items: Sequence[dict]
    ) -> None:
        """Insert the population and catalogue of a run (skipped if already there)."""
        with self.session() as s:
            have = s.scalar(select(func.count()).select_from(SimUser).where(
                SimUser.run_id == run_id))
            if have:
                return
            if users:
                s.execute(insert(SimUser), [{"run_id": run_id, **u} for u in users])
            if items:
                s.execute(insert(Item), [{"run_id": run_id, **i} for i in items])

    # ---------------------------------------------------------------- steps

    def completed_steps(self, run_id: str) -> dict[str, int]:
        """For each arm, the number of steps already logged."""
        with self.session() as s:
            rows = s.execute(
                select(StepRow.arm, func.count()).where(StepRow.run_id == run_id).group_by(
                    StepRow.arm)
            )
            return {arm: n for arm, n in rows}

    def log_step(
        self,
        run_id: str,
        step: int,
        *,
        steps: Sequence[dict],
        impressions: Sequence[dict],
        decisions: Sequence[dict],
        sessions: Sequence[dict],
        metrics: Sequence[dict],
        llm_calls: Sequence[dict] = (),
    ) -> bool:
        """Write a whole step in one transaction.

        Each row gets ``run_id`` and ``step``; keys its table has no column for are left out
        (a decision row may be the runtime's whole outcome dict). The rows are never changed.

        Returns:
            ``False`` (and writes nothing) when the step is already logged, e.g. when a
            resumed run replays the step it crashed in after its commit.
        """
        with self.session() as s:
            done = s.scalar(
                select(func.count()).select_from(StepRow).where(
                    StepRow.run_id == run_id, StepRow.step == step)
            )
            if done:
                return False
            for model, rows in (
                (StepRow, steps), (Impression, impressions), (Decision, decisions),
                (SessionEvent, sessions), (Metric, metrics), (LlmCall, llm_calls),
            ):
                # Core inserts on the table: the ORM's bulk path costs several times more per
                # row. A population step can hold a million rows, so they go in slices: the
                # driver's copies of the parameters then never hold the whole step at once.
                cols = set(model.__table__.columns.keys())
                for start in range(0, len(rows), LOG_CHUNK_ROWS):
                    s.execute(model.__table__.insert(), [
                        {"run_id": run_id, "step": step,
                         **{k: v for k, v in r.items() if k in cols}}
                        for r in rows[start:start + LOG_CHUNK_ROWS]])
            if llm_calls:
                add_llm_totals(s, run_id, step, llm_calls)
            s.execute(
                Run.__table__.update().where(Run.id == run_id).values(steps_done=step + 1)
            )
            faults.checkpoint("log")  # crash tests kill here: inside the open transaction
        return True

    def decisions_upto(self, run_id: str, last_step: int) -> list[tuple[str, int, int, int, str]]:
        """``(arm, step, user, item, action)`` of every decision up to ``last_step``."""
        with self.session() as s:
            rows = s.execute(
                select(Decision.arm, Decision.step, Decision.user_id, Decision.item_id,
                       Decision.action)
                .where(Decision.run_id == run_id, Decision.step <= last_step)
                .order_by(Decision.step, Decision.arm, Decision.user_id, Decision.position)
            )
            return [tuple(r) for r in rows]

    def left_users(self, run_id: str) -> list[tuple[str, int, int]]:
        """``(arm, user, step)`` for every user who left."""
        with self.session() as s:
            rows = s.execute(
                select(SessionEvent.arm, SessionEvent.user_id, SessionEvent.step).where(
                    SessionEvent.run_id == run_id, SessionEvent.left.is_(True))
            )
            return [tuple(r) for r in rows]

    # ---------------------------------------------------------------- item profiles

    def cached_profiles(self, dataset: str, model_id: str, item_ids: Iterable[int]) -> dict[
        int, ItemProfileRow
    ]:
        """Profiles already made for these items by this model."""
        ids = list(item_ids)
        out: dict[int, ItemProfileRow] = {}
        with self.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for row in s.scalars(
                    select(ItemProfileRow).where(
                        ItemProfileRow.dataset == dataset, ItemProfileRow.model_id == model_id,
                        ItemProfileRow.item_id.in_(chunk))
                ):
                    out[row.item_id] = row
        return out

    def item_profiles(self, item_id: int, dataset: str | None = None,
                      model_id: str | None = None) -> list[ItemProfileRow]:
        """Every stored profile of one item (all datasets and models unless filtered)."""
        q = select(ItemProfileRow).where(ItemProfileRow.item_id == item_id)
        if dataset:
            q = q.where(ItemProfileRow.dataset == dataset)
        if model_id:
            q = q.where(ItemProfileRow.model_id == model_id)
        with self.session() as s:
            rows = list(s.scalars(q.order_by(ItemProfileRow.dataset, ItemProfileRow.model_id)))
            s.expunge_all()
            return rows

    def profile_texts(self, dataset: str, model_id: str) -> dict[int, str]:
        """``item -> profile`` of every item this model has profiled in this dataset."""
        with self.session() as s:
            return {int(i): p for i, p in s.execute(
                select(ItemProfileRow.item_id, ItemProfileRow.profile).where(
                    ItemProfileRow.dataset == dataset, ItemProfileRow.model_id == model_id))}

    def add_profiles(self, rows: Sequence[dict], llm_calls: Sequence[dict] = ()) -> None:
        """Cache new profiles; rows already cached (same dataset, item, model) are kept.

        ``llm_calls`` (the IP agent's metered calls, with ``run_id``) go in the same
        transaction, so a profile and the calls that made it are stored together or not at all.
        """
        if not rows and not llm_calls:
            return
        with self.session() as s:
            insert_ignore(s, LlmCall, llm_calls)
            # No read-then-insert: two runs profiling the same item at once (a shared
            # PostgreSQL store) would both miss it and the second would hit the unique key.
            insert_ignore(s, ItemProfileRow, rows)

    # ---------------------------------------------------------------- A/B experiments

    def create_experiment(self, exp: AbExperiment) -> None:
        """Insert an A/B experiment."""
        with self.session() as s:
            s.add(exp)

    def get_experiment(self, experiment_id: str) -> AbExperiment | None:
        """The experiment, or ``None``."""
        with self.session() as s:
            return s.get(AbExperiment, experiment_id)

    def update_experiment(self, experiment_id: str, **fields: Any) -> None:
        """Set fields on an experiment."""
        with self.session() as s:
            exp = s.get(AbExperiment, experiment_id)
            if exp is None:
                raise KeyError(experiment_id)
            for k, v in fields.items():
                setattr(exp, k, v)

    def list_experiments(self) -> list[AbExperiment]:
        """All A/B experiments, newest first."""
        with self.session() as s:
            return list(s.scalars(select(AbExperiment).order_by(AbExperiment.created_at.desc())))

    def save_ab_results(self, experiment_id: str, arm_values: Sequence[dict],
                        comparisons: Sequence[dict]) -> None:
        """Replace an experiment's results in one transaction (a rerun of the analysis)."""
        with self.session() as s:
            for model in (AbArmValue, AbComparison):
                s.execute(model.__table__.delete().where(
                    model.__table__.c.experiment_id == experiment_id))
            for model, rows in ((AbArmValue, arm_values), (AbComparison, comparisons)):
                if rows:
                    s.execute(insert(model), [{"experiment_id": experiment_id, **r}
                                              for r in rows])

    def ab_results(self, experiment_id: str) -> tuple[list[dict], list[dict]]:
        """An experiment's arm values and comparisons as plain dicts."""
        def rows(model: type[Base]) -> list[dict]:
            cols = [c.name for c in model.__table__.columns if c.name not in ("id",)]
            with self.session() as s:
                res = s.execute(select(*[model.__table__.c[c] for c in cols]).where(
                    model.__table__.c.experiment_id == experiment_id).order_by(
                    model.__table__.c.id))
                return [dict(zip(cols, r, strict=True)) for r in res]
        return rows(AbArmValue), rows(AbComparison)

    def metric_series(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Per-step metrics of runs: ``{run_id, arm, step, name, value}`` rows."""
        with self.session() as s:
            res = s.execute(select(Metric.run_id, Metric.arm, Metric.step, Metric.name,
                                   Metric.value).where(Metric.run_id.in_(list(run_ids)))
                            .order_by(Metric.run_id, Metric.arm, Metric.step, Metric.name))
            return [{"run_id": r, "arm": a, "step": st, "name": n, "value": v}
                    for r, a, st, n, v in res]

    # ---------------------------------------------------------------- summaries

    def arm_summary(self, run_id: str) -> list[dict[str, Any]]:
        """Per-arm totals: impressions, watch/like rates, exits, tokens, time."""
        with self.session() as s:
            dec = s.execute(
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
                s.execute(
                    select(SessionEvent.arm, func.sum(SessionEvent.left.cast(Integer)))
                    .where(SessionEvent.run_id == run_id).group_by(SessionEvent.arm)
                ).all()
            )
            users = dict(
                s.execute(
                    select(SessionEvent.arm, func.count(func.distinct(SessionEvent.user_id)))
                    .where(SessionEvent.run_id == run_id).group_by(SessionEvent.arm)
                ).all()
            )
            wall = dict(
                s.execute(
                    select(StepRow.arm, func.sum(StepRow.wall_s))
                    .where(StepRow.run_id == run_id).group_by(StepRow.arm)
                ).all()
            )
            order = [a.name for a in s.scalars(
                select(Arm).where(Arm.run_id == run_id).order_by(Arm.id))]
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

    def metering(self, run_id: str) -> list[dict[str, Any]]:
        """LLM use per arm, then the IP agent (arm ``"ip-agent"``).

        ``calls`` counts prompts sent to the backend, ``cache_hits`` prompts served from the
        response cache. Tokens, latency percentiles (ms) and cost cover the sent prompts only
        (a hit costs nothing); ``cost`` is ``None`` unless the scenario gives
        ``backend.prices`` (per million tokens). Calls of a step lost in a crash are not
        counted; the resumed run replays them, mostly as cache hits.
        """
        with self.session() as s:
            run = s.get(Run, run_id)
            prices = ((run.config or {}).get("backend") or {}).get("prices") if run else None
            ip_enabled = bool(((run.config or {}).get("ip_agent") or {}).get("enabled")) if (
                run) else False
            order = [a.name for a in s.scalars(
                select(Arm).where(Arm.run_id == run_id).order_by(Arm.id))]
            totals = s.execute(llm_call_sums(run_id)).all()
            latencies: dict[tuple[str, str], list[float]] = {}
            for agent, arm, ms in s.execute(
                select(LlmCall.agent, LlmCall.arm, LlmCall.latency_ms).where(
                    LlmCall.run_id == run_id, LlmCall.cached.is_(False))
            ):
                latencies.setdefault((agent, arm), []).append(ms)
        by_key = {(r[0], r[1]): r for r in totals}
        keys = [("us", a) for a in order] + sorted(k for k in by_key if k[0] == "us" and k[
            1] not in order)
        if ip_enabled or any(k[0] == "ip" for k in by_key):
            keys.append(("ip", ""))
        out = []
        for key in keys:
            row = by_key.get(key)
            t_in = int(row[4] or 0) if row else 0
            t_out = int(row[5] or 0) if row else 0
            lat = latencies.get(key, [])
            cost = None
            if prices:
                cost = (t_in * float(prices["input_per_1m"])
                        + t_out * float(prices["output_per_1m"])) / 1e6
            out.append({
                "arm": IP_AGENT_LABEL if key[0] == "ip" else key[1],
                "agent": key[0],
                "calls": int(row[2] or 0) if row else 0,
                "cache_hits": int(row[3] or 0) if row else 0,
                "tokens_in": t_in,
                "tokens_out": t_out,
                "latency_p50_ms": _percentile(lat, 50),
                "latency_p95_ms": _percentile(lat, 95),
                "latency_p99_ms": _percentile(lat, 99),
                "cost": cost,
            })
        return out


def _percentile(values: Sequence[float], q: float) -> float | None:
    """The linear-interpolated percentile ``q`` (numpy's default) of ``values``, or ``None``."""
    return float(np.percentile(values, q)) if len(values) else None
