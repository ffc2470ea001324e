"""``vragent dashboard``: start the Streamlit dashboard over a store.

Registered on the core CLI through the ``vragent.cli`` entry point (pyproject.toml), so
``sandbox`` never imports ``dashboards``. Streamlit is started as a subprocess; the store URL
reaches the app only as ``VRAGENT_DB`` in its environment, never on its command line, where
anyone on the machine could read a password in it (``ps``). The server dies with this
process, however this process ends (see :func:`run_server`).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url
from vragent.sandbox.paths import DEFAULT_DB_URL

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def streamlit_command(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``streamlit run`` command line of the dashboard (the store comes by environment).

    Args:
        host: address to bind.
        port: port to bind.

    Returns:
        The argument list for ``subprocess``.
    """
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add the ``dashboard`` command to the CLI (entry point group ``vragent.cli``)."""

    @app.command("dashboard")
    def dashboard(
        db: Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the store (read only).",
                                        envvar="VRAGENT_DB")] = DEFAULT_DB_URL,
        host: Annotated[str, typer.Option(help="Address to bind; the default keeps the "
                                          "dashboard on this machine.")] = DEFAULT_HOST,
        port: Annotated[int, typer.Option(help="Port to bind.")] = DEFAULT_PORT,
    ) -> None:
        """Start the Streamlit dashboard over the store (read-only)."""
        if not _is_loopback(host):
            typer.echo(f"warning: binding to {host} shows prompts and personas to anyone who "
                       "can reach this machine", err=True)
        try:
            shown = make_url(db).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy parses: the app will say so
            shown = db
        typer.echo(f"vragent dashboard on http://{host}:{port} (store {shown}); Ctrl+C stops it")
        env = {**os.environ, "VRAGENT_DB": db}
        raise typer.Exit(run_server(streamlit_command(host, port), env))


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when ``parent`` dies (Linux).

    The parent's own handlers stop the server on SIGTERM, SIGHUP and Ctrl+C; nothing runs in
    it on SIGKILL or a crash, so the kernel's parent-death signal covers those. Other systems
    get ``None`` (no ``prctl``): the handlers alone.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # runs in the child between fork and exec: no imports, no locks
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: go now
            os._exit(1)

    return preexec


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_server(cmd: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server until it exits; stop it when this process is told to stop.

    Ctrl+C reaches both processes; SIGTERM (``kill``) and SIGHUP reach only this one, so they
    are passed on rather than leaving the server behind. The handlers are in place before
    the server starts (a SIGTERM right after the start must not kill this process alone), and
    on Linux the kernel kills the server if this process dies anyway (SIGKILL, a crash).

    Returns:
        The server's exit status (0 after Ctrl+C).
    """
    proc: subprocess.Popen | None = None
    stop: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if proc is None:
            stop.append(signum)  # before the server exists: stop it as soon as it does
        else:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent(os.getpid()))
        for signum in stop:
            proc.send_signal(signum)
        return proc.wait()
    except KeyboardInterrupt:
        if proc is None:
            return 0
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
