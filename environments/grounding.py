"""Collaborative evidence for a user policy: what the logs say about a (user, item) pair.

A 135M-parameter language model reading titles knows almost nothing about who watches what.
The grounded US policy (:mod:`agents.grounded`) is therefore shown, next to each candidate,
three numbers that the real logs support and that no recommender arm under test produces:

* ``taste``: the learned response model's p(watch | history, item)
  (:class:`~environments.response_model.LogisticResponseModel`, collaborative item vectors);
* ``similar``: item-kNN similarity of the item to the user's whole history (what viewers of
  the user's items also watched; :class:`~environments.recommenders.ItemKNNRecommender`);
* ``popularity``: the item's interaction count.

Each is reported as a percentile (0-99) of the same signal over *reference pairs* drawn from
the fitted logs: every user's last item against its history (a real next item), one uniform
unseen item and one unseen item of matched popularity. So the scale means the same on every
dataset ("taste 90" beats 90 % of the reference pairs), and a policy trained on one dataset's
evidence reads another's.

Fit it on what the policy may know: training logs and, for held-out users, their histories,
never an evaluation target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from vragent.environments.recommenders.neighbors import ItemKNNRecommender
from vragent.environments.response_model import LogisticResponseModel, collaborative_item_vectors

#: Signals of :class:`Evidence`, in its field order.
SIGNALS = ("taste", "similar", "popularity")


@dataclass(frozen=True)
class Evidence:
    """Percentiles (0-99) of the three collaborative signals for one (user, item) pair."""

    taste: int
    similar: int
    popularity: int

    def line(self) -> str:
        """The evidence as the policy's prompt shows it."""
        # Short: these tokens run for every candidate (docs/performance.md).
        return f"Evidence: taste {self.taste}, similar {self.similar}, popularity {self.popularity}"


class CollaborativeGrounding:
    """Fitted signals and their reference percentiles.

    Args:
        histories: user -> items in time order (no evaluation target among them).
        catalogue: every item a candidate may be; defaults to the items in ``histories``.
        seed: seeds the response model's sampling, the SVD and the reference pairs.
        dim: width of the collaborative item vectors.
        max_reference_users: most users whose pairs make the reference percentiles.
    """

    def __init__(self, histories: Mapping[int, Sequence[int]],
                 catalogue: Sequence[int] | None = None, *, seed: int = 0, dim: int = 32,
                 max_reference_users: int = 5000) -> None:
        self.seed = int(seed)
        hist = {int(u): [int(i) for i in h] for u, h in histories.items() if len(h)}
        items = sorted({i for h in hist.values() for i in h} | set(map(int, catalogue or ())))
        self.catalogue = np.asarray(items, dtype=np.int64)
        frame = pd.DataFrame(
            [(u, i, k) for u, h in hist.items() for k, i in enumerate(h)],
            columns=["user_id", "item_id", "order"])
        self.knn = ItemKNNRecommender(seed=seed).fit(frame, items=items)
        self.counts = frame["item_id"].value_counts().reindex(self.catalogue, fill_value=0)
        vectors = collaborative_item_vectors(hist, dim=dim, seed=seed)
        self.taste = LogisticResponseModel(vectors, self.counts.to_dict(), seed=seed)
        self.taste.fit(hist)
        self.reference = self._reference(hist, max_reference_users)

    # ------------------------------------------------------------------ raw signals

    def raw(self, history: Sequence[int], items: Sequence[int]) -> np.ndarray:
        """The three signals of ``items`` for one user history, shape ``(len(items), 3)``."""
        items_arr = np.asarray(items, dtype=np.int64)
        taste = self.taste.predict(
            np.repeat(self.taste.user_vector(list(history))[None, :], items_arr.size, axis=0),
            items_arr)
        similar = self.knn.similarity_to(history, items_arr)
        pop = self.counts.reindex(items_arr, fill_value=0).to_numpy(dtype=np.float64)
        return np.column_stack([taste, similar, pop])

    def evidence(self, history: Sequence[int], items: Sequence[int]) -> list[Evidence]:
        """Percentile evidence of ``items`` for one user history."""
        raw = self.raw(history, items)
        pct = np.column_stack([
            np.searchsorted(self.reference[:, j], raw[:, j], side="right") * 100
            // max(1, self.reference.shape[0])
            for j in range(len(SIGNALS))
        ]).clip(0, 99)
        return [Evidence(*(int(v) for v in row)) for row in pct]

    # ------------------------------------------------------------------ reference

    def _reference(self, hist: Mapping[int, list[int]], max_users: int) -> np.ndarray:
        """Sorted signal values of the reference pairs, one column per signal."""
        rng = np.random.default_rng([self.seed, 7919])
        users = [u for u in sorted(hist) if len(hist[u]) >= 2]
        if len(users) > max_users:
            users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
        by_pop = self.catalogue[np.argsort(-self.counts.to_numpy(), kind="stable")]
        rank = {int(i): r for r, i in enumerate(by_pop.tolist())}
        cols = []
        for u in users:
            h = hist[u]
            seen = set(h)
            at = rank[h[-1]]
            near = by_pop[max(0, at - 25): at + 26]
            picks = [h[-1]]
            for pool in (self.catalogue, near):
                # A few seeded draws find an unseen item unless the user saw most of the pool.
                draws = [int(i) for i in rng.choice(pool, size=8) if int(i) not in seen]
                if draws:
                    picks.append(draws[0])
            cols.append(self.raw(h[:-1], picks))
        if not cols:
            return np.zeros((1, len(SIGNALS)))
        return np.sort(np.concatenate(cols), axis=0)
