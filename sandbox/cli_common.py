"""What every ``vragent`` command module shares: the consoles, ``--db`` and the error exit.

The consoles print with markup off: scenario paths, run ids, arm names and store URLs come
from the user, and ``[/]`` or ``[bold]`` in one of them must print as written rather than
crash Rich or vanish. Styling goes through :class:`rich.text.Text` instead.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from vragent.environments.sources import KINDS_HELP, canonical_kind, interactions_options

if TYPE_CHECKING:
    from vragent.sandbox.store import Store

# Wide enough for the per-arm table when the output is a pipe or a CI log.
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, markup=False)

DbOption = Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the store.",
                                       envvar="VRAGENT_DB")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a scenario key, e.g. --set population.size=20 (repeatable).")]

# scheme://user:password@host: what to hide when SQLAlchemy cannot parse the URL.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit with ``code`` (2: bad input, 1: anything else)."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
              soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print a one-line warning (plain text: the message may hold user input)."""
    err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False,
              soft_wrap=True)


def shown_url(url: str) -> str:
    """A store URL fit to print: its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        # Rendering %-encodes a path's brackets and spaces: only when there is a password.
        return url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: hide what looks like a password
        return _USERINFO.sub(r"\g<head>:***@", url)


def scrub_url(text: str, url: str) -> str:
    """``text`` with ``url``'s password (if any) replaced by ``***``.

    Database errors may quote the URL they were given; this keeps the password out of them.
    """
    password = None
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # unparsable: fall back to the pattern
        m = _USERINFO.search(url)
        password = m.group("pw") if m else None
    text = text.replace(url, shown_url(url))
    return text.replace(str(password), "***") if password else text


def store_reason(exc: BaseException, url: str) -> str:
    """One line on why a store failed: the database's own reason, password hidden."""
    if isinstance(exc, ImportError):  # the URL's driver is not installed
        what = f"its driver is not installed ({exc.name or exc})"
        return scrub_url(what, url)
    if isinstance(exc, OSError) and exc.strerror:  # no "[Errno N]" noise
        where = f" ({exc.filename})" if exc.filename else ""
        return scrub_url(f"{exc.strerror}{where}", url)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return scrub_url(reason[0] if reason else type(exc).__name__, url)


@contextlib.contextmanager
def store_errors(url: str, after: str = "") -> Iterator[None]:
    """Turn any failure to open or read the store at ``url`` into a one-line error, exit 1.

    Covers a file that is not a database, a folder, a read-only place, a URL SQLAlchemy
    cannot parse and a driver that is not installed.

    Args:
        url: the store URL (printed with its password hidden).
        after: appended to the message, e.g. ``"; nothing was started"``.
    """
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, OSError, ImportError) as exc:
        fail(f"store {shown_url(url)} unavailable: {store_reason(exc, url)}{after}")


def open_store(url: str) -> Store:
    """The store at ``url`` for a command that only reads it: never creates one.

    Without this, ``vragent runs`` started in another folder would create an empty
    ``runs/vragent.sqlite`` there and list nothing, as if the runs were gone.

    Exits:
        2 with ``no store at …`` when there is none; 1 when it cannot be opened (``store_errors``).
    """
    from vragent.sandbox.store import Store, StoreMissingError

    with store_errors(url):
        try:
            return Store(url, must_exist=True)
        except StoreMissingError as exc:
            missing = exc
    if missing.path is not None:
        fail(f"no store at {missing.path} (runs are stored where `vragent run` was started; "
             "set --db or VRAGENT_DB)", 2)
    fail(f"no store at {shown_url(url)} (the database has no vragent tables; set --db or "
         "VRAGENT_DB)", 2)


def resume_command(run_id: str, url: str) -> str:
    """The command that resumes ``run_id`` (the store URL with its password hidden)."""
    return f"vragent run --resume {run_id} --db {shown_url(url)}"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl+C (``KeyboardInterrupt``) in the main thread, inside the block.

    ``kill`` and service managers send SIGTERM; without this the process dies at once and a
    run is left marked ``running`` with nothing said.
    """

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding caller): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
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
