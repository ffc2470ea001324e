"""Synthetic world tests: determinism, shapes, heavy-tailed popularity, like ground truth."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from vragent.environments.datasets import SyntheticWorld, make_synthetic_world
from vragent.environments.datasets.synthetic import MIN_HISTORY, topic_names


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_synthetic_world(n_users=400, n_items=500, n_topics=8, n_creators=50, seed=7)


def test_deterministic_for_a_seed() -> None:
    a = make_synthetic_world(n_users=50, n_items=80, seed=3)
    b = make_synthetic_world(n_users=50, n_items=80, seed=3)
    c = make_synthetic_world(n_users=50, n_items=80, seed=4)
    for frame in ("users", "items", "interactions"):
        pd.testing.assert_frame_equal(getattr(a.dataset, frame), getattr(b.dataset, frame))
    np.testing.assert_array_equal(a.user_taste, b.user_taste)
    assert not a.dataset.interactions.equals(c.dataset.interactions)


def test_shapes_and_schema(world: SyntheticWorld) -> None:
    ds = world.dataset
    assert world.user_taste.shape == (400, 8)
    np.testing.assert_allclose(world.user_taste.sum(axis=1), 1.0)
    assert world.item_topic.shape == (500,) and world.item_quality.shape == (500,)
    assert ds.users["user_id"].tolist() == list(range(1, 401))
    assert ds.items["item_id"].tolist() == list(range(1, 501))
    assert set(ds.users["activity"]) == {"light", "medium", "heavy"}
    assert ds.users["age"].between(13, 70).all()
    assert (ds.items["likes"] <= ds.items["views"]).all()
    # category is the topic, and the topic hashtag is among the tags
    topics = np.asarray(world.topics)[world.item_topic]
    assert (ds.items["category"].to_numpy() == topics).all()
    assert all(f"#{t}" in tags.split() for t, tags in zip(topics, ds.items["tags"], strict=True))


def test_histories(world: SyntheticWorld) -> None:
    inter = world.dataset.interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    lengths = inter.groupby("user_id").size()
    assert lengths.min() >= MIN_HISTORY and len(lengths) == 400
    assert 15 < lengths.mean() < 25  # mean_history=20
    assert (
        inter.groupby("user_id")["order"].apply(lambda s: s.tolist() == list(range(len(s))))
    ).all()
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    activity = world.dataset.users.set_index("user_id")["activity"]
    by_tier = lengths.groupby(activity).mean()
    assert by_tier["light"] < by_tier["medium"] < by_tier["heavy"]


def test_popularity_is_heavy_tailed(world: SyntheticWorld) -> None:
    counts = np.sort(world.dataset.interactions["item_id"].value_counts().to_numpy())[::-1]
    top = counts[: len(world.dataset.items) // 10].sum() / counts.sum()
    assert top > 0.3  # uniform would give 0.1
    views = np.sort(world.dataset.items["views"].to_numpy())[::-1]
    assert views[: len(views) // 10].sum() / views.sum() > 0.4


def test_true_like_prob_follows_taste(world: SyntheticWorld) -> None:
    users = np.arange(1, 401)
    items = np.arange(1, 501)
    probs = world.true_like_prob(users[:, None], items[None, :])
    assert probs.shape == (400, 500)
    assert ((probs > 0) & (probs < 1)).all()
    # For any one item, ranking users by taste for its topic ranks them by like probability.
    for item in (1, 2, 3):
        taste = world.user_taste[:, world.item_topic[item - 1]]
        order = np.argsort(taste)
        assert (np.diff(probs[order, item - 1]) >= 0).all()
    # Taste-matched (each user's favourite topic) vs. the rest.
    fav = world.user_taste.argmax(axis=1)
    matched = world.item_topic[None, :] == fav[:, None]
    assert probs[matched].mean() > probs[~matched].mean() + 0.1


def test_observed_likes_follow_true_probability(world: SyntheticWorld) -> None:
    inter = world.dataset.interactions
    p = world.true_like_prob(inter["user_id"].to_numpy(), inter["item_id"].to_numpy())
    assert abs(inter["like"].mean() - p.mean()) < 0.03
    high = p > np.median(p)
    assert inter["like"][high].mean() > inter["like"][~high].mean() + 0.1


def test_ids_are_checked(world: SyntheticWorld) -> None:
    with pytest.raises(IndexError):
        world.true_like_prob(np.array([0]), np.array([1]))
    with pytest.raises(IndexError):
        world.true_like_prob(np.array([1]), np.array([501]))


def test_small_catalogue_and_many_topics() -> None:
    w = make_synthetic_world(n_users=30, n_items=6, n_topics=3, n_creators=2, mean_history=50)
    assert (w.dataset.interactions.groupby("user_id").size() == 6).all()  # capped at n_items
    assert topic_names(18)[16:] == ["cooking_2", "gaming_2"]
    with pytest.raises(ValueError):
        make_synthetic_world(n_items=3)


def test_scales_to_100k_users() -> None:
    start = time.perf_counter()
    w = make_synthetic_world(n_users=100_000, n_items=10_000, n_topics=16, n_creators=2000)
    assert time.perf_counter() - start < 30
    assert len(w.dataset.users) == 100_000
    assert w.dataset.interactions.groupby("user_id").size().min() >= MIN_HISTORY
