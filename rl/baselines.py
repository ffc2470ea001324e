"""Non-LLM baselines for the US-agent tasks, all behind one :class:`Scorer` interface.

A scorer gives every (row, candidate) pair a number, higher meaning "more likely the real next
item". From those numbers:

* **judgement** (one candidate per row, label ``Yes``/``No``): the prediction is
  ``score > threshold``; the raw score is also what the pairwise AUC ranks;
* **selection** (several candidates per row): the pick is the argmax over the row's candidates.

Ties in a selection argmax are broken by a random draw seeded from the scorer's ``seed`` and
the row's ``group_id`` (``tie_break="random"``, the default), or by the lowest index
(``tie_break="first"``). The seeded draw keeps a scorer that gives every candidate the same
score (popularity on a sparse catalogue often does) at chance level whatever the order the
candidates were shown in, and a row's pick does not depend on which other rows share the call.

Rows follow the evaluation-data schema of :mod:`rl.datasets` (one dict per prompt, see
:func:`as_rows`); only ``task``, ``group_id``, ``user_id``, ``item_ids``, ``history_ids`` and
``label`` are read here.

Baselines:

* :class:`RandomScorer`: uniform scores, threshold 0.5 (chance level).
* :class:`PopularityScorer`: the popularity prior. Judgement ``Yes`` iff the candidate's count
  is above the **median count over the catalogue** (every catalogue item, zero counts
  included); selection picks the most popular candidate. Calibration on the shared data
  (tests/test_rl_evaluation.py) reproduces the issue's figures when the counts come from the
  users' histories only, i.e. with every user's held-out target excluded.
* :class:`ItemKNNScorer`: item-to-item cosine (or raw co-occurrence) on the training
  interactions; a candidate's score is the sum of its similarities to the row's history
  items. Its judgement threshold is tuned on training rows (:func:`tune_threshold`).
* :class:`~rl.fitted_baselines.RecommenderScorer` and
  :class:`~rl.fitted_baselines.ResponseModelScorer` (a recommender's scores, the simulator's
  learned user model) wrap fitted models; :mod:`rl.fitted_baselines` also fits every baseline
  on all training logs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from vragent.environments.recommenders.neighbors import item_similarity

Row = Mapping[str, Any]
TieBreak = Literal["random", "first"]


# ---------------------------------------------------------------------------- row helpers


def as_rows(rows: Any) -> list[dict[str, Any]]:
    """The evaluation rows as a list of dicts.

    Args:
        rows: an HF ``datasets.Dataset`` (anything with ``to_list()``), a pandas frame, or an
            iterable of mappings.

    Returns:
        One dict per row, in order (a list of dicts is returned as is, not copied).
    """
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        return rows  # already the right shape: no copy, the scorers call this often
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    to_list = getattr(rows, "to_list", None)
    if callable(to_list) and not isinstance(rows, list):
        return list(to_list())
    return [dict(r) for r in rows]


def is_yes(label: str | bool) -> bool:
    """Whether a judgement label is the positive class (``"Yes"``, ``True``, ``"1"``)."""
    if isinstance(label, bool | np.bool_):
        return bool(label)
    return str(label).strip().lower() in ("yes", "true", "1")


def _key32(value: object) -> int:
    # A stable 32-bit key: Python's hash() of a str changes between processes.
    return zlib.crc32(str(value).encode("utf-8"))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fast, well-mixed hash for seeded scores."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_rng(seed: int, row: Row, *extra: int) -> np.random.Generator:
    """A generator that depends only on ``seed``, the row's ``group_id`` and ``extra``.

    Draws made with it do not depend on the order of the rows or on which rows share a call.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _key32(row.get("group_id", "")),
                                  *(int(e) & 0xFFFFFFFF for e in extra)])


def argmax_tie_break(
    scores: np.ndarray, rng: np.random.Generator | Callable[[], np.random.Generator] | None
) -> int:
    """Index of the largest score; ties go to a draw from ``rng``, or the lowest index if None.

    ``rng`` may be a generator or a function returning one (built only when there is a tie).
    """
    scores = np.asarray(scores, dtype=np.float64)
    best = np.flatnonzero(scores == scores.max())
    if rng is None or best.size == 1:
        return int(best[0])
    gen = rng() if callable(rng) else rng
    return int(best[gen.integers(best.size)])


def catalogue_columns(catalogue: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in the **sorted** array ``catalogue``; ``-1`` where absent."""
    ids = np.asarray(ids, dtype=np.int64)
    if catalogue.size == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(catalogue, ids), catalogue.size - 1)
    return np.where(catalogue[pos] == ids, pos, -1).astype(np.int64)


# ---------------------------------------------------------------------------- thresholds


def tune_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[str | bool]) -> float:
    """The judgement threshold that maximises accuracy of ``score > threshold`` on these rows.

    Candidates are ``-inf`` (everything but ``-inf`` scores is ``Yes``) and the midpoints
    between consecutive distinct scores (the largest score itself above the top, making
    everything ``No``). Of several thresholds with the best accuracy the lowest is returned.

    Args:
        scores: one score per judgement row (``-inf`` allowed, no NaN).
        labels: the rows' labels (``"Yes"``/``"No"`` or booleans).

    Returns:
        The threshold; ``0.0`` when there are no rows.

    Raises:
        ValueError: lengths differ or a score is NaN.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.fromiter((is_yes(v) for v in labels), dtype=bool, count=len(labels))
    if s.size != y.size:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if s.size == 0:
        return 0.0
    uniq = np.unique(s)
    upper = np.append(uniq[1:], uniq[-1])
    with np.errstate(invalid="ignore"):  # -inf + -inf is fine, -inf + inf cannot occur here
        mids = np.where(np.isfinite(uniq) & np.isfinite(upper), (uniq + upper) / 2, uniq)
    thresholds = np.concatenate([[-np.inf], mids])
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    # Correct = positives above t + negatives at or below t.
    tp = pos.size - np.searchsorted(pos, thresholds, side="right")
    tn = np.searchsorted(neg, thresholds, side="right")
    return float(thresholds[int(np.argmax(tp + tn))])


# ---------------------------------------------------------------------------- interface


@runtime_checkable
class Scorer(Protocol):
    """What :func:`rl.evaluation.evaluate` needs from a non-LLM model."""

    name: str

    def judgement_scores(self, rows: Sequence[Row]) -> np.ndarray:
        """One score per judgement row, higher = more likely ``Yes``."""
        ...

    def judge(self, rows: Sequence[Row]) -> np.ndarray:
        """Boolean ``Yes`` predictions, one per judgement row."""
        ...

    def select(self, rows: Sequence[Row]) -> list[int]:
        """The picked candidate index of each selection row."""
        ...


class BaseScorer:
    """Shared judgement/selection logic; subclasses implement :meth:`item_scores`.

    Args:
        name: the model's name in result tables.
        seed: seeds tie-breaking (and the scores of :class:`RandomScorer`).
        threshold: judgement threshold (``Yes`` iff ``score > threshold``); ``None`` until
            :meth:`fit_threshold` sets it.
        tie_break: ``"random"`` (seeded per row) or ``"first"`` (lowest index).
    """

    def __init__(self, name: str, *, seed: int = 0, threshold: float | None = None,
                 tie_break: TieBreak = "random") -> None:
        if tie_break not in ("random", "first"):
            raise ValueError(f"tie_break must be 'random' or 'first', got {tie_break!r}")
        self.name = name
        self.seed = int(seed)
        self.threshold = threshold
        self.tie_break = tie_break

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threshold={self.threshold!r})"

    def item_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """Scores of each row's ``item_ids``, one float64 array per row."""
        raise NotImplementedError

    def judgement_scores(self, rows: Sequence[Row]) -> np.ndarray:
        """One score per judgement row: the score of its single candidate.

        Raises:
            ValueError: a row does not have exactly one candidate.
        """
        rows = as_rows(rows)
        for r in rows:
            if len(r["item_ids"]) != 1:
                raise ValueError(f"judgement row {r.get('group_id')!r} has "
                                 f"{len(r['item_ids'])} candidates, expected 1")
        out = self.item_scores(rows)
        return np.array([float(s[0]) for s in out], dtype=np.float64)

    def fit_threshold(self, rows: Sequence[Row]) -> BaseScorer:
        """Tune the judgement threshold on (training) judgement rows; returns ``self``."""
        rows = [r for r in as_rows(rows) if r["task"] == "judgement"]
        self.threshold = tune_threshold(self.judgement_scores(rows), [r["label"] for r in rows])
        return self

    def judge(self, rows: Sequence[Row]) -> np.ndarray:
        """``Yes`` predictions (``score > threshold``) for judgement rows.

        Raises:
            ValueError: no threshold was set or tuned.
        """
        if self.threshold is None:
            raise ValueError(f"{self.name}: no judgement threshold; call fit_threshold(rows) "
                             "on training rows first")
        return self.judgement_scores(rows) > self.threshold

    def selection_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """Per-candidate scores of each selection row."""
        return self.item_scores(as_rows(rows))

    def select(self, rows: Sequence[Row]) -> list[int]:
        """The argmax candidate of each selection row (ties: see the module docstring)."""
        rows = as_rows(rows)
        picks = []
        for r, s in zip(rows, self.item_scores(rows), strict=True):
            rng = partial(row_rng, self.seed, r, 0x5E1) if self.tie_break == "random" else None
            picks.append(argmax_tie_break(s, rng))
        return picks


# ---------------------------------------------------------------------------- baselines


class RandomScorer(BaseScorer):
    """Uniform random scores in [0, 1), threshold 0.5: the chance-level reference.

    A candidate's score is a hash of ``(seed, group_id, user_id, item_id)``, so it does not
    depend on the row order or on which rows share the call.
    """

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        super().__init__(name, seed=seed, threshold=0.5, tie_break="first")

    def item_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """Seeded uniform scores, one array per row."""
        rows = as_rows(rows)
        if not rows:
            return []
        groups = np.array([_key32(r.get("group_id", "")) for r in rows], dtype=np.uint64)
        users = np.array([int(r["user_id"]) for r in rows], dtype=np.int64).view(np.uint64)
        sizes = np.array([len(r["item_ids"]) for r in rows], dtype=np.int64)
        items = np.concatenate([np.asarray(r["item_ids"], dtype=np.int64) for r in rows])
        key = _mix64(_mix64(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF) ^ groups) ^ users)
        h = _mix64(np.repeat(key, sizes) ^ _mix64(items.view(np.uint64))) >> np.uint64(11)
        flat = h.astype(np.float64) * 2.0**-53  # 53 bits: exact in a float64
        return np.split(flat, np.cumsum(sizes)[:-1])


class PopularityScorer(BaseScorer):
    """The popularity prior: ``Yes`` iff the candidate's count is above the median count.

    Args:
        popularity: interaction count per item id; missing items count 0.
        catalogue: the items whose counts give the median (zero counts included); defaults to
            the keys of ``popularity``.
        name: the model's name in result tables.
        seed: seeds selection tie-breaking.
        tie_break: see :class:`BaseScorer`.
    """

    def __init__(self, popularity: Mapping[int, int | float],
                 catalogue: Iterable[int] | None = None, *, name: str = "popularity",
                 seed: int = 0, tie_break: TieBreak = "random") -> None:
        self.popularity = {int(k): float(v) for k, v in popularity.items()}
        items = list(self.popularity) if catalogue is None else [int(i) for i in catalogue]
        counts = [self.popularity.get(i, 0.0) for i in items]
        self.median = float(np.median(counts)) if counts else 0.0
        super().__init__(name, seed=seed, threshold=self.median, tie_break=tie_break)

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, catalogue: Iterable[int] | None = None,
                          **kwargs: Any) -> PopularityScorer:
        """Count each item's rows in an interactions frame (``item_id`` column).

        Pass the interactions the models may see (histories, not the held-out targets) and
        the full catalogue, so never-watched items count 0 in the median.
        """
        counts = interactions["item_id"].value_counts()
        return cls({int(i): int(c) for i, c in counts.items()}, catalogue, **kwargs)

    def item_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """Each candidate's count."""
        pop = self.popularity
        return [np.array([pop.get(int(i), 0.0) for i in r["item_ids"]], dtype=np.float64)
                for r in rows]


class ItemKNNScorer(BaseScorer):
    """Item-to-item similarity to the row's history, from training co-occurrences.

    The similarity is the recommender's (:func:`environments.recommenders.neighbors.
    item_similarity`, in float64): ``co(i, j)`` is the number of training users who watched
    both ``i`` and ``j`` (each user's items counted once); with ``similarity="cosine"``
    (default) ``sim(i, j) = co(i, j) / (sqrt(n_i) * sqrt(n_j) + shrink)`` where ``n_i`` is
    ``i``'s user count; with ``"cooccurrence"`` ``sim = co``. Each item keeps its
    ``k_neighbors`` most similar items (all of them with ``None``). A candidate's score is the
    sum of ``sim(h, c)`` over the distinct items ``h`` of the row's ``history_ids`` (the row's
    own history, so held-out users need not be in the training frame). Items outside the
    fitted catalogue contribute 0. The defaults (cosine, shrink 10, 100 neighbours) are those
    of :class:`environments.recommenders.ItemKNNRecommender`.

    With ``popularity_fallback`` a candidate whose similarity sum is 0 scores
    ``0.5 * (smallest similarity in the model) * pop / max pop`` instead: below every real
    score, so popularity only orders the candidates the history says nothing about.

    Fit on interactions that hold no evaluation target (training users' sequences, plus
    optionally the held-out users' histories, :func:`history_interactions`). The judgement
    threshold is tuned on training rows (:meth:`fit_threshold`).

    Args:
        similarity: ``"cosine"`` or ``"cooccurrence"``.
        shrink: added to the cosine denominator; damps similarities of rare items.
        k_neighbors: neighbours kept per item, ``None`` for all.
        popularity_fallback: order unconnected candidates by popularity (see above).
        name: the model's name in result tables.
        seed: seeds selection tie-breaking.
        threshold: a known judgement threshold, else tune one.
        tie_break: see :class:`BaseScorer`.
    """

    def __init__(self, *, similarity: Literal["cosine", "cooccurrence"] = "cosine",
                 shrink: float = 10.0, k_neighbors: int | None = 100,
                 popularity_fallback: bool = True, name: str = "itemknn", seed: int = 0,
                 threshold: float | None = None, tie_break: TieBreak = "random") -> None:
        if similarity not in ("cosine", "cooccurrence"):
            raise ValueError(f"similarity must be 'cosine' or 'cooccurrence', got {similarity!r}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        if k_neighbors is not None and k_neighbors < 1:
            raise ValueError(f"k_neighbors must be None or >= 1, got {k_neighbors}")
        super().__init__(name, seed=seed, threshold=threshold, tie_break=tie_break)
        self.similarity = similarity
        self.shrink = float(shrink)
        self.k_neighbors = k_neighbors
        self.popularity_fallback = popularity_fallback
        self._sim: sp.csr_matrix | None = None

    def fit(self, interactions: pd.DataFrame, items: Iterable[int] | None = None) -> ItemKNNScorer:
        """Build the item × item similarity from ``user_id, item_id`` rows (``order`` unused).

        Args:
            interactions: training interactions, without any evaluation target.
            items: the catalogue; defaults to the items in ``interactions``. Interactions
                with items outside it are ignored.

        Returns:
            ``self``.
        """
        users = interactions["user_id"].to_numpy(dtype=np.int64)
        item_col = interactions["item_id"].to_numpy(dtype=np.int64)
        cat = np.unique(item_col if items is None else np.fromiter(items, dtype=np.int64))
        self.item_ids = cat
        col = catalogue_columns(cat, item_col)
        ok = col >= 0
        _, user_idx = np.unique(users[ok], return_inverse=True)
        n_users = int(user_idx.max()) + 1 if user_idx.size else 0
        x = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.float64), (user_idx, col[ok])),
                          shape=(n_users, cat.size))
        x.sum_duplicates()
        x.data[:] = 1.0  # a re-watch counts once
        n_i = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        sim = item_similarity(x, shrink=self.shrink, k_neighbors=self.k_neighbors,
                              similarity=self.similarity, dtype=np.float64)
        self._sim = sim
        self._smallest = float(sim.data.min()) if sim.nnz else 1.0
        top = n_i.max() if n_i.size else 0.0
        self._pop_norm = n_i / top if top > 0 else n_i
        return self

    def item_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """Summed similarity of each candidate to the row's history (plus the fallback).

        Raises:
            RuntimeError: :meth:`fit` was not called.
        """
        if self._sim is None:
            raise RuntimeError("ItemKNNScorer must be fit() before scoring")
        rows = as_rows(rows)
        cat = self.item_ids
        # One (history item, candidate) pair per cell to look up: far fewer cells than the
        # dense history × catalogue product, which is what makes this fast on big catalogues.
        cand_cols = [catalogue_columns(cat, np.asarray(r["item_ids"], dtype=np.int64))
                     for r in rows]
        sizes = np.array([c.size for c in cand_cols], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        pair_h, pair_slot = [], []
        for k, r in enumerate(rows):
            hist = catalogue_columns(cat, np.asarray(r["history_ids"], dtype=np.int64))
            hist = np.unique(hist[hist >= 0])
            if hist.size and sizes[k]:
                pair_h.append(np.repeat(hist, sizes[k]))
                pair_slot.append(np.tile(np.arange(offsets[k], offsets[k + 1]), hist.size))
        flat_cand = np.concatenate(cand_cols) if cand_cols else np.zeros(0, dtype=np.int64)
        totals = np.zeros(flat_cand.size, dtype=np.float64)
        if pair_h:
            h = np.concatenate(pair_h)
            slot = np.concatenate(pair_slot)
            c = flat_cand[slot]
            valid = c >= 0
            vals = np.asarray(self._sim[h[valid], c[valid]]).ravel()
            totals = np.bincount(slot[valid], weights=vals, minlength=flat_cand.size)
        if self.popularity_fallback:
            pop = np.where(flat_cand >= 0, self._pop_norm[np.maximum(flat_cand, 0)], 0.0)
            totals = np.where(totals > 0, totals, 0.5 * self._smallest * pop)
        return [totals[offsets[k]:offsets[k + 1]] for k in range(len(rows))]
