"""Runs that cannot be corrupted (issue 16): one owner per run, and failed writes that resume.

Each test ends by comparing the store with an uninterrupted run of the same scenario.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner
from vragent.sandbox.store import Store

from tests.conftest import REPO, tiny_scenario, write_scenario
from tests.test_resume import _assert_same_as_clean, _cli, _one_error_line, _snapshot

SCENARIO = {"simulation": {"steps": 3, "slate_size": 3, "users_per_task": 2, "refit_every": 1},
            "ip_agent": {"enabled": True, "items_per_step": 2, "in_prompt": True}}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, str]:
    """The scenario, and an uninterrupted run of it (SQLite), made once for the module."""
    folder = tmp_path_factory.mktemp("clean")
    path = write_scenario(folder, tiny_scenario(**SCENARIO))
    url = f"sqlite:///{folder}/clean.sqlite"
    assert _cli(["run", str(path), "--db", url]).returncode == 0
    return path, url


def _popen(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen:
    import os

    return subprocess.Popen([sys.executable, "-m", "vragent.sandbox.cli", *args], cwd=REPO,
                            env={**os.environ, **env_extra}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pause_env(folder: Path, at: str = "decide:2") -> dict[str, str]:
    """Fault injection: the process stops at ``at`` until ``folder/release`` exists."""
    folder.mkdir(exist_ok=True)
    return {"VRAGENT_FAULT_PAUSE_AT": at, "VRAGENT_FAULT_PAUSE_DIR": str(folder)}


def _busy_line(proc_or_result, run_id: str, pid: int) -> None:
    line, _ = _one_error_line(proc_or_result, "is being executed")
    assert line.endswith(f"run {run_id} is being executed by pid {pid} on "
                         f"{socket.gethostname()}"), line
    assert "resumable" not in line


# ------------------------------------------------------------------ one owner per run


def test_a_resume_while_the_original_runs_is_refused(tmp_path, store_urls, clean_run):
    """The original ``vragent run`` holds its run: a resume meanwhile exits 1 with one line
    naming the owner's pid and host, and changes nothing; the original then finishes."""
    path, clean = clean_run
    url = store_urls("owned")
    pause = tmp_path / "pause"
    original = _popen(["run", str(path), "--db", url], _pause_env(pause))
    try:
        _wait_for(lambda: any(pause.glob("paused-*")) or original.poll() is not None,
                  "the original run to reach its second fan-out task")
        assert original.poll() is None, original.communicate()[1][-2000:]
        (run,) = Store(url).list_runs()
        before = _snapshot(url)[1]
        second = _cli(["run", "--resume", run.id, "--db", url])
        _busy_line(second, run.id, original.pid)
        assert _snapshot(url)[1] == before
        assert Store(url).get_run(run.id).status == "running"
    finally:
        (pause / "release").touch()
        _, err = original.communicate(timeout=600)
    assert original.returncode == 0, err[-2000:]
    _assert_same_as_clean(clean, url, "a refused resume")


def test_two_resumes_started_together_one_runs_and_one_is_refused(tmp_path, store_urls,
                                                                   clean_run):
    """Two ``vragent run --resume`` of one interrupted run at once: one executes it, the
    other exits 1 at once naming the first; the store ends equal to an uninterrupted run."""
    path, clean = clean_run
    url = store_urls("twice")
    killed = _cli(["run", str(path), "--db", url], {"VRAGENT_FAULT_KILL_AT": "decide:4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run,) = Store(url).list_runs()
    pause = tmp_path / "pause"
    # Each pauses in its first fan-out task, so the winner is still running when the loser
    # comes to the lock, however the two are scheduled.
    procs = [_popen(["run", "--resume", run.id, "--db", url], _pause_env(pause, "decide:1"))
             for _ in range(2)]
    try:
        _wait_for(lambda: any(p.poll() is not None for p in procs), "one resume to stop")
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        loser_out = subprocess.CompletedProcess(loser.args, loser.returncode,
                                                *loser.communicate())
        _busy_line(loser_out, run.id, winner.pid)
    finally:
        (pause / "release").touch()
        for p in procs:
            if p.poll() is None:
                p.communicate(timeout=600)
    assert winner.returncode == 0, winner.stderr
    _assert_same_as_clean(clean, url, "two resumes at once")


def test_the_lock_dies_with_its_process_and_is_taken_again(store_url):
    """A live owner excludes (other processes and this one); a killed one does not: its
    lock file (SQLite) or session (PostgreSQL) dies with it."""
    from vragent.sandbox.run_lock import RunBusyError, RunLock

    store = Store(store_url)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from sandbox.store import Store\nfrom sandbox.run_lock import RunLock\n"
         "lock = RunLock(Store(sys.argv[1]), 'r1')\nlock.acquire()\n"
         "print('held', flush=True)\ntime.sleep(600)", store.url],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=f"pid {holder.pid} on {socket.gethostname()}$"):
            RunLock(store, "r1").acquire()
        with RunLock(store, "r2"):  # another run of the store is free
            pass
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(store, "r1")
    # PostgreSQL ends the killed client's session when it sees the socket close: a moment.
    _wait_for(lambda: _try(lock), "the killed owner's lock to go", timeout=30)
    assert lock.held
    with pytest.raises(RunBusyError):  # a second owner in the same process is refused too
        RunLock(store, "r1").acquire()
    lock.release()
    with RunLock(store, "r1") as again:
        assert again.held
    store.engine.dispose()


def test_a_refusal_names_the_new_owner_not_a_killed_one(store_urls):
    """PostgreSQL: a killed owner's ``run_owners`` row survives it. A new owner that holds the
    advisory lock but has not yet written its row must not be named by the killed one's pid
    (CI once saw exactly that race when two resumes started together)."""
    import threading

    from sqlalchemy import text
    from vragent.sandbox.run_lock import RunBusyError, RunLock, advisory_key
    from vragent.sandbox.store import RunOwner

    url = store_urls("stale")
    if not url.startswith("postgresql"):
        pytest.skip("the owner row is PostgreSQL's; SQLite's lock file is tested above")
    store = Store(url)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    table = RunOwner.__table__
    with store.engine.begin() as conn:
        conn.execute(table.insert().values(run_id="r1", pid=dead_pid,
                                           host=socket.gethostname()))
    # The new owner: the advisory lock taken, its row written a moment later.
    holder = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    assert holder.execute(text("SELECT pg_try_advisory_lock(:k)"),
                          {"k": advisory_key("r1")}).scalar()

    def write_row() -> None:
        time.sleep(0.3)
        with store.engine.begin() as conn:
            conn.execute(table.update().where(table.c.run_id == "r1").values(pid=4242424,
                                                                             host="elsewhere"))

    writer = threading.Thread(target=write_row)
    writer.start()
    try:
        with pytest.raises(RunBusyError, match=r"pid 4242424 on elsewhere$"):
            RunLock(store, "r1").acquire()
    finally:
        writer.join()
        holder.close()
        store.engine.dispose()


def _try(lock) -> bool:
    from vragent.sandbox.run_lock import RunBusyError

    try:
        lock.acquire()
    except RunBusyError:
        return False
    return True


def test_a_run_that_fails_to_start_lets_go_of_its_lock(tmp_path):
    """A driver that cannot start (here an unreadable stored scenario) releases the lock, so
    the same process (a sweep, a notebook) can take the run again."""
    import yaml
    from vragent.sandbox.config import load_scenario
    from vragent.sandbox.run_lock import RunLock
    from vragent.sandbox.runner import RunDriver, create_run

    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    sc, text, _ = load_scenario(str(write_scenario(tmp_path, tiny_scenario(**SCENARIO))))
    run_id = create_run(store, sc, text, "s")
    store.update_run(run_id, scenario_yaml="steps: [unclosed")
    with pytest.raises(yaml.YAMLError):
        RunDriver(store, run_id)
    with RunLock(store, run_id) as lock:
        assert lock.held


# ------------------------------------------------------------------ failed writes


def _run_in_process(args: list[str]):
    from vragent.sandbox.cli import app

    return CliRunner().invoke(app, args)


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if "error:" in line]


def test_a_store_locked_during_the_step_write_leaves_the_run_resumable(tmp_path, monkeypatch,
                                                                       clean_run):
    """The issue's case: another connection holds ``BEGIN EXCLUSIVE`` while the second step
    is written. The run stops with one line, and the resume finishes it (it failed with
    ``KeyError: 'rec_score'``: the write popped fields off the state the checkpoint saved)."""
    path, clean = clean_run
    db = tmp_path / "locked.sqlite"
    real = Store.log_step
    holder: list[sqlite3.Connection] = []

    def log_step_while_another_connection_holds_the_lock(self, run_id, step, **rows):
        if step == 1 and not holder:
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            holder.append(conn)
        return real(self, run_id, step, **rows)

    monkeypatch.setenv("VRAGENT_SQLITE_BUSY_MS", "200")
    monkeypatch.setattr(Store, "log_step", log_step_while_another_connection_holds_the_lock)
    first = _run_in_process(["run", str(path), "--db", f"sqlite:///{db}"])
    assert holder, "the lock was never taken"
    holder[0].execute("ROLLBACK")
    holder[0].close()
    assert first.exit_code == 1, first.output
    (line,) = _error_lines(first)
    assert "database is locked" in line and "is resumable: vragent run --resume" in line
    monkeypatch.setattr(Store, "log_step", real)
    (run,) = Store(f"sqlite:///{db}").list_runs()
    again = _run_in_process(["run", "--resume", run.id, "--db", f"sqlite:///{db}"])
    assert again.exit_code == 0, again.output
    _assert_same_as_clean(clean, f"sqlite:///{db}", "the locked step write")


WRITES = [("vragent.sandbox.store", "Store", "add_profiles"),  # perceive: the step's item profiles
          ("vragent.sandbox.response_cache", "SqlResponseCache", "put_many"),  # a fan-out task
          ("vragent.sandbox.store", "Store", "log_step"),  # the step's one transaction
          ("vragent.sandbox.store", "Store", "update_run")]  # the step's wall time, after it


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("write", WRITES, ids=[w[2] for w in WRITES])
def test_a_write_failure_anywhere_in_a_step_resumes_to_the_same_store(tmp_path, monkeypatch,
                                                                      write, when, clean_run):
    """Fault injection: in the second step, one of the store writes a step makes fails
    (``before``: nothing written, as with a locked store; ``after``: it committed, but the
    caller saw an error, as when a connection drops at commit). The run stops with one
    resumable line, and the resume ends equal to an uninterrupted run."""
    import importlib

    path, clean = clean_run
    url = f"sqlite:///{tmp_path}/faulty.sqlite"
    module, cls_name, method = write
    cls = getattr(importlib.import_module(module), cls_name)
    real, real_log = getattr(cls, method), Store.log_step
    state = {"step0_logged": False, "fired": False}

    def log_step_noting_the_first_step(self, run_id, step, **rows):
        wrote = real_log(self, run_id, step, **rows)
        state["step0_logged"] |= step == 0 and wrote
        return wrote

    def failing_write(self, *args, **kwargs):
        fire = state["step0_logged"] and not state["fired"]
        if fire and method == "log_step" and args[1] == 0:
            fire = False  # (not the first step's own write)
        if not fire:
            return real(self, *args, **kwargs)
        state["fired"] = True
        injected = OperationalError("(fault injection)", {}, sqlite3.OperationalError(
            f"database is locked (fault injection: {method} {when} its commit)"))
        if when == "before":
            raise injected
        real(self, *args, **kwargs)
        raise injected

    if method != "log_step":
        monkeypatch.setattr(Store, "log_step", log_step_noting_the_first_step)
        monkeypatch.setattr(cls, method, failing_write)
    else:
        def both(self, run_id, step, **rows):
            if state["step0_logged"]:
                return failing_write(self, run_id, step, **rows)
            return log_step_noting_the_first_step(self, run_id, step, **rows)

        monkeypatch.setattr(Store, "log_step", both)
    first = _run_in_process(["run", str(path), "--db", url])
    assert state["fired"], "the fault never fired"
    assert first.exit_code == 1, first.output
    (line,) = _error_lines(first)
    assert "fault injection" in line and "is resumable: vragent run --resume" in line, line
    monkeypatch.undo()
    (run,) = Store(url).list_runs()
    again = _run_in_process(["run", "--resume", run.id, "--db", url])
    assert again.exit_code == 0, again.output
    _assert_same_as_clean(clean, url, f"{method} failing {when} its commit")


# ------------------------------------------------------------------ bad answers from a server


def test_nan_logprobs_stop_the_run_as_a_backend_fault_and_it_resumes(tmp_path, tiny_backend):
    """A server answering NaN log-probs: the run stops naming the backend (it was blamed on
    the store: ``NOT NULL constraint failed: metrics.value``), nothing non-finite reaches
    ``llm_cache`` or the metrics, and a resume against the healed server equals a clean run."""
    from sqlalchemy import select
    from vragent.sandbox.store import LlmCacheEntry

    from tests.fault_injecting_server import FaultInjectingServer
    from tests.openai_stand_in import stand_in

    with stand_in(tiny_backend, torch_threads=1) as server, \
            FaultInjectingServer(server.url) as fault:
        sc = tiny_scenario(
            population={"size": 3, "history_len": 4},
            simulation={"steps": 2, "slate_size": 2, "users_per_task": 2, "refit_every": 1},
            arms=[{"name": "popular", "recommender": "popular"}],
            backend={"kind": "openai", "base_url": fault.url, "model": "tiny",
                     "trace_rate": 0.0, "max_new_tokens": 6, "max_retries": 1,
                     "backoff_base_s": 0.01, "backoff_max_s": 0.02},
            ip_agent={"enabled": True, "items_per_step": 1, "max_new_tokens": 6})
        path = write_scenario(tmp_path, sc)
        clean, url = f"sqlite:///{tmp_path}/clean.sqlite", f"sqlite:///{tmp_path}/nan.sqlite"
        assert _run_in_process(["run", str(path), "--db", clean]).exit_code == 0
        fault.set_fault("logprob")  # NaN, every answer
        first = _run_in_process(["run", str(path), "--db", url])
        assert first.exit_code == 1, first.output
        (line,) = _error_lines(first)
        assert "openai backend" in line and "MalformedResponse" in line, line
        assert "store" not in line and "is resumable: vragent run --resume" in line
        with Store(url).session() as s:
            for result in s.scalars(select(LlmCacheEntry.result)):
                assert all(0.0 <= p <= 1.0 for p in (result.get("probs") or {}).values())
        fault.set_fault("ok")
        (run,) = Store(url).list_runs()
        again = _run_in_process(["run", "--resume", run.id, "--db", url])
        assert again.exit_code == 0, again.output
    _assert_same_as_clean(clean, url, "NaN log-probs")
