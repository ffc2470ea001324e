"""Full-catalogue ranking evaluation (HR@k, NDCG@k), following the MicroLens SASRec code.

Protocol (leave-one-out, see :mod:`environments.splits`): each user has one held-out target.
The model scores *every* catalogue item; the user's visible history is masked out (the
training items for validation, training items plus the validation item for test); the
target's 1-based rank among the rest gives ``HR@k = [rank <= k]`` and
``NDCG@k = [rank <= k] / log2(rank + 1)``, averaged over users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from vragent.environments.recommenders.base import Recommender
    from vragent.environments.splits import Split


def hit_ndcg_at_k(
    ranked_items: np.ndarray, targets: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user hit rate and NDCG of one target in already ranked lists.

    Args:
        ranked_items: ``(n, L)`` item ids, best first (padding such as ``-1`` is fine).
        targets: ``(n,)`` the target item of each row.
        k: cut-off; only the first ``min(k, L)`` positions count.

    Returns:
        ``(hr, ndcg)``, float64 arrays of shape ``(n,)``: ``hr`` is 1 where the target is in
        the top ``k``; ``ndcg`` is ``1 / log2(rank + 1)`` there (rank 1-based, first
        occurrence) and 0 elsewhere.

    Raises:
        ValueError: ``k < 1`` or the shapes do not match.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = np.asarray(ranked_items)
    tgt = np.asarray(targets).ravel()
    if ranked.ndim != 2 or ranked.shape[0] != tgt.size:
        raise ValueError(f"ranked_items {ranked.shape} does not match {tgt.size} targets")
    if ranked.shape[1] == 0:  # empty lists: nothing can hit (argmax needs a column)
        zeros = np.zeros(tgt.size, dtype=np.float64)
        return zeros, zeros.copy()
    match = ranked[:, :k] == tgt[:, None]
    hit = match.any(axis=1)
    rank = np.argmax(match, axis=1) + 1  # first occurrence; only used where hit
    ndcg = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
    return hit.astype(np.float64), ndcg


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int]) -> dict[str, np.ndarray]:
    """Per-user ``HR@k`` and ``NDCG@k`` from 1-based target ranks.

    Args:
        ranks: ``(n,)`` ranks, 1 = best.
        ks: cut-offs.

    Returns:
        ``{"HR@k": (n,), "NDCG@k": (n,)}`` float64 arrays for each ``k``.
    """
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r <= k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
    return out


def target_ranks(
    recommender: Recommender,
    user_ids: Sequence[int] | np.ndarray,
    targets: Sequence[int] | np.ndarray,
    histories: Sequence[Sequence[int]],
) -> np.ndarray:
    """Full-catalogue rank of each user's target item.

    Every catalogue item is scored with :meth:`Recommender.score`; the user's history items
    are masked out (except the target itself, should it be a re-watch), and the rank is
    **pessimistic**: ``1 + the number of other unmasked items scoring >= the target``. A
    tie therefore counts against the model, so a constant scorer ranks every target last
    instead of first, and a target scored ``-inf`` ranks behind every unmasked item.

    Users are scored in chunks of at most ``recommender.max_chunk_cells`` cells, so memory
    stays bounded on a ~20k-item catalogue.

    Args:
        recommender: a fitted model; its ``item_ids`` is the catalogue.
        user_ids: ``(n,)`` users (unknown users get the model's fallback).
        targets: ``(n,)`` the item to rank per user.
        histories: ``n`` item sequences to mask; ids outside the catalogue are ignored.

    Returns:
        int64 ranks of shape ``(n,)``, 1 = best, at most the number of unmasked items.

    Raises:
        ValueError: the lengths differ, or a target is not in the model's catalogue (fit
            the model with ``items=`` covering every target).
    """
    uids = np.asarray(user_ids, dtype=np.int64).ravel()
    tgt = np.asarray(targets, dtype=np.int64).ravel()
    if not uids.size == tgt.size == len(histories):
        raise ValueError(
            f"{uids.size} users, {tgt.size} targets and {len(histories)} histories differ"
        )
    n_items = recommender.n_items
    tcol = recommender._item_index(tgt)
    if (tcol < 0).any():
        bad = tgt[tcol < 0]
        raise ValueError(
            f"{bad.size} target(s) outside the recommender's catalogue (first: item {bad[0]})"
        )
    ranks = np.empty(uids.size, dtype=np.int64)
    chunk = max(1, min(recommender.chunk_size, recommender.max_chunk_cells // max(n_items, 1)))
    for start in range(0, uids.size, chunk):
        stop = min(start + chunk, uids.size)
        scores = recommender.score(uids[start:stop])
        rows = np.arange(stop - start)
        t = tcol[start:stop]
        # Masked cells: distinct (row, history item) pairs in the catalogue, target excluded.
        part = histories[start:stop]
        lengths = np.fromiter((len(h) for h in part), dtype=np.int64, count=stop - start)
        flat = np.fromiter((i for h in part for i in h), dtype=np.int64, count=int(lengths.sum()))
        hr = np.repeat(rows, lengths)
        hc = recommender._item_index(flat)
        keep = (hc >= 0) & (hc != t[hr])
        cells = np.unique(hr[keep] * n_items + hc[keep])
        hr, hc = cells // n_items, cells % n_items
        n_masked = np.bincount(hr, minlength=stop - start)
        scores[hr, hc] = -np.inf
        target_score = scores[rows, t]
        # Counts the target itself, hence "1 + others" with no explicit +1.
        at_least = (scores >= target_score[:, None]).sum(axis=1)
        # A -inf target ties every masked cell too; those are not competitors.
        ranks[start:stop] = np.where(target_score > -np.inf, at_least, n_items - n_masked)
    return ranks


def evaluate(
    recommender: Recommender,
    split: Split,
    stage: Literal["test", "valid"] = "test",
    users: Iterable[int] | None = None,
    ks: Sequence[int] = (10, 20),
    return_per_user: bool = False,
) -> dict[str, Any]:
    """HR@k and NDCG@k of a fitted model on a leave-one-out split.

    ``stage="valid"`` ranks ``split.valid[u]`` with the training items masked;
    ``stage="test"`` ranks ``split.test[u]`` with the training items and the validation item
    masked (the MicroLens protocol). Ranking is full-catalogue and pessimistic on ties (see
    :func:`target_ranks`).

    Args:
        recommender: a model fitted (usually on ``split.train_interactions()``) with a
            catalogue containing every target.
        split: the split.
        stage: ``"test"`` or ``"valid"``.
        users: restrict to these users (e.g. :func:`environments.splits.cold_start_users`);
            default every user of the split.
        ks: cut-offs.
        return_per_user: also return ``"per_user"``: a dict of ``(n,)`` arrays
            ``user_id``, ``rank`` and one per metric, for standard errors or bootstraps.

    Returns:
        ``{"HR@10": mean, "NDCG@10": mean, ..., "n_users": n}`` (means are NaN when ``n``
        is 0), plus ``"per_user"`` if asked.

    Raises:
        ValueError: ``stage`` is unknown or a target is outside the model's catalogue.
        KeyError: a user in ``users`` is not in the split.
    """
    if stage not in ("test", "valid"):
        raise ValueError(f"stage must be 'test' or 'valid', not {stage!r}")
    uids = split.users if users is None else [int(u) for u in users]
    upto = "valid" if stage == "test" else "train"
    truth = split.test if stage == "test" else split.valid
    histories = [split.history(u, upto) for u in uids]
    targets = np.array([truth[u] for u in uids], dtype=np.int64)
    ranks = target_ranks(recommender, uids, targets, histories)
    per_user = metrics_from_ranks(ranks, ks)
    result: dict[str, Any] = {
        name: float(values.mean()) if values.size else float("nan")
        for name, values in per_user.items()
    }
    result["n_users"] = len(uids)
    if return_per_user:
        result["per_user"] = {
            "user_id": np.asarray(uids, dtype=np.int64),
            "rank": ranks,
            **per_user,
        }
    return result
