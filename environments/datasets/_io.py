"""Normalising what the loaders read: hashtags, missing titles, unknown ids, the final frame."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from vragent.environments.schema import LoadReport

# Characters trimmed from both ends of a hashtag; inner punctuation is kept because
# tags only need to be whitespace-free tokens.
_TAG_TRIM = (
    " \t\r\n.,;:!?'\"()[]{}<>~*&^%$@+=/\\|`-_"
    "\u3002\uff0c\uff01\uff1f\u3001\u3010\u3011\u300a\u300b\u2026"  # CJK punctuation, ellipsis
)
_WS = re.compile(r"\s+")


def normalise_tag(raw: str) -> str:
    """Turn one hashtag body into ``#lower_case_words`` (``""`` when nothing is left)."""
    text = raw.strip(_TAG_TRIM)
    if not text:
        return ""
    return "#" + _WS.sub("_", text).lower()


def extract_tags(title: str) -> str:
    """Space-separated ``#tags`` from a title, in order of first use.

    MicroLens titles put hashtags after the text with spaces after ``#``
    (``"text # funny # unexpected ending"``); a tag runs to the next ``#``, so inner spaces
    become underscores: ``"#funny #unexpected_ending"``.
    """
    if not isinstance(title, str) or "#" not in title:
        return ""
    tags = (normalise_tag(part) for part in title.split("#")[1:])
    return " ".join(dict.fromkeys(t for t in tags if t))


def tags_column(titles: pd.Series) -> pd.Series:
    """:func:`extract_tags` over a column of titles."""
    return titles.map(extract_tags).astype(object)


def fill_missing_titles(
    items: pd.DataFrame, report: LoadReport, file: str, lines: pd.Series | None = None
) -> pd.DataFrame:
    """Replace empty titles with ``"item <id>"`` and count each as 'missing title'.

    Args:
        items: Frame with ``item_id`` and ``title``.
        report: Where missing titles are counted.
        file: The file the titles come from (the report key).
        lines: Optional line numbers aligned with ``items`` for the report.

    Returns:
        ``items`` with no empty titles.
    """
    title = items["title"].fillna("").astype(str).str.strip()
    missing = title.eq("")
    if missing.any():
        for idx in np.flatnonzero(missing.to_numpy()):
            line = None
            if lines is not None and pd.notna(lines.iloc[idx]):
                line = int(lines.iloc[idx])
            report.skip(file, "missing title", line)
        title = title.mask(missing, "item " + items["item_id"].astype(str))
    items = items.copy()
    items["title"] = title
    return items


def finish_interactions(
    frame: pd.DataFrame, report: LoadReport, file: str, time_col: str | None = "timestamp"
) -> pd.DataFrame:
    """Drop duplicate (user, item) rows and number each user's interactions.

    Args:
        frame: Interactions in file order with ``user_id``, ``item_id``, a ``line`` column
            (source line numbers, for the report) and optionally ``time_col``.
        report: Where duplicates are counted as 'duplicate row' (the first is kept).
        file: Report key.
        time_col: Column that orders a user's interactions (ties keep file order); ``None``
            means the file order already is the time order.

    Returns:
        The interactions with an int64 ``order`` column, sorted by ``(user_id, order)``,
        without the ``line`` column.
    """
    frame = frame.reset_index(drop=True)
    dup = frame.duplicated(["user_id", "item_id"], keep="first")
    if dup.any():
        for line in frame.loc[dup, "line"].tolist():
            report.skip(file, "duplicate row", int(line))
        frame = frame.loc[~dup]
    frame = frame.assign(_row=np.arange(len(frame)))
    keys = ["user_id", time_col, "_row"] if time_col else ["user_id", "_row"]
    frame = frame.sort_values(keys, kind="stable")
    frame["order"] = frame.groupby("user_id", sort=False).cumcount().astype("int64")
    frame = frame.drop(columns=["_row", "line"])
    frame["user_id"] = frame["user_id"].astype("int64")
    frame["item_id"] = frame["item_id"].astype("int64")
    first = ["user_id", "item_id", "order"]
    return frame[first + [c for c in frame.columns if c not in first]].reset_index(drop=True)


def add_unknown_items(
    items: pd.DataFrame, interactions: pd.DataFrame, report: LoadReport, file: str
) -> pd.DataFrame:
    """Give interacted items that the item file lacks a placeholder row.

    The interaction is real data, so it is kept; the missing metadata is counted as
    'missing title' against the item file.
    """
    known = set(items["item_id"].tolist())
    unknown = sorted(set(interactions["item_id"].unique().tolist()) - known)
    if not unknown:
        return items
    for _ in unknown:
        report.skip(file, "missing title")
    extra = pd.DataFrame(
        {"item_id": np.asarray(unknown, dtype="int64"), "category": "", "tags": ""}
    )
    extra["title"] = "item " + extra["item_id"].astype(str)
    out = pd.concat([items, extra], ignore_index=True)
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)


def add_unknown_users(users: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """Add ``user_id``-only rows for interacting users that the user file lacks."""
    unknown = np.setdiff1d(interactions["user_id"].unique(), users["user_id"].to_numpy())
    if not len(unknown):
        return users
    extra = pd.DataFrame({"user_id": unknown.astype("int64")})
    out = pd.concat([users, extra], ignore_index=True)
    return out.sort_values("user_id", kind="stable").reset_index(drop=True)
