"""Full-ranking evaluation, hand-checked on toy catalogues with a fixed-score stub model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from vragent.environments.evaluation import (
    evaluate,
    hit_ndcg_at_k,
    metrics_from_ranks,
    target_ranks,
)
from vragent.environments.recommenders import Recommender
from vragent.environments.splits import cold_start_users, leave_one_out


class FixedScores(Recommender):
    """Test double: a preset score row per user id over the fitted catalogue."""

    name = "fixed"

    def __init__(self, *, seed: int = 0, table: dict[int, list[float]]) -> None:
        super().__init__(seed=seed)
        self.table = table

    def _fit(self, interactions: pd.DataFrame) -> None:
        pass

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.array([self.table[int(u)] for u in user_ids], dtype=np.float32)


def _frame(seqs: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, i, k) for u, s in seqs.items() for k, i in enumerate(s)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "order"], dtype="int64")


def _stub(table: dict[int, list[float]], items: list[int]) -> FixedScores:
    # No interactions: masking must come from the histories passed in, not the fit.
    return FixedScores(table=table).fit(_frame({}), items=items)


# ---------------------------------------------------------------------- hit_ndcg_at_k


def test_hit_ndcg_at_k_by_hand() -> None:
    ranked = np.array(
        [
            [5, 3, 9, 1],  # target 9 at rank 3
            [2, 4, 6, 8],  # target 8 at rank 4
            [7, 7, 1, 0],  # target 7 at rank 1 (first occurrence counts)
            [-1, -1, -1, -1],  # padding only: a miss
        ]
    )
    targets = np.array([9, 8, 7, 3])
    hr, ndcg = hit_ndcg_at_k(ranked, targets, k=3)
    np.testing.assert_array_equal(hr, [1.0, 0.0, 1.0, 0.0])
    # rank 3 -> 1/log2(4) = 0.5; rank 1 -> 1/log2(2) = 1
    np.testing.assert_allclose(ndcg, [0.5, 0.0, 1.0, 0.0])
    # k beyond the list length uses the whole list: rank 4 -> 1/log2(5)
    hr, ndcg = hit_ndcg_at_k(ranked, targets, k=10)
    np.testing.assert_array_equal(hr, [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(ndcg, [0.5, 1 / math.log2(5), 1.0, 0.0])
    hr, ndcg = hit_ndcg_at_k(ranked, targets, k=1)
    np.testing.assert_array_equal(hr, [0.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        hit_ndcg_at_k(ranked, targets, k=0)
    with pytest.raises(ValueError):
        hit_ndcg_at_k(ranked, targets[:3], k=1)


def test_metrics_from_ranks_match_hit_ndcg() -> None:
    m = metrics_from_ranks(np.array([1, 2, 3, 11]), ks=(2, 10))
    np.testing.assert_array_equal(m["HR@2"], [1, 1, 0, 0])
    np.testing.assert_allclose(m["NDCG@2"], [1, 1 / math.log2(3), 0, 0])
    np.testing.assert_array_equal(m["HR@10"], [1, 1, 1, 0])
    np.testing.assert_allclose(m["NDCG@10"], [1, 1 / math.log2(3), 0.5, 0])


# ---------------------------------------------------------------------- target_ranks

ITEMS6 = [10, 11, 12, 13, 14, 15]


def test_target_ranks_by_hand() -> None:
    table = {
        1: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        2: [0.5] * 6,  # constant scorer
        3: [0.1, 0.9, 0.3, 0.2, 0.8, 0.0],
        4: [1.0, 2.0, -np.inf, 3.0, np.nan, 0.0],
    }
    model = _stub(table, ITEMS6)
    users = [1, 1, 2, 3, 4]
    targets = [13, 13, 12, 12, 12]
    histories = [
        [10, 11],  # 10, 11 masked: 12 (.7) beats 13 (.6) -> rank 2
        [],  # nothing masked: 10, 11, 12 beat 13 -> rank 4
        [10],  # pessimistic ties: 11, 13, 14, 15 all tie 12 -> rank 5, not 1
        # Re-watched target stays rankable; 99 (not in catalogue) and the duplicate are
        # ignored; only 11 (.9) is masked, and 14 (.8) beats 12 (.3) -> rank 2.
        [11, 12, 12, 99],
        # Target scored -inf ranks behind all 4 unmasked others (14 is NaN = -inf) -> 5.
        [10],
    ]
    ranks = target_ranks(model, users, targets, histories)
    np.testing.assert_array_equal(ranks, [2, 4, 5, 2, 5])
    assert ranks.dtype == np.int64


def test_target_ranks_constant_scorer_ranks_last() -> None:
    model = _stub({u: [0.0] * 6 for u in range(3)}, ITEMS6)
    ranks = target_ranks(model, [0, 1, 2], [10, 11, 15], [[], [10, 12], [10, 11, 12, 13, 14]])
    # rank = number of unmasked items (the target included): 6, 4, 1
    np.testing.assert_array_equal(ranks, [6, 4, 1])


def test_target_ranks_chunking_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    items = list(range(100, 130))
    values = np.array([0.0, 0.25, 0.5, 1.0, -np.inf], dtype=np.float32)  # many ties
    table = {u: rng.choice(values, size=len(items)).tolist() for u in range(40)}
    users = list(range(40)) * 2
    targets = rng.choice(items, size=len(users)).tolist()
    histories = [rng.choice(items, size=rng.integers(0, 8)).tolist() for _ in users]
    model = _stub(table, items)
    ranks = target_ranks(model, users, targets, histories)
    model.max_chunk_cells = len(items) * 3  # three users per chunk
    np.testing.assert_array_equal(target_ranks(model, users, targets, histories), ranks)
    for u, t, h, r in zip(users, targets, histories, ranks, strict=True):
        s = dict(zip(items, table[u], strict=True))
        others = [i for i in items if i != t and i not in h]
        assert r == 1 + sum(s[i] >= s[t] for i in others), (u, t, h)


def test_target_ranks_agree_with_slates_without_ties() -> None:
    rng = np.random.default_rng(1)
    items = list(range(20))
    table = {u: rng.permutation(20).astype(float).tolist() for u in range(15)}
    model = _stub(table, items)
    users = list(range(15))
    targets = rng.choice(items, size=15)
    histories = [[int(i) for i in rng.choice(items, size=4) if i != t] for t in targets]
    ranks = target_ranks(model, users, targets, histories)
    exclude = {u: set(h) for u, h in zip(users, histories, strict=True)}
    recs = model.recommend(users, k=20, exclude_seen=False, exclude=exclude)
    for k in (1, 5, 10):
        hr, ndcg = hit_ndcg_at_k(recs.items, targets, k)
        m = metrics_from_ranks(ranks, (k,))
        np.testing.assert_array_equal(hr, m[f"HR@{k}"])
        np.testing.assert_allclose(ndcg, m[f"NDCG@{k}"])


def test_target_ranks_errors() -> None:
    model = _stub({0: [0.0] * 6}, ITEMS6)
    with pytest.raises(ValueError, match="outside the recommender's catalogue"):
        target_ranks(model, [0], [99], [[]])
    with pytest.raises(ValueError, match="differ"):
        target_ranks(model, [0, 0], [10], [[]])


# ---------------------------------------------------------------------- evaluate

ITEMS8 = list(range(10, 18))
SEQS = {
    1: [10, 11, 12, 13, 14],  # exactly 5: cold-start; train 10-12, valid 13, test 14
    2: [15, 14, 13, 12, 11, 10],  # train 15-12, valid 11, test 10
}
TABLE = {
    #    10   11   12   13   14   15    16   17
    1: [0.9, 0.8, 0.7, 0.6, 0.5, 0.55, 0.1, 0.5],
    2: [0.3, 0.2, 0.9, 0.9, 0.9, 0.9, 0.4, 0.1],
}


@pytest.fixture
def toy() -> tuple[FixedScores, object]:
    split = leave_one_out(SEQS)
    model = FixedScores(table=TABLE).fit(split.train_interactions(), items=ITEMS8)
    return model, split


def test_evaluate_test_stage_by_hand(toy) -> None:
    model, split = toy
    # user 1: masks 10-13 (train + valid 13, which would otherwise beat 14); target 14 (.5)
    #         is beaten by 15 (.55) and ties 17 (.5) -> rank 3.
    # user 2: masks 15-11; target 10 (.3) is beaten by 16 (.4) -> rank 2.
    res = evaluate(model, split, "test", ks=(1, 3), return_per_user=True)
    assert res["n_users"] == 2
    np.testing.assert_array_equal(res["per_user"]["user_id"], [1, 2])
    np.testing.assert_array_equal(res["per_user"]["rank"], [3, 2])
    assert res["HR@1"] == 0.0 and res["NDCG@1"] == 0.0
    assert res["HR@3"] == 1.0
    assert res["NDCG@3"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 2)
    np.testing.assert_allclose(res["per_user"]["NDCG@3"], [0.5, 1 / math.log2(3)])


def test_evaluate_valid_stage_by_hand(toy) -> None:
    model, split = toy
    # user 1: masks 10-12; target 13 (.6) beats 14, 15, 16, 17 -> rank 1.
    # user 2: masks 15-12; target 11 (.2) is beaten by 10 (.3) and 16 (.4) -> rank 3.
    res = evaluate(model, split, "valid", ks=(1, 3), return_per_user=True)
    np.testing.assert_array_equal(res["per_user"]["rank"], [1, 3])
    assert res["HR@1"] == 0.5 and res["NDCG@1"] == 0.5
    assert res["HR@3"] == 1.0 and res["NDCG@3"] == pytest.approx((1 + 0.5) / 2)


def test_evaluate_cold_start_subset_and_defaults(toy) -> None:
    model, split = toy
    cold = cold_start_users(SEQS)
    assert cold == [1]
    res = evaluate(model, split, "test", users=cold, ks=(1, 3))
    assert res == {"HR@1": 0.0, "NDCG@1": 0.0, "HR@3": 1.0, "NDCG@3": 0.5, "n_users": 1}
    default = evaluate(model, split)  # test stage, ks (10, 20): both ranks <= 8
    assert set(default) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20", "n_users"}
    assert default["HR@10"] == default["HR@20"] == 1.0
    assert "per_user" not in default
    empty = evaluate(model, split, users=[])
    assert empty["n_users"] == 0 and math.isnan(empty["HR@10"])
    with pytest.raises(ValueError, match="stage"):
        evaluate(model, split, stage="train")
    with pytest.raises(KeyError):
        evaluate(model, split, users=[42])
