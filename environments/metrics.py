"""What a recommender arm does to a population: coverage, diversity, novelty, bias, bubbles.

Pure functions over item ids, so they can serve the A/B runner, the feedback-loop scenarios and
the dashboard alike (issue 6). Each is checked against hand-computed cases in
``tests/test_metrics_and_stats.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def catalogue_coverage(slates: Iterable[Sequence[int]], catalogue_size: int) -> float:
    """Share of the catalogue recommended at least once.

    Raises:
        ValueError: ``catalogue_size`` is not positive.
    """
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    shown = {int(i) for slate in slates for i in slate}
    return len(shown) / catalogue_size


#: Slates per numpy block in :func:`intra_list_diversity`.
ILD_BLOCK_SLATES = 4096


def intra_list_diversity(slates: Iterable[Sequence[int]],
                         embeddings: Mapping[int, np.ndarray]) -> float | None:
    """Mean over slates of the mean pairwise cosine distance (1 − cos) of their items.

    Items without an embedding are left out; slates with fewer than two embedded items do not
    count. ``None`` when no slate counts.
    """
    # Slates of one length are done together as a (slates, length, dim) block: a population
    # step has a slate per user, and one numpy call per slate would dominate the step.
    by_len: dict[int, list[list[np.ndarray]]] = {}
    for slate in slates:
        vecs = [embeddings[i] for i in slate if i in embeddings]
        if len(vecs) >= 2:
            by_len.setdefault(len(vecs), []).append(vecs)
    if not by_len:
        return None
    total, count = 0.0, 0
    for length, group in by_len.items():
        iu = np.triu_indices(length, k=1)
        # In blocks, so wide vectors (384-d MiniLM) for 100k slates never sit in one array.
        for start in range(0, len(group), ILD_BLOCK_SLATES):
            m = np.asarray(group[start:start + ILD_BLOCK_SLATES], dtype=np.float64)
            norms = np.linalg.norm(m, axis=2, keepdims=True)
            unit = m / np.where(norms == 0, 1.0, norms)
            cos = np.einsum("nid,njd->nij", unit, unit)
            total += float(np.sum(np.mean(1.0 - cos[:, iu[0], iu[1]], axis=1)))
        count += len(group)
    return total / count


def novelty(slates: Iterable[Sequence[int]], popularity: Mapping[int, int],
            n_users: int) -> float | None:
    """Mean self-information ``-log2(p(i))`` of recommended items, ``p(i) = pop(i) / n_users``.

    Popular items score low, long-tail items high. Items nobody watched get ``pop = 1`` (the
    most novel finite value). ``None`` for no items.
    """
    if n_users <= 0:
        raise ValueError("n_users must be positive")
    bits = [-math.log2(max(popularity.get(int(i), 0), 1) / n_users)
            for slate in slates for i in slate]
    return float(np.mean(bits)) if bits else None


def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of exposure counts over the catalogue (0 equal, → 1 concentrated).

    Pass one count per catalogue item, zeros included, or the index of never-shown items is
    lost. Uses the sorted-values formula ``sum((2k − n − 1) x_k) / (n · sum(x))``.
    """
    x = np.asarray(counts, dtype=np.float64)
    return float(gini_rows(x[None, :])[0]) if x.size else 0.0


def gini_rows(counts: np.ndarray, n_total: int | None = None) -> np.ndarray:
    """:func:`gini` of each row of ``counts``, each padded with zeros to ``n_total`` items.

    A paired bootstrap of an A/B test holds only the shown items' counts per resample; the
    padding puts the never-shown rest of the catalogue back without materialising it.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64), axis=1)
    m = x.shape[1]
    n = m if n_total is None else int(n_total)
    if n < m:
        raise ValueError(f"n_total {n} is smaller than the {m} counts of a row")
    k = np.arange(n - m + 1, n + 1, dtype=np.float64)  # ranks of the row among n (zeros first)
    num = ((2 * k - n - 1) * x).sum(axis=1)
    tot = x.sum(axis=1)
    return np.where(tot > 0, num / (n * np.where(tot > 0, tot, 1.0)), 0.0)


def lorenz(counts: Sequence[float] | np.ndarray, n_total: int | None = None,
           points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """The Lorenz curve of exposure: share of items (poorest first) against share of exposure.

    ``counts`` are the shown items' exposure counts, padded with zeros to ``n_total`` items
    (the never-shown rest of the catalogue), as :func:`gini_rows`. The curve is sampled at
    ``points`` evenly spaced item shares from 0 to 1; twice the area between it and the
    diagonal is the Gini coefficient (up to the sampling).
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = x.size if n_total is None else int(n_total)
    if n < x.size:
        raise ValueError(f"n_total {n} is smaller than the {x.size} counts")
    full = np.concatenate([np.zeros(n - x.size), x])
    cum = np.concatenate([[0.0], np.cumsum(full)])
    share = np.linspace(0.0, 1.0, points)
    total = cum[-1]
    y = np.interp(share * n, np.arange(n + 1), cum) / total if total > 0 else share.copy()
    return share, y


def profile_entropy(categories: Iterable[str]) -> float:
    """Shannon entropy in bits of a user's consumed categories (``"a|b"`` counts both).

    A filter bubble shows as this entropy falling over steps.
    """
    counts = Counter(c for cat in categories for c in str(cat).split("|") if c)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    p = np.array(list(counts.values()), dtype=np.float64) / total
    return float(-(p * np.log2(p)).sum())


def like_calibration_rows(shown: np.ndarray, likes: np.ndarray,
                          real: np.ndarray) -> np.ndarray:
    """Like-rate calibration of each row of item-level counts (``nan``: no shared item).

    A row's value is the impression-weighted mean ``|simulated like rate − real like rate|``
    over the items with a known real rate (MicroLens: likes / views).

    Args:
        shown: ``(rows, items)`` impressions, e.g. one row per bootstrap resample.
        likes: the same shape, likes.
        real: ``(items,)`` real like rates, ``nan`` where unknown.
    """
    known = ~np.isnan(real)
    sh, lk = shown[:, known], likes[:, known]
    err = np.abs(np.divide(lk, sh, out=np.zeros_like(lk), where=sh > 0) - real[known])
    total = sh.sum(axis=1)
    return np.where(total > 0, (err * sh).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def coverage_rows(exposure: np.ndarray, catalogue_size: int) -> np.ndarray:
    """:func:`catalogue_coverage` of each row of item-level exposure counts."""
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    return (np.asarray(exposure) > 0).sum(axis=1) / catalogue_size
