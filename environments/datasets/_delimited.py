"""The tolerant delimited reader every dataset loader reads its files through.

:func:`read_numeric_table` tries a vectorised ``pandas.read_csv`` (C engine) first; at the first
sign of trouble (a bad row, a blank line, an undecodable byte) the file is re-read with
:func:`read_delimited`, so bad rows are handled the same way everywhere: a row that cannot be
parsed is skipped and counted in the :class:`~environments.schema.LoadReport` with its line
number, and a file where more than :data:`MAX_BAD_FRACTION` of the rows are bad raises
:class:`~environments.schema.DataFormatError` naming the file and the first bad line (a wrong
separator or encoding is a format problem, not a few stray rows).

Why the careful path is hand-written rather than pandas' or pyarrow's ``on_bad_lines``: the
pandas callable receives a bad row's fields but not its line number, rows with too few fields
are padded with NaN instead of reported, an undecodable byte fails the whole file instead of
its one line, and a truncated gzip stream loses every row; pyarrow's ``invalid_row_handler``
sees only field-count errors, not a non-integer id, and has no line number when it parses in
parallel. Every rejected row here is named by file and line (``u.data line 3: expected 4
tab-separated fields, got 1 (wrong separator?)``), which is what a user fixing a data file needs.
Clean files, the common case, never leave pandas.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from vragent.environments.datasets._files import display_name, is_gzip, open_binary, open_text
from vragent.environments.schema import DataFormatError, LoadReport

MAX_BAD_FRACTION = 0.05
"""A file with more than this share of bad rows is rejected instead of partially loaded."""

_SEP_NAMES = {"\t": "tab", ",": "comma", " ": "space", "|": "'|'", "::": "'::'"}



def _decoded_lines(
    path: Path, encoding: str, report: LoadReport, name: str
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_no, text)`` without the line ending.

    Lines are decoded one by one so an undecodable byte is pinned to its line: the row is
    kept with U+FFFD in place of the bad bytes and counted as 'bad encoding'.
    """
    line_no = 0
    try:
        with open_binary(path) as fh:
            for raw in fh:
                line_no += 1
                raw = raw.rstrip(b"\r\n")
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError:
                    text = raw.decode(encoding, errors="replace")
                    report.skip(name, "bad encoding", line_no)
                yield line_no, text
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        if line_no == 0:
            raise DataFormatError(f"{name}: not a readable gzip file ({exc})") from exc
        # Keep what was read: a cut-off download should not lose the whole file.
        report.skip(name, "truncated gzip stream", line_no + 1)


def _describe_sep(sep: str) -> str:
    return _SEP_NAMES.get(sep, repr(sep))


def _check_row(
    fields: list[str],
    ncols: int,
    sep: str,
    int_cols: Sequence[int],
    float_cols: Sequence[int],
) -> tuple[str, str] | None:
    """Validate and convert ``fields`` in place; return ``(reason, detail)`` when bad."""
    if len(fields) != ncols:
        hint = " (wrong separator?)" if len(fields) == 1 and ncols > 1 else ""
        return (
            "wrong number of fields",
            f"expected {ncols} {_describe_sep(sep)}-separated fields, got {len(fields)}{hint}",
        )
    for j in int_cols:
        try:
            fields[j] = int(fields[j])
        except ValueError:
            return "non-integer id or value", f"field {j + 1} is not an integer: {fields[j]!r}"
    for j in float_cols:
        try:
            value = float(fields[j])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):  # float() accepts "nan"/"inf", which no column means
            return "non-numeric value", f"field {j + 1} is not a number: {fields[j]!r}"
        fields[j] = value
    return None


def _looks_like_header(fields: list[str], int_cols: Sequence[int]) -> bool:
    """A first row whose id columns hold words (not numbers) is a header."""
    cols = [j for j in int_cols if j < len(fields)] or [0]
    return all(re.search(r"[A-Za-z]", fields[j] or "") for j in cols)


def read_delimited(
    path: str | Path,
    sep: str,
    ncols: int,
    report: LoadReport,
    *,
    encoding: str = "utf-8",
    int_cols: Sequence[int] = (0,),
    float_cols: Sequence[int] = (),
    rest_in_last: bool = False,
    quoted: bool = False,
    header: bool | None = False,
    check: Callable[[list], tuple[str, str] | None] | None = None,
    max_bad_fraction: float = MAX_BAD_FRACTION,
) -> Iterator[tuple[int, list]]:
    """Yield the good rows of a delimited text file, counting the bad ones.

    Bad rows (wrong number of fields, e.g. a truncated line; a non-integer id; a
    non-numeric value) are skipped and counted in ``report`` with their line number.
    Blank lines are ignored. After the last row, if more than ``max_bad_fraction`` of the rows
    (or every row) were bad, :class:`DataFormatError` is raised naming the file and the first
    bad line, e.g. ``"u.data line 3: expected 4 tab-separated fields, got 1 (wrong separator?)"``.

    Args:
        path: Plain or gzip file.
        sep: Field separator (may be several characters, e.g. ``"::"``).
        ncols: Expected number of fields.
        report: Where skipped rows are counted (keyed by the file name).
        encoding: Text encoding; undecodable bytes are replaced and the row is counted as
            'bad encoding' (it is still yielded).
        int_cols: Fields converted to ``int`` (a failure makes the row bad).
        float_cols: Fields converted to ``float`` (a failure makes the row bad).
        rest_in_last: Split at most ``ncols - 1`` times, so the last field keeps any
            separators (free text such as comments).
        quoted: Parse with CSV quoting rules (``sep`` must be one character).
        header: ``True``: the first row is a header and is skipped; ``False``: no header;
            ``None``: skip the first row only when its id fields are not numbers.
        check: Extra per-row validation run after the conversions; it may convert fields in
            place and returns ``None`` for a good row or ``(reason, detail)`` for a bad one
            (counted like any other bad row).
        max_bad_fraction: Share of bad rows above which the file is rejected.

    Yields:
        ``(line_no, fields)`` with 1-based physical line numbers; fields listed in
        ``int_cols``/``float_cols`` are already converted, the rest are ``str``.

    Raises:
        DataFormatError: Too many bad rows, or an unreadable gzip file.
    """
    path = Path(path)
    name = display_name(path)
    lines = _decoded_lines(path, encoding, report, name)
    rows = _split_rows(lines, sep, ncols, rest_in_last, quoted)
    n_rows = n_bad = 0
    first_bad: str | None = None
    first_row = True
    for line_no, fields in rows:
        if first_row:
            first_row = False
            auto = (header is None and isinstance(fields, list)
                    and _looks_like_header(fields, int_cols))
            if header is True or auto:
                continue
        n_rows += 1
        if fields is None:
            problem: tuple[str, str] | None = ("unparseable row", "not valid CSV")
        elif isinstance(fields, str):
            problem = (fields, "a quoted field is never closed")
        else:
            problem = _check_row(fields, ncols, sep, int_cols, float_cols)
            if problem is None and check is not None:
                problem = check(fields)
        if problem is None:
            yield line_no, fields
            continue
        n_bad += 1
        report.skip(name, problem[0], line_no)
        if first_bad is None:
            first_bad = f"{name} line {line_no}: {problem[1]}"
    if n_bad and (n_bad == n_rows or n_bad > max_bad_fraction * n_rows):
        raise DataFormatError(f"{first_bad} ({n_bad} of {n_rows} rows bad)")


UNCLOSED_QUOTE = "unclosed quote"


def _split_rows(
    lines: Iterator[tuple[int, str]], sep: str, ncols: int, rest_in_last: bool, quoted: bool
) -> Iterator[tuple[int, list[str] | str | None]]:
    """Split decoded lines into fields.

    ``None`` marks a row the CSV parser rejected, :data:`UNCLOSED_QUOTE` a quoted field that
    never closes.
    """
    if quoted:
        yield from _quoted_records(lines, sep)
        return
    maxsplit = ncols - 1 if rest_in_last else -1
    for line_no, text in lines:
        if text.strip():
            yield line_no, text.split(sep, maxsplit)


def _quoted_records(lines: Iterator[tuple[int, str]],
                    sep: str) -> Iterator[tuple[int, list[str] | str | None]]:
    """CSV records with quoted fields that may span lines, each with its first line's number.

    A record is complete once its quotes pair up (``""`` inside a field is a pair too). A quote
    that never closes would swallow every later row into one field, so a record stops being
    continued at a line that starts like a new row (an integer id, then the separator); it is
    reported as :data:`UNCLOSED_QUOTE` and that line starts the next record.
    """
    row_start = re.compile(r"\s*-?\d+" + re.escape(sep))
    pending: tuple[int, str] | None = None
    source = iter(lines)
    while True:
        first = pending or next(source, None)
        pending = None
        if first is None:
            return
        start, text = first
        parts = [text]
        quotes = text.count('"')
        while quotes % 2:
            nxt = next(source, None)
            if nxt is None or row_start.match(nxt[1]):
                pending = nxt
                break
            parts.append(nxt[1])
            quotes += nxt[1].count('"')
        if quotes % 2:
            yield start, UNCLOSED_QUOTE
            continue
        if not "".join(parts).strip():
            continue
        try:
            records = list(csv.reader(["\n".join(parts) + "\n"], delimiter=sep))
        except csv.Error:
            yield start, None  # e.g. a NUL byte
            continue
        for fields in records:
            if fields:
                yield start, fields


def read_numeric_table(
    path: str | Path,
    sep: str,
    ncols: int,
    report: LoadReport,
    *,
    float_cols: Sequence[int] = (),
    encoding: str = "utf-8",
    header: bool | None = False,
) -> pd.DataFrame:
    """Read an all-numeric delimited file into columns, fast when the file is clean.

    A vectorised pandas read is tried first; at the first sign of trouble (a bad row, a
    blank line, an undecodable byte) the file is re-read with :func:`read_delimited`, so bad
    rows are still skipped, counted and judged exactly as there.

    Args:
        path: Plain or gzip file.
        sep: Field separator (``"::"`` is supported).
        ncols: Expected number of fields.
        report: Where skipped rows are counted.
        float_cols: Fields parsed as float; the others must be integers.
        encoding: Text encoding.
        header: As in :func:`read_delimited`.

    Returns:
        Columns ``0..ncols-1`` (int64, or float64 for ``float_cols``) and ``line`` (1-based
        line numbers).

    Raises:
        DataFormatError: As in :func:`read_delimited`.
    """
    int_cols = tuple(j for j in range(ncols) if j not in float_cols)
    frame = _fast_numeric(Path(path), sep, ncols, int_cols, float_cols, encoding, header)
    if frame is not None:
        return frame
    rows = list(
        read_delimited(
            path,
            sep,
            ncols,
            report,
            encoding=encoding,
            int_cols=int_cols,
            float_cols=float_cols,
            header=header,
        )
    )
    cols = list(zip(*(r[1] for r in rows), strict=True)) or [()] * ncols
    out = pd.DataFrame(
        {
            j: np.asarray(cols[j], dtype="float64" if j in float_cols else "int64")
            for j in range(ncols)
        }
    )
    out["line"] = np.asarray([r[0] for r in rows], dtype="int64")
    return out


def _fast_numeric(
    path: Path,
    sep: str,
    ncols: int,
    int_cols: Sequence[int],
    float_cols: Sequence[int],
    encoding: str,
    header: bool | None,
) -> pd.DataFrame | None:
    """The pandas read behind :func:`read_numeric_table`; ``None`` means "use the slow path"."""
    # The C parser takes one-character separators only; "a::b" read with ":" gives empty
    # fields in between, which are checked below.
    stride = 2 if sep == "::" else 1
    if len(sep) != 1 and sep != "::":
        return None
    skip = 0
    if header is not False:
        first = read_header(path, sep, encoding=encoding)
        if header is True or _looks_like_header(first, int_cols):
            skip = 1
    try:
        # Let the C parser infer types: any non-numeric field, short row or blank line shows
        # up as a non-int64 column or a NaN, and sends the file to the careful path.
        raw = pd.read_csv(
            path,
            sep=sep[0],
            header=None,
            skip_blank_lines=False,
            quoting=csv.QUOTE_NONE,
            engine="c",
            encoding=encoding,
            encoding_errors="strict",
            compression="gzip" if is_gzip(path) else None,
            skiprows=skip,
        )
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        EOFError,
        OSError,
        zlib.error,
        ValueError,
    ):
        return None
    if raw.shape[1] != (ncols - 1) * stride + 1 or raw.empty:
        return None
    if stride == 2 and not raw.iloc[:, 1::2].isna().all().all():
        return None
    out = {}
    for j in range(ncols):
        col = raw.iloc[:, j * stride]
        if j in float_cols:
            if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                return None
            values = col.to_numpy(dtype="float64")
            if not np.isfinite(values).all():
                return None
        elif col.dtype != np.int64:
            return None
        else:
            values = col.to_numpy()
        out[j] = values
    frame = pd.DataFrame(out)
    # No row was dropped or merged (blank lines would have failed the checks above), so the
    # physical line number is the row number plus any header.
    frame["line"] = np.arange(1 + skip, len(frame) + 1 + skip, dtype="int64")
    return frame


def read_header(path: str | Path, sep: str, encoding: str = "utf-8") -> list[str]:
    """The fields of the first line of ``path`` (for files with named columns)."""
    with open_text(path, encoding=encoding, errors="replace") as fh:
        return fh.readline().rstrip("\r\n").split(sep)
