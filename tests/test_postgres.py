"""Many writers, one store: concurrent runs on PostgreSQL, and a reader beside a SQLite writer.

The PostgreSQL test needs ``VRAGENT_PG_URL`` (``scripts/postgres-ci.sh start``); it skips without
it, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool
from vragent.sandbox.store import (
    Arm,
    Decision,
    Impression,
    Item,
    ItemProfileRow,
    LlmCacheEntry,
    LlmCall,
    Metric,
    Run,
    SessionEvent,
    SimUser,
    StepRow,
    Store,
)

from tests.conftest import REPO, fresh_pg_database, pg_admin_url, tiny_scenario, write_scenario

PER_RUN = (Arm, SimUser, Item, StepRow, Impression, Decision, SessionEvent, Metric, LlmCall,
           ItemProfileRow, LlmCacheEntry)
SEEDS = (11, 12)


def _start(path, url, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "vragent.sandbox.cli", "run", str(path), "--db",
                             url],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc, timeout=600):
    _out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]


def _by_seed(url):
    """``seed -> (status, {table: rows of the run}, sorted decisions)`` of every run."""
    store = Store(url, create=False)
    out = {}
    with store.session() as s:
        for run in s.scalars(select(Run)):
            counts = {m.__tablename__: s.scalar(select(func.count()).select_from(m).where(
                m.run_id == run.id)) for m in PER_RUN}
            decisions = sorted(tuple(r) for r in s.execute(
                select(Decision.arm, Decision.step, Decision.user_id, Decision.position,
                       Decision.item_id, Decision.action, Decision.completion).where(
                    Decision.run_id == run.id)))
            out[run.seed] = (run.status, counts, decisions)
    store.engine.dispose()
    return out


def test_concurrent_runs_share_one_postgres_database(tmp_path, monkeypatch):
    pg_admin_url()  # skip (fail in CI) before the reference runs when there is no server
    monkeypatch.setenv("VRAGENT_HOME", str(tmp_path / "home"))  # private checkpoint file
    paths = [write_scenario(tmp_path, tiny_scenario(seed=seed), f"s{seed}.yaml")
             for seed in SEEDS]
    # The single-run reference: each seed alone, one after the other, in SQLite.
    ref_url = f"sqlite:///{tmp_path}/ref.sqlite"
    for path in paths:
        _finish(_start(path, ref_url))
    want = _by_seed(ref_url)

    with fresh_pg_database() as url:
        Store(url).engine.dispose()  # tables exist before both writers start
        t0 = time.perf_counter()
        procs = [_start(path, url) for path in paths]
        for proc in procs:
            _finish(proc)
        wall = time.perf_counter() - t0
        got = _by_seed(url)
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            dup = conn.execute(text(
                "SELECT count(*) FROM (SELECT run_id, arm, step, user_id, position "
                "FROM decisions GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1) d")).scalar()
            n_cache = conn.execute(text("SELECT count(*) FROM llm_cache")).scalar()
        engine.dispose()

    print(f"two concurrent tiny runs on PostgreSQL: {wall:.1f} s")
    assert dup == 0
    assert sorted(got) == sorted(want) == list(SEEDS)
    for seed in SEEDS:
        status, counts, decisions = got[seed]
        assert status == "finished"
        assert counts == want[seed][1], f"seed {seed}: row counts differ from a single run"
        assert counts["decisions"] > 0 and counts["steps"] == 9
        assert decisions == want[seed][2], f"seed {seed}: decisions differ from a single run"
    assert n_cache == sum(c["llm_cache"] for _, c, _ in want.values())


def test_reader_beside_a_sqlite_writer_sees_growing_counts(tmp_path):
    db = tmp_path / "live.sqlite"
    Store(f"sqlite:///{db}").engine.dispose()  # WAL on, tables made, before the writer starts
    path = write_scenario(tmp_path, tiny_scenario())
    reader = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true", poolclass=NullPool)
    proc = _start(path, f"sqlite:///{db}")
    counts = []
    try:
        while proc.poll() is None:
            with reader.connect() as conn:  # any error here fails the test
                counts.append(conn.execute(text("SELECT count(*) FROM decisions")).scalar())
            time.sleep(0.05)
        _finish(proc)
        with reader.connect() as conn:
            counts.append(conn.execute(text("SELECT count(*) FROM decisions")).scalar())
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.dispose()
    print(f"reader beside a SQLite writer: {len(counts)} reads, counts {sorted(set(counts))}")
    assert counts == sorted(counts), "the reader saw the decision count go down"
    assert counts[-1] > 0 and len(set(counts)) >= 3, counts  # it saw the run grow step by step
