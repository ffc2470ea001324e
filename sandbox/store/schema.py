"""The store's tables: SQLAlchemy 2.0 models, one per table, and the names other modules use.

The models describe the newest schema. Stores made by older versions are brought up to it by
the Alembic revisions in ``sandbox/store/migrations`` (:mod:`sandbox.store.migrate`); a change
to a model comes with a revision there.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

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
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_NUL, _ESC = "\x00", "\ue000"  # NUL, and a private-use character that escapes it
_UNESCAPE = re.compile("\ue000([\ue001\ue002])")


#: Surrogate row ids: 64-bit (``bigserial``) on PostgreSQL, where one database collects many
#: runs and a population run alone writes tens of millions of rows; on SQLite an ``INTEGER``
#: primary key is already the 64-bit rowid (and only that exact type autoincrements there).
RowId = BigInteger().with_variant(Integer, "sqlite")



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
