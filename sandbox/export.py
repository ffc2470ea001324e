"""Export a run's tables to Parquet or JSON Lines."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sqlalchemy import select
from vragent.sandbox.store import METERING_COLUMNS, TABLES_IN_EXPORT, Base, Store


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        for col in frame.columns:  # JSON columns hold dicts/lists: store them as text
            if frame[col].map(lambda v: isinstance(v, dict | list)).any():
                frame[col] = frame[col].map(pd.io.json.ujson_dumps)
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso")


class ExportError(ValueError):
    """The export's destination cannot take it. The message is one line."""


def export_files(out_dir: Path, fmt: str) -> list[Path]:
    """The files :func:`export_run` writes into ``out_dir``."""
    return [out_dir / f"{name}.{fmt}" for name in (*TABLES_IN_EXPORT, "metering")]


def check_destination(out_dir: Path, fmt: str, force: bool = False) -> None:
    """Refuse a destination that is not a folder, or one holding an earlier export.

    Checked before anything is written, so a typo never overwrites a file and an earlier
    export is only replaced on purpose (``force``).

    Raises:
        ExportError: ``out_dir`` exists and is not a folder, or (without ``force``) already
            holds a file of an export in either format.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a folder")
    if force or not out_dir.is_dir():
        return
    earlier = [p.name for f in ("parquet", "jsonl") for p in export_files(out_dir, f)
               if p.exists()]
    if earlier:
        raise ExportError(f"--out {out_dir}: already holds an export ({earlier[0]} and "
                          f"{len(earlier) - 1} more); use --force to overwrite it or choose "
                          "another folder")


def export_run(store: Store, run_id: str, out_dir: Path, fmt: str = "parquet") -> list[Path]:
    """Write one file per table holding the run's rows, plus ``metering`` (per-arm LLM use).

    Args:
        store: the run store.
        run_id: which run.
        out_dir: destination folder (created).
        fmt: ``"parquet"`` or ``"jsonl"``.

    Returns:
        The files written.
    """
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"format must be parquet or jsonl, not {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with store.engine.connect() as conn:
        for name in TABLES_IN_EXPORT:
            table = Base.metadata.tables[name]
            key = table.c.id if name == "runs" else table.c.run_id
            frame = pd.read_sql(select(table).where(key == run_id), conn)
            path = out_dir / f"{name}.{fmt}"
            _write(frame, path, fmt)
            written.append(path)
    path = out_dir / f"metering.{fmt}"
    _write(pd.DataFrame(store.metering(run_id), columns=METERING_COLUMNS), path, fmt)
    written.append(path)
    return written
