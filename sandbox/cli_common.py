"""What every ``vragent`` command module shares: the consoles, ``--db`` and the error exit."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from environments.sources import KINDS_HELP, canonical_kind, interactions_options

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


# ----------------------------------------------------------------- dataset selection

DatasetOption = Annotated[str, typer.Option("--dataset", help=KINDS_HELP)]
ItemsPathOption = Annotated[str | None, typer.Option(
    "--items-path", help="interactions: CSV or Parquet of the items (the item column, a title "
    "and optionally a category column).")]
ColumnOption = Annotated[list[str] | None, typer.Option(
    "--column", help="interactions: ROLE=NAME, the log's (or items file's) column for a "
    "role: user, item, timestamp, rating, title, category (NAME false ignores an optional "
    "column). Repeatable, e.g. --column user=viewer --column item=video_id.")]
LikeThresholdOption = Annotated[float | None, typer.Option(
    "--like-threshold", help="interactions: a rating at or above this is a like (default 4).")]


def dataset_options(kind: str, items_path: str | None, columns: list[str] | None,
                    like_threshold: float | None) -> dict[str, Any]:
    """The loader options the ``--items-path``/``--column``/``--like-threshold`` flags give.

    Returns:
        ``{}`` when none is given, else the :class:`~environments.sources.InteractionsOptions`
        fields as plain data.

    Raises:
        ValueError: one line: a flag for another kind, or a ``--column`` that is not
            ``ROLE=NAME`` with a known role.
    """
    opts: dict[str, Any] = {}
    if items_path is not None:
        opts["items_path"] = items_path
    if like_threshold is not None:
        opts["like_threshold"] = like_threshold
    names: dict[str, Any] = {}
    for item in columns or ():
        role, sep, name = item.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise ValueError(f"--column {item!r}: expected ROLE=NAME, e.g. user=viewer")
        name = name.strip()
        names[role.strip()] = False if name.lower() == "false" else name
    if names:
        opts["columns"] = names
    if opts and canonical_kind(kind) != "interactions":
        raise ValueError("--items-path, --column and --like-threshold are only for "
                         "--dataset interactions")
    if opts:
        interactions_options(opts)  # one-line error for an unknown role
    return opts
