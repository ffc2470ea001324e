"""A fast, non-LLM user model learned from real logs: p(watch | user history, item).

Logistic regression over embedding features: the user is the mean vector of the items they
consumed (their real history, then what they watched in the simulation), the item its own
vector, and the features are their element-wise product, their cosine, the item's log
popularity and a bias. It is trained on the real train split (each user's next item against
random catalogue items the user never touched) with L2-regularised L-BFGS, so fitting a
catalogue takes seconds and a decision costs microseconds. The simulator uses it with
``response_model: learned`` (population-scale runs); it is also a fidelity baseline for the
LLM users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


@dataclass
class FitReport:
    """What a fit saw and how well it separates held-in pairs."""

    n_rows: int
    n_features: int
    train_auc: float
    converged: bool


class LogisticResponseModel:
    """p(the user watches the item), from history and item vectors.

    Args:
        item_vectors: item -> vector (any width; items without one count as zeros).
        popularity: item -> train-split interaction count.
        negatives: random negatives per positive in training.
        positions: target positions sampled per user in training.
        context: most recent history items that make the user vector.
        l2: L2 penalty on the weights (not the bias).
        seed: seeds the sampling of training pairs.
    """

    def __init__(self, item_vectors: Mapping[int, np.ndarray], popularity: Mapping[int, int], *,
                 negatives: int = 4, positions: int = 5, context: int = 20, l2: float = 1.0,
                 seed: int = 0) -> None:
        ids = sorted(int(i) for i in set(item_vectors) | set(popularity))
        self.index = {i: k for k, i in enumerate(ids)}
        dim = len(next(iter(item_vectors.values()))) if item_vectors else 0
        self.vectors = np.zeros((len(ids) + 1, dim), dtype=np.float64)  # last row: unknown
        for i, v in item_vectors.items():
            self.vectors[self.index[int(i)]] = np.asarray(v, dtype=np.float64)
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.vectors /= np.where(norms == 0, 1.0, norms)
        self.log_pop = np.zeros(len(ids) + 1)
        for i, c in popularity.items():
            self.log_pop[self.index[int(i)]] = np.log1p(float(c))
        self.negatives, self.positions, self.context = negatives, positions, context
        self.l2, self.seed = l2, seed
        self.weights: np.ndarray | None = None

    def _rows(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        unknown = len(self.index)
        return np.fromiter((self.index.get(int(i), unknown) for i in items), dtype=np.int64,
                           count=len(items))

    def user_vector(self, history: Sequence[int]) -> np.ndarray:
        """Mean unit vector of the user's last ``context`` items (zeros for no history)."""
        recent = list(history)[-self.context:]
        if not recent:
            return np.zeros(self.vectors.shape[1])
        return self.vectors[self._rows(recent)].mean(axis=0)

    def features(self, user_vecs: np.ndarray, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feature rows for (user vector, item) pairs."""
        rows = self._rows(items)
        iv = self.vectors[rows]
        prod = user_vecs * iv
        un = np.linalg.norm(user_vecs, axis=1)
        cos = prod.sum(axis=1) / np.where(un == 0, 1.0, un)
        return np.column_stack([prod, cos, self.log_pop[rows], np.ones(len(rows))])

    def fit(self, histories: Mapping[int, Sequence[int]]) -> FitReport:
        """Train on next-item prediction over the users' histories.

        Args:
            histories: user -> items in time order (the real train split).

        Raises:
            ValueError: no user has two or more items.
        """
        rng = np.random.default_rng(self.seed)
        catalogue = np.array(sorted(self.index), dtype=np.int64)
        u_vecs, items, labels = [], [], []
        for user in sorted(histories):
            h = list(histories[user])
            if len(h) < 2:
                continue
            seen = set(h)
            targets = rng.choice(np.arange(1, len(h)), size=min(self.positions, len(h) - 1),
                                 replace=False)
            for t in sorted(targets.tolist()):
                uv = self.user_vector(h[:t])
                negs = [int(i) for i in rng.choice(catalogue, size=self.negatives * 3)
                        if int(i) not in seen][: self.negatives]
                for item, label in [(h[t], 1.0)] + [(n, 0.0) for n in negs]:
                    u_vecs.append(uv)
                    items.append(item)
                    labels.append(label)
        if not labels:
            raise ValueError("no user has two or more items to learn from")
        x = self.features(np.array(u_vecs), items)
        y = np.array(labels)
        penalty = np.full(x.shape[1], self.l2)
        penalty[-1] = 0.0  # the bias is free

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            z = x @ w
            p = 1 / (1 + np.exp(-z))
            nll = np.sum(np.logaddexp(0, z) - y * z)
            grad = x.T @ (p - y) + penalty * w
            return float(nll + 0.5 * np.sum(penalty * w * w)), grad

        res = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B",
                       options={"maxiter": 500})
        self.weights = res.x
        return FitReport(len(y), x.shape[1], auc(x @ res.x, y), bool(res.success))

    def predict(self, user_vecs: np.ndarray, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """p(watch) for each (user vector, item) pair.

        Raises:
            RuntimeError: the model is not fitted.
        """
        if self.weights is None:
            raise RuntimeError("fit the response model first")
        z = self.features(np.asarray(user_vecs, dtype=np.float64), items) @ self.weights
        return 1 / (1 + np.exp(-z))


def collaborative_item_vectors(histories: Mapping[int, Sequence[int]], dim: int = 32,
                               seed: int = 0) -> dict[int, np.ndarray]:
    """Item vectors from the logs alone: a truncated SVD of the binary user × item matrix.

    For when no text or category vector is at hand (an RL data folder holds only ids). Items
    watched by the same users get close vectors, which is what the response model's history
    features need.

    Args:
        histories: user -> items (the logs the model may see, never evaluation targets).
        dim: vector width (capped below the matrix's smaller side).
        seed: seeds the SVD's start vector.

    Returns:
        item -> vector, for every item in the histories (empty when there are none).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    items = sorted({int(i) for h in histories.values() for i in h})
    if not items:
        return {}
    col = {i: k for k, i in enumerate(items)}
    pairs = {(r, col[int(i)]) for r, u in enumerate(sorted(histories)) for i in histories[u]}
    rows, cols = (np.fromiter((p[j] for p in pairs), np.int64, len(pairs)) for j in (0, 1))
    m = sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(histories), len(items)))
    k = min(dim, min(m.shape) - 1)
    if k < 1:  # one user or one item: nothing to factorise, every item is alike
        return {i: np.ones(1) for i in items}
    v0 = np.random.default_rng(seed).random(min(m.shape))
    _u, sing, vt = svds(m, k=k, v0=v0)
    vecs = (vt.T * np.sqrt(sing)).astype(np.float64)
    return {i: vecs[col[i]] for i in items}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (``nan`` without both classes).

    Mann-Whitney's U over (positive, negative) pairs, ties counted a half: the one AUC of the
    package (``rl.metrics`` reads it too).
    """
    from scipy.stats import mannwhitneyu

    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # The statistic does not depend on the p-value's method; asymptotic skips the exact one.
    u = mannwhitneyu(s[labels], s[~labels], method="asymptotic").statistic
    return float(u / (n_pos * n_neg))
