"""Signals (issue 16): ``vragent run`` stopped by SIGINT or SIGTERM is marked ``interrupted``,
exits 130 and prints the resume command; ``vragent dashboard``'s Streamlit server dies with
the command however the command dies (SIGTERM, SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from vragent.sandbox.store import Store

from tests.conftest import REPO, tiny_scenario, write_scenario
from tests.fault_injecting_server import free_port

SECRET = "s3cret-Pw-5150"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _default_sigint() -> None:
    """Give the child Ctrl+C's default even when pytest itself runs with SIGINT ignored.

    A shell starts background jobs (``pytest &``, nohup) with SIGINT ignored, the child
    inherits that, and Python then installs no KeyboardInterrupt handler: the run would
    (rightly) ignore the signal and this test would measure the launcher, not vragent.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Lines:
    """Collects a pipe's lines in a thread, so the test can wait for one."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in ln for ln in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.05)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_is_interrupted_exits_130_and_says_how_to_resume(tmp_path, signum):
    path = write_scenario(tmp_path, tiny_scenario(
        population={"size": 2, "history_len": 3},
        simulation={"steps": 400, "slate_size": 2, "users_per_task": 2, "refit_every": 0},
        arms=[{"name": "popular", "recommender": "popular"}],
        backend={"kind": "constant", "trace_rate": 0.0}, ip_agent={"enabled": False}))
    db = f"sqlite:///{tmp_path}/store.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "vragent.sandbox.cli", "run", str(path), "--db",
                             db],
                            cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    err = _Lines(proc.stderr)
    try:
        err.wait_for(" · 2/400 steps · ", timeout=240)  # inside the run, steps going
        proc.send_signal(signum)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = err.text()
    (run,) = Store(db).list_runs()
    assert (rc, run.status) == (130, "interrupted"), stderr
    assert run.steps_done < 400
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted") and (
        f"vragent run --resume {run.id} --db {db}" in last), stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------------- dashboard


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` has exited (or does so within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its new parent has not reaped it yet
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_dashboard_server_dies_with_the_command(tmp_path, signum):
    db = f"postgresql+psycopg://vragent:{SECRET}@127.0.0.1:{free_port()}/runs"
    # The real command; the dashboard plugin is registered here if the installed package's
    # entry points are not this tree's.
    script = ("from sandbox.cli import app\n"
              "import dashboards.cli as d\n"
              "if 'dashboard' not in {c.name for c in app.registered_commands}:\n"
              "    d.register(app)\n"
              "app()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "dashboard", "--db", db, "--port",
                             str(free_port())], cwd=tmp_path, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_default_sigint)
    server = None
    try:
        deadline = time.monotonic() + 120
        while not (kids := _children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.02)
        (server,) = kids
        # Between fork and exec the child still shows this command's own command line.
        while b"streamlit" not in (cmdline := Path(f"/proc/{server}/cmdline").read_bytes()):
            assert time.monotonic() < deadline, cmdline
            time.sleep(0.02)
        # The password is on no command line (ps shows those); the server reads it from env.
        assert SECRET.encode() not in cmdline
        assert f"VRAGENT_DB={db}".encode() in Path(f"/proc/{server}/environ").read_bytes()
        os.kill(proc.pid, signum)  # at once: the server is still starting
        proc.wait(timeout=60)
        assert _gone(server, timeout=30), f"the server {server} outlived the command"
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None and not _gone(server, timeout=0):
            os.kill(server, signal.SIGKILL)  # an orphan left by a failure above
    assert SECRET not in proc.stdout.read()
