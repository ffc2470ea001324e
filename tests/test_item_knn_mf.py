"""Item-kNN and BPR-MF: hand-checked similarities, determinism, checkpoints, the lazy registry,
and a sanity check that both beat random under the full-ranking protocol."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import vragent.environments.recommenders.neighbors as neighbors
from vragent.environments.datasets.synthetic import make_synthetic_world
from vragent.environments.evaluation import evaluate
from vragent.environments.recommenders import (
    RECOMMENDERS,
    ItemKNNRecommender,
    load_recommender,
    make_recommender,
    recommender_class,
)
from vragent.environments.recommenders.checkpoint import CheckpointError
from vragent.environments.splits import leave_one_out


def frame(seqs: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, i, k) for u, s in seqs.items() for k, i in enumerate(s)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "order"], dtype="int64")


# ---------------------------------------------------------------------- item-kNN by hand

# Users per item: U1={0,1}, U2={0,1,2,4}, U3={1,2,3}, U4={3}, U5={} (never watched).
KNN_SEQS = {0: [1, 2], 1: [1, 2, 3], 2: [2, 3], 3: [3, 4], 4: [2]}
KNN_ITEMS = [1, 2, 3, 4, 5]
# shrink = 1: sim = |Ui ∩ Uj| / (sqrt|Ui| sqrt|Uj| + 1)
S12 = 2 / (math.sqrt(2) * 2 + 1)  # 0.5224
S13 = 1 / (math.sqrt(2) * math.sqrt(3) + 1)  # 0.2899
S23 = 2 / (2 * math.sqrt(3) + 1)  # 0.4480
S34 = 1 / (math.sqrt(3) * 1 + 1)  # 0.3660
POP_NORM = np.array([2, 4, 3, 1, 0]) / 4  # interaction counts / max


def test_itemknn_similarity_by_hand() -> None:
    model = ItemKNNRecommender(shrink=1.0).fit(frame(KNN_SEQS), items=KNN_ITEMS)
    expected = np.zeros((5, 5))
    for (a, b), s in {(0, 1): S12, (0, 2): S13, (1, 2): S23, (2, 3): S34}.items():
        expected[a, b] = expected[b, a] = s
    np.testing.assert_allclose(model._sim.toarray(), expected, rtol=1e-6)

    # user 0 watched {1, 2}: item 1 <- S12, item 2 <- S12, item 3 <- S13 + S23; items 4 and 5
    # have no similarity and fall back to 0.5 * smallest positive (S12) * popularity share.
    got = model.score([0])[0]
    fallback = 0.5 * S12 * POP_NORM
    np.testing.assert_allclose(got, [S12, S12, S13 + S23, fallback[3], 0.0], rtol=1e-6)
    # unknown users: halved popularity share
    np.testing.assert_allclose(model.score([99])[0], 0.5 * POP_NORM, rtol=1e-6)
    # slates: 3 first, then 4 (fallback); 5 scores 0 but is still recommended
    assert [i for i, _ in model.recommend([0], k=5).for_user(0)] == [3, 4, 5]


def test_itemknn_neighbour_pruning_and_history_len() -> None:
    df = frame(KNN_SEQS)
    # k_neighbors=1 keeps the strongest neighbour per row:
    # 1 -> 2 (S12), 2 -> 1 (S12 > S23), 3 -> 2 (S23 > S34 > S13), 4 -> 3 (S34).
    model = ItemKNNRecommender(shrink=1.0, k_neighbors=1).fit(df, items=KNN_ITEMS)
    expected = np.zeros((5, 5))
    expected[0, 1] = expected[1, 0] = S12
    expected[2, 1] = S23
    expected[3, 2] = S34
    np.testing.assert_allclose(model._sim.toarray(), expected, rtol=1e-6)
    # user 0 ({1, 2}) no longer reaches item 3: it falls back to popularity
    np.testing.assert_allclose(model.score([0])[0][2], 0.5 * S12 * 0.75, rtol=1e-6)

    # user 3 watched 3 then 4; history_len=1 keeps only item 4 -> only item 3 scores (S34)
    full = ItemKNNRecommender(shrink=1.0).fit(df, items=KNN_ITEMS)
    np.testing.assert_allclose(full.score([3])[0][:4], [S13, S23, S34, S34], rtol=1e-6)
    last = ItemKNNRecommender(shrink=1.0, history_len=1).fit(df, items=KNN_ITEMS)
    got = last.score([3])[0]
    assert got[2] == pytest.approx(S34, rel=1e-6)
    np.testing.assert_allclose(got[[0, 1, 3]], 0.5 * S34 * POP_NORM[[0, 1, 3]], rtol=1e-6)


def test_itemknn_chunked_similarity_is_identical(monkeypatch) -> None:
    world = make_synthetic_world(n_users=60, n_items=80, mean_history=10, seed=2)
    df = world.dataset.interactions
    whole = ItemKNNRecommender(k_neighbors=5).fit(df)
    monkeypatch.setattr(neighbors, "SIM_CHUNK_CELLS", 1)  # one item row per block
    chunked = ItemKNNRecommender(k_neighbors=5).fit(df)
    assert (whole._sim != chunked._sim).nnz == 0
    assert np.diff(whole._sim.indptr).max() <= 5
    assert whole._sim.diagonal().sum() == 0


def test_itemknn_checkpoint_and_errors(tmp_path) -> None:
    df = frame(KNN_SEQS)
    model = ItemKNNRecommender(shrink=1.0, k_neighbors=2, seed=4).fit(df, items=KNN_ITEMS)
    loaded = load_recommender(model.save(tmp_path / "knn"), df)
    assert isinstance(loaded, ItemKNNRecommender) and loaded.k_neighbors == 2
    np.testing.assert_array_equal(loaded.score([0, 1, 3, 99]), model.score([0, 1, 3, 99]))
    for bad in ({"k_neighbors": 0}, {"shrink": -1.0}, {"history_len": 0}):
        with pytest.raises(ValueError):
            ItemKNNRecommender(**bad)


# ---------------------------------------------------------------------- MF

MF_PARAMS = {"dim": 8, "epochs": 5, "batch_size": 64, "lr": 0.05}


@pytest.fixture(scope="module")
def small_world() -> pd.DataFrame:
    return make_synthetic_world(n_users=90, n_items=60, mean_history=8, seed=5).dataset.interactions


def test_mf_deterministic_and_logs_history(small_world) -> None:
    users = np.arange(1, 91)
    a = make_recommender("mf", seed=3, **MF_PARAMS).fit(small_world)
    b = make_recommender("mf", seed=3, **MF_PARAMS).fit(small_world)
    np.testing.assert_array_equal(a.score(users), b.score(users))
    c = make_recommender("mf", seed=4, **MF_PARAMS).fit(small_world)
    assert not np.array_equal(a.score(users), c.score(users))

    assert [h["epoch"] for h in a.history_] == [1, 2, 3, 4, 5]
    assert all(h["seconds"] >= 0 and math.isfinite(h["loss"]) for h in a.history_)
    assert a.history_[-1]["loss"] < a.history_[0]["loss"] < math.log(2) + 0.05
    # unknown users get popularity counts
    np.testing.assert_array_equal(a.score([10_000])[0], a.popularity.astype(np.float32))


def test_mf_scores_do_not_depend_on_the_batch(small_world) -> None:
    model = make_recommender("mf", seed=1, **MF_PARAMS).fit(small_world)
    users = np.arange(1, 91)[::-1]  # > 64 users: crosses a scoring block
    batch = model.score(users)
    solo = np.stack([model.score([u])[0] for u in users])
    np.testing.assert_array_equal(batch, solo)


def test_mf_checkpoint_round_trip(small_world, tmp_path) -> None:
    from vragent.environments.recommenders.factorization import MFRecommender

    model = MFRecommender(seed=2, **MF_PARAMS).fit(small_world)
    path = model.save(tmp_path / "mf")
    users = [1, 5, 90, 10_000]
    for loaded in (MFRecommender.load(path, small_world), load_recommender(path, small_world)):
        assert isinstance(loaded, MFRecommender) and loaded.dim == 8 and loaded.history_ == []
        np.testing.assert_array_equal(loaded.score(users), model.score(users))
        np.testing.assert_array_equal(
            loaded.recommend(users, k=7).items, model.recommend(users, k=7).items
        )
    # Loaded with other interactions, users still match their embeddings by id; a user the
    # checkpoint does not know falls back to popularity.
    others = small_world[small_world["user_id"] >= 50].copy()
    extra = pd.DataFrame({"user_id": [500], "item_id": [1], "order": [0]})
    loaded = MFRecommender.load(path, pd.concat([others, extra], ignore_index=True))
    np.testing.assert_array_equal(loaded.score([50, 90]), model.score([50, 90]))
    np.testing.assert_array_equal(loaded.score([500])[0], loaded.popularity.astype(np.float32))


def test_mf_rejects_bad_params() -> None:
    cls = recommender_class("mf")
    for bad in ({"dim": 0}, {"epochs": -1}, {"lr": 0.0}, {"reg": -1.0}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            cls(**bad)


# ---------------------------------------------------------------------- registry


def test_registry_is_lazy_about_torch() -> None:
    code = (
        "import sys, environments.recommenders as r; "
        "assert {'itemknn', 'mf', 'sasrec'} <= set(r.RECOMMENDERS); "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_lookup_and_errors(tmp_path) -> None:
    from vragent.environments.recommenders.factorization import MFRecommender

    assert recommender_class("mf") is MFRecommender is RECOMMENDERS["mf"]
    assert recommender_class("itemknn") is ItemKNNRecommender
    model = make_recommender("itemknn", seed=2, k_neighbors=7)
    assert isinstance(model, ItemKNNRecommender) and model.k_neighbors == 7
    with pytest.raises(ValueError, match=r"choose from .*itemknn, mf, .*sasrec"):
        recommender_class("nope")

    with pytest.raises(CheckpointError, match="config"):
        load_recommender(tmp_path, frame(KNN_SEQS))
    (tmp_path / "config.json").write_text(json.dumps({"name": "nope", "format": 1}))
    with pytest.raises(CheckpointError, match="unknown recommender 'nope'"):
        load_recommender(tmp_path, frame(KNN_SEQS))


# ---------------------------------------------------------------------- sanity


def test_itemknn_and_mf_beat_random_on_synthetic_world() -> None:
    world = make_synthetic_world(n_users=250, n_items=150, mean_history=12, seed=1)
    split = leave_one_out(world.dataset.interactions)
    train = split.train_interactions()
    items = world.dataset.items["item_id"].to_numpy()
    results = {}
    for name, params in (
        ("random", {}),
        ("itemknn", {}),
        ("mf", {"dim": 32, "epochs": 15, "batch_size": 256}),
    ):
        model = make_recommender(name, seed=0, **params).fit(train, items=items)
        results[name] = evaluate(model, split, "test")
    rand = results["random"]
    # random expects HR@10 ~ 10/140 and NDCG@10 ~ 0.03 on ~140 unmasked items
    assert rand["HR@10"] < 0.15
    for name in ("itemknn", "mf"):
        res = results[name]
        assert res["n_users"] == 250
        assert res["HR@10"] > 2 * rand["HR@10"] and res["HR@10"] > rand["HR@10"] + 0.1, results
        assert res["NDCG@10"] > 2 * rand["NDCG@10"], results


def test_one_similarity_for_the_recommender_and_the_evaluation_scorer() -> None:
    """``rl.baselines.ItemKNNScorer`` reads the recommender's similarity (one implementation,
    float64 there)."""
    from vragent.rl.baselines import ItemKNNScorer

    world = make_synthetic_world(n_users=60, n_items=80, mean_history=10, seed=2)
    df = world.dataset.interactions
    rec = ItemKNNRecommender(k_neighbors=5).fit(df)
    scorer = ItemKNNScorer(k_neighbors=5).fit(df)
    order = np.argsort(rec.item_ids)
    assert np.array_equal(rec.item_ids[order], scorer.item_ids)
    np.testing.assert_allclose(rec._sim.toarray()[np.ix_(order, order)],
                               scorer._sim.toarray(), rtol=1e-6)
