"""Kill a run with SIGKILL mid-way, resume it, and compare with an uninterrupted run."""

import logging
import os
import subprocess
import sys

import pytest
from sqlalchemy import select
from vragent.sandbox.payloads import Slate, SlateEntry, TaskOutcome, UserOutcome, UserTask
from vragent.sandbox.runner import _saver
from vragent.sandbox.store import Store

from tests.conftest import REPO, tiny_scenario, write_scenario

# Columns that differ between two runs of one scenario by nature: row ids and run ids, clocks,
# the commit the run started at, and whether a result came from the response cache (a resumed
# run replays a lost step's calls, mostly as hits). Everything else must be equal, everywhere.
VOLATILE = {"id", "run_id", "experiment_id", "created_at", "finished_at", "since", "wall_s",
            "latency_ms", "cache_hit", "cached", "git_revision"}
SKIPPED_TABLES = {"ab_experiments", "ab_arm_values", "ab_comparisons", "run_owners"}


def _cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vragent.sandbox.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _stable(value):
    """A stored value without the clocks JSON columns nest (an IP profile's stage latencies)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _snapshot(url):
    """The run of a one-run store, and every table's rows without :data:`VOLATILE` columns."""
    from vragent.sandbox.store import Base

    store = Store(url)
    out = {}
    with store.session() as s:
        for table in Base.metadata.sorted_tables:
            if table.name in SKIPPED_TABLES:
                continue
            cols = [c for c in table.columns if c.name not in VOLATILE]
            rows = s.execute(select(*cols)).all()
            out[table.name] = sorted((tuple(_stable(v) for v in r) for r in rows), key=repr)
    (run,) = store.list_runs()
    out["llm_totals"] = _llm_totals(store)
    return run, out


def _llm_totals(store):
    """The running LLM totals, checked against the calls they sum.

    Whether a call was sent or served from the response cache depends on what the cache held
    (a resumed step's calls are cache hits), like ``llm_calls.cached``; so the comparison
    across stores keeps the count of calls per agent and arm, after checking in this store that
    every total equals its sum over ``llm_calls``.
    """
    from vragent.sandbox.store import LlmCall, LlmTotal

    with store.session() as s:
        totals = {(t.agent, t.arm): t for t in s.scalars(select(LlmTotal))}
        for (agent, arm), t in totals.items():
            calls = list(s.scalars(select(LlmCall).where(
                LlmCall.run_id == t.run_id, LlmCall.agent == agent, LlmCall.arm == arm)))
            sent = [c for c in calls if not c.cached]
            assert (t.calls, t.cache_hits, t.tokens_in, t.tokens_out) == (
                len(sent), len(calls) - len(sent), sum(c.tokens_in for c in sent),
                sum(c.tokens_out for c in sent)), (agent, arm)
            assert abs(t.latency_ms - sum(c.latency_ms for c in sent)) < 1e-6 * max(
                1.0, t.latency_ms)
    return sorted((a, r, t.calls + t.cache_hits) for (a, r), t in totals.items())


def _one_error_line(proc, *expected: str) -> tuple[str, str]:
    """A CLI run that failed with exit 1 and one ``error:`` line holding one of ``expected``;
    returns the line and the run id it names."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert any(e in lines[0] for e in expected), lines[0]
    assert "Traceback" not in proc.stderr
    (run_id,) = [w for w in lines[0].split() if len(w) == 12 and w.isalnum()][:1]
    return lines[0], run_id


def _assert_same_as_clean(clean_url, url, after):
    """The run in ``url`` finished, and every compared table equals the clean run's."""
    _, want = _snapshot(clean_url)
    run, got = _snapshot(url)
    assert run.status == "finished"
    for table in want:
        assert got[table] == want[table], f"{table} differs after {after}"
    return run


#: The resume tests' scenario: 3 steps with refits and IP profiles in the prompts.
CLEAN_RUN = {"simulation": {"steps": 3, "slate_size": 3, "users_per_task": 2, "refit_every": 1},
             "ip_agent": {"enabled": True, "items_per_step": 2, "in_prompt": True}}


SASREC_ARMS = [
    {"name": "popular", "recommender": "popular"},
    # A warm-refitting text tower that reads IP profiles: resume must replay every refit with
    # the profiles known at that step.
    {"name": "sasrec-ip", "recommender": "sasrec", "item_text": "title+profile",
     "params": {"tower": "text", "dim": 16, "epochs": 2, "refit_epochs": 1, "batch_size": 16}},
]


# Every kill point on SQLite; on PostgreSQL the one inside the store's transaction, which is
# where the two stores differ (the other points do not touch the store).
@pytest.mark.parametrize(("store_urls", "kill_at", "arms"),
                         [("sqlite", "decide:4", None), ("sqlite", "log:2", None),
                          ("sqlite", "log:2", SASREC_ARMS), ("postgresql", "log:2", None)],
                         ids=["sqlite-decide", "sqlite-log", "sqlite-log-sasrec-text",
                              "postgresql-log"], indirect=["store_urls"])
def test_killed_run_resumes_to_the_same_store(tmp_path, store_urls, kill_at, arms,
                                              clean_real_model_run, request):
    sc = tiny_scenario(**CLEAN_RUN)
    sc["arms"] = arms or sc["arms"]
    # SQLite files, or two PostgreSQL databases (VRAGENT_HOME is private: the checkpoints).
    crashed = store_urls("crashed")
    if arms is None and request.node.callspec.params["store_urls"] == "sqlite":
        path, clean = clean_real_model_run  # the same scenario, run once per module
    else:
        path, clean = write_scenario(tmp_path, sc), store_urls("clean")
        assert _cli(["run", str(path), "--db", clean]).returncode == 0

    first = _cli(["run", str(path), "--db", crashed], {"VRAGENT_FAULT_KILL_AT": kill_at})
    assert first.returncode == -9, first.stderr[-2000:]
    run, partial = _snapshot(crashed)
    assert run.status == "running" and run.steps_done < 3

    again = _cli(["run", "--resume", run.id, "--db", crashed])
    assert again.returncode == 0, again.stderr[-2000:]
    run_r = _assert_same_as_clean(clean, crashed, "resume")
    assert run_r.steps_done == 3
    # Nothing logged twice, and the partial store held only whole steps.
    assert len(partial["steps"]) % len(sc["arms"]) == 0


def test_resume_of_unknown_run_fails_cleanly(tmp_path):
    res = _cli(["run", "--resume", "nope", "--db", f"sqlite:///{tmp_path}/x.sqlite"])
    assert res.returncode == 2 and "no run 'nope'" in res.stderr


# Where a step can be killed (sandbox/faults.py), and how often each point is passed per step
# that a process executes: a fan-out task decides 2 users of one arm, 3 tasks an arm at most.
KILL_POINTS = {"perceive": 1, "decide": 3, "log": 1, "committed": 1, "feedback": 1}


def _kill_inside_a_step(rng, steps_left: int) -> str:
    """A seeded kill point that a process with ``steps_left`` steps to run surely reaches."""
    point = rng.choice(sorted(KILL_POINTS))
    return f"{point}:{rng.randint(1, KILL_POINTS[point] * steps_left)}"


@pytest.fixture(scope="module")
def clean_real_model_run(tmp_path_factory):
    """An uninterrupted run of the tiny (real, randomly initialised) model, once per module."""
    folder = tmp_path_factory.mktemp("clean")
    path = write_scenario(folder, tiny_scenario(**CLEAN_RUN))
    url = f"sqlite:///{folder}/clean.sqlite"
    assert _cli(["run", str(path), "--db", url]).returncode == 0
    return path, url


# Seeds chosen so that the kills cover the points the single-kill test above does not
# reach: log then committed (seed 0), perceive then feedback (5), feedback then log (7).
@pytest.mark.parametrize("seed", [0, 5, 7])
def test_run_killed_twice_inside_steps_resumes_to_the_same_store(tmp_path, seed,
                                                                 clean_real_model_run):
    """Two SIGKILLs at seeded points inside steps (profiles stored, fan-out under way, inside
    the store transaction, just after its commit, after the refits), then a resume: every
    table equals the uninterrupted run's."""
    import random

    path, clean = clean_real_model_run
    crashed = f"sqlite:///{tmp_path}/crashed.sqlite"
    rng = random.Random(seed)
    first_at = _kill_inside_a_step(rng, 3)
    first = _cli(["run", str(path), "--db", crashed], {"VRAGENT_FAULT_KILL_AT": first_at})
    assert first.returncode == -9, (first_at, first.stderr[-2000:])
    run, _ = _snapshot(crashed)
    assert run.status == "running"
    # The resumed process counts from its own start, over the steps it has left.
    second_at = _kill_inside_a_step(rng, 3 - run.steps_done)
    second = _cli(["run", "--resume", run.id, "--db", crashed],
                  {"VRAGENT_FAULT_KILL_AT": second_at})
    assert second.returncode == -9, (first_at, second_at, second.stderr[-2000:])
    again = _cli(["run", "--resume", run.id, "--db", crashed])
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_same_as_clean(clean, crashed, f"kills at {first_at} then {second_at}")


def test_a_locked_store_stops_the_run_with_one_line_and_it_resumes(tmp_path,
                                                                  clean_real_model_run):
    """Another connection takes SQLite's write lock mid-run: the run stops with a clear error,
    and once the lock is gone it resumes to the same store as an uninterrupted run."""
    import sqlite3
    import threading
    import time

    path, clean = clean_real_model_run
    locked = tmp_path / "locked.sqlite"
    release, holding = threading.Event(), threading.Event()

    def hold_the_lock_after_the_first_step():
        while not release.is_set():
            try:
                conn = sqlite3.connect(locked, timeout=0.05, isolation_level=None)
                if conn.execute("SELECT count(*) FROM steps").fetchone()[0] > 0:
                    conn.execute("BEGIN EXCLUSIVE")
                    holding.set()
                    release.wait(120)
                    conn.execute("ROLLBACK")
                    conn.close()
                    return
                conn.close()
            except sqlite3.OperationalError:
                pass  # no tables yet, or the run holds the lock this instant
            time.sleep(0.02)

    locker = threading.Thread(target=hold_the_lock_after_the_first_step, daemon=True)
    locker.start()
    try:
        first = _cli(["run", str(path), "--db", f"sqlite:///{locked}"],
                     {"VRAGENT_SQLITE_BUSY_MS": "300"})
    finally:
        release.set()
        locker.join(10)
    assert holding.is_set(), "the lock was never taken"
    _line, run_id = _one_error_line(first, "database is locked")
    again = _cli(["run", "--resume", run_id, "--db", f"sqlite:///{locked}"])
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_same_as_clean(clean, f"sqlite:///{locked}", "the lock")


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 MiB tmpfs of its own, so filling it fills nothing else (needs root to mount)."""
    mount = tmp_path / "tinyfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {made.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(tmp_path, tiny_filesystem):
    """The store's filesystem fills up after the first step: the run stops with a one-line
    error naming the store and the resume command (exit 1), loses nothing, and once space is
    freed it resumes to the same store as an uninterrupted run."""
    import sqlite3
    import threading
    import time

    sc = tiny_scenario(simulation={"steps": 3, "slate_size": 3, "users_per_task": 2,
                                   "refit_every": 1})
    path = write_scenario(tmp_path, sc)
    clean, full = f"sqlite:///{tmp_path}/clean.sqlite", tiny_filesystem / "full.sqlite"
    assert _cli(["run", str(path), "--db", clean]).returncode == 0
    filler, stop, filled = tiny_filesystem / "filler.bin", threading.Event(), threading.Event()

    def fill_the_disk_after_the_first_step():
        while not stop.is_set():
            try:
                conn = sqlite3.connect(f"file:{full}?mode=ro", uri=True, timeout=0.05)
                logged = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                logged = 0  # no store or no tables yet
            if logged:
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * (1 << 16))
                            f.flush()
                    except OSError:
                        pass  # ENOSPC: the filesystem is full
                filled.set()
                return
            time.sleep(0.01)

    filling = threading.Thread(target=fill_the_disk_after_the_first_step, daemon=True)
    filling.start()
    try:
        first = _cli(["run", str(path), "--db", f"sqlite:///{full}"])
    finally:
        stop.set()
        filling.join(10)
    assert filled.is_set(), "the disk was never filled"
    line, run_id = _one_error_line(first, "database or disk is full", "No space left")
    assert f"vragent run --resume {run_id}" in line
    # Nothing half-written: whole steps only, and fewer than all of them.
    conn = sqlite3.connect(f"file:{full}?mode=ro", uri=True)
    per_step = conn.execute("SELECT step, count(*) FROM decisions GROUP BY step").fetchall()
    conn.close()
    assert len(per_step) < 3, per_step  # the run stopped before its end
    filler.unlink()
    again = _cli(["run", "--resume", run_id, "--db", f"sqlite:///{full}"])
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_same_as_clean(clean, f"sqlite:///{full}", "the full disk")
    clean_per_step = dict(sqlite3.connect(f"{tmp_path}/clean.sqlite").execute(
        "SELECT step, count(*) FROM decisions GROUP BY step").fetchall())
    # Every step the failed run left behind was whole.
    assert all(clean_per_step[s] == n for s, n in per_step), (per_step, clean_per_step)


def test_a_failing_checkpoint_file_stops_the_run_with_one_line(tmp_path, monkeypatch):
    """The LangGraph checkpoint file (beside the store, written through sqlite3 directly) fails
    as a full disk would: one line naming that file and the resume command, exit 1, and the
    resumed run equals an uninterrupted one."""
    import sqlite3

    import vragent.sandbox.runner as runner
    from typer.testing import CliRunner
    from vragent.sandbox.cli import app

    sc = tiny_scenario(simulation={"steps": 2, "slate_size": 3, "users_per_task": 2},
                       backend={"trace_rate": 0.0}, ip_agent={"enabled": False})
    path = write_scenario(tmp_path, sc)
    clean, broken = f"sqlite:///{tmp_path}/clean.sqlite", f"sqlite:///{tmp_path}/broken.sqlite"
    assert CliRunner().invoke(app, ["run", str(path), "--db", clean]).exit_code == 0
    real_saver = runner._saver

    def saver_whose_disk_fills_at_the_first_write(ckpt_path):
        saver, conn = real_saver(ckpt_path)

        def put_on_a_full_disk(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        saver.put = put_on_a_full_disk
        return saver, conn

    monkeypatch.setattr(runner, "_saver", saver_whose_disk_fills_at_the_first_write)
    first = CliRunner().invoke(app, ["run", str(path), "--db", broken])
    assert first.exit_code == 1, first.output
    lines = [line for line in first.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and "checkpoint file" in lines[0], first.output
    assert "broken.checkpoints.sqlite unavailable: database or disk is full" in first.output
    assert "is resumable: vragent run --resume" in first.output
    monkeypatch.setattr(runner, "_saver", real_saver)
    (run_id,) = [r.id for r in Store(broken).list_runs()]
    assert CliRunner().invoke(app, ["run", "--resume", run_id, "--db", broken]).exit_code == 0
    _assert_same_as_clean(clean, broken, "the checkpoint failure")


def test_checkpoints_rebuild_the_step_payloads(tmp_path, caplog):
    """A step's typed payloads survive the checkpoint serializer, as allowed types."""
    saver, conn = _saver(tmp_path / "c.checkpoints.sqlite")
    slate = Slate(7, [SlateEntry(3, 0.9), SlateEntry(5, 0.0, social=True)])
    state = {
        "step": 2, "slates": {"popular": [slate]},
        "task": UserTask(2, "popular", 0, [slate]),
        "outcomes": [TaskOutcome(
            [UserOutcome("popular", 7, True, 0.2, 0.1, 0.5,
                         [{"item_id": 3, "action": "like", "position": 0}])],
            [{"agent": "us", "arm": "popular", "task": 0, "seq": 0}])],
    }
    with caplog.at_level(logging.WARNING):
        back = saver.serde.loads_typed(saver.serde.dumps_typed(state))
    conn.close()
    assert back == state
    assert back["outcomes"][0].users[0].decisions[0]["action"] == "like"
    assert "unregistered" not in caplog.text

