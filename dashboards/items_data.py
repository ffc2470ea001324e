"""The Items page's reads: IP-agent profile sets, pages of profiles, one profile, covers.

Cached, read-only queries in the manner of :mod:`dashboards.data` (its engine and helpers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import case, func, select
from vragent.dashboards.data import (
    TTL_S,
    _frame,
    _like_pattern,
    _rows,
    engine,
    has,
    has_column,
    item_titles,
    present,
)
from vragent.environments.sources import data_dir_path
from vragent.sandbox.store import ItemProfileRow, Run


@st.cache_data(ttl=TTL_S, show_spinner=False)
def profile_sets(url: str) -> pd.DataFrame:
    """``dataset, model_id, profiles, problems`` of every set of IP-agent profiles."""
    cols = ["dataset", "model_id", "profiles", "problems"]
    if not has(url, "item_profiles"):
        return pd.DataFrame(columns=cols)
    p = ItemProfileRow.__table__
    df = _frame(url, select(p.c.dataset, p.c.model_id, func.count(),
                            func.sum(case((p.c.format_ok.is_(False), 1), else_=0)))
                .group_by(p.c.dataset, p.c.model_id).order_by(func.count().desc()))
    df.columns = cols
    return df


@st.cache_data(ttl=TTL_S, show_spinner=False)
def profiles_page(url: str, dataset: str, model_id: str, text: str = "",
                  only_problems: bool = False, limit: int = 50,
                  offset: int = 0) -> tuple[pd.DataFrame, int]:
    """A page of IP-agent profiles beside the original titles.

    The title is the one stored with the profile, else the catalogue title of the run that
    made the profile.

    Returns:
        The page (``id, item_id, title, profile, tags, format_ok, problems, run_id``) and the
        number of matching profiles.
    """
    cols = ["id", "item_id", "title", "profile", "tags", "format_ok", "problems", "run_id"]
    if not has(url, "item_profiles"):
        return pd.DataFrame(columns=cols), 0
    p = ItemProfileRow.__table__
    title_col = p.c.title if has_column(url, "item_profiles", "title") else None
    cond = [p.c.dataset == dataset, p.c.model_id == model_id]
    text = text.strip()
    if text:
        like = _like_pattern(text)
        c = p.c.profile.ilike(like, escape="\\")
        if title_col is not None:
            c = c | title_col.ilike(like, escape="\\")
        if text.isdigit():
            c = c | (p.c.item_id == int(text))
        cond.append(c)
    if only_problems:
        cond.append(p.c.format_ok.is_(False))
    q = select(p.c.id, p.c.item_id, title_col if title_col is not None else p.c.tags.label(
        "title"), p.c.profile, p.c.tags, p.c.format_ok, p.c.problems, p.c.run_id).where(*cond)
    with engine(url).connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(p).where(*cond)).scalar() or 0)
        res = conn.execute(q.order_by(p.c.item_id).limit(limit).offset(offset))
        df = pd.DataFrame([tuple(r) for r in res], columns=cols)
    if title_col is None:
        df["title"] = ""
    missing = df[(df["title"].fillna("") == "") & df["run_id"].notna()]
    for rid, grp in missing.groupby("run_id"):
        titles = item_titles(url, str(rid), tuple(int(i) for i in grp["item_id"]))
        df.loc[grp.index, "title"] = [titles.get(int(i), "") for i in grp["item_id"]]
    df["problems"] = [", ".join(p or []) if isinstance(p, list) else (p or "")
                      for p in df["problems"]]
    return df, total


@st.cache_data(ttl=TTL_S, show_spinner=False)
def profile_detail(url: str, profile_id: int) -> dict[str, Any] | None:
    """One stored profile with its stage-by-stage record."""
    if not has(url, "item_profiles"):
        return None
    p = ItemProfileRow.__table__
    with engine(url).connect() as conn:
        row = conn.execute(select(*present(url, p)).where(p.c.id == profile_id)
                           ).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out.setdefault("stages", [])
    out.setdefault("title", "")
    if not out.get("title") and out.get("run_id"):
        out["title"] = item_titles(url, out["run_id"], (int(out["item_id"]),)).get(
            int(out["item_id"]), "")
    return out


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@st.cache_data(ttl=TTL_S, show_spinner=False)
def cover_dirs(url: str, dataset: str) -> list[str]:
    """Folders that may hold covers (``<item>.jpg``) of a profile set's dataset.

    ``VRAGENT_COVERS_DIR`` first, then ``*_covers`` and ``covers`` folders under the dataset
    paths of the store's runs of that dataset kind and under ``$VRAGENT_DATA_DIR/<name>``.
    """
    kind, _, name = dataset.partition(":")
    bases: list[Path] = []
    if os.environ.get("VRAGENT_COVERS_DIR"):
        bases.append(Path(os.environ["VRAGENT_COVERS_DIR"]))
    if has(url, "runs"):
        r = Run.__table__
        for (config,) in _rows(url, select(r.c.config).order_by(r.c.created_at.desc())
                               .limit(200)):
            ds = (config or {}).get("dataset") or {}
            if ds.get("kind") == kind and ds.get("path"):
                bases.append(Path(str(ds["path"])).expanduser())
    data_dir = os.environ.get("VRAGENT_DATA_DIR")
    if data_dir and name:
        bases.append(Path(data_dir) / name)  # a profile set's own folder name
    default = data_dir_path(kind)
    if default is not None:
        bases.append(default)
    out: list[str] = []
    for base in bases:
        if not base.is_dir():
            continue
        candidates = [base, *sorted(base.glob("*_covers")), base / "covers"]
        for c in candidates:
            if c.is_dir() and str(c) not in out:
                out.append(str(c))
    return out


def find_cover(dirs: Sequence[str], item_id: int) -> str | None:
    """The cover file of an item in one of ``dirs``, or ``None``."""
    for d in dirs:
        for suffix in IMAGE_SUFFIXES:
            path = Path(d) / f"{item_id}{suffix}"
            if path.is_file():
                return str(path)
    return None
