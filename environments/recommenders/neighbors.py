"""Item-based k-nearest-neighbour recommender (item-kNN) on the binary user×item matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from vragent.environments.recommenders.base import Recommender
from vragent.environments.recommenders.baselines import neighbourhood_scores

#: Most item×item cells materialised at once while building the neighbour lists
#: (float32: 16 MiB), so a ~20k-item catalogue never holds a dense 20k×20k matrix.
SIM_CHUNK_CELLS = 1 << 22


class ItemKNNRecommender(Recommender):
    """Item-kNN: score an item by its similarity to the items a user has watched.

    Similarity is the shrunk cosine of two items' binary user columns::

        sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) * sqrt(|U_j|) + shrink)

    where ``U_i`` is the set of users who interacted with ``i``. Each item keeps only its
    ``k_neighbors`` most similar items (positive similarity only, self excluded), so the
    model is a sparse ``n_items × n_items`` matrix ``S``. A user's score for item ``j`` is
    ``sum(S[i, j] for i in history)`` over the distinct items of the whole history, or of
    its last ``history_len`` interactions.

    Items with no similarity to the history get a popularity fallback scaled strictly below
    the user's smallest positive score, so :meth:`score` already ranks them by popularity
    (an evaluation that ranks raw scores sees the same order as a slate); unknown users get
    pure popularity. Remaining ties go to the more popular item, then to a seeded order.

    Args:
        seed: seeds the final tie order.
        k_neighbors: neighbours kept per item.
        shrink: added to the cosine denominator; damps similarities of rare items.
        history_len: number of most recent interactions used to score a user, ``None``
            for the whole fitted history.
    """

    name = "itemknn"

    def __init__(
        self,
        *,
        seed: int = 0,
        k_neighbors: int = 100,
        shrink: float = 10.0,
        history_len: int | None = None,
    ) -> None:
        if k_neighbors < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {k_neighbors}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        if history_len is not None and history_len < 1:
            raise ValueError(f"history_len must be None or >= 1, got {history_len}")
        super().__init__(seed=seed, k_neighbors=k_neighbors, shrink=shrink, history_len=history_len)
        self.k_neighbors = int(k_neighbors)
        self.shrink = float(shrink)
        self.history_len = None if history_len is None else int(history_len)

    # ------------------------------------------------------------------ fitting

    def _fit(self, interactions: pd.DataFrame) -> None:
        self._sim = self._neighbours()
        self._prepare()

    def _neighbours(self) -> sp.csr_matrix:
        return item_similarity(self._seen, shrink=self.shrink, k_neighbors=self.k_neighbors)

    def _prepare(self) -> None:
        """Derive the user profiles and the popularity fallback from the fitted history."""
        pos = np.arange(self._seq_item.size, dtype=np.int64)
        age = self._seq_indptr[self._seq_user + 1] - 1 - pos  # 0 = most recent
        keep = age < (np.inf if self.history_len is None else self.history_len)
        profile = sp.csr_matrix(
            (
                np.ones(int(keep.sum()), dtype=np.float32),
                (self._seq_user[keep], self._seq_item[keep]),
            ),
            shape=(self.n_users, self.n_items),
        )
        profile.sum_duplicates()
        profile.data[:] = 1.0  # a re-watched item counts once
        self._profile = profile
        top = self.popularity.max() if self.n_items else 0.0
        self._pop_norm = (self.popularity / top if top > 0 else self.popularity).astype(np.float32)

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "sim_indptr": self._sim.indptr.astype(np.int64),
            "sim_indices": self._sim.indices.astype(np.int64),
            "sim_data": self._sim.data.astype(np.float32),
        }

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        from vragent.environments.recommenders.checkpoint import CheckpointError

        indptr = tensors["sim_indptr"]
        if indptr.size != self.n_items + 1:
            raise CheckpointError(
                f"item-kNN checkpoint has {indptr.size - 1} items, catalogue has {self.n_items}"
            )
        self._sim = sp.csr_matrix(
            (tensors["sim_data"], tensors["sim_indices"], indptr),
            shape=(self.n_items, self.n_items),
        )
        self._prepare()

    # ------------------------------------------------------------------ scoring

    def _tie_priority(self) -> np.ndarray:
        return self.popularity

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return neighbourhood_scores(self._profile, self._sim, rows, self._pop_norm)

    def similarity_to(self, history: Sequence[int], items: Sequence[int] | np.ndarray
                      ) -> np.ndarray:
        """``sum(S[h, j])`` over the distinct known items ``h`` of any history, per item ``j``.

        The same neighbourhood score as :meth:`score`, without the popularity fallback, for a
        history that need not be a fitted user's (a held-out user's, or a simulated one's).
        Unknown items score 0.
        """
        self._check_fitted()
        hist = np.unique(np.asarray(list(history), dtype=np.int64))
        rows = self._item_index(hist)
        rows = rows[rows >= 0]
        cols = self._item_index(np.asarray(items, dtype=np.int64))
        out = np.zeros(cols.size, dtype=np.float64)
        if rows.size and (cols >= 0).any():
            summed = np.asarray(self._sim[rows].sum(axis=0), dtype=np.float64).ravel()
            out[cols >= 0] = summed[cols[cols >= 0]]
        return out


def _top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest entries.

    Among ties at the cut ``np.argpartition`` chooses, deterministically: fits reproduce.
    """
    n = sim.shape[1]
    if k >= n:
        return np.broadcast_to(np.arange(n), sim.shape)
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]


def item_similarity(seen: sp.spmatrix, *, shrink: float = 10.0, k_neighbors: int | None = 100,
                    similarity: Literal["cosine", "cooccurrence"] = "cosine",
                    dtype: type = np.float32) -> sp.csr_matrix:
    """The item-kNN similarity ``S`` of a binary user × item matrix: the one implementation.

    ``co(i, j)`` counts the users who have both items. ``"cosine"`` divides it by
    ``sqrt(n_i) * sqrt(n_j) + shrink`` (``n_i``: the users of ``i``); ``"cooccurrence"`` keeps
    it. An item is not its own neighbour; each keeps its ``k_neighbors`` most similar items
    with a positive similarity (all of them with ``None``). Built a block of item rows at a
    time (:data:`SIM_CHUNK_CELLS`), so a large catalogue never holds a dense items × items
    matrix.

    Args:
        seen: users × items; any nonzero counts as one interaction.
        shrink: added to the cosine denominator; damps similarities of rare items.
        k_neighbors: neighbours kept per item, ``None`` for all.
        similarity: ``"cosine"`` or ``"cooccurrence"``.
        dtype: the similarity's float type (the recommender float32, the evaluation float64).

    Returns:
        ``S``, items × items, CSR with sorted indices.
    """
    x = sp.csr_matrix(seen, dtype=dtype, copy=True)
    x.sum_duplicates()
    x.data[:] = 1  # a re-watch counts once
    n = x.shape[1]
    xt = x.T.tocsr()  # items × users: row slices give one block of item columns
    norm = np.sqrt(np.asarray(x.sum(axis=0), dtype=dtype).ravel())
    k = n if k_neighbors is None else min(int(k_neighbors), n)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    step = max(1, SIM_CHUNK_CELLS // max(n, 1))
    for start in range(0, n if k else 0, step):
        stop = min(start + step, n)
        sim = (xt[start:stop] @ x).toarray()
        if similarity == "cosine":
            denom = norm[start:stop, None] * norm[None, :] + dtype(shrink)
            # A zero denominator only occurs with shrink=0 for items nobody watched, whose
            # dot products are 0 as well; 1 keeps their similarity at 0 instead of NaN.
            denom[denom == 0] = 1
            sim = sim / denom
        local = np.arange(stop - start)
        sim[local, start + local] = 0  # an item is not its own neighbour
        top = _top_k(sim, k)
        top_vals = np.take_along_axis(sim, top, axis=1)
        keep = top_vals > 0
        rows.append(np.nonzero(keep)[0] + start)
        cols.append(top[keep])
        vals.append(top_vals[keep])
    if not rows:
        return sp.csr_matrix((n, n), dtype=dtype)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n, n), dtype=dtype)
    out.sort_indices()
    return out
