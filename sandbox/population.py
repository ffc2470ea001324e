"""The simulated population as a Mesa model, with a networkx friendship graph.

One Mesa agent per simulated user. Each step the model re-seeds its RNG from (seed, step) and
activates agents in shuffled order, so which users are active in a step does not depend on how
the run got there: a resumed run activates exactly the users an uninterrupted one would.

A Mesa ``DataCollector`` records each step's per-arm metrics (``ARM/NAME`` columns, and the
run's id); what it recorded is what the store logs (``SimulationRuntime.log``) and what a sweep
reports (``mesa.batch_run`` reads the same collector, ``sandbox.sweep``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mesa
import networkx as nx
from vragent.agents.us_agent import stable_int

# What the DataCollector records per arm and step (sandbox.step_log.StepMetrics computes them).
STEP_METRICS = ("active_users", "impressions", "watch_rate", "like_rate", "exit_rate",
                "coverage", "mean_p_like", "format_ok_rate", "ild", "novelty", "exposure_gini",
                "profile_entropy", "social_share")


class SimulatedUserAgent(mesa.Agent):
    """One simulated user: a real user's history, then what they did in each arm.

    Attributes:
        user_id: the real user's id.
        profile: profile fields (age, gender, occupation, activity …).
        real_history: item ids of the real train split, in time order.
        sim_history: per arm, ``(item_id, action)`` of positive decisions, in time order.
        left: per arm, whether the user has left the session.
        active: whether the user takes part in the current step.
    """

    def __init__(
        self, model: PopulationModel, user_id: int, profile: dict[str, Any],
        real_history: Sequence[int],
    ) -> None:
        super().__init__(model)
        self.user_id = int(user_id)
        self.profile = profile
        self.real_history = list(real_history)
        self.sim_history: dict[str, list[tuple[int, str]]] = {a: [] for a in model.arm_names}
        self.left: dict[str, bool] = dict.fromkeys(model.arm_names, False)
        self.active = False

    def activate(self) -> None:
        """Mesa step action: join this step with probability ``activation_prob``."""
        self.active = self.model.random.random() < self.model.activation_prob

    def active_in(self, arm: str) -> bool:
        """Active this step and still in the session of ``arm``."""
        return self.active and not self.left[arm]

    def history(self, arm: str) -> list[int]:
        """Real history then simulated watches in ``arm``: the agent's memory."""
        return self.real_history + [item for item, _ in self.sim_history[arm]]

    def liked(self, arm: str, last: int = 5) -> list[int]:
        """The last items this user liked in ``arm``."""
        return [i for i, a in self.sim_history[arm] if a == "like"][-last:]


class PopulationModel(mesa.Model):
    """Population, friendship graph and per-step metrics.

    Args:
        users: ``(user_id, profile, real_history)`` per simulated user.
        arm_names: the run's arms.
        seed: the run's seed.
        activation_prob: chance a user is active in a step.
        graph: ``"none"``, ``"watts_strogatz"``, ``"barabasi_albert"`` or ``"cowatch"``
            (derived from the real logs, :func:`cowatch_graph`).
        k: neighbours (Watts–Strogatz, co-watching) or edges per new node (Barabási–Albert).
        p: rewiring probability (Watts–Strogatz).
        run_id: the stored run, recorded beside every step's metrics.
    """

    def __init__(
        self,
        users: Sequence[tuple[int, dict[str, Any], Sequence[int]]],
        arm_names: Sequence[str],
        *,
        seed: int = 0,
        activation_prob: float = 1.0,
        graph: str = "watts_strogatz",
        k: int = 4,
        p: float = 0.1,
        run_id: str | None = None,
    ) -> None:
        super().__init__(rng=seed)
        self.base_seed = seed
        self.arm_names = list(arm_names)
        self.activation_prob = activation_prob
        self.last_metrics: dict[str, dict[str, float]] = {a: {} for a in self.arm_names}
        self.by_user: dict[int, SimulatedUserAgent] = {}
        for uid, profile, hist in users:
            self.by_user[int(uid)] = SimulatedUserAgent(self, uid, profile, hist)
        self.social = self._make_graph(graph, k, p)
        self.run_id = run_id
        self.datacollector = mesa.DataCollector(model_reporters={
            "run_id": lambda m: m.run_id,
            **{f"{arm}/{name}": (lambda m, a=arm, n=name: m.last_metrics[a].get(n))
               for arm in self.arm_names for name in STEP_METRICS},
        })

    def _make_graph(self, kind: str, k: int, p: float) -> nx.Graph:
        ids = sorted(self.by_user)
        n = len(ids)
        gseed = stable_int(self.base_seed, "social") % (2**32)
        if kind == "none" or n < 3:
            g = nx.empty_graph(n)
        elif kind == "watts_strogatz":
            g = nx.watts_strogatz_graph(n, min(k, n - 1), p, seed=gseed)
        elif kind == "barabasi_albert":
            g = nx.barabasi_albert_graph(n, min(k, n - 1), seed=gseed)
        elif kind == "cowatch":
            return cowatch_graph({u: self.by_user[u].real_history for u in ids}, k)
        else:
            raise ValueError(f"unknown social graph {kind!r}")
        return nx.relabel_nodes(g, dict(enumerate(ids)))

    def friends(self, user_id: int) -> list[int]:
        """The user's neighbours in the social graph."""
        return sorted(self.social.neighbors(user_id)) if user_id in self.social else []

    def begin_step(self, step: int) -> None:
        """Seeded activation for ``step`` (independent of earlier steps' draws)."""
        self.random.seed(stable_int(self.base_seed, "activation", step))
        self.agents.shuffle_do("activate")

    def active_users(self, arm: str) -> list[int]:
        """Sorted ids of the users taking part in ``arm`` this step."""
        return sorted(u for u, a in self.by_user.items() if a.active_in(arm))

    def end_step(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Record the step's metrics through the DataCollector and advance Mesa's clock.

        Returns:
            What the collector recorded, per arm: the metrics of :data:`STEP_METRICS` that
            have a value.
        """
        unknown = {n for ms in metrics.values() for n in ms} - set(STEP_METRICS)
        if unknown:  # a metric the collector has no column for would never reach the store
            raise ValueError(f"step metrics {sorted(unknown)} are not in STEP_METRICS")
        self.last_metrics = metrics
        self.datacollector.collect(self)
        self.steps += 1
        recorded = {k: v[-1] for k, v in self.datacollector.model_vars.items()}
        return {arm: {n: recorded[f"{arm}/{n}"] for n in STEP_METRICS
                      if recorded[f"{arm}/{n}"] is not None} for arm in self.arm_names}


def cowatch_graph(histories: dict[int, Sequence[int]], k: int) -> nx.Graph:
    """Friends from co-watching in the real logs.

    Each user links to the ``k`` users whose watched sets overlap theirs most (Jaccard, ties to
    the smaller id; no link without overlap). One sparse product (users × items), so it stays
    cheap for large populations.

    Args:
        histories: user -> real watched items.
        k: links each user makes (the graph is undirected, so degrees can exceed ``k``).

    Returns:
        An undirected graph over every user of ``histories``.
    """
    import numpy as np
    import scipy.sparse as sp

    ids = sorted(histories)
    g = nx.Graph()
    g.add_nodes_from(ids)
    items = sorted({int(i) for h in histories.values() for i in h})
    if not ids or not items or k <= 0:
        return g
    col = {item: c for c, item in enumerate(items)}
    rows, cols = [], []
    for r, u in enumerate(ids):
        for item in set(histories[u]):
            rows.append(r)
            cols.append(col[int(item)])
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(items)))
    inter = (x @ x.T).tocsr()
    sizes = np.asarray(x.sum(axis=1)).ravel()
    for r in range(len(ids)):
        start, end = inter.indptr[r], inter.indptr[r + 1]
        others, shared = inter.indices[start:end], inter.data[start:end]
        keep = others != r
        others, shared = others[keep], shared[keep]
        if not others.size:
            continue
        jacc = shared / (sizes[r] + sizes[others] - shared)
        order = np.lexsort((others, -jacc))[:k]  # highest Jaccard, then smaller id
        g.add_edges_from((ids[r], ids[int(o)]) for o in others[order])
    return g
