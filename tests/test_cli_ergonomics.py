"""Runs that say what they are (issue 17): killed runs, missing stores, typos, ``--version``."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner
from vragent.sandbox.cli import app
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.runner import create_run
from vragent.sandbox.store import Store

from tests.conftest import REPO, tiny_scenario
from tests.test_hostile_cli import SECRET, assert_one_line

HINT = "(runs are stored where `vragent run` was started; set --db or VRAGENT_DB)"
READS = {"runs": ["runs"], "show": ["show", "abc"], "export": ["export", "abc"],
         "show-item": ["show-item", "1"]}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------- killed runs


def _running_run(url: str) -> tuple[Store, str]:
    """A stored run marked ``running``, as a ``vragent run`` leaves it while it executes."""
    store = Store(url)
    sc = parse_scenario(tiny_scenario())
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
    store.update_run(run_id, status="running", steps_done=2)
    return store, run_id


def test_a_killed_run_shows_as_interrupted_with_its_resume_command(store_url):
    """While a live process holds the run it is ``running``; once that process is killed
    (SIGKILL: nothing could record the stop) ``runs`` and ``show`` say ``interrupted`` and
    print the command that resumes it; the store itself is not changed by reading it."""
    from vragent.sandbox.run_lock import owner_alive

    store, run_id = _running_run(store_url)
    resume = f"vragent run --resume {run_id} --db "
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from sandbox.store import Store\nfrom sandbox.run_lock import RunLock\n"
         "lock = RunLock(Store(sys.argv[1]), sys.argv[2])\nlock.acquire()\n"
         "print('held', flush=True)\ntime.sleep(600)", store.url, run_id],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert owner_alive(store, run_id) is True
        listed = invoke("runs", "--db", store_url)
        assert listed.exit_code == 0, listed.output
        assert "running" in listed.stdout and "interrupted" not in listed.stdout
        assert resume not in listed.stdout
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 30
    # PostgreSQL ends the killed client's session when it sees the socket close: a moment.
    while owner_alive(store, run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owner_alive(store, run_id) is False
    listed = invoke("runs", "--db", store_url)
    assert listed.exit_code == 0, listed.output
    assert "interrupted" in listed.stdout and "2/3" in listed.stdout
    assert f"run {run_id} is interrupted; resume it: {resume}" in listed.stdout
    shown = invoke("show", run_id, "--db", store_url)
    assert shown.exit_code == 0, shown.output
    assert "· interrupted ·" in shown.stdout and f"resume it: {resume}" in shown.stdout
    assert store.get_run(run_id).status == "running"  # reading changed nothing
    assert SECRET not in listed.stdout
    store.engine.dispose()


def test_a_run_lock_probe_does_not_refuse_a_resume(tmp_path, monkeypatch):
    """``vragent runs`` probes the lock with a shared flock for microseconds; a resume that
    meets the probe waits it out instead of reporting the run busy."""
    import fcntl

    from vragent.sandbox.run_lock import RunLock, owner_alive

    store, run_id = _running_run(f"sqlite:///{tmp_path}/s.sqlite")
    with RunLock(store, run_id):
        pass
    lock_file = tmp_path / "s.sqlite.locks" / f"{run_id}.lock"
    lock_file.touch()  # a stale lock file, as a killed owner leaves it
    probe = lock_file.open()
    fcntl.flock(probe, fcntl.LOCK_SH)  # a probe caught in the act
    waits = []

    def probe_ends_while_acquire_waits(seconds: float) -> None:  # fault injection
        probe.close()
        waits.append(seconds)

    monkeypatch.setattr(time, "sleep", probe_ends_while_acquire_waits)
    with RunLock(store, run_id) as lock:
        assert lock.held and waits == [0.02]
        assert owner_alive(store, run_id) is True
    assert owner_alive(store, run_id) is False


# ---------------------------------------------------------------------- missing stores


@pytest.mark.parametrize("command", list(READS))
def test_read_commands_never_create_a_store(tmp_path, monkeypatch, command):
    """Started in a folder with no runs, a read says where runs are and creates nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VRAGENT_DB", raising=False)
    assert_one_line(invoke(*READS[command]), 2, f"no store at runs/vragent.sqlite {HINT}")
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "elsewhere" / "x.sqlite"
    assert_one_line(invoke(*READS[command], "--db", f"sqlite:///{other}"), 2,
                    f"no store at {other} {HINT}")
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_vragent_tables_is_no_store(tmp_path):
    import sqlite3

    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE notes (x)").connection.close()
    assert_one_line(invoke("runs", "--db", f"sqlite:///{path}"), 2,
                    f"no store at sqlite:///{path} (the database has no vragent tables")


def test_read_commands_read_an_existing_store(tmp_path):
    url = f"sqlite:///{tmp_path}/s.sqlite"
    _, run_id = _running_run(url)
    listed = invoke("runs", "--db", url)
    assert listed.exit_code == 0 and run_id in listed.stdout, listed.output


# ---------------------------------------------------------------------- typos, version


def test_a_misspelt_scenario_name_suggests_the_bundled_one(tmp_path):
    db = tmp_path / "s.sqlite"
    assert_one_line(invoke("run", "quikstart", "--db", f"sqlite:///{db}"), 2,
                    "no scenario 'quikstart': not a bundled scenario nor a file; "
                    "did you mean quickstart? `vragent scenarios` lists the bundled ones")
    line = assert_one_line(invoke("run", "zzzz", "--db", f"sqlite:///{db}"), 2,
                           "no scenario 'zzzz'", "`vragent scenarios`")
    assert "did you mean" not in line
    assert not db.exists()  # nothing was started


def test_version_prints_version_git_revision_and_store_with_password_hidden(monkeypatch):
    from vragent.sandbox.version import git_revision, package_version

    monkeypatch.setenv("VRAGENT_DB", f"postgresql+psycopg://vragent:{SECRET}@db.example/runs")
    shown = invoke("--version")
    assert shown.exit_code == 0, shown.output
    rev = git_revision()
    assert rev and len(rev.removesuffix("-dirty")) == 40  # the tests run in a git checkout
    assert shown.stdout.strip() == (f"vragent {package_version()} · git {rev} · store "
                                    "postgresql+psycopg://vragent:***@db.example/runs")
    monkeypatch.delenv("VRAGENT_DB")
    assert invoke("--version").stdout.strip().endswith("· store sqlite:///runs/vragent.sqlite")
