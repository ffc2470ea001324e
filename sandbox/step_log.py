"""What a step leaves behind: its per-arm metrics and the store's rows.

The runtime's ``log`` node calls both: :class:`StepMetrics` computes the step's metrics (the
population's DataCollector records them, and the store logs what it recorded), and
:func:`step_rows` turns the fan-out's task outcomes (:mod:`sandbox.payloads`) into the rows of
the step's one transaction (``Store.log_step``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vragent.agents.ip_agent import ItemText
from vragent.environments import metrics as em
from vragent.sandbox.payloads import TaskOutcome, UserOutcome
from vragent.sandbox.population import SimulatedUserAgent


@dataclass
class StepRows:
    """The rows of one step's transaction, by table."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    impressions: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: list[dict[str, Any]] = field(default_factory=list)


def sorted_outcomes(tasks: Sequence[TaskOutcome], arm_names: Sequence[str]) -> list[UserOutcome]:
    """Every user's outcome of the step, by arm (in the run's order), then user id."""
    return sorted((o for t in tasks for o in t.users),
                  key=lambda o: (arm_names.index(o.arm), o.user_id))


def step_rows(step: int, arm_names: Sequence[str], tasks: Sequence[TaskOutcome],
              outcomes: Sequence[UserOutcome]) -> StepRows:
    """The store's rows for a step: impressions, decisions, session ends, steps, LLM calls.

    Args:
        step: the step.
        arm_names: the run's arms, in order.
        tasks: the fan-out's answers (their LLM calls).
        outcomes: the users' outcomes, as :func:`sorted_outcomes` orders them.
    """
    rows = StepRows()
    for o in outcomes:
        acts = [d["action"] for d in o.decisions]
        rows.sessions.append({
            "arm": o.arm, "step": step, "user_id": o.user_id,
            "n_watch": sum(a != "skip" for a in acts), "n_like": acts.count("like"),
            "left": o.left, "leave_prob": o.leave_prob, "leave_draw": o.leave_draw,
        })
        for d in o.decisions:
            rows.impressions.append({"arm": d["arm"], "step": step, "user_id": d["user_id"],
                                     "position": d["position"], "item_id": d["item_id"],
                                     "rec_score": d["rec_score"],
                                     "source": d.get("source", "rec")})
            # The outcome dict itself, read only: it is graph state, which LangGraph saves in
            # its exit checkpoint when the write fails, so it must stay as decide() made it.
            # log_step takes the decision's columns from it (and adds the step).
            rows.decisions.append(d)
    for arm in arm_names:
        arm_out = [o for o in outcomes if o.arm == arm]
        rows.steps.append({"arm": arm, "step": step, "n_users": len(arm_out),
                           "n_decisions": sum(len(o.decisions) for o in arm_out),
                           "wall_s": sum(o.wall_s for o in arm_out)})
    rows.llm_calls = sorted(
        ({**c, "step": step} for t in tasks for c in t.llm_calls),
        key=lambda c: (arm_names.index(c["arm"]), c["task"], c["seq"]))
    return rows


@dataclass
class StepMetrics:
    """Per-arm metrics of a step, computed before the step is applied to memory.

    Args:
        item_text: the catalogue (categories for profile entropy).
        item_vectors: item vectors for intra-list diversity.
        item_popularity: training interactions per item, for novelty.
        n_train_users: users of the train split, for novelty.
        entropy_window: last consumed items a user's profile entropy reads.
        social_slots: per arm, slots given to friends' likes (0: no social share).
    """

    item_text: Mapping[int, ItemText]
    item_vectors: Any
    item_popularity: Counter[int]
    n_train_users: int
    entropy_window: int
    social_slots: Mapping[str, int]

    def compute(self, outcomes: Sequence[UserOutcome], arm_names: Sequence[str],
                exposure: Mapping[str, Counter[int]],
                users: Mapping[int, SimulatedUserAgent]) -> dict[str, dict[str, float | None]]:
        """Metrics by arm: rates, coverage, diversity, novelty, Gini, profile entropy.

        Args:
            outcomes: the step's user outcomes.
            arm_names: the run's arms.
            exposure: per arm, how often each item was shown before this step.
            users: the population's agents (their memory before this step).
        """
        return {arm: self._arm(arm, [o for o in outcomes if o.arm == arm], exposure[arm], users)
                for arm in arm_names}

    def _arm(self, arm: str, arm_out: list[UserOutcome], shown: Counter[int],
             users: Mapping[int, SimulatedUserAgent]) -> dict[str, float | None]:
        n_items = len(self.item_text)
        decs = [d for o in arm_out for d in o.decisions]
        n = len(decs)
        exposure = shown + Counter(int(d["item_id"]) for d in decs)
        slates = [[d["item_id"] for d in sorted(o.decisions, key=lambda d: d["position"])]
                  for o in arm_out]
        p = [d["p_like"] for d in decs if d["p_like"] is not None]
        new_pos: dict[int, list[int]] = {}
        for d in sorted(decs, key=lambda d: d["position"]):
            if d["action"] != "skip":
                new_pos.setdefault(d["user_id"], []).append(d["item_id"])
        window = self.entropy_window
        return {
            "active_users": len(arm_out),
            "impressions": n,
            "watch_rate": sum(d["action"] != "skip" for d in decs) / n if n else 0.0,
            "like_rate": sum(d["action"] == "like" for d in decs) / n if n else 0.0,
            "exit_rate": sum(o.left for o in arm_out) / len(arm_out) if arm_out else 0.0,
            "coverage": em.catalogue_coverage([exposure], n_items) if n_items else 0.0,
            "mean_p_like": float(np.mean(p)) if p else None,
            "format_ok_rate": sum(d["format_ok"] for d in decs) / n if n else None,
            "ild": em.intra_list_diversity(slates, self.item_vectors),
            "novelty": (em.novelty(slates, self.item_popularity, self.n_train_users)
                        if self.n_train_users else None),
            "exposure_gini": em.gini(np.fromiter(
                (exposure.get(i, 0) for i in self.item_text), np.float64, n_items)),
            "profile_entropy": float(np.mean([
                em.profile_entropy(self.item_text[i].category for i in
                                   (a.history(arm) + new_pos.get(u, []))[-window:]
                                   if i in self.item_text)
                for u, a in users.items()])) if users else None,
            "social_share": (sum(d.get("source") == "social" for d in decs) / n
                             if n and self.social_slots[arm] else None),
        }
