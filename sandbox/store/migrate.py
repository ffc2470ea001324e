"""Schema migrations by Alembic: a store made by any earlier version opens at the newest schema.

:class:`~sandbox.store.writes.Store` calls :func:`upgrade` when it opens a store. Three cases:

- **a new database**: the tables are created from the models and stamped with the newest
  revision (Alembic's "create_all, then stamp" recipe);
- **a store with a revision**: ``alembic upgrade head``;
- **a store made before Alembic** (tables but no ``alembic_version``): revision 0001 catches it
  up (columns and indexes added over time, the ``llm_totals`` table), then the later ones run.

Afterwards any table the models have and the store lacks is created (models registered by
later imports, e.g. :mod:`sandbox.training_log`). The revisions live in
``sandbox/store/migrations/versions``; a change to a model comes with one.

Several processes may open one store at once (a sweep, several drivers into one PostgreSQL):
the migration runs under a lock (``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite) and re-reads the revision inside it, so exactly one of them migrates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine
from vragent.sandbox.store.schema import Base

SCRIPTS = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x76726167656E74  # "vragent": one advisory lock key for migrations


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision."""
    rev = ScriptDirectory.from_config(_config(None)).get_current_head()  # type: ignore[arg-type]
    assert rev is not None
    return rev


def current(conn: Connection) -> str | None:
    """The store's revision (``None`` for a new database or one made before Alembic)."""
    return MigrationContext.configure(conn).get_current_revision()


def _up_to_date(conn: Connection, newest: str) -> bool:
    have = set(inspect(conn).get_table_names())
    return current(conn) == newest and all(t in have for t in Base.metadata.tables)


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other migrating process holds at the same time."""
    if engine.dialect.name == "sqlite":
        # pysqlite begins transactions lazily and not before DDL: take the write lock up front.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        yield conn


def upgrade(engine: Engine) -> str | None:
    """Bring the store at ``engine`` to the newest schema.

    Returns:
        The revision the store was at before (``None`` for a new or pre-Alembic store); the
        newest revision when there was nothing to do.
    """
    newest = head()
    with engine.connect() as conn:
        if _up_to_date(conn, newest):  # the common case, without taking a lock
            return newest
    with _locked(engine) as conn:
        before = current(conn)
        if before is None and not inspect(conn).has_table("runs"):
            Base.metadata.create_all(conn)
            command.stamp(_config(conn), "head")
            return None
        if before != newest:
            command.upgrade(_config(conn), "head")
        Base.metadata.create_all(conn)  # tables registered since (checkfirst)
        return before
