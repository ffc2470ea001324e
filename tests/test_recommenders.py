"""Contract tests for every registered recommender, plus hand-checked model cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from vragent.environments.recommenders import (
    PAD_ITEM,
    RECOMMENDERS,
    CoOccurrenceRecommender,
    MostPopularRecommender,
    RandomRecommender,
    Recommendations,
    Recommender,
    make_recommender,
)

# Constructor params per registry name for the contract run; models missing here use their
# defaults. Slow models added later (e.g. SASRec) should register cheap settings here.
CONTRACT_PARAMS: dict[str, dict] = {}

CATALOGUE = list(range(100, 112))  # 12 items; 110 and 111 never interacted with


def frame(seqs: dict[int, list[int]], **extra: dict[int, list]) -> pd.DataFrame:
    """Build an interactions frame from per-user time-ordered item lists."""
    rows = []
    for u, items in seqs.items():
        for pos, i in enumerate(items):
            row = {"user_id": u, "item_id": i, "order": pos}
            for col, values in extra.items():
                row[col] = values[u][pos]
            rows.append(row)
    df = pd.DataFrame(rows)
    return df.astype({"user_id": "int64", "item_id": "int64", "order": "int64"})


SEQS_A = {
    0: [100, 101, 102],
    1: [100, 101, 103, 104],
    2: [101, 102, 105],
    3: [100, 106, 107, 108, 109],
    4: [102, 103],
}
# Different data for refit checks: user 0's history changes completely.
SEQS_B = {
    0: [105, 106, 107, 108, 109, 110],
    1: [100, 101],
    5: [110, 111, 110],
}


def build(name: str, seed: int = 0) -> Recommender:
    return make_recommender(name, seed=seed, **CONTRACT_PARAMS.get(name, {}))


def assert_well_formed(recs: Recommendations, users: list[int], k: int) -> None:
    assert isinstance(recs, Recommendations)
    np.testing.assert_array_equal(recs.user_ids, users)
    assert recs.items.shape == (len(users), k) and recs.items.dtype == np.int64
    assert recs.scores.shape == (len(users), k) and recs.scores.dtype == np.float32
    for row_items, row_scores in zip(recs.items, recs.scores, strict=True):
        valid = row_items != PAD_ITEM
        n_valid = int(valid.sum())
        # padding only at the end, with -inf scores
        assert valid[:n_valid].all()
        assert np.all(np.isneginf(row_scores[~valid]))
        assert np.all(np.isfinite(row_scores[valid]))
        assert np.all(np.diff(row_scores[valid]) <= 0), "scores must be non-increasing"
        assert len(set(row_items[valid].tolist())) == n_valid, "duplicate item in slate"
        assert set(row_items[valid].tolist()) <= set(CATALOGUE)


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_contract(name: str) -> None:
    """Every registered recommender honours the shared API contract."""
    df = frame(SEQS_A)
    model = build(name)
    assert model.name == name
    assert model.fit(df, items=CATALOGUE) is model
    np.testing.assert_array_equal(model.item_ids, CATALOGUE)

    # score: shape, dtype, finite for known and unknown users
    scores = model.score([0, 3, 999])
    assert scores.shape == (3, len(CATALOGUE)) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores))

    # recommend: shapes and ordering
    users = [0, 1, 2, 3, 4]
    recs = model.recommend(users, k=4)
    assert_well_formed(recs, users, 4)
    assert all(len(recs.for_user(u)) == 4 for u in users)

    # exclude_seen really excludes the fitted history; k > available pads with -1
    full = model.recommend(users, k=len(CATALOGUE) + 3, exclude_seen=True)
    assert_well_formed(full, users, len(CATALOGUE) + 3)
    for u in users:
        got = {i for i, _ in full.for_user(u)}
        assert got == set(CATALOGUE) - set(SEQS_A[u])
    with_seen = model.recommend([0], k=len(CATALOGUE), exclude_seen=False)
    assert {i for i, _ in with_seen.for_user(0)} == set(CATALOGUE)

    # extra exclusions (unknown ids are ignored), combined with exclude_seen
    extra = {0: {103, 104, 999}, 4: {100}}
    ex = model.recommend(users, k=len(CATALOGUE), exclude=extra)
    assert_well_formed(ex, users, len(CATALOGUE))
    for u in users:
        got = {i for i, _ in ex.for_user(u)}
        assert got == set(CATALOGUE) - set(SEQS_A[u]) - extra.get(u, set())
    ex_only = model.recommend([0], k=len(CATALOGUE), exclude_seen=False, exclude={0: {100}})
    assert {i for i, _ in ex_only.for_user(0)} == set(CATALOGUE) - {100}

    # unknown users fall back to a full slate
    cold = model.recommend([999, 1000], k=5)
    assert_well_formed(cold, [999, 1000], 5)
    assert len(cold.for_user(999)) == 5
    with pytest.raises(KeyError):
        cold.for_user(1)

    # empty request
    assert model.recommend([], k=3).items.shape == (0, 3)
    with pytest.raises(ValueError):
        model.recommend([0], k=0)


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_contract_deterministic(name: str) -> None:
    """Same seed + same call sequence => identical output, whatever the chunking."""
    df = frame(SEQS_A)
    users = [0, 1, 2, 3, 4, 999]
    first = build(name, seed=7).fit(df, items=CATALOGUE)
    second = build(name, seed=7).fit(df, items=CATALOGUE)
    second.chunk_size = 2  # results must not depend on how users are batched
    for _ in range(2):
        a = first.recommend(users, k=5)
        b = second.recommend(users, k=5)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
    # a user's slate does not depend on who else is in the request
    solo = build(name, seed=7).fit(df, items=CATALOGUE)
    batch = build(name, seed=7).fit(df, items=CATALOGUE)
    np.testing.assert_array_equal(
        solo.recommend([3], k=5).items[0], batch.recommend([0, 3, 1], k=5).items[1]
    )


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_contract_refit_replaces_state(name: str) -> None:
    """Refitting on new data replaces the history and changes the results."""
    model = build(name).fit(frame(SEQS_A), items=CATALOGUE)
    before = model.recommend([0, 1], k=len(CATALOGUE))
    model.fit(frame(SEQS_B), items=CATALOGUE)
    after = model.recommend([0, 1, 5], k=len(CATALOGUE))
    assert_well_formed(after, [0, 1, 5], len(CATALOGUE))
    assert not np.array_equal(before.items, after.items[:2])
    # the old history of user 0 is recommendable again; the new one is excluded
    assert {i for i, _ in after.for_user(0)} == set(CATALOGUE) - set(SEQS_B[0])
    # user 3 only existed in the first fit, so now it is a cold user with a full slate
    assert len(model.recommend([3], k=8).for_user(3)) == 8
    np.testing.assert_array_equal(model.user_ids, [0, 1, 5])


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_contract_default_catalogue_and_errors(name: str) -> None:
    model = build(name)
    with pytest.raises(RuntimeError):
        model.recommend([0], k=1)
    df = frame(SEQS_A)
    model.fit(df)
    np.testing.assert_array_equal(model.item_ids, sorted({i for s in SEQS_A.values() for i in s}))
    with pytest.raises(ValueError, match="outside the catalogue"):
        model.fit(df, items=[100, 101])
    with pytest.raises(RuntimeError):  # a failed refit leaves the model unfitted
        model.score([0])
    with pytest.raises(ValueError, match="duplicate"):
        build(name).fit(df, items=[*CATALOGUE, 100])
    with pytest.raises(ValueError, match="lack columns"):
        build(name).fit(df.drop(columns="order"))


# ---------------------------------------------------------------------- registry


def test_registry() -> None:
    assert {"random", "popular", "cooccurrence"} <= set(RECOMMENDERS)
    for name, cls in RECOMMENDERS.items():
        assert cls.name == name
        assert issubclass(cls, Recommender)
    model = make_recommender("cooccurrence", seed=3, window=2)
    assert isinstance(model, CoOccurrenceRecommender)
    assert model.seed == 3 and model.window == 2
    with pytest.raises(ValueError, match=r"unknown recommender 'nope'; choose from .*popular"):
        make_recommender("nope")
    with pytest.raises(TypeError):
        make_recommender("popular", bogus=1)


# ---------------------------------------------------------------------- random


def test_random_users_differ_and_calls_advance() -> None:
    model = RandomRecommender(seed=1).fit(frame(SEQS_A), items=CATALOGUE)
    recs = model.recommend([10, 11, 12, 13], k=len(CATALOGUE))
    slates = {tuple(row) for row in recs.items.tolist()}
    assert len(slates) == 4
    again = model.recommend([10, 11, 12, 13], k=len(CATALOGUE))
    assert not np.array_equal(recs.items, again.items)
    other_seed = RandomRecommender(seed=2).fit(frame(SEQS_A), items=CATALOGUE)
    assert not np.array_equal(recs.items, other_seed.recommend([10, 11, 12, 13], k=12).items)
    scores = model.score([10])
    assert np.all((scores >= 0) & (scores < 1))


# ---------------------------------------------------------------------- popular


def test_popular_order_hand_checked() -> None:
    seqs = {0: [1, 2, 3], 1: [2, 3], 2: [3], 3: [4]}
    model = MostPopularRecommender().fit(frame(seqs), items=[1, 2, 3, 4, 5])
    recs = model.recommend([99], k=5)
    # counts: 3 -> 3, 2 -> 2, then 1 and 4 tie at 1, 5 has 0
    assert recs.items[0, :2].tolist() == [3, 2]
    assert set(recs.items[0, 2:4].tolist()) == {1, 4}
    assert recs.items[0, 4] == 5
    assert recs.scores[0].tolist() == [3, 2, 1, 1, 0]
    # same scores for everyone; user 3's history (4) is excluded
    assert [i for i, _ in model.recommend([3], k=3).for_user(3)] == [3, 2, 1]
    np.testing.assert_array_equal(model.score([0]), model.score([12345]))


def test_popular_like_weight() -> None:
    seqs = {0: [1, 2], 1: [1, 2], 2: [3]}
    likes = {0: [0, 1], 1: [0, 1], 2: [1]}
    df = frame(seqs, like=likes)
    model = MostPopularRecommender(weight="like").fit(df)
    assert model.score([99])[0].tolist() == [0.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="like"):
        MostPopularRecommender(weight="like").fit(frame(seqs))
    with pytest.raises(ValueError):
        MostPopularRecommender(weight="views")


def test_ties_follow_seed() -> None:
    seqs = {u: [u] for u in range(30)}  # 30 items, all with count 1
    orders = set()
    for seed in range(4):
        a = MostPopularRecommender(seed=seed).fit(frame(seqs)).recommend([99], k=30).items
        b = MostPopularRecommender(seed=seed).fit(frame(seqs)).recommend([99], k=30).items
        np.testing.assert_array_equal(a, b)
        orders.add(tuple(a[0].tolist()))
    assert len(orders) > 1


# ---------------------------------------------------------------------- co-occurrence


def test_cooccurrence_hand_computed() -> None:
    # Whole-history co-occurrence counts (users sharing both items):
    #   (1,2): users 0,1,2 -> 3   (1,3): user 0 -> 1   (2,4): users 1,2 -> 2
    seqs = {0: [1, 2, 3], 1: [1, 2, 4], 2: [2, 1, 4], 3: [5, 1]}
    model = CoOccurrenceRecommender(normalize="none").fit(frame(seqs), items=[1, 2, 3, 4, 5])
    sim = model._sim.toarray()
    assert sim[0, 1] == 3 and sim[1, 0] == 3
    assert sim[1, 3] == 2 and sim[0, 2] == 1 and sim[0, 0] == 0
    # User 9 has a one-item history [2]: 1 (count 3) beats 4 (count 2) beats 3 (count 1).
    model.fit(pd.concat([frame(seqs), frame({9: [2]})]), items=[1, 2, 3, 4, 5])
    recs = model.recommend([9], k=4)
    assert [i for i, _ in recs.for_user(9)][:3] == [1, 4, 3]
    assert recs.scores[0, :3].tolist() == [3.0, 2.0, 1.0]
    # item 5 never co-occurs with 2 -> popularity fallback below every real score
    assert 0 < recs.scores[0, 3] < 1.0


def test_cooccurrence_cosine_and_decay() -> None:
    seqs = {0: [1, 2], 1: [1, 3], 2: [1, 3], 3: [4]}
    model = CoOccurrenceRecommender().fit(frame(seqs))
    sim = model._sim.toarray()
    # n_1 = 3, n_2 = 1, n_3 = 2 users
    assert sim[0, 1] == pytest.approx(1 / math.sqrt(3 * 1))
    assert sim[0, 2] == pytest.approx(2 / math.sqrt(3 * 2))
    # user with history [2, 3] (3 most recent): score(1) = 1*S[3,1] + 0.9*S[2,1]
    model.fit(pd.concat([frame(seqs), frame({7: [2, 3]})]))
    n = {1: 3, 2: 2, 3: 3}  # user 7 adds to the counts of 2 and 3, not to the pairs with 1
    expected = 1.0 * 2 / math.sqrt(n[1] * n[3]) + 0.9 * 1 / math.sqrt(n[1] * n[2])
    assert model.score([7])[0, 0] == pytest.approx(expected, rel=1e-6)
    # recent=1 only looks at the last item (3)
    last_only = CoOccurrenceRecommender(recent=1).fit(pd.concat([frame(seqs), frame({7: [2, 3]})]))
    assert last_only.score([7])[0, 0] == pytest.approx(2 / math.sqrt(n[1] * n[3]), rel=1e-6)


def test_cooccurrence_window_restricts_pairs() -> None:
    seqs = {0: [1, 2, 3, 4], 1: [1, 2, 5]}
    whole = CoOccurrenceRecommender(normalize="none").fit(frame(seqs))
    adjacent = CoOccurrenceRecommender(normalize="none", window=1).fit(frame(seqs))
    two = CoOccurrenceRecommender(normalize="none", window=2).fit(frame(seqs))
    w, a, t = whole._sim.toarray(), adjacent._sim.toarray(), two._sim.toarray()
    # items 1..5 -> columns 0..4
    assert w[0, 3] == 1 and a[0, 3] == 0 and t[0, 3] == 0  # 1 and 4 are 3 apart
    assert w[0, 2] == 1 and a[0, 2] == 0 and t[0, 2] == 1  # 1 and 3 are 2 apart
    assert a[0, 1] == 2 and a[1, 0] == 2  # 1->2 adjacent for both users, symmetric
    assert a[1, 2] == 1 and a[2, 3] == 1 and a[1, 4] == 1
    assert a.sum() == 2 * (3 + 2)  # 5 adjacent pairs, both directions
    assert np.all(np.diag(a) == 0)


def test_cooccurrence_cold_user_gets_popularity_order() -> None:
    seqs = {0: [1, 2, 3], 1: [2, 3], 2: [3]}
    model = CoOccurrenceRecommender().fit(frame(seqs), items=[1, 2, 3, 4])
    assert [i for i, _ in model.recommend([42], k=4).for_user(42)] == [3, 2, 1, 4]
    with pytest.raises(ValueError):
        CoOccurrenceRecommender(window=0)
    with pytest.raises(ValueError):
        CoOccurrenceRecommender(decay=0.0)


# ---------------------------------------------------------------------- base machinery


class FixedScores(Recommender):
    """Test double: returns a preset score row per user id (NaN and ties included)."""

    name = "fixed"

    def __init__(self, *, seed: int = 0, table: dict[int, np.ndarray]) -> None:
        super().__init__(seed=seed)
        self.table = table

    def _fit(self, interactions: pd.DataFrame) -> None:
        pass

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.table[int(u)] for u in user_ids]).astype(np.float32)


def test_top_k_matches_exact_reference_with_ties() -> None:
    rng = np.random.default_rng(0)
    n_items = 40
    # few distinct values -> many ties at every cut; plus -0.0/+0.0, -inf and NaN
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, 2.0, np.nan], dtype=np.float32)
    table = {u: rng.choice(values, size=n_items) for u in range(50)}
    items = list(range(1000, 1000 + n_items))
    df = frame({0: [1000]}).iloc[:0]  # no history: pure scoring check
    model = FixedScores(seed=5, table=table).fit(df, items=items)
    model.chunk_size = 7
    tie_low = model._tie_low
    for k in (1, 3, 10, 39, 40, 45):
        recs = model.recommend(list(table), k=k)
        for u, row in table.items():
            clean = np.where(np.isnan(row), -np.inf, row) + np.float32(0.0)
            ranked = sorted(range(n_items), key=lambda j: (-clean[j], -tie_low[j]))
            expected = [items[j] for j in ranked if clean[j] > -np.inf][:k]
            assert [i for i, _ in recs.for_user(u)] == expected, (u, k)
            assert recs.items.shape == (len(table), k)


def test_tiny_chunks_give_same_result() -> None:
    df = frame(SEQS_A)
    a = CoOccurrenceRecommender(seed=1).fit(df, items=CATALOGUE)
    b = CoOccurrenceRecommender(seed=1).fit(df, items=CATALOGUE)
    b.max_chunk_cells = 1  # forces one user per chunk
    users = [4, 3, 2, 1, 0, 77, 3]
    ra, rb = a.recommend(users, k=6), b.recommend(users, k=6)
    np.testing.assert_array_equal(ra.items, rb.items)
    np.testing.assert_array_equal(ra.scores, rb.scores)
    # duplicate users get identical rows; for_user returns the first
    np.testing.assert_array_equal(ra.items[1], ra.items[6])
