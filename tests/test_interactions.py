"""The generic interactions loader (CSV, Parquet) and MovieLens read from its zip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest
from vragent.environments.datasets import load_dataset, load_interactions, load_movielens_100k
from vragent.environments.schema import DataFormatError
from vragent.environments.sources import InteractionColumns, data_dir_path, interactions_options

from tests.test_datasets import write_ml100k

# (user, item, timestamp, rating) in file order; u1 has a timestamp tie (b and c at 20).
LOG = [
    ("u1", "a", 30, 5),
    ("u2", "c", 10, 2),
    ("u1", "b", 20, 4),
    ("u1", "c", 20, 3),
    ("u2", "a", 5, 4),
    ("u3", "b", 1, 1),
]
ITEMS = [("a", "Alpha #cats #funny", "Pets|Comedy"), ("b", "Beta", "News"),
         ("c", "Gamma, part 2", "")]


def write_log(path: Path, rows=LOG, header=("user_id", "item_id", "timestamp", "rating")) -> Path:
    frame = pd.DataFrame(rows, columns=list(header))
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def write_items(path: Path, rows=ITEMS, header=("item_id", "title", "category")) -> Path:
    frame = pd.DataFrame(rows, columns=list(header))
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def titled(ds) -> dict[str, list[str]]:
    """Each user's sequence as titles, keyed by the user's source id."""
    titles = ds.items.set_index("item_id")["title"]
    users = ds.users.set_index("user_id")["source_id"]
    return {users[u]: [titles[i] for i in seq] for u, seq in ds.sequences().items()}


# ------------------------------------------------------------------------------ CSV


def test_csv_orders_by_timestamp_ties_in_file_order(tmp_path: Path) -> None:
    ds = load_interactions(write_log(tmp_path / "log.csv"), write_items(tmp_path / "items.csv"))
    assert ds.name == "interactions"
    assert ds.summary() == {"users": 3, "items": 3, "interactions": 6, "skipped_rows": 0}
    assert titled(ds) == {"u1": ["Beta", "Gamma, part 2", "Alpha #cats #funny"],
                          "u2": ["Alpha #cats #funny", "Gamma, part 2"], "u3": ["Beta"]}
    inter = ds.interactions
    assert str(inter["user_id"].dtype) == "int64" and str(inter["timestamp"].dtype) == "int64"
    assert (inter["like"] == (inter["rating"] >= 4)).all() and inter["watch"].all()
    # String ids become 1, 2, … (items: the items file first); the originals stay.
    assert ds.items["source_id"].tolist() == ["a", "b", "c"]
    assert ds.users["source_id"].tolist() == ["u1", "u2", "u3"]
    alpha = ds.items.iloc[0]
    assert (alpha["category"], alpha["tags"]) == ("Pets|Comedy", "#cats #funny")


def test_without_timestamp_the_file_order_is_the_time_order(tmp_path: Path) -> None:
    rows = [(u, i) for u, i, _, _ in LOG]
    ds = load_interactions(write_log(tmp_path / "log.tsv", rows, ("user_id", "item_id")))
    # Without an items file, ids follow the log's first appearances: a=1, c=2, b=3.
    assert ds.sequences() == {1: [1, 3, 2], 2: [2, 1], 3: [3]}
    assert "timestamp" not in ds.interactions and "like" not in ds.interactions
    assert ds.items["title"].tolist() == ["item 1", "item 2", "item 3"]


def test_integer_ids_are_kept_and_iso_times_order(tmp_path: Path) -> None:
    rows = [(7, 30, "2024-03-01T10:00:00Z"), (7, 10, "2024-01-05"), (9, 30, "2023-12-31 23:59")]
    ds = load_interactions(write_log(tmp_path / "log.csv", rows, ("uid", "vid", "when")),
                           columns={"user": "uid", "item": "vid", "timestamp": "when"})
    assert ds.sequences() == {7: [10, 30], 9: [30]}
    assert "source_id" not in ds.users and "source_id" not in ds.items
    assert ds.interactions["timestamp"].iloc[0] == 1704412800  # 2024-01-05 in Unix seconds


# -------------------------------------------------------------------------- Parquet


def test_parquet_with_renamed_columns_loads_like_the_csv(tmp_path: Path) -> None:
    header = ("viewer", "video", "ts", "stars")
    log = write_log(tmp_path / "views.parquet", LOG, header)
    items = write_items(tmp_path / "videos.parquet", ITEMS, ("video", "name", "genre"))
    cols = {"user": "viewer", "item": "video", "timestamp": "ts", "rating": "stars",
            "title": "name", "category": "genre"}
    ds = load_interactions(log, items, columns=cols, like_threshold=3)
    ref = load_interactions(write_log(tmp_path / "log.csv"), write_items(tmp_path / "i.csv"))
    assert titled(ds) == titled(ref)
    pd.testing.assert_frame_equal(ds.items, ref.items)
    assert ds.interactions["like"].sum() == (ds.interactions["rating"] >= 3).sum()


def test_parquet_bad_row_names_the_row_and_column(tmp_path: Path) -> None:
    rows = [("u1", "a", 1.0, 5), ("u1", "b", float("nan"), 4)]
    log = write_log(tmp_path / "log.parquet", rows)
    with pytest.raises(DataFormatError) as err:
        load_interactions(log)
    assert str(err.value) == ("log.parquet row 2: column 'timestamp' is not a number or ISO "
                              "8601 date-time: nan (1 of 2 rows bad)")


# -------------------------------------------------------------------- bad input


def test_missing_column_is_one_line_naming_file_and_column(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", [(u, i) for u, i, _, _ in LOG], ("user", "item_id"))
    with pytest.raises(DataFormatError) as err:
        load_interactions(log)
    msg = str(err.value)
    assert msg.startswith("log.csv: no user column 'user_id' (columns: 'user', 'item_id')")
    assert "\n" not in msg
    items = write_items(tmp_path / "items.csv", header=("item_id", "name", "category"))
    with pytest.raises(DataFormatError, match=r"^items\.csv: no title column 'title'"):
        load_interactions(write_log(tmp_path / "ok.csv"), items)
    # An optional column named explicitly must exist; false ignores one that is there.
    with pytest.raises(DataFormatError, match="no rating column 'stars'"):
        load_interactions(tmp_path / "ok.csv", columns={"rating": "stars"})
    ds = load_interactions(tmp_path / "ok.csv", columns={"rating": False})
    assert "rating" not in ds.interactions


def test_bad_row_is_one_line_naming_file_line_and_column(tmp_path: Path) -> None:
    rows = [*LOG[:3], ("u1", "d", "soon", 3)]
    with pytest.raises(DataFormatError) as err:
        load_interactions(write_log(tmp_path / "log.csv", rows))
    assert str(err.value) == ("log.csv line 5: column 'timestamp' is not a number or ISO 8601 "
                              "date-time: 'soon' (1 of 4 rows bad)")
    rows = [*LOG[:2], ("", "a", 3, 4)]
    with pytest.raises(DataFormatError, match=r"^log\.csv line 4: column 'user_id' is empty"):
        load_interactions(write_log(tmp_path / "log.csv", rows))
    tsv = tmp_path / "broken.csv"
    tsv.write_text("user_id,item_id\n1,2\n1,2,3,4\n")
    with pytest.raises(DataFormatError, match=r"^broken\.csv: .*line 3"):
        load_interactions(tsv)


def test_a_few_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [(f"u{k % 7}", f"i{k}", k, 3) for k in range(40)] + [("u1", "x", 1, "five")]
    ds = load_interactions(write_log(tmp_path / "log.csv", rows))
    assert len(ds.interactions) == 40
    assert ds.report.lines() == ["log.csv: skipped 1 row(s): bad rating"]
    assert ds.report.examples["log.csv"] == ["line 42: bad rating"]


def test_items_file_gaps_and_duplicates_are_counted(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.csv",
                        [("a", "Alpha", ""), ("a", "Again", ""), ("b", "", "News")])
    ds = load_interactions(write_log(tmp_path / "log.csv"), items)
    titles = ds.items.set_index("source_id")["title"].to_dict()
    assert titles == {"a": "Alpha", "b": "item 2", "c": "item 3"}
    assert ds.report.skipped["items.csv"] == {"duplicate row": 1, "missing title": 2}


def test_load_dataset_dispatches_and_checks_options(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv")
    ds = load_dataset("interactions", log, items_path=str(write_items(tmp_path / "i.csv")),
                      columns={"rating": None})
    assert len(ds.items) == 3 and "rating" in ds.interactions
    assert load_dataset("csv", log).summary()["interactions"] == 6
    with pytest.raises(ValueError, match=r"^interactions columns\.usr: unknown option$"):
        load_dataset("interactions", log, columns={"usr": "u"})
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: no such file or folder"):
        load_dataset("interactions", tmp_path / "nope.csv")
    assert interactions_options({}).columns == InteractionColumns()


# ------------------------------------------------------------------- MovieLens zip


def _zip_folder(folder: Path, archive: Path, prefix: str = "ml-100k/") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, prefix + path.name)
    return archive


def _assert_same(a, b) -> None:
    assert a.name == b.name
    for frame in ("users", "items", "interactions"):
        pd.testing.assert_frame_equal(getattr(a, frame), getattr(b, frame))
    assert a.report.skipped == b.report.skipped


def test_one_default_location_for_every_reader(tmp_path: Path, monkeypatch) -> None:
    """Scenarios, ``vragent rl`` and ip-experiment resolve ``$VRAGENT_DATA_DIR`` alike."""
    from vragent.rl.datasets import RLDataConfig, RLDataError, load_source
    from vragent.sandbox.config import Scenario
    from vragent.sandbox.world import dataset_path

    monkeypatch.setenv("VRAGENT_DATA_DIR", str(tmp_path))
    for kind in ("microlens", "MicroLens-50k", "microlens-100k"):
        assert data_dir_path(kind) == tmp_path / "microlens-100k"
    assert data_dir_path("movielens-100k") == tmp_path / "movielens-100k"
    assert data_dir_path("interactions") is None and data_dir_path("synthetic") is None
    sc = Scenario.model_validate({"name": "t", "dataset": {"kind": "microlens"},
                                  "arms": [{"name": "a", "recommender": "popular"}]})
    assert dataset_path(sc) == tmp_path / "microlens-100k"
    with pytest.raises(FileNotFoundError, match="microlens-100k"):  # the one default, read
        load_source(RLDataConfig(dataset="microlens-50k"))
    monkeypatch.delenv("VRAGENT_DATA_DIR")
    assert data_dir_path("microlens") is None
    with pytest.raises(RLDataError, match="or set VRAGENT_DATA_DIR"):
        load_source(RLDataConfig(dataset="microlens"))
    with pytest.raises(FileNotFoundError, match="or set VRAGENT_DATA_DIR"):
        dataset_path(sc)


def test_movielens_zip_loads_the_same_dataset_as_the_folder(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", extra_data_lines=["1\t2"])
    archive = _zip_folder(folder, tmp_path / "ml-100k.zip")
    _assert_same(load_movielens_100k(archive), load_movielens_100k(folder))
    _assert_same(load_dataset("ml-100k", archive), load_movielens_100k(folder))
    flat = _zip_folder(folder, tmp_path / "flat.zip", prefix="")
    _assert_same(load_movielens_100k(flat), load_movielens_100k(folder))


def test_movielens_1m_zip_loads_the_same_dataset_as_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::300\n1::20::2::100\n2::10::4::100\n")
    (folder / "movies.dat").write_text("10::Alpha (2000)::Comedy\n20::Beta (1999)::Action\n")
    (folder / "users.dat").write_text("1::F::25::12::12345\n2::M::56::3::54321\n")
    archive = _zip_folder(folder, tmp_path / "ml-1m.zip", prefix="ml-1m/")
    _assert_same(load_dataset("ml-1m", archive), load_dataset("ml-1m", folder))


def test_movielens_zip_errors_name_the_archive(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("README", "nothing here")
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(empty)
    assert str(err.value).startswith("empty.zip: no MovieLens-100K files")
    broken = tmp_path / "ml-100k.zip"
    broken.write_bytes(empty.read_bytes()[:-30])  # the central directory is cut off
    with pytest.raises(DataFormatError, match=r"ml-100k\.zip"):
        load_movielens_100k(broken)


def test_real_movielens_zip_matches_folder(data_dir: Path, tmp_path: Path) -> None:
    folder = data_dir / "movielens-100k"
    if not (folder / "u.data").is_file():
        pytest.skip(f"{folder} has no u.data")
    ref = load_movielens_100k(folder)
    real_zips = sorted(data_dir.glob("**/ml-100k.zip"))
    archives = real_zips or [_zip_folder(folder, tmp_path / "ml-100k.zip")]
    for archive in archives:
        _assert_same(load_movielens_100k(archive), ref)
    assert ref.summary()["interactions"] == 100_000
