"""One owner per run: the lock a process holds while it executes (or resumes) a run.

Two processes executing the same run would both write its steps; the store's unique keys let
only one write each step, and the other goes on from memory the store never got, so the run
ends "finished" with wrong data. The runner therefore takes this lock before it touches a run
and holds it until it lets go of the run (finished, failed or interrupted). A second process
gets :class:`RunBusyError`: ``run RUN_ID is being executed by pid P on HOST``.

The lock dies with its process, so a run killed by SIGKILL (or a lost machine) can be resumed at
once, with no stale lease to expire:

* **SQLite**: an exclusive ``flock`` on ``<store>.locks/<run_id>.lock`` beside the database
  file. The kernel drops it when the process dies. The file holds the owner's pid and host,
  for the error message only.
* **PostgreSQL**: a session-level advisory lock keyed by the run id, on a connection held
  open for the run. The server drops it when the session ends. The owner's pid and host go in
  ``run_owners`` (for the message only; the advisory lock is what excludes).
* An in-memory SQLite store (one process by definition) and other databases take no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from vragent.sandbox.store import RunOwner, Store


class RunBusyError(RuntimeError):
    """Another live process holds the run.

    Args:
        run_id: the run.
        pid: the owner's process id (``None`` if it could not be read).
        host: the owner's host name.
    """

    def __init__(self, run_id: str, pid: int | None, host: str | None) -> None:
        self.run_id, self.pid, self.host = run_id, pid, host
        super().__init__(f"run {run_id} is being executed by pid "
                         f"{'?' if pid is None else pid} on {host or '?'}")


def _owner_line() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


def _parse_owner(raw: str) -> tuple[int | None, str | None]:
    pid, _, host = raw.strip().partition(" ")
    return (int(pid) if pid.isdigit() else None), (host or None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _live_owner(pid: int | None, host: str | None) -> bool:
    """Whether a recorded owner may still hold the lock (a pid gone on this host does not)."""
    return pid is not None and (host != socket.gethostname() or _alive(pid))


def _flock_exclusive(fd: int) -> bool:
    """Take an exclusive ``flock`` without waiting for an owner; ``False`` when one holds it.

    Tried three times 20 ms apart: :func:`owner_alive` (``vragent runs``) holds a shared lock
    for microseconds, and a resume that meets it must not be refused as if the run were owned.
    """
    import fcntl

    for attempt in range(3):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < 2:
                time.sleep(0.02)
    return False


def _file_name(run_id: str) -> str:
    # Run ids are hex; anything else (a hand-made id) must not become a path.
    safe = run_id.isascii() and run_id.isalnum() and len(run_id) <= 64
    return f"{run_id if safe else hashlib.sha256(run_id.encode()).hexdigest()}.lock"


def owner_alive(store: Store, run_id: str) -> bool | None:
    """Whether a live process holds the run's lock.

    A run stored as ``running`` that no live process holds was killed (SIGKILL, a lost
    machine): ``vragent runs`` and ``vragent show`` call it ``interrupted``. Reads only: it
    creates no lock file and takes no lock the owner could find held, beyond a shared SQLite
    ``flock`` of a few microseconds that :meth:`RunLock.acquire` waits out.

    Returns:
        ``None`` where the store takes no lock (in-memory SQLite, other databases).
    """
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        db = store.sqlite_path()
        if db is None:
            return None
        import fcntl

        try:  # no file: never locked, or released (the owner unlinks it on release)
            fd = os.open(db.with_name(db.name + ".locks") / _file_name(run_id), os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:  # unreadable (another user's store): cannot tell
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock, if taken
        return False
    if dialect == "postgresql":
        # pg_locks shows a bigint advisory key as its high half (classid) and low half (objid).
        key = advisory_key(run_id) & 0xFFFF_FFFF_FFFF_FFFF
        with store.engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo "
                "AND database = (SELECT oid FROM pg_database WHERE datname = "
                "current_database())"), {"hi": key >> 32, "lo": key & 0xFFFF_FFFF}).scalar())
    return None


def advisory_key(run_id: str) -> int:
    """The run's PostgreSQL advisory-lock key: a signed 64-bit hash of a namespaced id."""
    digest = hashlib.sha256(f"vragent-run:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class RunLock:
    """The lock on one run of one store; :meth:`acquire` it, :meth:`release` it when done.

    Args:
        store: the run store.
        run_id: the run.
    """

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self._fd: int | None = None
        self._path: Path | None = None
        self._conn: Any = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None or self._conn is not None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            RunBusyError: another process holds it.
        """
        if self.held:
            return
        dialect = self.store.engine.dialect.name
        if dialect == "sqlite":
            db = self.store.sqlite_path()
            if db is not None:
                self._acquire_file(db.with_name(db.name + ".locks") / _file_name(self.run_id))
        elif dialect == "postgresql":
            self._acquire_advisory()

    def release(self) -> None:
        """Let go of the lock (safe to call when not held)."""
        if self._fd is not None:
            import fcntl

            fd, path, self._fd, self._path = self._fd, self._path, None, None
            # Unlink while still holding it: a waiter that opened the old file sees, after its
            # flock, that the path is no longer its inode and retries on a fresh file.
            with contextlib.suppress(OSError):
                if path is not None:
                    path.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                table = RunOwner.__table__
                conn.execute(table.delete().where(table.c.run_id == self.run_id))
                conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                             {"k": advisory_key(self.run_id)})
            except Exception:  # closing the session below drops the lock anyway
                pass
            finally:
                with contextlib.suppress(Exception):
                    conn.invalidate()  # never back to the pool: the session must end here
                    conn.close()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ SQLite

    def _acquire_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _flock_exclusive(fd):
                os.close(fd)
                raise RunBusyError(self.run_id, *self._read_owner(path))
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released and unlinked it meanwhile: lock the new file
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_line().encode(), 0)
        self._fd, self._path = fd, path

    @staticmethod
    def _read_owner(path: Path) -> tuple[int | None, str | None]:
        # The holder writes its pid just after it locks: until then the file is empty, or
        # still names a killed earlier owner (on this host, a pid that is gone).
        pid, host = None, None
        for _ in range(50):
            try:
                pid, host = _parse_owner(path.read_text())
            except OSError:
                pid, host = None, None
            if _live_owner(pid, host):
                return pid, host
            time.sleep(0.02)
        return pid, host

    # ------------------------------------------------------------------ PostgreSQL

    def _acquire_advisory(self) -> None:
        key = advisory_key(self.run_id)
        # Autocommit: the lock belongs to the session, and no transaction stays open for hours.
        conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            raise RunBusyError(self.run_id, *self._pg_owner())
        self._conn = conn
        try:
            pid, host = _parse_owner(_owner_line())
            # One upsert: a reader sees the killed owner's row or ours, never a gap.
            upsert = pg_insert(RunOwner.__table__).values(run_id=self.run_id, pid=pid,
                                                          host=host)
            conn.execute(upsert.on_conflict_do_update(
                index_elements=["run_id"],
                set_={"pid": pid, "host": host, "since": upsert.excluded.since}))
        except BaseException:
            self.release()
            raise

    def _pg_owner(self) -> tuple[int | None, str | None]:
        # As with the SQLite file: the new holder replaces the row just after it locks, so
        # until then there is none, or one naming a killed earlier owner (a pid gone here).
        table = RunOwner.__table__
        pid, host = None, None
        for _ in range(50):
            with self.store.engine.connect() as conn:
                row = conn.execute(table.select().where(table.c.run_id == self.run_id)).first()
            if row is not None:
                pid, host = row.pid, row.host
                if _live_owner(pid, host):
                    return pid, host
            time.sleep(0.02)
        return pid, host
