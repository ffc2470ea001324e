"""MovieLens loaders: ML-100K (GroupLens or RecBole atomic layout) and ML-1M.

MovieLens ratings become interactions with ``rating``, ``timestamp``, ``like``
(rating >= :data:`LIKE_THRESHOLD`) and ``watch`` (always ``True``: a rating implies a view).
Each user's ``order`` ranks their ratings by (timestamp, row in the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from vragent.environments.datasets._archive import data_folder
from vragent.environments.datasets._delimited import (
    read_delimited,
    read_header,
    read_numeric_table,
)
from vragent.environments.datasets._files import display_name, find_file, find_files
from vragent.environments.datasets._io import (
    add_unknown_items,
    add_unknown_users,
    fill_missing_titles,
    finish_interactions,
)
from vragent.environments.schema import DataFormatError, Dataset, LoadReport

LIKE_THRESHOLD = 4
"""Ratings at or above this count as a like."""

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The 19 genre flag columns of ``u.item``, in file order (used when ``u.genre`` is absent)."""

ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
"""ML-1M occupation codes 0..20 (from the ML-1M README)."""

ML_ENCODING = "latin-1"  # GroupLens files are ISO-8859-1; latin-1 never fails to decode


# ------------------------------------------------------------------------ ML-100K


def load_movielens_100k(path: str | Path) -> Dataset:
    """Load MovieLens 100K from a folder or from the distributed ``ml-100k.zip``.

    Two layouts are recognised: the GroupLens one (``u.data``, ``u.item``, ``u.user`` and
    optionally ``u.genre``) and the RecBole atomic one (``ml-100k.inter``, ``ml-100k.item``,
    ``ml-100k.user``). Files may be gzipped and may sit one subfolder down (e.g.
    ``path/ml-100k/u.data``).

    Args:
        path: The folder, or a zip archive of it (read without unpacking it by hand; the zip
            and the folder give the same dataset).

    Returns:
        The dataset, validated. Items: title with year, category = ``|``-joined genres,
        tags ``""``. Users: age, gender, occupation, zip_code.

    Raises:
        DataFormatError: Neither layout is found, the archive is unreadable, or a file is
            malformed.
    """
    with data_folder(path) as folder:
        return _load_100k_folder(folder)


def _load_100k_folder(folder: Path) -> Dataset:
    if find_file(folder, ["u.data"]) is not None:
        return _load_grouplens_100k(folder)
    inter = find_files(folder, r".+\.inter(\.gz)?")
    if inter:
        return _load_atomic_100k(inter[0])
    raise DataFormatError(
        f"{folder}: no MovieLens-100K files (expected u.data/u.item/u.user or RecBole "
        "ml-100k.inter/.item/.user)"
    )


def _require(folder: Path, name: str) -> Path:
    found = find_file(folder, [name])
    if found is None:
        raise DataFormatError(f"{folder}: missing {name}")
    return found


def _load_grouplens_100k(folder: Path) -> Dataset:
    report = LoadReport()
    data_path = _require(folder, "u.data")
    interactions = _read_ratings(data_path, "\t", report)
    genres = _read_genres(find_file(folder, ["u.genre"]), report)
    item_path = _require(folder, "u.item")
    items = _read_u_item(item_path, genres, report)
    users = _read_users(
        _require(folder, "u.user"),
        "|",
        ("user_id", "age", "gender", "occupation", "zip_code"),
        int_fields=(0, 1),
        report=report,
    )
    return _assemble("movielens-100k", users, items, interactions, report, item_path)


def _read_ratings(path: Path, sep: str, report: LoadReport) -> pd.DataFrame:
    """``user<sep>item<sep>rating<sep>timestamp`` rows -> ordered interactions."""
    table = read_numeric_table(path, sep, 4, report, encoding=ML_ENCODING)
    return _ratings_frame(table, report, display_name(path))


def _ratings_frame(table: pd.DataFrame, report: LoadReport, name: str) -> pd.DataFrame:
    """Columns 0..3 = user, item, rating, timestamp (+ ``line``) -> interactions."""
    if table.empty:
        raise DataFormatError(f"{name}: no ratings")
    frame = pd.DataFrame(
        {
            "user_id": table[0].to_numpy(dtype="int64"),
            "item_id": table[1].to_numpy(dtype="int64"),
            "timestamp": table[3].to_numpy(dtype="float64").astype("int64"),
            "rating": _int_if_integral(table[2].to_numpy(dtype="float64")),
            "line": table["line"].to_numpy(dtype="int64"),
        }
    )
    frame["like"] = frame["rating"] >= LIKE_THRESHOLD
    frame["watch"] = True
    return finish_interactions(frame, report, name, time_col="timestamp")


def _int_if_integral(values: np.ndarray) -> np.ndarray:
    """Ratings are whole stars in every MovieLens release; keep them int64 when they are."""
    values = np.asarray(values, dtype="float64")
    if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype("int64")
    return values


def _read_genres(path: Path | None, report: LoadReport) -> list[str]:
    """Genre names by flag index from ``u.genre`` (``name|index``), else the standard 19."""
    if path is None:
        return list(ML100K_GENRES)
    pairs = {
        fields[1]: fields[0].strip()
        for _, fields in read_delimited(path, "|", 2, report, encoding=ML_ENCODING, int_cols=(1,))
    }
    if not pairs or sorted(pairs) != list(range(len(pairs))):
        raise DataFormatError(f"{display_name(path)}: genre indices are not 0..n-1")
    return [pairs[i] for i in range(len(pairs))]


def _read_u_item(path: Path, genres: list[str], report: LoadReport) -> pd.DataFrame:
    """``id|title|release|video release|url|flag*n`` rows -> items."""
    n_flags = len(genres)
    flag_cols = tuple(range(5, 5 + n_flags))
    ids, titles, cats, lines = [], [], [], []
    for line_no, fields in read_delimited(
        path, "|", 5 + n_flags, report, encoding=ML_ENCODING, int_cols=(0, *flag_cols)
    ):
        ids.append(fields[0])
        titles.append(fields[1])
        cats.append("|".join(g for g, flag in zip(genres, fields[5:], strict=True) if flag))
        lines.append(line_no)
    return _items_frame(ids, titles, cats, lines, report, display_name(path))


def _items_frame(
    ids: list[int],
    titles: list[str],
    categories: list[str],
    lines: list[int],
    report: LoadReport,
    name: str,
) -> pd.DataFrame:
    items = pd.DataFrame(
        {
            "item_id": np.asarray(ids, dtype="int64"),
            "title": pd.Series(titles, dtype=object),
            "category": pd.Series(categories, dtype=object),
            "tags": "",
        }
    )
    # Movie titles carry no hashtags; tags stay "" so the column has one meaning everywhere.
    dup = items.duplicated("item_id", keep="first")
    for line in np.asarray(lines)[dup.to_numpy()]:
        report.skip(name, "duplicate row", int(line))
    keep = ~dup.to_numpy()
    items = fill_missing_titles(
        items.loc[keep].reset_index(drop=True),
        report,
        name,
        pd.Series(np.asarray(lines, dtype="int64")[keep]),
    )
    return items.sort_values("item_id", kind="stable").reset_index(drop=True)


def _read_users(
    path: Path,
    sep: str,
    columns: tuple[str, ...],
    int_fields: tuple[int, ...],
    report: LoadReport,
) -> pd.DataFrame:
    rows = [
        fields
        for _, fields in read_delimited(
            path, sep, len(columns), report, encoding=ML_ENCODING, int_cols=int_fields
        )
    ]
    users = pd.DataFrame(rows, columns=list(columns))
    users["user_id"] = users["user_id"].astype("int64")
    for j in int_fields:
        users[columns[j]] = users[columns[j]].astype("int64")
    users = users.drop_duplicates("user_id", keep="first")
    return users.sort_values("user_id", kind="stable").reset_index(drop=True)


def _assemble(
    name: str,
    users: pd.DataFrame,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    report: LoadReport,
    item_file: Path,
) -> Dataset:
    items = add_unknown_items(items, interactions, report, display_name(item_file))
    users = add_unknown_users(users, interactions)
    return Dataset(name, users, items, interactions, report).validate()


# ----------------------------------------------------------- ML-100K, RecBole atomic


def _atomic_columns(path: Path) -> dict[str, int]:
    """Map RecBole header names (``user_id:token`` -> ``user_id``) to field positions."""
    header = read_header(path, "\t", encoding=ML_ENCODING)
    return {field.split(":", 1)[0].strip(): j for j, field in enumerate(header)}


def _need(path: Path, columns: dict[str, int], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataFormatError(f"{display_name(path)} line 1: header lacks columns {missing}")


def _load_atomic_100k(inter_path: Path) -> Dataset:
    report = LoadReport()
    stem = inter_path.name.split(".inter")[0]
    folder = inter_path.parent
    interactions = _read_atomic_inter(inter_path, report)
    item_path = _require(folder, f"{stem}.item")
    items = _read_atomic_items(item_path, report)
    user_path = find_file(folder, [f"{stem}.user"], depth=0)
    users = (
        _read_atomic_users(user_path, report)
        if user_path is not None
        else pd.DataFrame({"user_id": pd.Series(dtype="int64")})
    )
    return _assemble("movielens-100k", users, items, interactions, report, item_path)


def _read_atomic_inter(path: Path, report: LoadReport) -> pd.DataFrame:
    cols = _atomic_columns(path)
    _need(path, cols, ("user_id", "item_id", "rating", "timestamp"))
    idx = [cols["user_id"], cols["item_id"], cols["rating"], cols["timestamp"]]
    ints = tuple(idx[:2])
    # Columns this loader does not use (if any) are read as floats, which any number passes.
    floats = tuple(j for j in range(len(cols)) if j not in ints)
    table = read_numeric_table(
        path, "\t", len(cols), report, float_cols=floats, encoding=ML_ENCODING, header=True
    )
    table = table[[*idx, "line"]].set_axis([0, 1, 2, 3, "line"], axis=1)
    return _ratings_frame(table, report, display_name(path))


def _read_atomic_items(path: Path, report: LoadReport) -> pd.DataFrame:
    cols = _atomic_columns(path)
    _need(path, cols, ("item_id",))
    title_col = next((c for c in ("movie_title", "title") if c in cols), None)
    ids, titles, cats, lines = [], [], [], []
    for line_no, fields in read_delimited(
        path,
        "\t",
        len(cols),
        report,
        encoding=ML_ENCODING,
        int_cols=(cols["item_id"],),
        header=True,
    ):
        title = fields[cols[title_col]].strip() if title_col is not None else ""
        year = fields[cols["release_year"]].strip() if "release_year" in cols else ""
        # The GroupLens layout keeps "(1995)" in the title; match it so both layouts agree.
        if title and year and not title.endswith(f"({year})"):
            title = f"{title} ({year})"
        genres = fields[cols["class"]].split() if "class" in cols else []
        ids.append(fields[cols["item_id"]])
        titles.append(title)
        cats.append("|".join(genres))
        lines.append(line_no)
    return _items_frame(ids, titles, cats, lines, report, display_name(path))


def _read_atomic_users(path: Path, report: LoadReport) -> pd.DataFrame:
    cols = _atomic_columns(path)
    _need(path, cols, ("user_id",))
    wanted = [c for c in ("user_id", "age", "gender", "occupation", "zip_code") if c in cols]
    rows = []
    for _, fields in read_delimited(
        path,
        "\t",
        len(cols),
        report,
        encoding=ML_ENCODING,
        int_cols=(cols["user_id"],),
        header=True,
    ):
        rows.append([fields[cols[c]] for c in wanted])
    users = pd.DataFrame(rows, columns=wanted)
    users["user_id"] = users["user_id"].astype("int64")
    if "age" in users:
        age = pd.to_numeric(users["age"], errors="coerce")
        if age.notna().all():
            users["age"] = age.astype("int64")
    users = users.drop_duplicates("user_id", keep="first")
    return users.sort_values("user_id", kind="stable").reset_index(drop=True)


# -------------------------------------------------------------------------- ML-1M


def load_movielens_1m(path: str | Path) -> Dataset:
    """Load MovieLens 1M (``ratings.dat``, ``movies.dat``, ``users.dat``; ``::``-separated).

    Args:
        path: The folder (files may be gzipped or one subfolder down, e.g. ``ml-1m/``), or
            the distributed ``ml-1m.zip``.

    Returns:
        The dataset, validated. Users: gender, age (the ML-1M age-group code), occupation
        (name decoded from the 0..20 code), zip_code.

    Raises:
        DataFormatError: A file is missing or malformed, or the archive is unreadable.
    """
    with data_folder(path) as folder:
        return _load_1m_folder(folder)


def _load_1m_folder(folder: Path) -> Dataset:
    report = LoadReport()
    ratings_path = _require(folder, "ratings.dat")
    interactions = _read_ratings(ratings_path, "::", report)
    movies_path = _require(folder, "movies.dat")
    ids, titles, cats, lines = [], [], [], []
    for line_no, fields in read_delimited(
        movies_path, "::", 3, report, encoding=ML_ENCODING, int_cols=(0,)
    ):
        ids.append(fields[0])
        titles.append(fields[1])
        cats.append(fields[2].strip())
        lines.append(line_no)
    items = _items_frame(ids, titles, cats, lines, report, display_name(movies_path))
    users = _read_users(
        _require(folder, "users.dat"),
        "::",
        ("user_id", "gender", "age", "occupation", "zip_code"),
        int_fields=(0, 2, 3),
        report=report,
    )
    codes = users["occupation"].to_numpy()
    names = np.asarray(ML1M_OCCUPATIONS, dtype=object)
    known = (codes >= 0) & (codes < len(names))
    # An unknown code is kept as its number rather than guessed.
    users["occupation"] = np.where(
        known, names[np.clip(codes, 0, len(names) - 1)], codes.astype(str)
    ).astype(object)
    return _assemble("movielens-1m", users, items, interactions, report, movies_path)
