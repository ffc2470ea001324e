"""Loader tests on small hand-written files, plus real-data checks when VRAGENT_DATA_DIR is set."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pandas as pd
import pytest
from vragent.environments.datasets import (
    extract_tags,
    load_dataset,
    load_microlens,
    load_movielens_1m,
    load_movielens_100k,
)
from vragent.environments.datasets._delimited import read_delimited, read_numeric_table
from vragent.environments.datasets._files import find_file, open_text
from vragent.environments.datasets.movielens import ML100K_GENRES
from vragent.environments.schema import DataFormatError, LoadReport

from tests.conftest import real_data

GENRES = list(ML100K_GENRES)

# Invented data: (user, item, rating, timestamp). 5 users x 6 items = 30 rows, with
# timestamp ties so the (timestamp, row) ordering rule is exercised.
RATINGS = [
    (u, i, 1 + (u * 3 + i) % 5, 1000 + 10 * ((u * 5 + i * 7) % 4))
    for u in range(1, 6)
    for i in range(1, 7)
]
ITEMS = [  # id, title without year, year, genres
    (1, "Alpha Film", "1990", ["Action", "Comedy"]),
    (2, "Beta Story", "1991", ["Drama"]),
    (3, "Gamma Quest", "1992", ["Adventure", "Sci-Fi"]),
    (4, "Delta Night", "1993", ["Film-Noir"]),
    (5, "Epsilon Song", "1994", ["Musical", "Romance"]),
    (6, "Zeta Farm", "1995", ["unknown"]),
]
USERS = [  # id, age, gender, occupation, zip
    (1, 24, "M", "technician", "11111"),
    (2, 53, "F", "other", "22222"),
    (3, 23, "M", "writer", "33333"),
    (4, 31, "F", "engineer", "44444"),
    (5, 40, "M", "artist", "55555"),
]


def _write(path: Path, lines: list[str], encoding: str = "utf-8", gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode(encoding)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _u_item_line(item_id: int, title: str, genres: list[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{item_id}|{title}|01-Jan-1990||http://example.org/{item_id}|{flags}"


def write_ml100k(
    folder: Path,
    ratings: list[tuple] = RATINGS,
    extra_data_lines: list[str] = (),
    item_lines: list[str] | None = None,
    genre_file: bool = True,
    gz: bool = False,
) -> Path:
    data = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ratings] + list(extra_data_lines)
    _write(folder / "u.data", data, gz=gz)
    if item_lines is None:
        item_lines = [_u_item_line(i, f"{t} ({y})", g) for i, t, y, g in ITEMS]
    _write(folder / "u.item", item_lines, encoding="latin-1")
    _write(folder / "u.user", ["|".join(map(str, row)) for row in USERS])
    if genre_file:
        _write(folder / "u.genre", [f"{g}|{j}" for j, g in enumerate(GENRES)] + [""])
    return folder


def write_ml100k_atomic(folder: Path) -> Path:
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    _write(folder / "ml-100k.inter", inter)
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item += [f"{i}\t{t}\t{y}\t{' '.join(g)}" for i, t, y, g in ITEMS]
    _write(folder / "ml-100k.item", item)
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += ["\t".join(map(str, row)) for row in USERS]
    _write(folder / "ml-100k.user", user)
    return folder


def _expected_sequences(ratings: list[tuple]) -> dict[int, list[int]]:
    """Reference ordering: by (timestamp, row in file) within each user."""
    rows = sorted(enumerate(ratings), key=lambda r: (r[1][0], r[1][3], r[0]))
    out: dict[int, list[int]] = {}
    for _, (u, i, _r, _t) in rows:
        out.setdefault(u, []).append(i)
    return out


# ------------------------------------------------------------------------ MovieLens


def test_ml100k_grouplens_layout(tmp_path: Path) -> None:
    ds = load_movielens_100k(write_ml100k(tmp_path))
    assert ds.name == "movielens-100k"
    assert ds.summary() == {"users": 5, "items": 6, "interactions": 30, "skipped_rows": 0}
    inter = ds.interactions
    assert list(inter.columns[:3]) == ["user_id", "item_id", "order"]
    assert str(inter["user_id"].dtype) == "int64" and str(inter["order"].dtype) == "int64"
    assert ds.sequences() == _expected_sequences(RATINGS)
    assert (inter["like"] == (inter["rating"] >= 4)).all()
    assert inter["watch"].all()
    item1 = ds.items.set_index("item_id").loc[1]
    assert item1["title"] == "Alpha Film (1990)"  # the year stays in the title
    assert item1["category"] == "Action|Comedy"
    assert item1["tags"] == ""
    user2 = ds.users.set_index("user_id").loc[2]
    assert (user2["age"], user2["gender"], user2["occupation"]) == (53, "F", "other")
    assert user2["zip_code"] == "22222"


def test_like_share_reads_ratings_or_likes_per_view(tmp_path: Path) -> None:
    ds = load_movielens_100k(write_ml100k(tmp_path))
    want = sum(r >= 4 for _, _, r, _ in RATINGS) / len(RATINGS)
    assert ds.like_share() == pytest.approx(want) and 0 < want < 1
    # Per-item like and view counts (MicroLens): likes per view over the catalogue.
    ds.interactions = ds.interactions.drop(columns=["like"])
    ds.items = ds.items.assign(likes=[1, 2, 3, 4, 5, 6], views=[10, 10, 10, 10, 10, 50])
    assert ds.like_share() == pytest.approx(21 / 100)
    ds.items = ds.items.drop(columns=["likes", "views"])
    with pytest.raises(DataFormatError, match="movielens-100k: no like share"):
        ds.like_share()


def test_ml100k_order_ties_keep_file_order(tmp_path: Path) -> None:
    ratings = [(1, 1, 5, 200), (1, 2, 3, 100), (1, 3, 4, 100), (2, 3, 2, 50)]
    ds = load_movielens_100k(write_ml100k(tmp_path, ratings))
    assert ds.sequences() == {1: [2, 3, 1], 2: [3]}
    assert ds.interactions["order"].tolist() == [0, 1, 2, 0]


def test_ml100k_without_genre_file_uses_standard_names(tmp_path: Path) -> None:
    ds = load_movielens_100k(write_ml100k(tmp_path, genre_file=False))
    assert ds.items.set_index("item_id").loc[4, "category"] == "Film-Noir"


def test_ml100k_atomic_layout_matches_grouplens(tmp_path: Path) -> None:
    classic = load_movielens_100k(write_ml100k(tmp_path / "classic"))
    atomic = load_movielens_100k(write_ml100k_atomic(tmp_path / "atomic"))
    pd.testing.assert_frame_equal(classic.interactions, atomic.interactions)
    pd.testing.assert_frame_equal(classic.items, atomic.items)
    pd.testing.assert_frame_equal(classic.users, atomic.users)


def test_ml100k_gzipped_and_in_subfolder(tmp_path: Path) -> None:
    write_ml100k(tmp_path / "ml-100k", gz=True)
    ds = load_movielens_100k(tmp_path)
    assert len(ds.interactions) == 30


def test_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no MovieLens-100K files"):
        load_movielens_100k(tmp_path)
    with pytest.raises(DataFormatError, match=r"no MicroLens-\*_pairs"):
        load_microlens(tmp_path)


def test_truncated_line_is_skipped_and_counted(tmp_path: Path) -> None:
    # 30 good rows + 1 truncated: 3% bad, under the 5% limit.
    ds = load_movielens_100k(write_ml100k(tmp_path, extra_data_lines=["5\t6\t3"]))
    assert len(ds.interactions) == 30
    assert ds.report.skipped == {"u.data": {"wrong number of fields": 1}}
    assert ds.report.examples["u.data"] == ["line 31: wrong number of fields"]


def test_non_integer_id_is_counted(tmp_path: Path) -> None:
    ds = load_movielens_100k(write_ml100k(tmp_path, extra_data_lines=["x7\t1\t3\t5"]))
    assert ds.report.skipped["u.data"] == {"non-integer id or value": 1}


def test_wrong_separator_raises_naming_file_and_line(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path)
    _write(folder / "u.data", [f"{u},{i},{r},{t}" for u, i, r, t in RATINGS])
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    assert str(err.value).startswith(
        "u.data line 1: expected 4 tab-separated fields, got 1 (wrong separator?)"
    )


def test_too_many_bad_rows_raise(tmp_path: Path) -> None:
    bad = ["1\t2", "3", "4\t4\t4"]  # 3 of 33 rows = 9% > 5%
    with pytest.raises(DataFormatError, match=r"u\.data line 31: .*3 of 33 rows bad"):
        load_movielens_100k(write_ml100k(tmp_path, extra_data_lines=bad))


def test_duplicate_interactions_keep_first(tmp_path: Path) -> None:
    ratings = [*RATINGS, (2, 3, 1, 5)]  # repeats (2, 3) with an earlier timestamp
    ds = load_movielens_100k(write_ml100k(tmp_path, ratings))
    assert len(ds.interactions) == 30
    assert ds.report.skipped == {"u.data": {"duplicate row": 1}}
    assert ds.report.examples["u.data"] == ["line 31: duplicate row"]
    kept = ds.interactions.query("user_id == 2 and item_id == 3")
    assert kept["timestamp"].tolist() == [RATINGS[8][3]]  # the first row's value


def test_missing_title_is_kept_and_counted(tmp_path: Path) -> None:
    lines = [_u_item_line(i, f"{t} ({y})", g) for i, t, y, g in ITEMS]
    lines[1] = _u_item_line(2, "", ["Drama"])
    ds = load_movielens_100k(write_ml100k(tmp_path, item_lines=lines))
    assert ds.items.set_index("item_id").loc[2, "title"] == "item 2"
    assert ds.report.skipped == {"u.item": {"missing title": 1}}
    assert ds.report.examples["u.item"] == ["line 2: missing title"]


def test_interaction_with_unknown_item_gets_placeholder(tmp_path: Path) -> None:
    ds = load_movielens_100k(write_ml100k(tmp_path, [*RATINGS, (1, 99, 4, 5)]))
    assert ds.items.set_index("item_id").loc[99, "title"] == "item 99"
    assert ds.report.skipped == {"u.item": {"missing title": 1}}


def test_ml1m(tmp_path: Path) -> None:
    _write(
        tmp_path / "ratings.dat",
        ["1::10::5::300", "1::20::2::100", "2::10::4::100", "2::30::3::50"],
        encoding="latin-1",
    )
    _write(
        tmp_path / "movies.dat",
        ["10::Café Story (2000)::Comedy|Romance", "20::Night Run (1999)::Action", "30::X (1)::"],
        encoding="latin-1",
    )
    _write(tmp_path / "users.dat", ["1::F::25::12::12345", "2::M::56::99::54321"])
    ds = load_movielens_1m(tmp_path)
    assert ds.name == "movielens-1m"
    assert ds.sequences() == {1: [20, 10], 2: [30, 10]}
    items = ds.items.set_index("item_id")
    assert items.loc[10, "title"] == "Café Story (2000)"  # decoded as latin-1
    assert items.loc[10, "category"] == "Comedy|Romance"
    assert items.loc[30, "category"] == ""
    users = ds.users.set_index("user_id")
    assert users.loc[1, "occupation"] == "programmer"
    assert users.loc[2, "occupation"] == "99"  # unknown code kept, not guessed
    assert users.loc[1, "age"] == 25


# ------------------------------------------------------------------------ MicroLens


def write_microlens(folder: Path, pairs: str = "tsv") -> Path:
    """A miniature MicroLens folder with invented titles."""
    sub = folder / "MicroLens-50k"
    if pairs == "tsv":
        # CRLF like the real file; user 3 sees item 7, which has no title anywhere.
        seqs = {1: [1, 2, 3, 4, 5], 2: [5, 4, 3, 2, 1, 6], 3: [2, 7, 1, 3, 4]}
        (sub).mkdir(parents=True, exist_ok=True)
        text = "".join(f"{u}\t{' '.join(map(str, s))}\r\n" for u, s in seqs.items())
        (sub / "MicroLens-50k_pairs.tsv.gz").write_bytes(gzip.compress(text.encode()))
    _write(
        sub / "MicroLens-50k_titles.csv",
        [
            "item,title",
            '1,"cat jumps, then falls # funny # unexpected ending"',
            '2,"plain title, no tags"',
            '3,"#Cooking at home:  # Quick Meals ## food"',
        ],
    )
    # The 100k file cuts titles at the first comma; it only fills items 4-6 here.
    _write(
        folder / "MicroLens-100k_title_en.csv",
        ["1, cat jumps", "2, plain title", "3, x", "4, short one # tagged", "5, ", "6, six"],
        gz=True,
    )
    _write(
        folder / "tags_to_summary.csv",
        [f"{i},{'Game' if i % 2 else 'Anime'}" for i in (1, 2, 3, 4, 5, 6)],
    )
    _write(
        folder / "MicroLens-100k_likes_and_views.txt",
        [f"{i}\t{i * 10}\t{i * 100}" for i in range(1, 8)],
    )
    covers = folder / "MicroLens-100k_covers"
    covers.mkdir()
    (covers / "2.jpg").write_bytes(b"\xff\xd8\xff")
    _write(
        folder / "MicroLens-100k_comment_en.txt",
        ["9\t1\tnice", "8\t1\tlol\twith tab", "7\t1\tthird", "6\t1\tfourth", "5\t2\twow"],
    )
    return folder


def test_microlens_tsv_layout(tmp_path: Path) -> None:
    ds = load_microlens(write_microlens(tmp_path))
    assert ds.name == "microlens-50k"
    assert ds.sequences() == {1: [1, 2, 3, 4, 5], 2: [5, 4, 3, 2, 1, 6], 3: [2, 7, 1, 3, 4]}
    assert "timestamp" not in ds.interactions and ds.interactions["watch"].all()
    items = ds.items.set_index("item_id")
    assert sorted(items.index) == [1, 2, 3, 4, 5, 6, 7]
    # Full titles win over the comma-truncated ones; the 100k file fills the rest.
    assert items.loc[1, "title"] == "cat jumps, then falls # funny # unexpected ending"
    assert items.loc[4, "title"] == "short one # tagged"
    assert items.loc[1, "tags"] == "#funny #unexpected_ending"
    assert items.loc[2, "tags"] == ""
    assert items.loc[3, "tags"] == "#cooking_at_home #quick_meals #food"
    assert items.loc[5, "title"] == "item 5"  # empty title in the fallback file
    assert items.loc[7, "title"] == "item 7"  # interacted but untitled
    assert ds.report.skipped == {
        "MicroLens-100k_title_en.csv.gz": {"missing title": 1},
        "MicroLens-50k_titles.csv": {"missing title": 1},
    }
    assert items.loc[1, "category"] == "Game" and items.loc[2, "category"] == "Anime"
    assert items.loc[7, "category"] == ""
    assert (items.loc[3, "likes"], items.loc[3, "views"]) == (30, 300)
    assert str(ds.items["likes"].dtype) == "int64"
    assert items.loc[2, "cover_path"].endswith("2.jpg") and items.loc[1, "cover_path"] == ""
    assert items.loc[1, "comments"] == "nice\nlol\twith tab\nthird"  # at most 3
    assert items.loc[2, "comments"] == "wow" and items.loc[3, "comments"] == ""


def test_microlens_csv_pairs_prefer_largest_release(tmp_path: Path) -> None:
    folder = write_microlens(tmp_path)
    rows = ["user_id,item_id,timestamp", "1,3,300", "1,1,100", "2,2,50", "1,2,100", "2,6,10"]
    _write(tmp_path / "MicroLens-100k_pairs.csv", rows)
    ds = load_microlens(folder)
    assert ds.name == "microlens-100k"  # 100k wins over the 50k tsv
    assert ds.sequences() == {1: [1, 2, 3], 2: [6, 2]}
    assert ds.interactions["timestamp"].tolist() == [100, 100, 300, 10, 50]


def test_microlens_csv_without_header(tmp_path: Path) -> None:
    _write(tmp_path / "MicroLens-100k_pairs.csv", ["1,3,300", "1,1,100"])
    ds = load_microlens(tmp_path)
    assert ds.sequences() == {1: [1, 3]}
    assert ds.items["title"].tolist() == ["item 1", "item 3"]


def test_microlens_bad_utf8_is_counted(tmp_path: Path) -> None:
    _write(tmp_path / "MicroLens-100k_pairs.csv", ["1,1,1", "1,2,2"])
    (tmp_path / "MicroLens-100k_title_en.csv").write_bytes(b"1, caf\xe9 time\r\n2, fine\r\n")
    ds = load_microlens(tmp_path)
    assert ds.items.set_index("item_id").loc[1, "title"] == "caf\ufffd time"
    assert ds.report.skipped == {"MicroLens-100k_title_en.csv": {"bad encoding": 1}}
    assert ds.report.examples["MicroLens-100k_title_en.csv"] == ["line 1: bad encoding"]


def test_microlens_bad_sequence_row(tmp_path: Path) -> None:
    lines = [f"{u}\t{u} {u + 1} {u + 2}" for u in range(1, 30)] + ["30\t1 two 3"]
    _write(tmp_path / "MicroLens-50k_pairs.tsv", lines)
    ds = load_microlens(tmp_path)
    assert ds.interactions["user_id"].nunique() == 29
    assert ds.report.examples["MicroLens-50k_pairs.tsv"] == ["line 30: non-integer id or value"]


# -------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("title", "tags"),
    [
        ("some text # funny # unexpected ending", "#funny #unexpected_ending"),
        ("Quick 10-minute pasta hack #cooking #food", "#cooking #food"),
        ("no tags here", ""),
        ("dup # Funny # funny ## ", "#funny"),
        ("#Made Up Tag: # x", "#made_up_tag #x"),
    ],
)
def test_extract_tags(title: str, tags: str) -> None:
    assert extract_tags(title) == tags


def test_read_delimited_quoted_multiline_and_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", ["item,title", '1,"two', 'lines"', "2,plain"])
    rows = list(read_delimited(path, ",", 2, LoadReport(), quoted=True, header=None))
    assert rows == [(2, [1, "two\nlines"]), (4, [2, "plain"])]


def test_numeric_table_fast_and_careful_paths_agree(tmp_path: Path) -> None:
    good = [f"{i}::{i + 1}::{i / 2}::{1000 + i}" for i in range(40)]
    clean = read_numeric_table(
        _write(tmp_path / "a.dat", good), "::", 4, LoadReport(), float_cols=(2,)
    )
    assert clean["line"].tolist() == list(range(1, 41))
    # A blank line and a bad row force the line-by-line path; line numbers stay physical.
    report = LoadReport()
    messy = read_numeric_table(
        _write(tmp_path / "b.dat", [*good[:10], "", "7::x::1::1", *good[10:]]),
        "::",
        4,
        report,
        float_cols=(2,),
    )
    assert report.skipped == {"b.dat": {"non-integer id or value": 1}}
    assert report.examples["b.dat"] == ["line 12: non-integer id or value"]
    pd.testing.assert_frame_equal(clean.drop(columns="line"), messy.drop(columns="line"))
    assert messy["line"].tolist() == [*range(1, 11), *range(13, 43)]


def test_truncated_gzip_keeps_rows_and_counts(tmp_path: Path) -> None:
    data = gzip.compress("".join(f"{i}\tx\n" for i in range(5000)).encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    report = LoadReport()
    rows = list(read_delimited(path, "\t", 2, report))
    assert 0 < len(rows) < 5000
    assert "truncated gzip stream" in report.skipped["cut.txt.gz"]


def test_find_file_and_open_text_accept_gz(tmp_path: Path) -> None:
    _write(tmp_path / "sub" / "a.txt", ["hello"], gz=True)
    found = find_file(tmp_path, ["a.txt"])
    assert found == tmp_path / "sub" / "a.txt.gz"
    with open_text(found) as fh:
        assert fh.read() == "hello\n"


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    assert load_dataset("movielens-100k", tmp_path).name == "movielens-100k"
    assert load_dataset("ML-100K", str(tmp_path)).summary()["interactions"] == 30
    syn = load_dataset("synthetic", n_users=20, n_items=30, seed=1)
    assert syn.name == "synthetic" and len(syn.users) == 20
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("microlens")


# ------------------------------------------------------------------------ real data

def test_real_movielens_100k() -> None:
    ds = load_movielens_100k(real_data("movielens-100k"))
    assert ds.summary() == {"users": 943, "items": 1682, "interactions": 100000, "skipped_rows": 0}
    assert ds.interactions.groupby("user_id").size().min() == 20
    assert ds.items["category"].ne("").all()


def test_real_microlens_50k() -> None:
    start = time.perf_counter()
    ds = load_microlens(real_data("microlens-100k"))
    elapsed = time.perf_counter() - start
    assert elapsed < 10
    assert ds.name == "microlens-50k"
    assert len(ds.users) == 50000
    assert len(ds.interactions) == 359708
    assert ds.interactions["item_id"].nunique() == 19220
    assert len(ds.items) == 19738  # every titled item of the 100k release
    title1 = ds.items.set_index("item_id").loc[1, "title"]
    assert title1.startswith("Gu long song gaga bad, even")  # full title, not the cut one
    assert ds.items["category"].ne("").all()
    assert ds.items["cover_path"].ne("").sum() == 10
    assert ds.report.total_skipped <= 5


def test_microlens_wrong_separator_raises(tmp_path: Path) -> None:
    _write(tmp_path / "MicroLens-50k_pairs.tsv", [f"{u} 1 2 3 4 5" for u in range(1, 9)])
    with pytest.raises(DataFormatError) as err:
        load_microlens(tmp_path)
    assert str(err.value).startswith(
        "MicroLens-50k_pairs.tsv line 1: expected 2 tab-separated fields, got 1 (wrong separator?)"
    )
