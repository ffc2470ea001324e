"""Non-neural baseline recommenders: random, most-popular and item co-occurrence."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from vragent.environments.recommenders.base import Recommender

_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-mixed bijective hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def _as_u64(values: np.ndarray | int) -> np.ndarray:
    # View (not cast) so negative ids wrap instead of raising.
    return np.atleast_1d(np.asarray(values, dtype=np.int64)).view(np.uint64)


def neighbourhood_scores(profile: sp.csr_matrix, sim: sp.csr_matrix, rows: np.ndarray,
                         pop_norm: np.ndarray) -> np.ndarray:
    """``profile[rows] @ sim`` as dense scores, with a popularity fallback below every real score.

    Shared by the co-occurrence and item-kNN models.

    Args:
        profile: users × items history weights (non-negative).
        sim: items × items non-negative similarities.
        rows: each requested user's row in ``profile``; ``-1`` for unknown users.
        pop_norm: popularity scaled to ``[0, 1]``.

    Returns:
        ``(len(rows), n_items)`` float32 scores.
    """
    n = rows.size
    # Smallest positive score per user; 1 where there is none, so unknown and unconnected
    # users fall back to plain (halved) popularity.
    smallest = np.ones(n, dtype=np.float32)
    known = np.flatnonzero(rows >= 0)
    prod = None
    if known.size:
        prod = (profile[rows[known]] @ sim).tocsr()
        prod.eliminate_zeros()  # all inputs are >= 0, so what is left is positive
        nonempty = np.diff(prod.indptr) > 0
        if nonempty.any():
            # Taken from the sparse product to avoid extra passes over the dense matrix.
            starts = prod.indptr[:-1][nonempty]
            smallest[known[nonempty]] = np.minimum.reduceat(prod.data, starts)
    # Half the smallest positive score times popularity in [0, 1] stays strictly below every
    # real score, so the fallback only orders the leftovers.
    out = (np.float32(0.5) * smallest)[:, None] * pop_norm[None, :]
    if prod is not None and prod.nnz:
        dense = prod.toarray()
        if known.size == n:
            np.copyto(out, dense, where=dense > 0)
        else:
            sub = out[known]
            np.copyto(sub, dense, where=dense > 0)
            out[known] = sub
    return out


class RandomRecommender(Recommender):
    """Uniformly random scores, reproducible per (seed, call, user, item).

    Scores come from a counter-based hash rather than a stateful generator, so a user's
    slate does not depend on which other users share the request or how the base class
    chunks it. Each public :meth:`score`/:meth:`recommend` call advances an internal
    counter (not reset by :meth:`fit`), so repeated calls give fresh slates while the same
    seed and call sequence replays exactly.
    """

    name = "random"

    def _fit(self, interactions: pd.DataFrame) -> None:
        self._item_hash = (_mix64(_as_u64(self.item_ids)) >> _U64(32)).astype(np.uint32)

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        call_key = _mix64(_mix64(_as_u64(self.seed)) ^ _as_u64(self._call))
        user_key = (_mix64(call_key ^ _mix64(_as_u64(user_ids))) >> _U64(32)).astype(np.uint32)
        # The per-cell hash is the 32-bit murmur3 finaliser, done in place: this loop touches
        # every user×item cell, so halving the word size roughly halves its cost.
        h = np.bitwise_xor(user_key[:, None], self._item_hash[None, :])
        with np.errstate(over="ignore"):
            h ^= h >> np.uint32(16)
            h *= np.uint32(0x85EBCA6B)
            h ^= h >> np.uint32(13)
            h *= np.uint32(0xC2B2AE35)
            h ^= h >> np.uint32(16)
        h >>= np.uint32(8)
        # 24 bits -> float32 in [0, 1): exactly representable, so no rounding bias.
        out = h.astype(np.float32)
        out *= np.float32(2.0**-24)
        return out


class MostPopularRecommender(Recommender):
    """Rank items by interaction count, identically for every user.

    Args:
        seed: seeds the tie order between equally popular items.
        weight: ``"count"`` counts every interaction; ``"like"`` counts only rows whose
            ``like`` column is truthy (the column must exist).
    """

    name = "popular"

    def __init__(self, *, seed: int = 0, weight: Literal["count", "like"] = "count") -> None:
        if weight not in ("count", "like"):
            raise ValueError(f"weight must be 'count' or 'like', got {weight!r}")
        super().__init__(seed=seed, weight=weight)
        self.weight = weight

    def _fit(self, interactions: pd.DataFrame) -> None:
        if self.weight == "count":
            self._counts = self.popularity.astype(np.float32)
            return
        if "like" not in interactions.columns:
            raise ValueError("weight='like' needs a 'like' column in interactions")
        likes = pd.to_numeric(interactions["like"], errors="coerce").fillna(0).to_numpy() > 0
        self._counts = np.bincount(self._seq_item[likes], minlength=self.n_items).astype(np.float32)

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.tile(self._counts, (user_ids.size, 1))


class CoOccurrenceRecommender(Recommender):
    """Item-to-item co-occurrence ("users who watched X also watched Y").

    Similarity ``S[i, j]`` counts how often items ``i`` and ``j`` co-occur:

    * ``window=None``: the number of users whose history contains both items;
    * ``window=w``: the number of position pairs ``(p, q)`` in a user's time-ordered
      sequence with ``0 < |p - q| <= w`` holding ``i`` and ``j`` (repeats count again).

    With ``normalize="cosine"`` it is divided by ``sqrt(n_i * n_j)``, where ``n_i`` is the
    number of users with item ``i`` (whole history) or its number of occurrences
    (windowed). Self-pairs are dropped.

    A user is scored as ``sum_t decay**t * S[item_t]`` over their last ``recent``
    interactions, ``t = 0`` being the most recent. Items with zero co-occurrence score get
    a popularity fallback scaled to stay strictly below the user's smallest positive score,
    so they fill the slate in popularity order; unknown users get pure popularity.
    Remaining ties go to the more popular item, then to a seeded order.

    Args:
        seed: seeds the final tie order.
        window: co-occurrence window in sequence positions, or ``None`` for whole history.
        normalize: ``"cosine"`` or ``"none"``.
        recent: number of most recent interactions used to score a user.
        decay: per-step weight decay for older interactions, in ``(0, 1]``.
    """

    name = "cooccurrence"

    def __init__(
        self,
        *,
        seed: int = 0,
        window: int | None = None,
        normalize: Literal["cosine", "none"] = "cosine",
        recent: int = 20,
        decay: float = 0.9,
    ) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be None or >= 1, got {window}")
        if normalize not in ("cosine", "none"):
            raise ValueError(f"normalize must be 'cosine' or 'none', got {normalize!r}")
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        super().__init__(seed=seed, window=window, normalize=normalize, recent=recent, decay=decay)
        self.window = window
        self.normalize = normalize
        self.recent = int(recent)
        self.decay = float(decay)

    def _fit(self, interactions: pd.DataFrame) -> None:
        n = self.n_items
        if self.window is None:
            # Binary user×item matrix: X^T X counts users sharing each pair.
            x = self._seen.astype(np.float32)
            cooc = (x.T @ x).tocsr()
            item_norm = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        else:
            cooc = self._windowed_pairs(self.window)
            item_norm = self.popularity
        cooc.setdiag(0)
        cooc.eliminate_zeros()
        cooc = cooc.astype(np.float64)
        if self.normalize == "cosine" and cooc.nnz:
            coo = cooc.tocoo()
            denom = np.sqrt(item_norm[coo.row] * item_norm[coo.col])
            cooc = sp.csr_matrix((coo.data / denom, (coo.row, coo.col)), shape=(n, n))
        self._sim = cooc.astype(np.float32).tocsr()

        # User profiles: decayed weights over each user's last `recent` interactions.
        pos = np.arange(self._seq_item.size, dtype=np.int64)
        age = self._seq_indptr[self._seq_user + 1] - 1 - pos
        keep = age < self.recent
        weights = self.decay ** age[keep].astype(np.float64)
        self._profile = sp.csr_matrix(
            (weights.astype(np.float32), (self._seq_user[keep], self._seq_item[keep])),
            shape=(self.n_users, n),
        )
        self._profile.sum_duplicates()

        top = self.popularity.max() if n else 0.0
        self._pop_norm = (self.popularity / top if top > 0 else self.popularity).astype(np.float32)

    def _windowed_pairs(self, window: int) -> sp.csr_matrix:
        """Count ordered item pairs within ``window`` positions of the same user."""
        users, items = self._seq_user, self._seq_item
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for d in range(1, window + 1):
            if d >= users.size:
                break
            same = users[:-d] == users[d:]
            if not same.any():
                break  # no user has a longer sequence
            a, b = items[:-d][same], items[d:][same]
            rows += [a, b]  # both directions keep the matrix symmetric
            cols += [b, a]
        n = self.n_items
        if not rows:
            return sp.csr_matrix((n, n), dtype=np.float64)
        r, c = np.concatenate(rows), np.concatenate(cols)
        # coo -> csr sums duplicate pairs into counts.
        return sp.csr_matrix((np.ones(r.size, dtype=np.float64), (r, c)), shape=(n, n))

    def _tie_priority(self) -> np.ndarray:
        return self.popularity

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return neighbourhood_scores(self._profile, self._sim, rows, self._pop_norm)
