"""Bring your own logs: any CSV or Parquet of (user, item) interactions as a :class:`Dataset`.

The log needs a user and an item column; a timestamp orders each user's interactions (file
order otherwise) and a rating makes likes (``rating >= like_threshold``). An optional items
file gives titles and categories. Column names are set with
:class:`~environments.sources.InteractionColumns`; files are read by pandas (CSV, also
gzipped) and pyarrow (Parquet, recognised by its magic bytes).

Integer ids are kept. Any other ids (``"u_17"``, hashes) become 1, 2, … in order of first
appearance (items: the items file first, then the log) and the original id is kept in a
``source_id`` column of ``users``/``items``.

Bad rows (an empty id, a timestamp or rating that is not a number) are skipped and counted
in the load report, as in every loader; above ``MAX_BAD_FRACTION`` of the rows the load fails
with one line naming the file, the line (Parquet: the row) and the column. CSV line numbers
count the header as line 1 and assume no line breaks inside quoted fields.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from vragent.environments.datasets._delimited import MAX_BAD_FRACTION
from vragent.environments.datasets._files import display_name, is_gzip
from vragent.environments.datasets._io import (
    add_unknown_items,
    fill_missing_titles,
    finish_interactions,
    tags_column,
)
from vragent.environments.schema import DataFormatError, Dataset, LoadReport
from vragent.environments.sources import InteractionColumns, interactions_options

_PARQUET_MAGIC = b"PAR1"
_INT_TEXT = r"^-?\d+$"


@dataclass
class _Table:
    """One file's columns as read, with what bad-row messages need."""

    name: str
    frame: pd.DataFrame
    where: str  # "line" (CSV: header is line 1) or "row" (Parquet: 1-based)
    first: int  # the line/row number of the first data row

    def locate(self, positions: np.ndarray) -> np.ndarray:
        """Line (or row) numbers of 0-based row positions."""
        return np.asarray(positions, dtype="int64") + self.first


def load_interactions(
    path: str | Path,
    items_path: str | Path | None = None,
    *,
    columns: InteractionColumns | Mapping[str, Any] | None = None,
    like_threshold: float = 4.0,
    sep: str | None = None,
) -> Dataset:
    """Load an interaction log (and optionally an items file) into the normalised schema.

    Args:
        path: CSV (``.tsv`` is tab-separated; ``.gz`` is read too) or Parquet file.
        items_path: Optional CSV or Parquet with the item column, a title column and optionally
            a category column. Items it lacks get ``"item <id>"`` titles (counted as
            'missing title').
        columns: Column names; see :class:`~environments.sources.InteractionColumns`.
        like_threshold: With a rating column, ``like = rating >= like_threshold``.
        sep: CSV separator (default: tab for ``.tsv``, else comma).

    Returns:
        The dataset named ``"interactions"``, validated. Interactions have ``watch`` (always
        true), and ``timestamp``, ``rating`` and ``like`` when the columns exist. Users have
        no profile fields.

    Raises:
        ValueError: ``columns`` names an unknown role (one line).
        FileNotFoundError: A file does not exist.
        DataFormatError: A file is unreadable, lacks a column, or has too many bad rows.
    """
    cols = columns if isinstance(columns, InteractionColumns) else (
        interactions_options({"columns": dict(columns or {})}).columns)
    report = LoadReport()
    log = _read_table(path, sep)
    picked = _pick_columns(log, cols, ("user", "item", "timestamp", "rating"))
    inter, n_rows = _interaction_rows(log, picked, report)
    items_table = _read_table(items_path, sep) if items_path is not None else None
    items, inter["item_id"] = _items(items_table, cols, inter.pop("item_key"), report)
    inter["user_id"], users = _dense_ids(inter.pop("user_key"), "user_id")
    if "rating" in inter:
        inter["like"] = inter["rating"].to_numpy(dtype="float64") >= like_threshold
    inter["watch"] = True
    time_col = "timestamp" if "timestamp" in inter else None
    inter = finish_interactions(inter, report, log.name, time_col=time_col)
    if inter.empty:
        raise DataFormatError(f"{log.name}: no interactions ({n_rows} rows read)")
    return Dataset("interactions", users, items, inter, report).validate()


# --------------------------------------------------------------------------- reading


def _read_table(path: str | Path, sep: str | None = None) -> _Table:
    """Read a CSV or a Parquet file into a frame, with one-line errors.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: it cannot be parsed.
    """
    path = Path(path)
    name = display_name(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as fh:
        parquet = fh.read(4) == _PARQUET_MAGIC
    if parquet:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError, ImportError) as exc:  # pyarrow's errors derive from these
            raise DataFormatError(f"{name}: not a readable Parquet file ({_first_line(exc)})"
                                  ) from None
        return _Table(name, frame.reset_index(drop=True), "row", 1)
    sep = sep or ("\t" if ".tsv" in path.name.lower() else ",")
    try:
        # The C parser infers types: clean numeric columns arrive as numbers (fast); a column
        # with any text in it arrives as text, and the conversions below find the bad rows.
        frame = pd.read_csv(path, sep=sep, keep_default_na=False, na_filter=False,
                            encoding="utf-8-sig", engine="c",
                            compression="gzip" if is_gzip(path) else None)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{name}: not UTF-8 text (byte {exc.start}: {exc.reason})"
                              ) from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{name}: empty file") from None
    except (pd.errors.ParserError, EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataFormatError(f"{name}: {_first_line(exc)}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return _Table(name, frame, "line", 2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pick_columns(table: _Table, cols: InteractionColumns, roles: tuple[str, ...]
                  ) -> dict[str, str]:
    """``{role: column}`` for the roles this file uses; a missing column raises one line."""
    have = [str(c) for c in table.frame.columns]
    out = {}
    for role in roles:
        try:
            col = cols.pick(role, have)
        except KeyError as exc:
            shown = ", ".join(map(repr, have[:12])) + (" …" if len(have) > 12 else "")
            hint = f"set columns.{role}"
            if len(have) == 1 and any(c in have[0] for c in ";\t|,"):
                hint = "wrong separator? set sep"
            raise DataFormatError(f"{table.name}: no {role} column {exc.args[0]!r} (columns: "
                                  f"{shown}); {hint}") from None
        if col is not None:
            out[role] = col
    return out


# ---------------------------------------------------------------------- conversions


class _BadRows:
    """Per-row problems of one file, counted and judged the way :func:`read_delimited` does.

    Each bad row is counted once, under its first problem.
    """

    def __init__(self, table: _Table) -> None:
        self.table = table
        self.bad = np.zeros(len(table.frame), dtype=bool)
        self.reasons: dict[str, np.ndarray] = {}
        self.first: tuple[int, str] | None = None

    def add(self, mask: np.ndarray, reason: str, column: str, detail: str) -> None:
        """Mark the rows of ``mask`` that are not bad yet as bad for ``reason``."""
        new = np.asarray(mask, dtype=bool) & ~self.bad
        if not new.any():
            return
        pos = int(np.flatnonzero(new)[0])
        value = self.table.frame[column].iloc[pos]
        value = value.item() if isinstance(value, np.generic) else value
        if self.first is None or pos < self.first[0]:
            self.first = (pos, f"column {column!r} {detail}: {value!r}")
        self.reasons[reason] = self.reasons.get(reason, np.zeros_like(new)) | new
        self.bad |= new

    def finish(self, report: LoadReport) -> np.ndarray:
        """Count the bad rows, raise when there are too many, and return the good-row mask."""
        table, n_rows, n_bad = self.table, len(self.bad), int(self.bad.sum())
        for reason, mask in self.reasons.items():
            for line in table.locate(np.flatnonzero(mask)).tolist():
                report.skip(table.name, reason, line)
        if n_bad and (n_bad == n_rows or n_bad > MAX_BAD_FRACTION * n_rows):
            assert self.first is not None
            pos, detail = self.first
            line = int(table.locate(np.asarray([pos]))[0])
            raise DataFormatError(f"{table.name} {table.where} {line}: {detail} "
                                  f"({n_bad} of {n_rows} rows bad)")
        return ~self.bad


def _id_keys(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Ids as int64 when every present value is an integer, else as stripped strings.

    Returns:
        The keys (int64 or object) and the mask of missing ids.
    """
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.astype("int64"), np.zeros(len(values), dtype=bool)
    if pd.api.types.is_float_dtype(values):  # Parquet stores integer ids with nulls as floats
        arr = values.to_numpy(dtype="float64")
        finite = np.isfinite(arr)
        if np.all(arr[finite] == np.round(arr[finite])):
            return pd.Series(np.where(finite, arr, 0).astype("int64")), ~finite
    text = values.astype("string").str.strip().fillna("")
    missing = text.eq("").to_numpy()
    if text[~missing].str.fullmatch(_INT_TEXT).all():
        return pd.to_numeric(text.mask(missing, "0")).astype("int64"), missing
    return text.astype(object), missing


def _numbers(values: pd.Series, dates: bool) -> pd.Series:
    """Floats (NaN where unparseable): numbers, or (``dates``) ISO 8601 as Unix seconds.

    A text column is read as numbers when at least half of its values are numbers, else as
    date-times; either way the values that do not parse become NaN (bad rows).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return _seconds(pd.to_datetime(values, utc=True))
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    text = values.astype("string").str.strip()
    nums = pd.to_numeric(text, errors="coerce").astype("float64")
    present = text.fillna("").ne("").to_numpy()
    if not dates or nums[present].notna().mean() >= 0.5:  # mostly numbers: the rest are bad
        return nums
    return _seconds(pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601"))


def _seconds(stamps: pd.Series) -> pd.Series:
    return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype("float64")


def _whole_if_integral(values: pd.Series) -> pd.Series:
    """int64 when every value is a whole number (ratings in stars, timestamps in seconds)."""
    arr = values.to_numpy(dtype="float64")
    if np.all(arr == np.round(arr)) and np.all(np.abs(arr) < 2**62):
        return pd.Series(arr.astype("int64"), index=values.index)
    return values


_PROBLEMS = {"timestamp": "is not a number or ISO 8601 date-time", "rating": "is not a number"}


def _interaction_rows(table: _Table, picked: dict[str, str], report: LoadReport
                      ) -> tuple[pd.DataFrame, int]:
    """The good rows: ``user_key``, ``item_key``, ``line`` and the optional columns."""
    frame = table.frame
    bad = _BadRows(table)
    out: dict[str, Any] = {}
    for role in ("user", "item"):
        keys, missing = _id_keys(frame[picked[role]])
        bad.add(missing, f"missing {role} id", picked[role], "is empty")
        out[f"{role}_key"] = keys.to_numpy()
    for role, problem in _PROBLEMS.items():
        if role in picked:
            nums = _numbers(frame[picked[role]], dates=role == "timestamp")
            bad.add(~np.isfinite(nums.to_numpy(dtype="float64")), f"bad {role}", picked[role],
                    problem)
            out[role] = nums.to_numpy(dtype="float64")
    good = bad.finish(report)
    rows = pd.DataFrame(out).loc[good].reset_index(drop=True)
    for role in _PROBLEMS:
        if role in rows:
            rows[role] = _whole_if_integral(rows[role])
    rows["line"] = table.locate(np.flatnonzero(good))
    return rows, len(frame)


# ------------------------------------------------------------------------- ids, items


def _dense_ids(keys: pd.Series, id_col: str) -> tuple[np.ndarray, pd.DataFrame]:
    """An int64 id per key, and the distinct ids (``id_col``, plus ``source_id``).

    Integer keys are the ids. Other keys become 1, 2, … in order of first appearance, the
    original kept as ``source_id``.
    """
    if pd.api.types.is_integer_dtype(keys):
        ids = keys.to_numpy(dtype="int64")
        return ids, pd.DataFrame({id_col: np.unique(ids)})
    codes, uniques = pd.factorize(keys.astype(str), sort=False)
    return codes.astype("int64") + 1, pd.DataFrame({
        id_col: np.arange(1, len(uniques) + 1, dtype="int64"),
        "source_id": pd.Series(np.asarray(uniques, dtype=object), dtype=object)})


def _items(table: _Table | None, cols: InteractionColumns, log_keys: pd.Series,
           report: LoadReport) -> tuple[pd.DataFrame, np.ndarray]:
    """The items frame and the log's item ids (one id space for the log and the items file)."""
    if table is None:
        ids, known = _dense_ids(log_keys, "item_id")
        items = known[["item_id"]].assign(title="item " + known["item_id"].astype(str),
                                          category="", tags="")
        if "source_id" in known:
            items["source_id"] = known["source_id"]
        return items, ids
    picked = _pick_columns(table, cols, ("item", "title", "category"))
    source = table.frame
    keys, missing = _id_keys(source[picked["item"]])
    bad = _BadRows(table)
    bad.add(missing, "missing item id", picked["item"], "is empty")
    good = bad.finish(report)
    keys = keys[good].reset_index(drop=True)
    if pd.api.types.is_integer_dtype(keys) != pd.api.types.is_integer_dtype(log_keys):
        keys, log_keys = keys.astype(str), log_keys.astype(str)  # "u7" and 7 in one id space
    ids, known = _dense_ids(pd.concat([keys, log_keys], ignore_index=True), "item_id")
    text = {role: source.loc[good, picked[role]].astype("string").fillna("").str.strip()
            .astype(object).reset_index(drop=True) for role in ("title", "category")
            if role in picked}
    items = pd.DataFrame({"item_id": ids[:len(keys)], "title": text["title"],
                          "category": text.get("category", "")})
    lines = pd.Series(table.locate(np.flatnonzero(good)))
    dup = items.duplicated("item_id", keep="first").to_numpy()
    for line in lines[dup].tolist():
        report.skip(table.name, "duplicate row", int(line))
    items = items.loc[~dup].reset_index(drop=True)
    items = fill_missing_titles(items, report, table.name, lines[~dup].reset_index(drop=True))
    items["tags"] = tags_column(items["title"])
    log_ids = ids[len(keys):]
    items = add_unknown_items(items, pd.DataFrame({"item_id": log_ids}), report, table.name)
    if "source_id" in known:
        items["source_id"] = items["item_id"].map(known.set_index("item_id")["source_id"])
    return items.sort_values("item_id", kind="stable").reset_index(drop=True), log_ids
