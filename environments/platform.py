"""The platform's non-agent state: catalogue, recommender arms, what each user was shown.

Each arm owns one recommender. It is fitted on the real train split and, in a feedback loop,
refitted on that plus the positives (watches and likes) its simulated users produced. A user is
never shown the same item twice in one arm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from vragent.environments.recommenders import make_recommender
from vragent.environments.recommenders.base import Recommender


@dataclass
class ArmState:
    """One arm: its recommender and the interactions it produced."""

    name: str
    recommender: Recommender
    shown: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    positives: list[tuple[int, int]] = field(default_factory=list)  # (user, item) in time order
    n_fits: int = 0


class Platform:
    """Serves slates per arm and takes feedback.

    Args:
        base_interactions: the real train-split interactions every arm is fitted on.
        item_ids: the catalogue.
        arms: ``(name, recommender_name, params)`` per arm.
        seed: seeds every recommender.
        item_text: ``arm -> {item: text}``, asked before each fit of a recommender that reads
            item text (a SASRec text tower), so it sees the profiles made so far.
    """

    def __init__(
        self,
        base_interactions: pd.DataFrame,
        item_ids: Sequence[int],
        arms: Sequence[tuple[str, str, dict]],
        seed: int = 0,
        item_text: Callable[[str], Mapping[int, str]] | None = None,
    ) -> None:
        self.item_text = item_text
        self.base = base_interactions[["user_id", "item_id", "order"]].reset_index(drop=True)
        self.item_ids = np.asarray(sorted(set(int(i) for i in item_ids)), dtype=np.int64)
        self.seed = seed
        self.arms: dict[str, ArmState] = {
            name: ArmState(name, make_recommender(rec, seed=seed, **params))
            for name, rec, params in arms
        }
        for name in self.arms:
            self.refit(name)

    def interactions_for(self, arm: str) -> pd.DataFrame:
        """The real train split plus the arm's simulated positives, in one frame."""
        pos = self.arms[arm].positives
        if not pos:
            return self.base
        sim = pd.DataFrame(pos, columns=["user_id", "item_id"])
        start = self.base.groupby("user_id")["order"].max().reindex(sim["user_id"]).fillna(-1)
        sim["order"] = start.to_numpy().astype(np.int64) + 1 + sim.groupby("user_id").cumcount()
        return pd.concat([self.base, sim], ignore_index=True)

    def refit(self, arm: str) -> None:
        """(Re)fit an arm's recommender on real plus simulated positives."""
        state = self.arms[arm]
        if state.recommender.uses_item_text and self.item_text is not None:
            state.recommender.set_item_text(self.item_text(arm))
        state.recommender.fit(self.interactions_for(arm), items=self.item_ids)
        state.n_fits += 1

    def slates(
        self, arm: str, user_ids: Sequence[int], k: int, step: int = 0
    ) -> dict[int, list[tuple[int, float]]]:
        """Top-``k`` unseen, not-yet-shown items for each user at ``step``."""
        if not len(user_ids):
            return {}
        state = self.arms[arm]
        state.recommender.set_round(step)
        recs = state.recommender.recommend(
            list(user_ids), k, exclude_seen=True,
            exclude={u: state.shown[u] for u in user_ids if state.shown.get(u)},
        )
        return {
            int(u): [(int(i), float(s)) for i, s in recs.for_user(int(u)) if int(i) >= 0]
            for u in user_ids
        }

    def record(self, arm: str, user_id: int, item_id: int, action: str) -> None:
        """Note one impression's outcome: it was shown, and positives feed the next refit."""
        state = self.arms[arm]
        state.shown[user_id].add(item_id)
        if action in ("watch", "like"):
            state.positives.append((user_id, item_id))
