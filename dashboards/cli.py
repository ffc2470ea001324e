"""``vragent dashboard``: start the Streamlit dashboard over a store.

Registered on the core CLI through the ``vragent.cli`` entry point (pyproject.toml), so
``sandbox`` never imports ``dashboards``. Streamlit is started as a subprocess; the store URL
reaches the app both as ``--db URL`` after ``--`` and as ``VRAGENT_DB``.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from sandbox.paths import DEFAULT_DB_URL

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def streamlit_command(db: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``streamlit run`` command line of the dashboard.

    Args:
        db: SQLAlchemy URL of the store.
        host: address to bind.
        port: port to bind.

    Returns:
        The argument list for ``subprocess``.
    """
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--", "--db", db,
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
        raise typer.Exit(run_server(streamlit_command(db, host, port), env))


def run_server(cmd: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server until it exits; stop it when this process is told to stop.

    Ctrl+C reaches both processes; SIGTERM (``kill``) and SIGHUP reach only this one, so they
    are passed on rather than leaving the server behind.

    Returns:
        The server's exit status (0 after Ctrl+C).
    """
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
