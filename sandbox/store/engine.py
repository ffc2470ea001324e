"""Engines for a store URL: SQLite in WAL mode for the writer, read-only for the dashboard."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url


def sqlite_busy_ms() -> int:
    """``$VRAGENT_SQLITE_BUSY_MS`` (default 30,000): SQLite's wait for a lock, in ms."""
    raw = os.environ.get("VRAGENT_SQLITE_BUSY_MS", "30000")
    return int(raw) if raw.isdigit() else 30000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable at each commit boundary
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


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


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist (connecting would create it)."""
    path = sqlite_file(url)
    return path if path is not None and not path.exists() else None


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``None`` for memory or other databases)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    db = u.database or ""
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def _read_only_sqlite(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.execute(f"PRAGMA busy_timeout={sqlite_busy_ms()}")
    cur.close()


@functools.lru_cache(maxsize=16)
def read_only_engine(url: str) -> Engine:
    """A read-only engine for ``url`` (one per URL and process): the dashboard's.

    SQLite files open as ``file:PATH?mode=ro`` with ``PRAGMA query_only``: a reader can never
    write, and a missing file is an error instead of a new empty database. Other databases get
    a plain engine that pings before use; its callers only ever issue ``SELECT``.

    Raises:
        StoreMissingError: the SQLite file does not exist.
    """
    path = sqlite_file(url)
    if path is not None:
        if not path.is_file():
            raise StoreMissingError(url, path)
        ro = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"
        eng = create_engine(ro, connect_args={"check_same_thread": False})
        event.listen(eng, "connect", _read_only_sqlite)
        return eng
    eng = create_engine(url, pool_pre_ping=True)
    if eng.dialect.name == "sqlite":
        event.listen(eng, "connect", _read_only_sqlite)
    return eng
