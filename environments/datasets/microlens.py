r"""MicroLens loader (MicroLens-50k / -100k / -1M folder layouts).

Files looked for in the folder and one subfolder level (plain or ``.gz``):

* interactions: ``MicroLens-<N>_pairs.tsv`` (``user\titem item ...`` in time order) or
  ``MicroLens-<N>_pairs.csv`` (``user,item,timestamp``, header optional). The largest release
  present wins; for one release the ``.csv`` wins because it carries timestamps.
* titles: ``MicroLens-<N>_titles.csv`` (header ``item,title``, CSV quoting, full titles with
  ``#tags``) first, then ``MicroLens-<N>_title_en.csv`` (``item, title``, titles cut at the
  first comma) for items the full files lack.
* ``tags_to_summary.csv`` (``item,category``), ``MicroLens-<N>_likes_and_views.txt``
  (``item\tlikes\tviews``), ``MicroLens-<N>_covers/<item>.jpg`` and
  ``MicroLens-<N>_comment_en.txt`` (``user\titem\tcomment``), each optional.

MicroLens interactions are implicit feedback, so interactions get ``watch = True`` and no
``like``/``rating`` column.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from vragent.environments.datasets._delimited import read_delimited, read_numeric_table
from vragent.environments.datasets._files import display_name, find_file, find_files
from vragent.environments.datasets._io import add_unknown_items, finish_interactions, tags_column
from vragent.environments.schema import DataFormatError, Dataset, LoadReport

MAX_COMMENTS_PER_ITEM = 3
COMMENT_JOINER = "\n"
"""Comments are one per line in their file, so a newline cannot occur inside one."""

_RELEASE = r"MicroLens-(?P<release>\d+[kKmM]?)"
_UNITS = {"k": 1_000, "m": 1_000_000, "": 1}


def _release_size(path: Path) -> int:
    """``MicroLens-100k_...`` -> 100000, so releases can be ranked by size."""
    match = re.match(_RELEASE, path.name)
    if match is None:
        return 0
    release = match.group("release").lower()
    unit = release[-1] if release[-1] in "km" else ""
    return int(release.rstrip("km")) * _UNITS[unit]


def _release_name(path: Path) -> str:
    match = re.match(_RELEASE, path.name)
    return match.group("release").lower() if match else "unknown"


def _by_release(folder: Path, suffix_regex: str) -> list[Path]:
    """Files ``MicroLens-<N><suffix>``, largest release first."""
    found = find_files(folder, _RELEASE + suffix_regex)
    return sorted(found, key=_release_size, reverse=True)


# ---------------------------------------------------------------------- loader


def load_microlens(path: str | Path) -> Dataset:
    """Load a MicroLens folder into the normalised schema.

    Args:
        path: The folder (e.g. ``.../microlens-100k``); see the module docstring for the files.

    Returns:
        The dataset, validated and named after the interaction release (e.g.
        ``"microlens-50k"``). Items are every titled item plus any interacted item without a
        title (``"item <id>"``, counted as 'missing title'); columns ``item_id, title,
        category, tags, likes, views`` and, when those files exist, ``cover_path`` (``""``
        when the item has no cover) and ``comments`` (up to 3, newline-joined).

    Raises:
        DataFormatError: No interaction file is found, or a file is malformed.
    """
    folder = Path(path)
    report = LoadReport()
    pairs = _pick_pairs(folder)
    interactions = _read_pairs(pairs, report)
    items, title_file = _read_titles(folder, report)
    items = add_unknown_items(items, interactions, report, title_file)
    items = _add_categories(folder, items, report)
    items = _add_likes_views(folder, items, report)
    items = _add_covers(folder, items)
    items = _add_comments(folder, items, report)
    users = pd.DataFrame({"user_id": np.sort(interactions["user_id"].unique()).astype("int64")})
    name = f"microlens-{_release_name(pairs)}"
    return Dataset(name, users, items, interactions, report).validate()


def _pick_pairs(folder: Path) -> Path:
    candidates = _by_release(folder, r"_pairs\.(tsv|csv)(\.gz)?")
    if not candidates:
        raise DataFormatError(f"{folder}: no MicroLens-*_pairs.tsv or MicroLens-*_pairs.csv")
    best = _release_size(candidates[0])
    same = [p for p in candidates if _release_size(p) == best]
    # Same release: the csv has timestamps, the tsv only the order.
    return next((p for p in same if ".csv" in p.name), same[0])


# ---------------------------------------------------------------- interactions


def _parse_sequence(fields: list) -> tuple[str, str] | None:
    """``check`` for tsv rows: turn ``"i1 i2 ..."`` into a list of ints in place."""
    tokens = fields[1].split()
    try:
        seq = [int(x) for x in tokens]
    except ValueError:
        bad = next((x for x in tokens if not x.isdigit()), fields[1])
        return "non-integer id or value", f"item id {bad!r} is not an integer"
    if not seq:
        return "empty sequence", "no item ids after the user id"
    fields[1] = seq
    return None


def _read_pairs(path: Path, report: LoadReport) -> pd.DataFrame:
    name = display_name(path)
    if ".tsv" in path.name:
        frame = _read_pairs_tsv(path, report)
        time_col = None  # the sequence order is the time order
    else:
        frame = _read_pairs_csv(path, report)
        time_col = "timestamp"
    if frame.empty:
        raise DataFormatError(f"{name}: no interactions")
    frame["watch"] = True
    return finish_interactions(frame, report, name, time_col=time_col)


def _read_pairs_tsv(path: Path, report: LoadReport) -> pd.DataFrame:
    users, seqs, lines = [], [], []
    for line_no, fields in read_delimited(
        path, "\t", 2, report, int_cols=(0,), check=_parse_sequence
    ):
        users.append(fields[0])
        seqs.append(fields[1])
        lines.append(line_no)
    lengths = np.fromiter((len(s) for s in seqs), dtype="int64", count=len(seqs))
    flat = [item for seq in seqs for item in seq]
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(users, dtype="int64"), lengths),
            "item_id": np.asarray(flat, dtype="int64"),
            "line": np.repeat(np.asarray(lines, dtype="int64"), lengths),
        }
    )


def _read_pairs_csv(path: Path, report: LoadReport) -> pd.DataFrame:
    table = read_numeric_table(path, ",", 3, report, float_cols=(2,), header=None)
    return pd.DataFrame(
        {
            "user_id": table[0].to_numpy(dtype="int64"),
            "item_id": table[1].to_numpy(dtype="int64"),
            "timestamp": table[2].to_numpy(dtype="float64").astype("int64"),
            "line": table["line"].to_numpy(dtype="int64"),
        }
    )


# ------------------------------------------------------------------------ items


def _read_titles(folder: Path, report: LoadReport) -> tuple[pd.DataFrame, str]:
    """Titles from the full-title files first, then the comma-truncated ones.

    Returns:
        Items frame (``item_id, title, category, tags``) and the report key for missing titles.
    """
    sources = [(p, True) for p in _by_release(folder, r"_titles\.csv(\.gz)?")]
    sources += [(p, False) for p in _by_release(folder, r"_title_en\.csv(\.gz)?")]
    titles: dict[int, str] = {}
    line_of: dict[int, tuple[str, int]] = {}
    for path, full in sources:
        name = display_name(path)
        rows = read_delimited(
            path, ",", 2, report, int_cols=(0,), rest_in_last=not full, quoted=full, header=None
        )
        seen: set[int] = set()
        for line_no, (item, title) in rows:
            # The same item twice in one file is a duplicate row (the first is kept); the
            # same item in a later file is the expected overlap between releases.
            if item in seen:
                report.skip(name, "duplicate row", line_no)
                continue
            seen.add(item)
            # An earlier (better) source wins; a later one only fills gaps, including
            # titles the better source left empty.
            if item not in titles or not titles[item].strip():
                titles[item] = title.strip()
                line_of[item] = (name, line_no)
    title_file = display_name(sources[0][0]) if sources else "titles"
    items = pd.DataFrame(
        {
            "item_id": np.fromiter(titles.keys(), dtype="int64", count=len(titles)),
            "title": pd.Series(list(titles.values()), dtype=object),
        }
    )
    items = _fill_missing(items, line_of, report)
    items["category"] = ""
    items["tags"] = tags_column(items["title"])
    return items.sort_values("item_id", kind="stable").reset_index(drop=True), title_file


def _fill_missing(
    items: pd.DataFrame, line_of: dict[int, tuple[str, int]], report: LoadReport
) -> pd.DataFrame:
    """Title empty titles ``"item <id>"``, counted against the file and line they came from."""
    empty = items["title"].eq("").to_numpy()
    for item in items.loc[empty, "item_id"].tolist():
        file, line = line_of[item]
        report.skip(file, "missing title", line)
    if empty.any():
        items.loc[empty, "title"] = "item " + items.loc[empty, "item_id"].astype(str)
    return items


def _add_categories(folder: Path, items: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    path = find_file(folder, ["tags_to_summary.csv"])
    if path is None:
        return items
    mapping = {
        item: category.strip()
        for _, (item, category) in read_delimited(
            path, ",", 2, report, int_cols=(0,), rest_in_last=True, header=None
        )
    }
    items["category"] = items["item_id"].map(mapping).fillna("").astype(object)
    return items


def _add_likes_views(folder: Path, items: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    paths = _by_release(folder, r"_likes_and_views\.txt(\.gz)?")
    if not paths:
        return items
    table = read_numeric_table(paths[0], "\t", 3, report, header=None)
    table = table.drop_duplicates(0, keep="first").set_index(0)
    for col, source in (("likes", 1), ("views", 2)):
        values = items["item_id"].map(table[source])
        # int64 when complete (the usual case); nullable Int64 rather than a made-up 0.
        items[col] = values.astype("int64") if values.notna().all() else values.astype("Int64")
    return items


def _add_covers(folder: Path, items: pd.DataFrame) -> pd.DataFrame:
    dirs = [
        d
        for d in sorted(folder.iterdir())
        if d.is_dir() and re.fullmatch(_RELEASE + r"_covers|covers", d.name)
    ]
    if not dirs:
        return items
    covers: dict[int, str] = {}
    for directory in dirs:
        for entry in os.scandir(directory):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in (".jpg", ".jpeg", ".png") and stem.isdigit():
                covers.setdefault(int(stem), str(Path(entry.path).resolve()))
    items["cover_path"] = items["item_id"].map(covers).fillna("").astype(object)
    return items


def _add_comments(folder: Path, items: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    paths = _by_release(folder, r"_comments?_en\.txt(\.gz)?")
    if not paths:
        return items
    comments: dict[int, list[str]] = {}
    for _, (_user, item, text) in read_delimited(
        paths[0], "\t", 3, report, int_cols=(0, 1), rest_in_last=True, header=None
    ):
        kept = comments.setdefault(item, [])
        text = text.strip()
        if text and len(kept) < MAX_COMMENTS_PER_ITEM:
            kept.append(text)
    joined = {item: COMMENT_JOINER.join(texts) for item, texts in comments.items()}
    items["comments"] = items["item_id"].map(joined).fillna("").astype(object)
    return items
