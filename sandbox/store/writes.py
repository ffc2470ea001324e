"""The store's writes: :class:`Store` opens (and migrates) a store, then writes to it.

It writes runs, steps, item profiles and A/B results.

A simulation step is written in **one transaction**, and natural unique keys (run, arm, step,
user, position) make it impossible to log a step twice: a resumed run that replays a step finds
it already there and skips it. Reads live in :mod:`sandbox.store.queries`; the report methods
here call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, inspect, select
from sqlalchemy.orm import Session, sessionmaker
from vragent.sandbox import faults
from vragent.sandbox.store import migrate, queries
from vragent.sandbox.store.engine import StoreMissingError, make_engine, missing_sqlite_file
from vragent.sandbox.store.schema import (
    METERING_COLUMNS,
    AbArmValue,
    AbComparison,
    AbExperiment,
    Arm,
    Base,
    Decision,
    Impression,
    Item,
    ItemProfileRow,
    LlmCall,
    LlmTotal,
    Metric,
    Run,
    SessionEvent,
    SimUser,
    StepRow,
)

#: Rows per INSERT statement when a step is logged (all in the step's one transaction).
LOG_CHUNK_ROWS = 20_000


def add_llm_totals(session: Session | Connection, run_id: str,
                   calls: Sequence[dict]) -> None:
    """Add ``calls`` (``llm_calls`` rows of one step, already inserted) to the run's totals.

    Runs begun before the table existed got their totals from revision 0002 when their store
    was opened (:mod:`sandbox.store.migrate`).
    """
    t = LlmTotal.__table__
    have = {(r[0], r[1]) for r in session.execute(
        select(t.c.agent, t.c.arm).where(t.c.run_id == run_id))}
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
        if must_exist and (missing := missing_sqlite_file(url)) is not None:
            raise StoreMissingError(url, missing)
        self.engine = make_engine(url)
        if must_exist and not inspect(self.engine).has_table(Run.__tablename__):
            self.engine.dispose()
            raise StoreMissingError(url, None)
        if create:
            migrate.upgrade(self.engine)
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
                add_llm_totals(s, run_id, llm_calls)
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
        """An experiment's arm values and comparisons (:func:`queries.ab_results`)."""
        with self.engine.connect() as conn:
            return queries.ab_results(conn, experiment_id)

    # ---------------------------------------------------------------- reports

    def metric_series(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Per-step metrics of runs: ``{run_id, arm, step, name, value}`` rows."""
        with self.engine.connect() as conn:
            return [p._asdict() for p in queries.metric_series(conn, run_ids)]

    def arm_summary(self, run_id: str) -> list[dict[str, Any]]:
        """Per-arm totals: impressions, watch/like rates, exits, tokens, time."""
        with self.engine.connect() as conn:
            return queries.arm_summary(conn, run_id)

    def metering(self, run_id: str) -> list[dict[str, Any]]:
        """LLM use per arm, then the IP agent (:func:`queries.metering`).

        As the plain rows the CLI prints and ``vragent export`` writes
        (:data:`METERING_COLUMNS`).
        """
        with self.engine.connect() as conn:
            return [{k: getattr(r, k) for k in METERING_COLUMNS}
                    for r in queries.metering(conn, run_id)]

