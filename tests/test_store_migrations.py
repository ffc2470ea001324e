"""Alembic migrations: stores made before them open at the newest schema, and an old run resumes.

The fixtures in ``tests/fixtures`` were made by revision 4f16b63, before the store had
migrations (tests/fixtures/README.md).
"""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

from sqlalchemy import create_engine, inspect, select, text
from vragent.sandbox.store import (
    Decision,
    Impression,
    LlmCall,
    LlmTotal,
    SessionEvent,
    Store,
    migrate,
)

from tests.test_resume import _cli

FIXTURES = Path(__file__).parent / "fixtures"


def _schema(engine) -> dict:
    """Every table's columns (type, nullability) and indexes (columns, partial predicate)."""
    insp = inspect(engine)
    out = {}
    for table in sorted(insp.get_table_names()):
        cols = {c["name"]: (str(c["type"]), c["nullable"]) for c in insp.get_columns(table)}
        ixs = {ix["name"]: (tuple(ix["column_names"]),
                            str((ix.get("dialect_options") or {}).get(
                                f"{engine.dialect.name}_where", "")))
               for ix in insp.get_indexes(table)}
        out[table] = (cols, ixs)
    return out


def _load_dump(name: str, path: Path) -> str:
    """A SQLite store at ``path`` from a gzipped ``.dump`` fixture; returns its URL."""
    with sqlite3.connect(path) as conn:
        conn.executescript(gzip.decompress((FIXTURES / name).read_bytes()).decode())
    return f"sqlite:///{path}"


def test_a_new_store_is_stamped_with_the_newest_revision(store_urls):
    store = Store(store_urls("new"))
    with store.engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
    # Opening it again is the fast path: nothing to do, the revision unchanged.
    assert migrate.upgrade(store.engine) == migrate.head()


def test_a_store_from_before_alembic_gets_the_newest_schema(store_urls):
    """Drop what revision 0001 adds (columns with and without defaults, a table, the partial
    index) and the version table: opening the store puts back exactly a new store's schema."""
    fresh, old = Store(store_urls("fresh")), Store(store_urls("old"))
    with old.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("DROP TABLE llm_totals"))
        conn.execute(text("DROP INDEX ix_decisions_traced"))
        for table, column in (("decisions", "cache_hit"), ("decisions", "rule"),
                              ("decisions", "trace_ok"), ("sessions", "leave_draw"),
                              ("item_profiles", "stages"), ("users", "heldout")):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    assert _schema(old.engine) != _schema(fresh.engine)
    with old.engine.connect() as conn:
        assert migrate.current(conn) is None
    again = Store(old.url)
    assert _schema(again.engine) == _schema(fresh.engine)
    with again.engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()


def test_a_run_made_before_the_redesign_opens_and_resumes(tmp_path):
    """A run that 4f16b63 killed inside its second step's transaction resumes with today's
    code to the decisions, impressions and session ends of the run 4f16b63 finished, and
    today's running LLM totals are those of the calls stored, the old ones included."""
    killed = _load_dump("store-4f16b63-killed.sql.gz", tmp_path / "killed.sqlite")
    finished = _load_dump("store-4f16b63-finished.sql.gz", tmp_path / "finished.sqlite")
    old_schema = _schema(create_engine(killed))
    assert "llm_totals" not in old_schema and "rule" not in old_schema["decisions"][0]

    (run_id,) = [r.id for r in Store(killed, create=False).list_runs()]
    res = _cli(["run", "--resume", run_id, "--db", killed])
    assert res.returncode == 0, res.stderr[-2000:]

    def rows(url, *cols):
        with Store(url, create=False).session() as s:
            return sorted(tuple(r) for r in s.execute(select(*cols)))

    store = Store(killed)
    (run,) = store.list_runs()
    assert run.status == "finished" and run.steps_done == 3
    for cols in ((Decision.arm, Decision.step, Decision.user_id, Decision.position,
                  Decision.item_id, Decision.action, Decision.p_like),
                 (Impression.arm, Impression.step, Impression.user_id, Impression.position,
                  Impression.item_id),
                 (SessionEvent.arm, SessionEvent.step, SessionEvent.user_id,
                  SessionEvent.left)):
        assert rows(killed, *cols) == rows(finished, *cols), cols[0].table.name
    # The steps after the kill carry the new columns; the ones before keep NULL there.
    rules = rows(killed, Decision.step, Decision.rule)
    assert {r for s, r in rules if s == 0} == {None}
    assert {r for s, r in rules if s > 0} <= {"draw", "answer", "invalid"} and len(rules)
    with store.session() as s:
        totals = {(t.agent, t.arm): (t.calls, t.cache_hits, t.tokens_in)
                  for t in s.scalars(select(LlmTotal))}
        calls = list(s.scalars(select(LlmCall).where(LlmCall.agent == "us")))
    want: dict = {}
    for c in calls:
        n, hits, t_in = want.get((c.agent, c.arm), (0, 0, 0))
        want[(c.agent, c.arm)] = (n + (not c.cached), hits + c.cached,
                                  t_in + (0 if c.cached else c.tokens_in))
    assert totals == want and len(totals) == 3
    # The migrated old store has exactly a new store's schema.
    new = Store(f"sqlite:///{tmp_path}/new.sqlite")
    assert _schema(store.engine) == _schema(new.engine)



def test_processes_opening_one_new_store_at_once_migrate_it_once(store_urls):
    """Four processes open the same new store together: each succeeds and the store holds one
    revision row (the migration runs under a lock; the others find it done)."""
    import subprocess
    import sys

    url = store_urls("together")
    code = "import sys; from sandbox.store import Store; Store(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    store = Store(url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (migrate.head(),)]
