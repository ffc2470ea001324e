"""Sentence encoder and the per-text embedding cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from vragent.environments.text_embeddings import SentenceEncoder, cache_file, encode_cached


class CountingEncoder:
    """A cheap deterministic stand-in: a text's vector is seeded by its hash."""

    def __init__(self, dim: int = 8, model_id: str = "fake/model", max_tokens: int = 32) -> None:
        self.dim, self.model_id, self.max_tokens = dim, model_id, max_tokens
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out


def test_cache_returns_same_arrays_and_skips_the_model(tmp_path):
    texts = ["a cat video", "football highlights", "", "a cat video"]
    enc = CountingEncoder()
    first = encode_cached(texts, enc, tmp_path)
    assert first.shape == (4, 8) and first.dtype == np.float32
    assert len(enc.calls) == 1
    assert sorted(enc.calls[0]) == sorted(set(texts))  # each distinct text embedded once
    np.testing.assert_array_equal(first[0], first[3])

    again = CountingEncoder()
    second = encode_cached(texts, again, tmp_path)
    assert again.calls == []
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, enc.encode(texts))


def test_changed_texts_are_the_only_ones_re_embedded(tmp_path):
    enc = CountingEncoder()
    encode_cached(["one", "two", "three"], enc, tmp_path)
    enc.calls.clear()
    out = encode_cached(["one", "TWO", "three", "four"], enc, tmp_path)
    assert enc.calls == [["TWO", "four"]]
    np.testing.assert_array_equal(out, enc.encode(["one", "TWO", "three", "four"]))
    # The file now holds the union, readable without pickle.
    with np.load(cache_file(tmp_path, enc.model_id, enc.max_tokens), allow_pickle=False) as z:
        assert len(z["keys"]) == 5 and z["vectors"].shape == (5, 8)


def test_cache_is_keyed_by_model_and_token_budget(tmp_path):
    a, b, c = CountingEncoder(), CountingEncoder(model_id="fake/other"), CountingEncoder(
        max_tokens=8)
    for enc in (a, b, c):
        encode_cached(["x"], enc, tmp_path)
        assert len(enc.calls) == 1
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_damaged_cache_is_ignored_and_rebuilt(tmp_path):
    enc = CountingEncoder()
    path = cache_file(tmp_path, enc.model_id, enc.max_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a zip file")
    out = encode_cached(["x", "y"], enc, tmp_path)
    np.testing.assert_array_equal(out, enc.encode(["x", "y"]))
    enc.calls.clear()
    encode_cached(["x", "y"], enc, tmp_path)
    assert enc.calls == []
    assert not list(tmp_path.glob("*.tmp"))


def test_width_change_rebuilds_the_cache(tmp_path):
    encode_cached(["x", "y"], CountingEncoder(dim=8), tmp_path)
    wider = CountingEncoder(dim=4)
    out = encode_cached(["x", "z"], wider, tmp_path)
    assert out.shape == (2, 4)
    np.testing.assert_array_equal(out, wider.encode(["x", "z"]))


def test_no_cache_dir_calls_the_encoder_directly():
    enc = CountingEncoder()
    out = encode_cached(["a", "a"], enc, None)
    assert enc.calls == [["a", "a"]] and out.shape == (2, 8)


def test_encoder_settings():
    enc = SentenceEncoder()  # nothing is loaded yet
    assert enc.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert enc.max_tokens == 32 and enc._model is None
    assert SentenceEncoder("some/path", max_tokens=30).model_id == "some/path"
    with pytest.raises(ValueError):
        SentenceEncoder(max_tokens=0)


@pytest.mark.slow
def test_minilm_puts_a_paraphrase_closer_than_an_unrelated_sentence():
    enc = SentenceEncoder("minilm", max_tokens=32)
    v = enc.encode([
        "A kitten plays with a ball of yarn",
        "A little cat is playing with wool",
        "Stock markets fell sharply on Monday",
    ])
    assert v.shape == (3, 384) and v.dtype == np.float32
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    # Truncation: with 4 tokens ([CLS] w1 w2 [SEP]) only the first two words count.
    short = SentenceEncoder("minilm", max_tokens=4)
    short._model = enc.model  # reuse the loaded weights
    short.model.max_seq_length = 4
    t = short.encode(["cats dogs birds fish", "cats dogs"])
    np.testing.assert_allclose(t[0], t[1], atol=1e-5)
