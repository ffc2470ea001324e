"""The platform as a Gymnasium environment: an RL recommender against the simulator's users.

The environment drives the simulator's own engine: a :class:`~sandbox.runtime.SimulationRuntime`
built from a scenario holds the world, the population and the US policy, and each ``step(slate)``
is the runtime's ``decide`` on one :class:`~sandbox.payloads.UserTask`, the very node the step
graph runs for a recommender's slate. So a user in the environment is a simulated user of the
scenario: the same persona (real history, then what the user watched in this episode), the
same item lines (IP profiles when the scenario shows them), the same grounding evidence for a
grounded policy, and the same session rules for likes and leaving.

* ``reset()`` samples a user of the scenario's population (seeded) and starts a session: the
  user's memory of earlier episodes is cleared;
* ``step(slate)`` shows a slate of catalogue indices in place of the scenario's first arm;
* observation: the last ``history_len`` watched items as catalogue indices + 1 (0 pads);
* reward: +1 per watch, +2 per like, −1 when the user leaves;
* terminated: the user left; truncated: ``max_steps`` slates were shown;
* info: the per-item actions and p(like).

Every random choice comes from the seed given to ``reset`` (the user sampled, and the user's
draws, keyed by episode and step), so an episode replays exactly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces
from vragent.agents.backends.base import LLMBackend
from vragent.agents.us_agent import stable_int
from vragent.sandbox.config import Scenario
from vragent.sandbox.payloads import Slate, SlateEntry, UserTask
from vragent.sandbox.runner import create_run
from vragent.sandbox.runtime import SimulationRuntime
from vragent.sandbox.store import Store

REWARD = {"skip": 0.0, "watch": 1.0, "like": 2.0}
LEAVE_PENALTY = -1.0


def draw_key(episode: int, t: int) -> int:
    """The step key of a session's draws: one per (episode, step), however long the session.

    ``episode * 1000 + t`` (the first key) made step 1,000 of one episode replay step 0 of the
    next.
    """
    return stable_int("gym", int(episode), int(t))


class SlateEnv(gym.Env):
    """A session of one simulated user of a scenario, one slate per step.

    Args:
        scenario: the world, population, US policy and session rules; the slate size is its
            ``simulation.slate_size``.
        backend: the users' LLM instead of the scenario's backend (score mode).
        max_steps: slates per episode.
        history_len: watched items in the observation.
        db_url: the store holding the environment's run (the response cache and its
            provenance); default: a SQLite file in a temporary folder, removed by ``close()``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, scenario: Scenario, *, backend: LLMBackend | None = None,
                 max_steps: int = 10, history_len: int = 10, db_url: str | None = None) -> None:
        self._tmp = None if db_url else tempfile.TemporaryDirectory(prefix="vragent-gym-")
        self.store = Store(db_url or f"sqlite:///{Path(self._tmp.name) / 'gym.sqlite'}")
        run_id = create_run(self.store, scenario, yaml.safe_dump(scenario.model_dump(mode="json")),
                            None)
        self.rt = SimulationRuntime(scenario, self.store, run_id, backend=backend)
        self.arm = self.rt.arm_names[0]
        self.users = np.array(sorted(self.rt.model.by_user), dtype=np.int64)
        self.items = np.array(sorted(self.rt.item_text), dtype=np.int64)
        self.index = {int(i): k for k, i in enumerate(self.items)}
        self.slate_size = scenario.simulation.slate_size
        self.max_steps, self.history_len = max_steps, history_len
        n = len(self.items)
        self.action_space = spaces.MultiDiscrete([n] * self.slate_size)
        self.observation_space = spaces.MultiDiscrete([n + 1] * history_len)
        self._episode = 0
        self._user = int(self.users[0])
        self._t = 0

    def _observation(self) -> np.ndarray:
        history = self.rt.model.by_user[self._user].history(self.arm)
        recent = [self.index[i] + 1 for i in history[-self.history_len:] if i in self.index]
        obs = np.zeros(self.history_len, dtype=np.int64)
        if recent:
            obs[-len(recent):] = recent
        return obs

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Sample a user (``options={"user_id": ...}`` picks one) and start a session."""
        super().reset(seed=seed)
        # The episode's key comes from the seeded generator: the same seed replays the episode.
        self._episode = int(self.np_random.integers(2**31))
        user = (options or {}).get("user_id")
        self._user = int(user) if user is not None else int(self.np_random.choice(self.users))
        agent = self.rt.model.by_user.get(self._user)
        if agent is None:
            raise ValueError(f"user {self._user} is not in the scenario's population")
        agent.sim_history[self.arm] = []  # a new session remembers only the real history
        agent.left[self.arm] = False
        self._t = 0
        return self._observation(), {"user_id": self._user}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Show the slate ``action`` (catalogue indices) and return the user's response."""
        slate = [int(self.items[int(a)]) for a in np.asarray(action).ravel()]
        # Draws keyed by (episode, step): a new episode with the same user is a new session.
        task = UserTask(draw_key(self._episode, self._t), self.arm, 0,
                        [Slate(self._user, [SlateEntry(i, 0.0) for i in slate])])
        (outcome,) = self.rt.decide(task).users
        actions = [d["action"] for d in outcome.decisions]
        reward = sum(REWARD[a] for a in actions) + (LEAVE_PENALTY if outcome.left else 0.0)
        for d in sorted(outcome.decisions, key=lambda d: d["position"]):
            self.rt.apply_decision(self.arm, self._user, d["item_id"], d["action"])
        self._t += 1
        info = {"user_id": self._user, "items": slate, "actions": actions,
                "p_like": [d["p_like"] for d in outcome.decisions]}
        return (self._observation(), float(reward), bool(outcome.left),
                self._t >= self.max_steps, info)

    def close(self) -> None:
        """Release the store (and remove its temporary folder)."""
        self.store.engine.dispose()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
