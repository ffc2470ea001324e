"""Metrics of the US-agent evaluation (definitions in :mod:`rl.evaluation`).

Judgement: accuracy, precision, recall, F1 and the grouped pairwise AUC; selection: accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from vragent.environments.response_model import auc
from vragent.rl.baselines import is_yes

_WORDS = re.compile(r"\S+")


def mean_words(texts: Sequence[str]) -> float | None:
    """Mean completion length in whitespace-separated words (``None`` for no texts)."""
    return float(np.mean([len(_WORDS.findall(t)) for t in texts])) if texts else None


def pairwise_auc(
    labels: Sequence[str | bool], scores: Sequence[float], groups: Sequence[str] | None = None
) -> float | None:
    """Mean of ``1[s_pos > s_neg] + 0.5 * 1[tie]`` over (positive, negative) pairs in a group.

    Args:
        labels: ``"Yes"``/``"No"`` or booleans.
        scores: one score per row, higher = more likely ``Yes``.
        groups: each row's group; ``None`` puts every row in one group.

    Returns:
        The AUC, or ``None`` when no group holds both a positive and a negative.
    """
    y = np.fromiter((is_yes(v) for v in labels), dtype=bool, count=len(labels))
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size != y.size:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if groups is None:
        return None if y.all() or not y.any() else auc(s, y)
    g = pd.factorize(pd.Series(list(groups), dtype=object))[0]
    # All within-group pairs at once: a merge of the positives with the negatives on the group.
    pos = pd.DataFrame({"g": g[y], "sp": s[y]})
    neg = pd.DataFrame({"g": g[~y], "sn": s[~y]})
    pairs = pos.merge(neg, on="g", how="inner")
    if pairs.empty:
        return None
    wins = (pairs["sp"] > pairs["sn"]).to_numpy() + 0.5 * (pairs["sp"] == pairs["sn"]).to_numpy()
    return float(wins.mean())


def judgement_metrics(
    labels: Sequence[str | bool],
    predictions: Sequence[bool | None],
    scores: Sequence[float] | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, float | int | None]:
    """Accuracy, precision, recall, F1 (``Yes`` = positive), pairwise AUC and ``none_rate``.

    Args:
        labels: ``"Yes"``/``"No"`` or booleans, one per row.
        predictions: ``True`` for ``Yes``, ``False`` for ``No``, ``None`` for no readable
            answer (wrong for accuracy, ``No`` for precision and recall).
        scores: optional scores for the AUC (higher = more likely ``Yes``).
        groups: each row's ``group_id``; the AUC only compares rows of the same group.

    Returns:
        ``n``, ``accuracy``, ``precision`` (0 with no ``Yes`` prediction), ``recall`` (0 with no
        ``Yes`` label), ``f1`` (0 when P + R = 0), ``auc`` (``None`` without scores or
        pairs) and ``none_rate``. Rates are ``None`` when there are no rows.

    Raises:
        ValueError: the sequences have different lengths.
    """
    y = np.fromiter((is_yes(v) for v in labels), dtype=bool, count=len(labels))
    if len(predictions) != y.size:
        raise ValueError(f"{len(predictions)} predictions but {y.size} labels")
    none = np.array([p is None for p in predictions], dtype=bool)
    pred = np.array([bool(p) if p is not None else False for p in predictions], dtype=bool)
    n = int(y.size)
    if n == 0:
        return {"n": 0, "accuracy": None, "precision": None, "recall": None, "f1": None,
                "auc": None, "none_rate": None}
    correct = (pred == y) & ~none
    tp = int((pred & y).sum())
    n_pred, n_pos = int(pred.sum()), int(y.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    auc = None
    if scores is not None:
        auc = pairwise_auc(y.tolist(), scores, groups)
    return {"n": n, "accuracy": float(correct.mean()), "precision": precision, "recall": recall,
            "f1": f1, "auc": auc, "none_rate": float(none.mean())}


def selection_metrics(
    correct_index: Sequence[int], predicted_index: Sequence[int | None]
) -> dict[str, float | int | None]:
    """Selection accuracy (a ``None`` pick is wrong), ``n`` and ``none_rate``.

    Raises:
        ValueError: the sequences have different lengths.
    """
    if len(correct_index) != len(predicted_index):
        raise ValueError(f"{len(predicted_index)} predictions but {len(correct_index)} rows")
    n = len(correct_index)
    if n == 0:
        return {"n": 0, "accuracy": None, "none_rate": None}
    hits = sum(p is not None and int(p) == int(c)
               for c, p in zip(correct_index, predicted_index, strict=True))
    nones = sum(p is None for p in predicted_index)
    return {"n": n, "accuracy": hits / n, "none_rate": nones / n}


