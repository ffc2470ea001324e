"""Leave-one-out split tests, hand-checked on a tiny example."""

from __future__ import annotations

import pandas as pd
import pytest
from vragent.environments.schema import Dataset
from vragent.environments.splits import (
    as_sequences,
    cold_start_users,
    leave_one_out,
    train_sequences,
)

from tests.conftest import real_data

SEQS = {
    1: [1, 2, 3, 4, 5, 6],  # 6 items: kept whole
    2: [7, 8, 9, 10],  # 4 < min_len: dropped
    3: list(range(10, 30)),  # 20 items: cut to the last 13 (17..29)
    4: [5, 4, 3, 2, 1],  # exactly 5: kept, a cold-start user
}


def _dataset(seqs: dict[int, list[int]]) -> Dataset:
    rows = [(u, i, k) for u, s in seqs.items() for k, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "order"], dtype="int64")
    items = pd.DataFrame({"item_id": sorted(set(inter["item_id"]))})
    items["title"], items["category"], items["tags"] = "t", "", ""
    users = pd.DataFrame({"user_id": sorted(seqs)})
    return Dataset("tiny", users, items, inter).validate()


def test_leave_one_out_by_hand() -> None:
    split = leave_one_out(SEQS)
    assert split.users == [1, 3, 4]
    assert split.dropped_users == 1
    assert split.train[1] == [1, 2, 3, 4]
    assert (split.valid[1], split.test[1]) == (5, 6)
    assert split.train[3] == list(range(17, 28))
    assert (split.valid[3], split.test[3]) == (28, 29)
    assert split.train[4] == [5, 4, 3]
    assert (split.valid[4], split.test[4]) == (2, 1)


def test_history_stages() -> None:
    split = leave_one_out(SEQS)
    assert split.history(1) == [1, 2, 3, 4]
    assert split.history(1, upto="valid") == [1, 2, 3, 4, 5]
    assert split.history(1, upto="test") == [1, 2, 3, 4, 5, 6]
    split.history(1).append(99)  # a copy: the split is not changed
    assert split.train[1] == [1, 2, 3, 4]
    with pytest.raises(KeyError):
        split.history(2)
    with pytest.raises(ValueError, match="upto"):
        split.history(1, upto="future")  # type: ignore[arg-type]


def test_train_interactions_frame() -> None:
    frame = leave_one_out({1: [1, 2, 3, 4, 5], 2: [9, 8, 7, 6, 5, 4]}).train_interactions()
    assert list(frame.columns) == ["user_id", "item_id", "order"]
    assert frame.dtypes.eq("int64").all()
    assert frame.values.tolist() == [
        [1, 1, 0], [1, 2, 1], [1, 3, 2],
        [2, 9, 0], [2, 8, 1], [2, 7, 2], [2, 6, 3],
    ]  # fmt: skip


def test_inputs_agree() -> None:
    ds = _dataset(SEQS)
    shuffled = ds.interactions.sample(frac=1.0, random_state=0)  # order column decides
    assert as_sequences(ds) == as_sequences(shuffled) == as_sequences(SEQS) == SEQS
    assert leave_one_out(ds) == leave_one_out(shuffled) == leave_one_out(SEQS)


def test_custom_lengths_and_validation() -> None:
    split = leave_one_out(SEQS, min_len=3, max_len=4)
    assert split.dropped_users == 0
    assert split.history(3, upto="test") == [26, 27, 28, 29]
    assert train_sequences(SEQS, min_len=6) == {1: [1, 2, 3, 4], 3: list(range(17, 28))}
    with pytest.raises(ValueError):
        leave_one_out(SEQS, min_len=2)


def test_cold_start_users_count_full_sequences() -> None:
    assert cold_start_users(SEQS) == [4]
    assert cold_start_users(SEQS, n=4) == [2]
    assert cold_start_users(SEQS, n=13) == []  # user 3 has 20 before any cut
    assert cold_start_users(_dataset(SEQS), n=6) == [1]


def test_real_microlens_split() -> None:
    from vragent.environments.datasets import load_microlens

    ds = load_microlens(real_data("microlens-100k"))
    split = leave_one_out(ds)
    assert len(split.train) == 50000 and split.dropped_users == 0  # every user has >= 5
    assert max(len(s) for s in split.train.values()) == 11
    assert len(cold_start_users(ds, n=5)) == 20346


def test_empty_input() -> None:
    empty = pd.DataFrame({"user_id": [], "item_id": [], "order": []}, dtype="int64")
    assert as_sequences(empty) == {}
    split = leave_one_out(empty)
    assert split.users == [] and split.dropped_users == 0
    assert split.train_interactions().empty
