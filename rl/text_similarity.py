"""Sentence-embedding similarity for the preference reward (the paper's ``video_preference``).

The paper's reward embeds the predicted ``Next_video`` text and the real next video's title with
``sentence-transformers/all-MiniLM-L6-v2`` and takes their cosine (reloading the model on every
call). :class:`EmbeddingSimilarity` does the same with the offline copy of that model
(:class:`environments.text_embeddings.SentenceEncoder`), loaded once, batched, and with each
text's vector cached in memory, since a GRPO group repeats its target text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from vragent.environments.text_embeddings import MINILM, SentenceEncoder

#: MiniLM was trained on 128-token inputs; a description longer than that is truncated.
MAX_TOKENS = 128


class Similarity(Protocol):
    """Scores pairs of texts; what :func:`rl.rewards.score_preference` needs."""

    def pairs(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of ``a[i]`` and ``b[i]`` for each i."""
        ...


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default).

    Args:
        encoder: anything with ``encode(texts) -> (n, dim) array``; ``None``: the offline
            MiniLM, loaded on first use.
        cache_size: most texts whose vectors are kept (the oldest go first).
    """

    def __init__(self, encoder: object | None = None, cache_size: int = 50_000) -> None:
        self.encoder = encoder if encoder is not None else SentenceEncoder(
            MINILM, max_tokens=MAX_TOKENS)
        self.cache_size = int(cache_size)
        self._vectors: dict[str, np.ndarray] = {}

    def _embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        new = sorted({t for t in texts if t not in self._vectors})
        if new:
            vecs = np.asarray(self.encoder.encode(new), dtype=np.float32)
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.where(norms > 0, norms, 1.0)
            for t, v in zip(new, vecs, strict=True):
                self._vectors[t] = v
            while len(self._vectors) > self.cache_size:
                self._vectors.pop(next(iter(self._vectors)))
        return [self._vectors[t] for t in texts]

    def pairs(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of each pair, in [-1, 1] (0 when a text embeds to zero).

        Args:
            a: first texts.
            b: second texts, as many as ``a``.

        Returns:
            One similarity per pair.

        Raises:
            ValueError: ``a`` and ``b`` differ in length.
        """
        if len(a) != len(b):
            raise ValueError(f"{len(a)} texts against {len(b)}")
        if not a:
            return []
        vecs = self._embed([*map(str, a), *map(str, b)])
        n = len(a)
        return [float(np.clip(vecs[i] @ vecs[n + i], -1.0, 1.0)) for i in range(n)]

    def __call__(self, a: str, b: str) -> float:
        """Cosine similarity of two texts."""
        return self.pairs([a], [b])[0]


_DEFAULT: EmbeddingSimilarity | None = None


def default_similarity() -> EmbeddingSimilarity:
    """The process-wide MiniLM similarity (one model load per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = EmbeddingSimilarity()
    return _DEFAULT
