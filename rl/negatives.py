"""Negative sampling for the RL datasets: random, popularity-matched and hard negatives.

Every protocol excludes every item of the user's full real sequence (history and target), so a
"No" is never an item the user actually watched. Each draw comes from a generator seeded by
``(seed, stream, user)``: a user's negatives do not depend on which other users are in the
build, and the same seed always gives the same rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from vragent.environments.recommenders import Recommender, make_recommender

#: The paper's hard negatives come from the last ranks of this top-k list.
HARD_K = 10

# Independent random streams (the second word of every generator seed).
STREAM_SPLIT = 1
STREAM_RANDOM = 2
STREAM_POPULAR = 3
STREAM_HARD_FALLBACK = 4
STREAM_SHUFFLE = 5
STREAM_RANK_TIES = 6
STREAM_STORE = 7

_MAX_REJECTION_ROUNDS = 32


def user_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A generator for one (seed, stream, keys...) tuple; independent of every other tuple."""
    return np.random.default_rng([int(seed), int(stream), *(int(k) for k in keys)])


def item_popularity(
    histories: Mapping[int, Sequence[int]], items: Iterable[int] | None = None
) -> pd.Series:
    """Interaction counts per item over the users' histories.

    Pass histories without their targets: then the popularity prior the evaluation compares
    against cannot have seen any positive.

    Args:
        histories: user -> item ids (the shown histories, targets excluded).
        items: the catalogue; items without interactions get 0. Defaults to the items that
            occur in ``histories``.

    Returns:
        int64 counts indexed by item id (sorted), named ``"popularity"``.
    """
    flat = [i for seq in histories.values() for i in seq]
    counts = pd.Series(np.asarray(flat, dtype=np.int64)).value_counts()
    index = np.unique(np.fromiter(items, dtype=np.int64)) if items is not None else None
    if index is None:
        index = np.sort(counts.index.to_numpy(dtype=np.int64))
    out = counts.reindex(index, fill_value=0).astype("int64")
    out.index.name = "item_id"
    return out.rename("popularity")


def draw_unseen(
    rng: np.random.Generator, pool: np.ndarray, seen: Collection[int], n: int
) -> list[int]:
    """``n`` distinct items of ``pool`` outside ``seen``, uniformly, in draw order.

    Rejection sampling costs O(n) for a large catalogue and a short sequence (the usual case);
    after a few rounds an exact set difference takes over, so a nearly exhausted pool still
    terminates.

    Raises:
        ValueError: fewer than ``n`` unseen items exist.
    """
    out: list[int] = []
    taken: set[int] = set()
    for _ in range(_MAX_REJECTION_ROUNDS):
        if len(out) >= n or not len(pool):
            break
        for i in pool[rng.integers(0, len(pool), size=2 * n + 8)].tolist():
            if i not in seen and i not in taken:
                out.append(i)
                taken.add(i)
                if len(out) == n:
                    return out
    if len(out) < n:
        rest = np.setdiff1d(pool, np.fromiter({*seen, *taken}, dtype=np.int64))
        if rest.size < n - len(out):
            raise ValueError(f"only {len(out) + rest.size} unseen items, {n} needed")
        out += rng.choice(rest, size=n - len(out), replace=False).tolist()
    return out


def hard_slice(top: Sequence[int], m: int, k: int = HARD_K) -> list[int] | None:
    """The last ``m`` ranks of a top-``k`` list (m=3: ranks 8–10), or ``None`` if it is short."""
    if not 1 <= m <= k or len(top) < k:
        return None
    return [int(i) for i in top[k - m : k]]


def hard_negatives(
    top: Sequence[int], seen: Collection[int], m: int, fallback: Sequence[int], k: int = HARD_K
) -> tuple[list[int], bool]:
    """The paper's hard negatives for one sample, with its all-or-nothing fallback.

    The last ``m`` ranks of the recommender's top-``k`` are used only when none of them is in
    the user's sequence; otherwise (or when the list is shorter than ``k``) *all* negatives of
    the sample are the random unseen ``fallback`` items.

    Args:
        top: the recommender's top-k item ids for the user, best first.
        seen: the user's full real sequence (history and target).
        m: negatives wanted.
        fallback: at least ``m`` random unseen items.
        k: the list length the ranks refer to.

    Returns:
        The negatives and whether the fallback was used.
    """
    picked = hard_slice(top, m, k)
    if picked is None or any(i in seen for i in picked):
        return [int(i) for i in fallback[:m]], True
    return picked, False


class NegativeSampler:
    """Seeded random and popularity-matched negatives over one catalogue.

    Args:
        catalogue: the item ids negatives are drawn from.
        popularity: counts indexed by item id (:func:`item_popularity`); catalogue items
            missing from it count 0.
        seed: the build seed.
        window: popularity-matched negatives come from the ``window`` unseen items ranked
            nearest above the positive and the ``window`` nearest below.
    """

    def __init__(
        self, catalogue: Iterable[int], popularity: pd.Series, seed: int, window: int = 50
    ) -> None:
        if window < 1:
            raise ValueError(f"popular_window must be >= 1, got {window}")
        self.catalogue = np.unique(np.fromiter(catalogue, dtype=np.int64))
        self.seed = int(seed)
        self.window = int(window)
        counts = popularity.reindex(self.catalogue, fill_value=0).to_numpy(dtype=np.int64)
        # Ties (many items share a count) are ordered at random, so an item's rank inside a
        # tie carries no information and a prior that reads ranks stays at chance there.
        ties = user_rng(self.seed, STREAM_RANK_TIES).permutation(self.catalogue.size)
        self.by_rank = self.catalogue[np.lexsort((ties, -counts))]
        self.rank_of = {int(i): r for r, i in enumerate(self.by_rank.tolist())}

    def random(self, user: int, seen: Collection[int], n: int, stream: int = STREAM_RANDOM
               ) -> list[int]:
        """``n`` uniform unseen catalogue items for ``user`` (seeded per user and stream)."""
        return draw_unseen(user_rng(self.seed, stream, user), self.catalogue, seen, n)

    def popular(self, user: int, positive: int, seen: Collection[int], n: int) -> list[int]:
        """``n`` unseen items whose popularity rank is nearest the positive's.

        The candidates are the ``window`` nearest unseen items ranked above the positive and
        the ``window`` nearest below it. Each negative picks a side by a fair coin (the other
        side once one runs out), so a negative is as likely to be more popular than the
        positive as less: a uniform window would lean below, because the items just above a
        positive are the ones the user has most likely seen already. Both sides widen until
        ``n`` candidates exist.

        Raises:
            ValueError: fewer than ``n`` unseen items exist.
        """
        rng = user_rng(self.seed, STREAM_POPULAR, user)
        rank = self.rank_of.get(int(positive), self.by_rank.size // 2)
        width = self.window
        while True:
            above, below = self._sides(rank, seen, width)
            if len(above) + len(below) >= n or width >= self.by_rank.size:
                break
            width *= 2
        if len(above) + len(below) < n:
            raise ValueError(f"only {len(above) + len(below)} unseen items, {n} needed")
        sides = [list(rng.permutation(above)), list(rng.permutation(below))]
        out = []
        for coin in rng.integers(0, 2, size=n).tolist():
            side = sides[coin] if sides[coin] else sides[1 - coin]
            out.append(int(side.pop()))
        return out

    def _sides(self, rank: int, seen: Collection[int], width: int) -> tuple[list[int], list[int]]:
        """The ``width`` nearest unseen items above and below ``rank``, nearest first."""
        reach = width + len(seen) + 1  # enough ranks to find ``width`` unseen items per side
        up = self.by_rank[max(0, rank - reach) : rank].tolist()[::-1]
        down = self.by_rank[rank + 1 : rank + 1 + reach].tolist()
        above = [i for i in up if i not in seen][:width]
        below = [i for i in down if i not in seen][:width]
        return above, below


def fit_hard_recommender(
    name: str,
    params: Mapping[str, Any],
    histories: Mapping[int, Sequence[int]],
    catalogue: Iterable[int],
    seed: int,
) -> Recommender:
    """Fit the recommender that ranks hard negatives, on the histories only.

    Targets never reach the model: the hard negatives of a held-out user must not come from a
    model that saw what the user watched next.

    Args:
        name: a registered recommender (``"itemknn"``, ``"sasrec"`` ...).
        params: its constructor parameters (``seed`` defaults to the build seed).
        histories: user -> history item ids, oldest first (targets excluded).
        catalogue: every recommendable item (targets that occur only as targets included).
        seed: the build seed.

    Returns:
        The fitted model.
    """
    users = [u for u, seq in histories.items() for _ in seq]
    items = [i for seq in histories.values() for i in seq]
    order = [k for seq in histories.values() for k in range(len(seq))]
    frame = pd.DataFrame({"user_id": users, "item_id": items, "order": order}, dtype="int64")
    model = make_recommender(name, **{"seed": seed, **dict(params)})
    return model.fit(frame, items=np.unique(np.fromiter(catalogue, dtype=np.int64)))


def top_k_lists(
    model: Recommender,
    users: Sequence[int],
    k: int = HARD_K,
    exclude: Mapping[int, set[int]] | None = None,
) -> dict[int, list[int]]:
    """Each user's top-``k``, best first (padding dropped).

    Args:
        model: a fitted recommender.
        users: the users.
        k: the list length.
        exclude: per user, items to mask besides the fitted history (which is always masked).

    Returns:
        user -> item ids.
    """
    recs = model.recommend(list(users), k, exclude_seen=True, exclude=exclude)
    return {int(u): [i for i, _ in recs.for_user(u)] for u in users}
