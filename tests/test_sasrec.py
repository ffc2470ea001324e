"""SASRec with ID and text item towers: learning, determinism, masking, towers, checkpoints."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from vragent.environments.recommenders.sasrec import SASRecRecommender  # noqa: E402

N_ITEMS = 50
FAST = {"dim": 32, "batch_size": 64, "epochs": 2}


def cyclic(n_users: int = 300, n_items: int = N_ITEMS, seed: int = 0) -> pd.DataFrame:
    """Each user watches items i, i+1, ... (mod n_items) from a random start."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        length, start = rng.integers(8, 16), rng.integers(n_items)
        rows += [(u, int((start + k) % n_items), k) for k in range(length)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "order"])


def hit_rate(model, df: pd.DataFrame, k: int = 10) -> float:
    last = df.groupby("user_id")["item_id"].last()
    rec = model.recommend(last.index.to_numpy(), k)
    truth = (last.to_numpy() + 1) % N_ITEMS
    return float((rec.items == truth[:, None]).any(axis=1).mean())


class HashEncoder:
    """Stand-in sentence encoder: a text's vector is seeded by its hash."""

    def __init__(self, dim: int = 48) -> None:
        self.dim, self.model_id, self.max_tokens = dim, "test/hash", 32
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return cyclic()


@pytest.fixture(scope="module")
def fitted(data) -> SASRecRecommender:
    return SASRecRecommender(seed=0, tower="id", dim=32, batch_size=64, epochs=8).fit(data)


def test_learns_the_next_item(fitted, data):
    # Random ranking would hit ~10 / (50 - 12) ≈ 0.26.
    assert hit_rate(fitted, data) > 0.8
    losses = [h["loss"] for h in fitted.history_]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert [h["epoch"] for h in fitted.history_] == list(range(1, 9))
    assert all(h["seconds"] >= 0 for h in fitted.history_)


def test_same_seed_gives_identical_scores(data):
    users = [0, 5, 17]
    a = SASRecRecommender(seed=3, **FAST).fit(data).score(users)
    b = SASRecRecommender(seed=3, **FAST).fit(data).score(users)
    c = SASRecRecommender(seed=4, **FAST).fit(data).score(users)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_leaves_the_global_torch_rng_alone(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SASRecRecommender(seed=0, **FAST).fit(data)
    assert torch.equal(torch.rand(3), expected)


def test_scores_do_not_depend_on_the_batch(fitted, data):
    users = data["user_id"].unique()
    together = fitted.score(users)
    alone = np.concatenate([fitted.score([u]) for u in users[:20]])
    np.testing.assert_array_equal(together[:20], alone)


def test_recommend_masks_seen_items(fitted, data):
    seen = data.groupby("user_id")["item_id"].apply(set)
    rec = fitted.recommend(seen.index.to_numpy(), 10)
    for row, u in enumerate(seen.index):
        assert not set(rec.items[row].tolist()) & seen[u]
    # Without the mask a user's items can come back.
    raw = fitted.recommend(seen.index.to_numpy(), N_ITEMS, exclude_seen=False)
    assert (raw.items != -1).all()


def test_unknown_users_get_popularity(fitted):
    scores = fitted.score([10_000, 0])
    np.testing.assert_array_equal(scores[0], fitted.popularity.astype(np.float32))
    assert not np.array_equal(scores[1], scores[0])


def test_text_tower_ties_identical_texts_and_caches_embeddings(data, tmp_path):
    texts = {i: f"title {i}" for i in range(N_ITEMS)}
    texts[7] = texts[8] = "the very same title"
    del texts[9], texts[10]  # no text: both get the empty string
    enc = HashEncoder()
    model = SASRecRecommender(seed=0, tower="text", embed_cache_dir=str(tmp_path), **FAST)
    model.set_item_text(texts)
    model.set_text_encoder(enc)
    model.fit(data)
    assert enc.calls == 1
    scores = model.score([0, 1, 2])
    col = {int(i): c for c, i in enumerate(model.item_ids)}
    np.testing.assert_array_equal(scores[:, col[7]], scores[:, col[8]])
    np.testing.assert_array_equal(scores[:, col[9]], scores[:, col[10]])
    assert not np.array_equal(scores[:, col[1]], scores[:, col[2]])

    # A second model reads the catalogue from the disk cache, never calling the encoder.
    other = HashEncoder()
    again = SASRecRecommender(seed=0, tower="text", embed_cache_dir=str(tmp_path), **FAST)
    again.set_item_text(texts)
    again.set_text_encoder(other)
    again.fit(data)
    assert other.calls == 0
    np.testing.assert_array_equal(again.score([0, 1, 2]), scores)


def test_text_tower_learns(data):
    model = SASRecRecommender(seed=0, tower="text", dim=32, batch_size=64, epochs=8)
    model.set_item_text({i: f"video number {i}" for i in range(N_ITEMS)})
    model.set_text_encoder(HashEncoder(dim=64))
    model.fit(data)
    assert hit_rate(model, data) > 0.6


@pytest.mark.parametrize("tower", ["id", "text"])
def test_checkpoint_round_trip(tower, data, tmp_path, monkeypatch):
    model = SASRecRecommender(seed=1, tower=tower, **FAST)
    if tower == "text":
        model.set_item_text({i: f"t{i}" for i in range(N_ITEMS)})
        model.set_text_encoder(HashEncoder())
    model.fit(data)
    model.save(tmp_path / "ckpt")

    def refuse(*args, **kwargs):
        raise AssertionError("loading must not unpickle or embed anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("vragent.environments.recommenders.sasrec.encode_cached", refuse)
    loaded = SASRecRecommender.load(tmp_path / "ckpt", data)
    assert loaded.params == model.params and loaded.seed == 1
    users = [0, 3, 99, 10_000]
    np.testing.assert_array_equal(loaded.score(users), model.score(users))


def test_warm_refit_continues_training(data):
    params = {**FAST, "refit_epochs": 1}
    model = SASRecRecommender(seed=0, **params).fit(data)
    first_loss = model.history_[0]["loss"]
    before = model.score([0])
    model.fit(data)  # same catalogue: one more epoch from the current weights
    assert [h["epoch"] for h in model.history_] == [3]
    assert model.history_[0]["loss"] < first_loss
    assert not np.array_equal(model.score([0]), before)

    # Replays exactly: same seed, same sequence of fits.
    twin = SASRecRecommender(seed=0, **params).fit(data).fit(data)
    np.testing.assert_array_equal(twin.score([0, 1]), model.score([0, 1]))

    # A changed catalogue trains from scratch.
    model.fit(data, items=np.arange(N_ITEMS + 5))
    assert [h["epoch"] for h in model.history_] == [1, 2]
    assert model.score([0]).shape == (1, N_ITEMS + 5)

    # Without refit_epochs every fit starts over and is a pure function of seed and data.
    plain = SASRecRecommender(seed=0, **FAST).fit(data)
    first = plain.score([0])
    plain.fit(data)
    np.testing.assert_array_equal(plain.score([0]), first)


@pytest.mark.parametrize("tower", ["id", "text"])
def test_warm_refit_after_load_replays(tower, data, tmp_path, monkeypatch):
    params = {**FAST, "refit_epochs": 1, "tower": tower}
    model = SASRecRecommender(seed=0, **params)
    model.set_item_text({i: f"t{i}" for i in range(N_ITEMS)})
    model.set_text_encoder(HashEncoder())
    model.fit(data)
    model.save(tmp_path / "ckpt")
    # The loaded text tower refits from the checkpoint's embeddings, without texts or a model.
    monkeypatch.setattr("vragent.environments.recommenders.sasrec.encode_cached", None)
    loaded = SASRecRecommender.load(tmp_path / "ckpt", data)
    np.testing.assert_array_equal(loaded.fit(data).score([0, 1]), model.fit(data).score([0, 1]))
    assert [h["epoch"] for h in loaded.history_] == [3]


def test_items_without_interactions_and_short_users():
    df = pd.DataFrame({"user_id": [0, 0, 0, 1], "item_id": [1, 2, 3, 2], "order": [0, 1, 2, 0]})
    model = SASRecRecommender(seed=0, **FAST).fit(df, items=[1, 2, 3, 4])
    rec = model.recommend([0, 1, 5], 3)
    assert rec.for_user(0) == [(4, pytest.approx(rec.scores[0, 0]))]
    assert len(rec.for_user(1)) == 3 and len(rec.for_user(5)) == 3


@pytest.mark.parametrize("bad", [{"tower": "image"}, {"dim": 30, "n_heads": 4}, {"max_len": 0},
                                 {"dropout": 1.0}, {"nonsense": 1}])
def test_rejects_bad_parameters(bad):
    with pytest.raises((ValueError, TypeError)):
        SASRecRecommender(**bad)


TOPICS = {
    "cooking": ["easy pasta recipe", "how to bake bread", "chocolate cake at home",
                "quick chicken curry", "homemade pizza dough", "vegetable soup recipe",
                "grilled salmon dinner", "pancakes for breakfast", "fried rice in ten minutes",
                "apple pie baking tips"],
    "football": ["best goals of the season", "penalty shootout final", "striker scores a hat trick",
                 "goalkeeper amazing saves", "champions league highlights", "football skills",
                 "derby match highlights", "free kick goal", "world cup winning goal",
                 "soccer training drills"],
    "cats": ["funny cat compilation", "kitten plays with yarn", "cat knocks cup off table",
             "sleepy kitten video", "cat meets a dog", "cute cats playing",
             "cat jumps into a box", "kittens first steps", "cat chasing a laser",
             "grumpy cat moments"],
}


@pytest.mark.slow
def test_text_tower_with_minilm_ranks_cold_items_by_topic(tmp_path):
    """Users stick to one topic; each topic's last title never occurs in training."""
    titles = [t for ts in TOPICS.values() for t in ts]
    topic_of = np.repeat(np.arange(3), 10)
    cold = {9, 19, 29}
    rng = np.random.default_rng(0)
    rows = []
    for u in range(150):
        pool = [i for i in range(30) if topic_of[i] == u % 3 and i not in cold]
        for k, i in enumerate(rng.choice(pool, size=6, replace=False)):
            rows.append((u, int(i), k))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "order"])
    model = SASRecRecommender(seed=0, tower="text", dim=32, batch_size=32, epochs=10,
                              embed_cache_dir=str(tmp_path))
    model.set_item_text(dict(enumerate(titles)))
    model.fit(df, items=np.arange(30))
    assert model._text_input.shape == (30, 384)
    scores = model.score(np.arange(150))
    cold_cols = np.array(sorted(cold))
    # For each user the own topic's cold item outranks the other topics' cold items.
    best_cold = cold_cols[scores[:, cold_cols].argmax(axis=1)]
    assert (topic_of[best_cold] == np.arange(150) % 3).mean() > 0.9

    # Fine-tuning the last layer runs, and its checkpoint scores without the sentence model.
    tuned = SASRecRecommender(seed=0, tower="text", dim=32, batch_size=64, epochs=1,
                              finetune_layers=1)
    tuned.set_item_text(dict(enumerate(titles)))
    tuned.set_text_encoder(model._encoder)  # share the loaded MiniLM
    before = {k: p.detach().clone() for k, p in model._encoder.model.named_parameters()}
    tuned.fit(df, items=np.arange(30))
    tuned.save(tmp_path / "tuned")
    state = tuned._state()
    assert any(k.startswith("text_model.") for k in state)
    loaded = SASRecRecommender.load(tmp_path / "tuned", df)
    np.testing.assert_array_equal(loaded.score([0, 1]), tuned.score([0, 1]))
    # The shared model was copied, not trained in place.
    assert all(torch.equal(p, before[k]) for k, p in model._encoder.model.named_parameters())


def test_feed_forward_is_relu_by_default_as_in_the_reference():
    from vragent.environments.recommenders.sasrec_net import SASRecConfig, _FeedForward

    assert SASRecConfig().activation == "relu"
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    for name, act in (("relu", torch.relu), ("gelu", torch.nn.functional.gelu)):
        ff = _FeedForward(8, 0.0, name).eval()
        want = ff.norm(x + ff.w_2(act(ff.w_1(x))))
        assert torch.allclose(ff(x), want)
    model = SASRecRecommender(seed=0, tower="id", **FAST)
    assert model.cfg.activation == "relu" and model.params["activation"] == "relu"
    with pytest.raises(ValueError, match="activation"):
        SASRecRecommender(seed=0, activation="tanh")


def test_gelu_option_trains_a_different_model(data):
    relu = SASRecRecommender(seed=0, tower="id", **FAST).fit(data)
    gelu = SASRecRecommender(seed=0, tower="id", activation="gelu", **FAST).fit(data)
    users = np.arange(5)
    assert not np.allclose(relu.score(users), gelu.score(users))


def test_an_old_checkpoint_without_activation_loads_as_gelu(data, tmp_path):
    import json

    model = SASRecRecommender(seed=1, tower="id", activation="gelu", **FAST).fit(data)
    model.save(tmp_path / "old")
    cfg_file = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["params"]["activation"]  # as written before the option existed
    cfg_file.write_text(json.dumps(cfg))
    loaded = SASRecRecommender.load(tmp_path / "old", data)
    assert loaded.cfg.activation == "gelu"
    np.testing.assert_array_equal(loaded.score([0, 3]), model.score([0, 3]))
