"""Everything a run needs in memory, and the work each node of the step graph does.

The graph state holds only small, serialisable things (the step number, slates, outcomes). The
heavy objects (dataset, recommenders, the LLM, the Mesa population) live here. After a crash
they are rebuilt from the scenario and then brought up to date by replaying the decisions the
store already holds, so a resumed run continues from exactly the state an uninterrupted run had.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from vragent.agents.backends.base import LLMBackend
from vragent.agents.ip_agent import ItemText
from vragent.agents.persona import build_persona, item_line
from vragent.agents.us_agent import Candidate, SessionRules, SlateRequest, USAgent, stable_int
from vragent.environments.grounding import CollaborativeGrounding, Evidence
from vragent.environments.platform import Platform
from vragent.environments.response_model import LogisticResponseModel
from vragent.sandbox import faults
from vragent.sandbox.backend_factory import make_backend, policy_backend
from vragent.sandbox.config import Scenario
from vragent.sandbox.payloads import Slate, SlateEntry, TaskOutcome, UserOutcome, UserTask
from vragent.sandbox.perception import (
    build_ip_agent,
    item_text_for,
    item_texts,
    most_popular_first,
    perceive_items,
)
from vragent.sandbox.policies import load_policy
from vragent.sandbox.population import PopulationModel
from vragent.sandbox.response_cache import wrap_backend
from vragent.sandbox.step_log import StepMetrics, sorted_outcomes, step_rows
from vragent.sandbox.store import Store
from vragent.sandbox.world import (
    item_vectors,
    load_world,
    make_split,
    sample_population,
    synthetic_world,
    user_profiles,
)

SOCIAL_MARK = " (a friend liked this)"  # appended to injected items' lines in the prompt


class SimulationRuntime:
    """The in-memory side of a run.

    Args:
        scenario: the validated scenario.
        store: where the run is logged.
        run_id: the run's id.
        backend: an LLM backend to use instead of building one from the scenario.
        on_progress: called with the number of users decided after each fan-out task.
        on_perceive: called with ``(profiles done, profiles wanted)`` of the step: ``(0, n)``
            as the step's IP-agent pass starts, then after each batch.
    """

    def __init__(
        self,
        scenario: Scenario,
        store: Store,
        run_id: str,
        backend: LLMBackend | None = None,
        on_progress: Callable[[int], None] | None = None,
        on_perceive: Callable[[int, int], None] | None = None,
    ) -> None:
        self.sc = scenario
        self.store = store
        self.run_id = run_id
        self.on_progress = on_progress or (lambda n: None)
        self.on_perceive = on_perceive or (lambda done, total: None)
        self.dataset, self.dataset_key = load_world(scenario)
        self.split = make_split(scenario, self.dataset)
        items = self.dataset.items
        self.item_text: dict[int, ItemText] = item_texts(items, scenario.ip_agent.frames_dir)
        pop_ids = sample_population(self.split, scenario.population.size,
                                    scenario.population.sampling, scenario.seed)
        cap = scenario.population.history_cap
        if cap:
            # Cold start: the simulated users' early history only, for prompts and recommenders.
            self.split.train = {**self.split.train,
                                **{u: self.split.train[u][:cap] for u in pop_ids}}
        train = self.split.train_interactions()
        # Most-watched first: the items slates will show most, so worth profiling first.
        self.popularity_order = most_popular_first(train, self.item_text)
        self.item_popularity = Counter(train["item_id"].astype(int).tolist())
        self.n_train_users = len(self.split.train)
        self.item_vectors = item_vectors(scenario, self.dataset)
        self.exposure: dict[str, Counter[int]] = {a.name: Counter() for a in scenario.arms}
        self.social_slots = {a.name: (scenario.social.inject_friends_likes
                                      if a.inject_friends_likes is None
                                      else a.inject_friends_likes) for a in scenario.arms}
        self.metrics = StepMetrics(self.item_text, self.item_vectors, self.item_popularity,
                                   self.n_train_users, scenario.metrics.entropy_window,
                                   self.social_slots)
        profiles = self._profiles(pop_ids)
        self.arm_names = [a.name for a in scenario.arms]
        self.model = PopulationModel(
            [(u, profiles[u], self.split.train[u]) for u in pop_ids], self.arm_names,
            seed=scenario.seed, activation_prob=scenario.simulation.activation_prob,
            graph=scenario.social.graph, k=scenario.social.k, p=scenario.social.p,
            run_id=run_id,
        )
        self.profile_text: dict[int, str] = {}
        titles = {i: t.title for i, t in self.item_text.items()}
        text_mode = {a.name: a.item_text for a in scenario.arms}
        self.platform = Platform(
            train, list(self.item_text), [(a.name, a.recommender, a.params) for a in scenario.arms],
            seed=scenario.seed,
            item_text=lambda arm: item_text_for(text_mode[arm], titles, self.profile_text,
                                                fallback_to_title=True),
        )
        # Behind the response cache and the meter, also when the backend is passed in.
        base = backend or make_backend(scenario.backend, seed=scenario.seed)
        self.backend = wrap_backend(
            policy_backend(scenario, base) if scenario.policy else base, scenario.backend,
            store, run_id)
        b = scenario.backend
        s = scenario.simulation.session
        self.us_agent = USAgent(
            self.backend, mode=b.decision_mode, seed=scenario.seed, trace_rate=b.trace_rate,
            max_new_tokens=b.max_new_tokens, temperature=b.temperature,
            rules=SessionRules(self.dataset.like_share() if s.like_share == "real"
                               else s.like_share, s.base_leave_prob, s.bored_leave_prob),
            format_retries=b.format_retries,
            **self._response_model(),
        )
        self.grounding = self._grounding()
        # A trained policy replaces the user model only; items are perceived by the base model.
        ip_backend = (wrap_backend(base, scenario.backend, store, run_id)
                      if scenario.policy else self.backend)
        self.ip_agent = (
            build_ip_agent(scenario.ip_agent, ip_backend, seed=scenario.seed)
            if scenario.ip_agent.enabled else None
        )
        self.logged_steps: set[int] = set()

    # ------------------------------------------------------------------ setup

    def _response_model(self) -> dict[str, Any]:
        """USAgent arguments that replace the LLM's p(like) (``response_model: truth``)."""
        if self.sc.response_model == "truth":
            world = synthetic_world(self.sc)
            return {"response_model": lambda users, items, _arms: world.true_like_prob(
                users, items), "response_model_id": "synthetic-truth"}
        if self.sc.response_model == "learned":
            model = LogisticResponseModel(self.item_vectors, self.item_popularity,
                                          seed=self.sc.seed)
            model.fit(self.split.train)

            def learned(users: np.ndarray, items: np.ndarray, arms: list[str]) -> np.ndarray:
                # The user vector reads the memory: real history, then simulated watches. One
                # per (user, arm), not per impression: a slate shares it.
                keys = list(zip(users.tolist(), arms, strict=True))
                unique = {k: n for n, k in enumerate(dict.fromkeys(keys))}
                table = np.stack([model.user_vector(self.model.by_user[u].history(a))
                                  for u, a in unique])
                return model.predict(table[[unique[k] for k in keys]], items)

            return {"response_model": learned, "response_model_id": "learned-logistic"}
        return {}

    def _grounding(self) -> CollaborativeGrounding | None:
        """The logs' evidence for a grounded policy, fitted on the real train split only."""
        if not self.sc.policy or not load_policy(self.sc.policy).grounded:
            return None
        return CollaborativeGrounding(self.split.train, list(self.item_text), seed=self.sc.seed)

    def _evidence(self, user: int, arm: str, items: list[int]) -> list[Evidence | None]:
        """Evidence for one slate: the user's memory (real history, then simulated watches)."""
        if self.grounding is None:
            return [None] * len(items)
        return list(self.grounding.evidence(self.model.by_user[user].history(arm), items))

    def _profiles(self, user_ids: list[int]) -> dict[int, dict[str, Any]]:
        return user_profiles(self.dataset.users, user_ids)

    def persona_for(self, user_id: int, arm: str):
        """The persona the US agent sees for ``user_id`` in ``arm``."""
        agent = self.model.by_user[user_id]
        real = [self.item_text[i] for i in agent.real_history if i in self.item_text]
        sim = [self.item_text[i] for i, _ in agent.sim_history[arm] if i in self.item_text]
        pop = self.sc.population
        return build_persona(agent.profile, real, pop.history_len, sim, pop.recent_len)

    def register(self) -> None:
        """Store the population and catalogue (idempotent)."""
        users = []
        for uid, agent in sorted(self.model.by_user.items()):
            persona = self.persona_for(uid, self.arm_names[0])
            users.append({
                "user_id": uid, "persona": persona.description, "profile": agent.profile,
                "history": agent.real_history, "friends": self.model.friends(uid),
                "heldout": [int(i) for i in (self.split.valid.get(uid), self.split.test.get(uid))
                            if i is not None],
            })
        items = [{"item_id": it.item_id, "title": it.title, "category": it.category,
                  "tags": it.tags} for it in self.item_text.values()]
        self.store.add_users_and_items(self.run_id, users, items)

    def replay_from_store(self) -> int:
        """Bring memory, shown items, exits and refits up to what the store holds.

        Returns:
            The number of fully logged steps.
        """
        done = self.store.completed_steps(self.run_id)
        n_done = min(done.values()) if done and len(done) == len(self.arm_names) else 0
        if n_done == 0:
            return 0
        k = self.sc.simulation.refit_every
        rows = self.store.decisions_upto(self.run_id, n_done - 1)
        # Replay every refit at the step it happened, with the decisions and the IP profiles
        # the uninterrupted run had then: a warm-started model (SASRec refit_epochs) depends on
        # the whole chain of refits, and a text tower on the profiles known at each one.
        refits = [s for s in range(n_done) if k and (s + 1) % k == 0]
        applied = -1
        ends = refits if refits and refits[-1] == n_done - 1 else [*refits, n_done - 1]
        for upto in ends:
            for arm, step, user, item, action in rows:
                if applied < step <= upto:
                    self.apply_decision(arm, user, item, action)
            applied = upto
            self._load_profiles(upto + 1)
            if upto in refits:
                for arm in self.arm_names:
                    self.platform.refit(arm)
        for arm, user, _step in self.store.left_users(self.run_id):
            if user in self.model.by_user:
                self.model.by_user[user].left[arm] = True
        self.logged_steps = set(range(n_done))
        return n_done

    def _load_profiles(self, n_steps: int) -> None:
        """Profiles the first ``n_steps`` steps made (all in the cache by then)."""
        n = self.sc.ip_agent.items_per_step
        if self.ip_agent is None or not n:
            return
        wanted = self.popularity_order[: n_steps * n]
        for iid, row in self.store.cached_profiles(
            self.dataset_key, self.ip_agent.cache_key, wanted
        ).items():
            self.profile_text[iid] = row.profile

    def apply_decision(self, arm: str, user: int, item: int, action: str) -> None:
        """Remember a decision: the arm's recommender data, exposure, the user's memory."""
        self.platform.record(arm, user, item, action)
        self.exposure[arm][item] += 1
        if action != "skip" and user in self.model.by_user:
            self.model.by_user[user].sim_history[arm].append((item, action))

    # ------------------------------------------------------------------ graph nodes

    def perceive(self, step: int) -> int:
        """Profile the step's share of the catalogue; return how many profiles were new.

        Step ``t`` covers popularity ranks ``[t·N, (t+1)·N)``: a fixed slice, so a resumed run
        profiles exactly what an uninterrupted one does, whatever the cache already holds.
        """
        n = self.sc.ip_agent.items_per_step
        if self.ip_agent is None or n == 0:
            return 0
        wanted = self.popularity_order[step * n : (step + 1) * n]
        self.ip_agent.seed = stable_int(self.sc.seed, "ip", step) % (2**31)
        done = 0

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            self.on_perceive(done, len(wanted))

        self.on_perceive(0, len(wanted))
        profiles, stats = perceive_items(
            self.ip_agent, self.store, self.dataset_key, [self.item_text[i] for i in wanted],
            batch_size=max(1, len(wanted)), run_id=self.run_id, step=step, on_batch=on_batch)
        self.profile_text.update(profiles)
        faults.checkpoint("perceive")
        return stats.made

    def recommend(self, step: int) -> dict[str, list[Slate]]:
        """Activate the step's users and build every arm's slates, users in id order."""
        self.model.begin_step(step)
        if step in self.logged_steps:
            return {}  # replayed after its commit: the store already has it
        k = self.sc.simulation.slate_size
        out: dict[str, list[Slate]] = {}
        for arm in self.arm_names:
            users = self.model.active_users(arm)
            ranked = self.platform.slates(arm, users, k, step)
            out[arm] = []
            for u in (u for u in users if ranked.get(u)):  # active_users is in id order
                entries = tuple(SlateEntry(int(i), float(s)) for i, s in ranked[u])
                if self.social_slots[arm]:
                    entries = self._inject_social(arm, u, entries, k)
                out[arm].append(Slate(u, entries))
        return out

    def _inject_social(self, arm: str, user: int, slate: tuple[SlateEntry, ...],
                       k: int) -> tuple[SlateEntry, ...]:
        """Give the slate's last slots to items the user's friends liked in ``arm``.

        Friends' most recent likes come first (friends in id order); items the user was shown
        in ``arm``, has in the real history or already has in the slate are passed over.
        """
        n = self.social_slots[arm]
        agent = self.model.by_user[user]
        seen = self.platform.arms[arm].shown.get(user, set())
        exclude = set(seen) | set(agent.real_history) | {e.item_id for e in slate}
        picks: list[int] = []
        for f in self.model.friends(user):
            for item in reversed(self.model.by_user[f].liked(arm)):
                if item not in exclude and item not in picks:
                    picks.append(item)
        picks = picks[: min(n, k)]
        if not picks:
            return slate
        return (*slate[: k - len(picks)], *(SlateEntry(i, 0.0, social=True) for i in picks))

    def tasks(self, step: int, slates: dict[str, list[Slate]]) -> list[UserTask]:
        """Fan-out payloads: groups of ``users_per_task`` users of one arm."""
        size = self.sc.simulation.users_per_task
        out: list[UserTask] = []
        for arm in self.arm_names:
            arm_slates = list(slates.get(arm, ()))  # recommend made them in user order
            for start in range(0, len(arm_slates), size):
                out.append(UserTask(step, arm, len(out), tuple(arm_slates[start : start + size])))
        return out

    def decide(self, task: UserTask) -> TaskOutcome:
        """Run the US agent over one task's users."""
        t0 = time.perf_counter()
        arm, step = task.arm, task.step
        show_profiles = self.sc.ip_agent.in_prompt
        requests = []
        social: set[tuple[int, int]] = set()  # (user, position) of injected items
        for slate in task.slates:
            u = slate.user_id
            cands = []
            evidence = self._evidence(u, arm, [e.item_id for e in slate.entries])
            for pos, e in enumerate(slate.entries):
                line = item_line(self.item_text[e.item_id],
                                 self.profile_text.get(e.item_id) if show_profiles else None)
                if e.social:
                    social.add((u, pos))
                    line += SOCIAL_MARK
                cands.append(Candidate(e.item_id, line, pos, e.score, evidence[pos]))
            # Built only if a prompt needs it (a response model decides without one).
            persona = functools.partial(self.persona_for, u, arm)
            requests.append(SlateRequest(arm, u, persona, cands, self._friends_liked(u, arm)))
        with self.backend.meter() as calls:
            outcomes = self.us_agent.decide(requests, step, batch_key=task.batch_key)
        wall = time.perf_counter() - t0
        self.on_progress(len(requests))
        users = tuple(
            UserOutcome(o.arm, o.user_id, o.left, o.leave_prob, o.leave_draw,
                        wall / max(1, len(outcomes)),
                        tuple(self._decision_row(d, (o.user_id, d.position) in social)
                              for d in o.decisions))
            for o in outcomes)
        return TaskOutcome(users, tuple(
            {"agent": "us", "arm": arm, "task": task.batch_key, "seq": seq, **asdict(c)}
            for seq, c in enumerate(calls)))

    @staticmethod
    def _decision_row(d, social: bool) -> dict[str, Any]:
        row = d.as_row()
        row["source"] = "social" if social else "rec"
        return row

    def _friends_liked(self, user_id: int, arm: str) -> tuple[str, ...]:
        n = self.sc.social.show_friends_likes
        if n == 0:
            return ()
        liked = [
            i for f in self.model.friends(user_id) if f in self.model.by_user
            for i in self.model.by_user[f].liked(arm)
        ]
        return tuple(item_line(self.item_text[i]) for i in liked[-n:])

    def log(self, step: int, tasks: list[TaskOutcome]) -> bool:
        """Write the step in one transaction, then update memory; ``False`` if already logged."""
        outcomes = sorted_outcomes(tasks, self.arm_names)
        # The DataCollector records the step's metrics; what it recorded is what the store gets.
        metrics = self.model.end_step(self.metrics.compute(
            outcomes, self.arm_names, self.exposure, self.model.by_user))
        rows = step_rows(step, self.arm_names, tasks, outcomes)
        wrote = self.store.log_step(
            self.run_id, step, steps=rows.steps, impressions=rows.impressions,
            decisions=rows.decisions, sessions=rows.sessions, llm_calls=rows.llm_calls,
            metrics=[{"arm": a, "step": step, "name": n, "value": float(v)}
                     for a, ms in metrics.items() for n, v in ms.items()],
        )
        if wrote:
            faults.checkpoint("committed")
            for o in outcomes:
                for d in sorted(o.decisions, key=lambda d: d["position"]):
                    self.apply_decision(o.arm, o.user_id, d["item_id"], d["action"])
                if o.left:
                    self.model.by_user[o.user_id].left[o.arm] = True
            self.logged_steps.add(step)
        return wrote

    def feedback(self, step: int) -> bool:
        """Refit every arm's recommender when the step closes a refit period."""
        k = self.sc.simulation.refit_every
        if k and (step + 1) % k == 0:
            for arm in self.arm_names:
                self.platform.refit(arm)
            faults.checkpoint("feedback")
            return True
        faults.checkpoint("feedback")
        return False
