"""The contract every recommender follows, and the shared top-k machinery.

A recommender is fitted on interactions in the normalised schema (see
:mod:`environments.schema`) and then scores or recommends items for users. Subclasses only
implement :meth:`Recommender._fit` and :meth:`Recommender._score`; the base class owns id
mapping, the seen-item history, exclusion masks, deterministic tie-breaking and the chunked
top-k, so every model behaves the same way at the edges (unknown users, short catalogues,
ties, refits).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Item id used to pad a slate when fewer than ``k`` items can be recommended.
PAD_ITEM = -1

_REQUIRED_COLUMNS = ("user_id", "item_id", "order")


@dataclass(frozen=True, eq=False)
class Recommendations:
    """Top-k slates for a batch of users.

    Rows are in the order of ``user_ids`` as passed to :meth:`Recommender.recommend`.
    Within a row items are sorted by descending score. When fewer than ``k`` items are
    recommendable for a user the row is padded at the end with item id ``-1``
    (:data:`PAD_ITEM`) and score ``-inf``.

    Attributes:
        user_ids: int64 array of shape ``(n_users,)``.
        items: int64 array of shape ``(n_users, k)`` of item ids.
        scores: float32 array of shape ``(n_users, k)``.
    """

    user_ids: np.ndarray
    items: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def k(self) -> int:
        """Slate length (including padding)."""
        return int(self.items.shape[1])

    @cached_property
    def _row_of(self) -> dict[int, int]:
        # Built once so per-user lookups over a large batch stay O(1).
        row_of: dict[int, int] = {}
        for row, u in enumerate(self.user_ids.tolist()):
            row_of.setdefault(u, row)
        return row_of

    def for_user(self, user_id: int) -> list[tuple[int, float]]:
        """Return one user's slate as ``(item_id, score)`` pairs, padding removed.

        Args:
            user_id: a user id that was part of the request. If it was requested more
                than once, the first row is used.

        Raises:
            KeyError: the user was not part of the request.
        """
        row = self._row_of.get(int(user_id))
        if row is None:
            raise KeyError(f"user {user_id} is not in these recommendations")
        valid = self.items[row] != PAD_ITEM
        return [
            (int(i), float(s))
            for i, s in zip(self.items[row][valid], self.scores[row][valid], strict=True)
        ]


def _index_of(sorted_ids: np.ndarray, sorter: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Map ids to positions in the array ``sorted_ids`` was sorted from; -1 when absent."""
    query = np.asarray(query, dtype=np.int64)
    if sorted_ids.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, query)
    pos_clipped = np.minimum(pos, sorted_ids.size - 1)
    found = sorted_ids[pos_clipped] == query
    return np.where(found, sorter[pos_clipped], -1).astype(np.int64)


def _sortable_keys(scores: np.ndarray, tie_low: np.ndarray) -> np.ndarray:
    """Combine float32 scores and per-item tie words into one exact int64 sort key.

    The float's bit pattern is remapped so that signed-integer order equals float order,
    then shifted into the high 32 bits; the low 32 bits hold the item's tie preference
    (``tie_low`` broadcasts against ``scores``). Comparing keys is therefore "score first,
    then seeded tie order" without any jitter that could reorder genuinely different
    scores. ``scores`` must be NaN-free.
    """
    s = scores.astype(np.float32, copy=True)
    s += np.float32(0.0)  # turns -0.0 into +0.0 so both zeros compare equal
    bits = s.view(np.int32)
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
    keys = bits.astype(np.int64)
    np.left_shift(keys, 32, out=keys)
    keys += tie_low
    return keys


def _top_k(scores: np.ndarray, kk: int, tie_low: np.ndarray) -> np.ndarray:
    """Column indices of each row's ``kk`` best entries, best first, ties by ``tie_low``.

    Building exact keys for the whole matrix costs several full passes, so candidates
    come from a float argpartition first; only rows where an item outside the candidates
    ties the k-th score (so the float partition may have picked the wrong one) redo the
    selection with exact keys.
    """
    n, m = scores.shape
    if kk >= m:
        cand = np.broadcast_to(np.arange(m), (n, m))
    else:
        cand = np.argpartition(scores, m - kk, axis=1)[:, m - kk :]
        cand_scores = np.take_along_axis(scores, cand, axis=1)
        kth = cand_scores.min(axis=1, keepdims=True)
        outside_ties = (scores == kth).sum(axis=1) - (cand_scores == kth).sum(axis=1)
        # A tie at -inf only involves unrecommendable items, which become padding anyway.
        redo = np.flatnonzero((outside_ties > 0) & (kth[:, 0] > -np.inf))
        if redo.size:
            cand = cand.copy()
            keys = _sortable_keys(scores[redo], tie_low[None, :])
            cand[redo] = np.argpartition(keys, m - kk, axis=1)[:, m - kk :]
    cand_keys = _sortable_keys(np.take_along_axis(scores, cand, axis=1), tie_low[cand])
    # Keys are unique within a row (the tie word differs), so this order is total.
    order = np.argsort(cand_keys, axis=1)[:, ::-1]
    return np.take_along_axis(cand, order, axis=1)


class Recommender(abc.ABC):
    """Abstract base recommender.

    Subclasses set :attr:`name`, implement :meth:`_fit` and :meth:`_score`, and may
    override :meth:`_tie_priority`. After :meth:`fit` the base class exposes:

    * ``item_ids``: int64 catalogue in score-column order;
    * ``user_ids``: int64 sorted ids of users seen in the fitted interactions;
    * ``popularity``: float64 interaction count per catalogue item (a fallback any model
      can use for unknown users).

    Scores equal to ``-inf`` mean "not recommendable"; such items never appear in a slate.

    Attributes:
        name: registry key of the model.
        chunk_size: most users scored at once inside :meth:`recommend`; also capped by
            ``max_chunk_cells`` so wide catalogues stay within memory.
        max_chunk_cells: most user×item cells materialised per chunk.
    """

    name: ClassVar[str] = "base"
    #: True for models whose item tower reads item text (set with :meth:`set_item_text`).
    uses_item_text: ClassVar[bool] = False
    chunk_size: int = 1024
    max_chunk_cells: int = 1 << 23

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = int(seed)
        # Kept so callers can log or reproduce the configuration.
        self.params: dict[str, Any] = dict(params)
        # Counts public score()/recommend() calls over the object's lifetime (not reset by
        # fit) so stochastic models vary between calls yet replay identically.
        self._call = 0
        self._fitted = False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {"seed": self.seed, **self.params}.items())
        return f"{type(self).__name__}({args})"

    def set_item_text(self, texts: Mapping[int, str]) -> None:
        """Give the model each item's text (title, IP profile, or both) before :meth:`fit`.

        Models with ``uses_item_text`` read it; the others ignore it. The platform calls this
        for every arm, so a scenario can switch the item text without knowing the model.
        """
        self.item_text = dict(texts)

    # ------------------------------------------------------------------ fitting

    def fit(self, interactions: pd.DataFrame, items: Sequence[int] | None = None) -> Self:
        """Fit on interactions, replacing any previous state.

        Args:
            interactions: frame with int columns ``user_id``, ``item_id``, ``order``
                (0-based position in the user's time-ordered sequence); extra columns such
                as ``like`` or ``rating`` are available to subclasses.
            items: the catalogue, in the column order :meth:`score` will use. Defaults to
                the sorted unique items of ``interactions``. Items without interactions
                are still recommendable.

        Returns:
            ``self``.

        Raises:
            ValueError: a required column is missing, the catalogue has duplicate or
                negative ids, or an interaction references an item outside the catalogue.
                The model is then unfitted until the next successful ``fit``.
        """
        # A failed refit must not leave a half-replaced model that still looks usable.
        self._fitted = False
        missing = [c for c in _REQUIRED_COLUMNS if c not in interactions.columns]
        if missing:
            raise ValueError(f"interactions lack columns {missing}")
        users = interactions["user_id"].to_numpy(dtype=np.int64)
        item_col = interactions["item_id"].to_numpy(dtype=np.int64)
        order = interactions["order"].to_numpy(dtype=np.int64)

        if items is None:
            catalogue = np.unique(item_col)
        else:
            catalogue = np.asarray(
                list(items) if not isinstance(items, np.ndarray) else items, dtype=np.int64
            ).ravel()
            if np.unique(catalogue).size != catalogue.size:
                raise ValueError("items contains duplicate ids")
        if catalogue.size and catalogue.min() < 0:
            # -1 pads short slates, so negative ids would be ambiguous.
            raise ValueError("item ids must be non-negative")

        self.item_ids = catalogue
        self._item_sorter = np.argsort(catalogue, kind="stable")
        self._item_sorted = catalogue[self._item_sorter]
        self.n_items = int(catalogue.size)

        item_idx = self._item_index(item_col)
        if (item_idx < 0).any():
            bad = item_col[item_idx < 0]
            raise ValueError(
                f"{bad.size} interaction(s) reference items outside the catalogue "
                f"(first: item {int(bad[0])})"
            )

        # Time-ordered sequences, grouped by user (lexsort is stable, so equal `order`
        # values keep their input order).
        perm = np.lexsort((order, users))
        users, item_idx = users[perm], item_idx[perm]
        self.user_ids, user_idx = np.unique(users, return_inverse=True)
        user_idx = user_idx.astype(np.int64).ravel()
        self.n_users = int(self.user_ids.size)
        self._user_sorter = np.arange(self.n_users)  # user_ids is already sorted

        self._seq_user = user_idx
        self._seq_item = item_idx
        self._seq_indptr = np.concatenate(
            [[0], np.cumsum(np.bincount(user_idx, minlength=self.n_users))]
        ).astype(np.int64)
        seen = sp.csr_matrix(
            (np.ones(item_idx.size, dtype=np.float32), (user_idx, item_idx)),
            shape=(self.n_users, self.n_items),
        )
        seen.sum_duplicates()
        seen.data[:] = 1.0
        self._seen = seen
        self.popularity = np.bincount(item_idx, minlength=self.n_items).astype(np.float64)

        restore, self._restore_state = getattr(self, "_restore_state", None), None
        if restore is None:
            self._fit(interactions.iloc[perm].reset_index(drop=True))
        else:
            self._restore(restore)

        # Ties are broken by a fixed, seeded item order so runs replay exactly; a model may
        # rank some items ahead within a tie (e.g. by popularity) via _tie_priority.
        seeded = np.random.default_rng(self.seed).permutation(self.n_items)
        priority = self._tie_priority()
        if priority is None:
            preference = seeded
        else:
            shuffled_rank = np.empty(self.n_items, dtype=np.int64)
            shuffled_rank[seeded] = np.arange(self.n_items)
            preference = np.lexsort((shuffled_rank, -np.asarray(priority, dtype=np.float64)))
        tie_rank = np.empty(self.n_items, dtype=np.int64)
        tie_rank[preference] = np.arange(self.n_items)
        # Higher low-word wins, so the most preferred item gets the largest value.
        self._tie_low = (self.n_items - 1 - tie_rank).astype(np.int64)
        self._fitted = True
        return self

    @abc.abstractmethod
    def _fit(self, interactions: pd.DataFrame) -> None:
        """Model-specific fitting.

        Called after the base class has set ``item_ids``, ``user_ids``, ``popularity``,
        ``_seen`` and the sequence arrays ``_seq_user``/``_seq_item``/``_seq_indptr``
        (catalogue and user indices, sorted by user then order). ``interactions`` is the
        input frame in that same row order.
        """

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, np.ndarray]:
        """Fitted weights to checkpoint; models that save override this and :meth:`_restore`."""
        raise NotImplementedError(f"{type(self).__name__} does not save checkpoints")

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        """Set fitted weights from :meth:`_state`'s output instead of training."""
        raise NotImplementedError(f"{type(self).__name__} does not load checkpoints")

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint folder (safetensors weights + JSON config, no pickle).

        The catalogue is saved with the weights; the interaction history is not (it is data,
        not model): :meth:`load` takes it again.
        """
        from vragent.environments.recommenders.checkpoint import save_checkpoint

        self._check_fitted()
        tensors = {**self._state(), "__item_ids__": self.item_ids}
        params = {"seed": self.seed, **self.params}
        return save_checkpoint(path, tensors, {"name": self.name, "params": params})

    @classmethod
    def load(cls, path: str | Path, interactions: pd.DataFrame) -> Self:
        """Rebuild a saved model without training.

        Args:
            path: a folder written by :meth:`save`.
            interactions: the history to mask and to encode users with (usually the same
                interactions the model was trained on).

        Raises:
            CheckpointError: missing files, unknown format, or a checkpoint of another model.
        """
        from vragent.environments.recommenders.checkpoint import CheckpointError, load_checkpoint

        tensors, config = load_checkpoint(path)
        if config.get("name") != cls.name:
            raise CheckpointError(f"{path}: checkpoint of {config.get('name')!r}, not {cls.name!r}")
        model = cls(**cls._checkpoint_params(dict(config.get("params", {}))))
        items = tensors.pop("__item_ids__")
        model._restore_state = tensors
        return model.fit(interactions, items=items)

    @classmethod
    def _checkpoint_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Constructor kwargs from a checkpoint's params (models fill in older defaults)."""
        return params

    def _tie_priority(self) -> np.ndarray | None:
        """Optional per-item priority (higher first) used before the seeded tie order."""
        return None

    # ------------------------------------------------------------------ scoring

    def _item_index(self, item_ids: np.ndarray) -> np.ndarray:
        return _index_of(self._item_sorted, self._item_sorter, item_ids)

    def _user_index(self, user_ids: np.ndarray) -> np.ndarray:
        return _index_of(self.user_ids, self._user_sorter, user_ids)

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} must be fit() before use")

    def score(self, user_ids: Sequence[int]) -> np.ndarray:
        """Score every catalogue item for each user.

        Args:
            user_ids: users to score; unknown users get the model's fallback (popularity
                for the built-in models).

        Returns:
            float32 array ``(len(user_ids), n_items)`` over ``item_ids``; higher is better,
            ``-inf`` (also used for any NaN a model produces) means not recommendable.
        """
        self._check_fitted()
        uids = np.asarray(user_ids, dtype=np.int64).ravel()
        self._call += 1
        return self._score_batch(uids)

    def _score_batch(self, uids: np.ndarray) -> np.ndarray:
        rows = self._user_index(uids)
        out = np.asarray(self._score(uids, rows), dtype=np.float32)
        if not out.flags.writeable or not out.flags.c_contiguous:
            out = np.ascontiguousarray(out).copy()
        # NaN has no order; treat it as "not recommendable".
        nan = np.isnan(out)
        if nan.any():
            out[nan] = -np.inf
        return out

    @abc.abstractmethod
    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Model-specific scores.

        Args:
            user_ids: int64 user ids.
            rows: their indices into ``user_ids`` of the fit, ``-1`` for unknown users.

        Returns:
            A fresh ``(len(user_ids), n_items)`` array (the caller masks it in place).
            Results must depend only on the user, the fitted state, ``self.seed`` and
            ``self._call``, never on which other users share the batch.
        """

    def set_round(self, n: int) -> None:
        """Pin the call counter that seeds per-call randomness.

        The simulation pins it to the step before recommending, so a resumed run (which made
        fewer calls) replays exactly the slates an uninterrupted run served.
        """
        self._call = int(n)

    def recommend(
        self,
        user_ids: Sequence[int],
        k: int,
        exclude_seen: bool = True,
        exclude: Mapping[int, set[int]] | None = None,
    ) -> Recommendations:
        """Recommend the top ``k`` items per user.

        Args:
            user_ids: users to recommend for (unknown users get the fallback).
            k: slate length; rows are padded with ``-1``/``-inf`` when fewer items remain.
            exclude_seen: drop items in the user's fitted history.
            exclude: extra per-user item ids to drop (e.g. items already shown in the
                simulation); ids outside the catalogue are ignored.

        Returns:
            :class:`Recommendations` with one row per requested user.

        Raises:
            ValueError: ``k`` is smaller than 1.
        """
        self._check_fitted()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        uids = np.asarray(user_ids, dtype=np.int64).ravel()
        self._call += 1
        n = uids.size
        items_out = np.full((n, k), PAD_ITEM, dtype=np.int64)
        scores_out = np.full((n, k), -np.inf, dtype=np.float32)
        if self.n_items == 0 or n == 0:
            return Recommendations(uids, items_out, scores_out)

        kk = min(k, self.n_items)
        chunk = max(1, min(self.chunk_size, self.max_chunk_cells // self.n_items))
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            part = uids[start:stop]
            scores = self._score_batch(part)
            self._mask(scores, part, exclude_seen, exclude)
            top = _top_k(scores, kk, self._tie_low)
            top_scores = np.take_along_axis(scores, top, axis=1)
            valid = top_scores > -np.inf
            items_out[start:stop, :kk] = np.where(valid, self.item_ids[top], PAD_ITEM)
            scores_out[start:stop, :kk] = np.where(valid, top_scores, -np.inf)
        return Recommendations(uids, items_out, scores_out)

    def _mask(
        self,
        scores: np.ndarray,
        uids: np.ndarray,
        exclude_seen: bool,
        exclude: Mapping[int, set[int]] | None,
    ) -> None:
        """Set excluded items of each row to ``-inf`` in place."""
        if exclude_seen:
            rows = self._user_index(uids)
            known = np.flatnonzero(rows >= 0)
            if known.size:
                sub = self._seen[rows[known]]
                local = np.repeat(known, np.diff(sub.indptr))
                scores[local, sub.indices] = -np.inf
        if exclude:
            local_rows: list[np.ndarray] = []
            item_lists: list[np.ndarray] = []
            for r, u in enumerate(uids.tolist()):
                extra = exclude.get(u)
                if extra:
                    arr = np.fromiter(extra, dtype=np.int64, count=len(extra))
                    item_lists.append(arr)
                    local_rows.append(np.full(arr.size, r, dtype=np.int64))
            if item_lists:
                cols = self._item_index(np.concatenate(item_lists))
                rr = np.concatenate(local_rows)
                keep = cols >= 0
                scores[rr[keep], cols[keep]] = -np.inf
