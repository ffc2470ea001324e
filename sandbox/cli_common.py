"""What every ``vragent`` command module shares: the consoles, ``--db`` and the error exit."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

# Wide enough for the per-arm table when the output is a pipe or a CI log.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DbOption = Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the store.",
                                       envvar="VRAGENT_DB")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a scenario key, e.g. --set population.size=20 (repeatable).")]


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and exit with ``code`` (2: bad input, 1: anything else)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
