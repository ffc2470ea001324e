"""Saving, loading and describing RL data folders (``save_to_disk`` + ``manifest.json``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from vragent.rl.data_rows import COLUMNS, LIKE_RATING, RLDataError
from vragent.rl.negatives import HARD_K

if TYPE_CHECKING:
    import datasets
    from vragent.rl.datasets import BuildStats, RLDataConfig

MANIFEST = "manifest.json"
POPULARITY = "popularity.json"
FORMAT = "vragent-rl-data"


def _features() -> datasets.Features:
    from datasets import Features, List, Value

    s, i = Value("string"), Value("int64")
    return Features({
        "task": s, "protocol": s, "m": i, "group_id": s, "user_id": i,
        "item_ids": List(i), "history_ids": List(i), "history_titles": List(s),
        "prompt": List({"role": s, "content": s}), "assistant_prefix": s,
        "candidates": List(s), "label": s, "correct_index": i, "source": s, "split": s,
    })


def _dataset_dict(rows: Mapping[str, list[dict[str, Any]]]) -> datasets.DatasetDict:
    import pyarrow as pa
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict

    # Straight to Arrow with the fixed schema: Dataset.from_dict encodes every nested value
    # in Python, which took longer than building the rows.
    schema = _features().arrow_schema
    return DatasetDict({
        split: HFDataset(pa.Table.from_pydict(
            {c: [r[c] for r in rows.get(split, [])] for c in COLUMNS}, schema=schema))
        for split in ("train", "eval")
    })


def _name(path: str | None) -> str | None:
    """A path's last part only: manifests name data without leaking local folders."""
    if not path:
        return None
    return Path(str(path).removeprefix("sqlite:///")).name


def _sizes(dd: datasets.DatasetDict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, part in dd.items():
        frame = part.select_columns(["task", "protocol", "m", "group_id"]).to_pandas()
        by: dict[str, dict[str, dict[str, int]]] = {}
        for (task, protocol, m), n in frame.groupby(["task", "protocol", "m"]).size().items():
            by.setdefault(task, {}).setdefault(protocol, {})[str(m)] = int(n)
        out[split] = {"rows": len(frame), "groups": int(frame["group_id"].nunique()), "by": by}
    return out


def rl_manifest(
    dd: datasets.DatasetDict, cfg: RLDataConfig, stats: BuildStats
) -> dict[str, Any]:
    """The manifest of a build: sizes, settings, fallbacks and provenance.

    Args:
        dd: the built splits.
        cfg: the settings they were built with.
        stats: what :func:`build_rl_data` recorded.

    Returns:
        JSON-ready data.
    """
    from vragent.sandbox.runner import git_revision, package_versions

    config = cfg.model_dump()
    config["dataset_path"] = _name(cfg.dataset_path)
    config["store_url"] = _name(cfg.store_url)
    params = dict(cfg.dataset_params)
    if params.get("items_path"):  # interactions: the items file, named like the log
        params["items_path"] = _name(params["items_path"])
    config["dataset_params"] = params
    pop = stats.popularity
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": package_versions(),
        "dataset": {"kind": cfg.dataset, "path_name": _name(cfg.dataset_path),
                    "params": params},
        "seed": cfg.seed,
        "min_len": cfg.min_len,
        "max_len": cfg.max_len,
        "history_len": cfg.history_len,
        "users": dict(stats.users),
        "sizes": _sizes(dd),
        "hard": {"recommender": cfg.hard_recommender, "params": dict(cfg.hard_params),
                 "k": HARD_K, "model": stats.hard_model, "fallbacks": stats.hard_fallbacks},
        "popular_window": cfg.popular_window,
        "popularity": {
            "counted_on": "histories (targets excluded)", "file": POPULARITY,
            "items": 0 if pop is None else len(pop),
            "interactions": 0 if pop is None else int(pop.sum()),
        },
        "duplicate_title_selection_rows": dict(stats.duplicate_titles),
        "sources": ["real", *(f"run:{r}" for r in cfg.store_runs)],
        "store": {"name": _name(cfg.store_url), "runs": stats.store},
        "notes": [
            "train and eval users are disjoint real users (seeded shuffle)",
            "logged rows come from simulated users grounded in real train users; a decision is "
            "kept only when its item is in the user's real log, labelled from the real rating "
            f"(>= {LIKE_RATING}: Yes) or Yes for implicit data",
        ],
        "build_seconds": round(stats.seconds, 3),
        "config": config,
    }


def save_rl_data(
    dd: datasets.DatasetDict,
    path: str | Path,
    manifest: Mapping[str, Any],
    popularity: pd.Series | None = None,
) -> Path:
    """Write the splits (``save_to_disk``), ``manifest.json`` and ``popularity.json``.

    The folder is written beside the target and renamed into place, so a crash never leaves a
    half-written dataset under ``path``. An existing RL data folder there is replaced; any
    other existing folder is left alone.

    Args:
        dd: the splits.
        path: the output folder.
        manifest: :func:`rl_manifest` output.
        popularity: item -> count (``BuildStats.popularity``), for the popularity prior.

    Returns:
        The folder.

    Raises:
        RLDataError: ``path`` exists and is not an RL data folder.
    """
    path = Path(path)
    if path.exists() and not (path / MANIFEST).is_file():
        raise RLDataError(f"{path}: exists and is not an RL data folder; not overwriting")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    if popularity is not None:
        pop = {str(int(i)): int(c) for i, c in popularity.items()}
        (tmp / POPULARITY).write_text(json.dumps(pop), encoding="utf-8")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load_rl_data(path: str | Path) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Read a folder written by :func:`save_rl_data`.

    Returns:
        The splits and the manifest.

    Raises:
        RLDataError: one line naming the folder when it is missing or unreadable.
    """
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise RLDataError(f"{path}: no RL data folder (build it with rl.datasets)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RLDataError(f"{path}: unreadable {MANIFEST} ({_one_line(exc)})") from None
    try:
        dd = load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise RLDataError(f"{path}: unreadable dataset ({_one_line(exc)})") from None
    if not isinstance(dd, DatasetDict) or set(dd) != {"train", "eval"}:
        raise RLDataError(f"{path}: expected splits train and eval")
    for split, part in dd.items():
        if tuple(part.column_names) != COLUMNS:
            raise RLDataError(f"{path}: split {split} has columns {part.column_names}, "
                              f"expected {list(COLUMNS)} (made by an older version? build it "
                              "again with `vragent rl build-data`)")
    return dd, manifest


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_popularity(path: str | Path) -> pd.Series:
    """The item popularity a build saved (``popularity.json``), as counts indexed by item.

    Raises:
        RLDataError: the file is missing or unreadable.
    """
    file = Path(path) / POPULARITY
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RLDataError(f"{file}: unreadable ({_one_line(exc)})") from None
    out = pd.Series({int(k): int(v) for k, v in data.items()}, dtype="int64").sort_index()
    out.index.name = "item_id"
    return out.rename("popularity")
