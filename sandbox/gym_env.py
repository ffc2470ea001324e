"""The platform as a Gymnasium environment: an RL recommender against simulated LLM users.

``reset()`` samples a real user (seeded) and starts a session grounded in the user's history;
``step(slate)`` shows a slate of catalogue indices to the simulated user (the same
:class:`~agents.us_agent.USAgent` the simulator runs) and returns what the user did:

* observation: the last ``history_len`` watched items as catalogue indices + 1 (0 pads);
* reward: +1 per watch, +2 per like, −1 when the user leaves;
* terminated: the user left; truncated: ``max_steps`` slates were shown;
* info: the per-item actions and p(like).

Every random choice comes from the seed given to ``reset`` (the user sampled, and the user's
draws, keyed by episode and step), so an episode replays exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from vragent.agents.backends.base import LLMBackend
from vragent.agents.persona import build_persona, item_line
from vragent.agents.us_agent import Candidate, SessionRules, SlateRequest, USAgent, stable_int
from vragent.environments.schema import Dataset
from vragent.environments.splits import leave_one_out
from vragent.sandbox.perception import item_texts
from vragent.sandbox.world import user_profiles

REWARD = {"skip": 0.0, "watch": 1.0, "like": 2.0}
LEAVE_PENALTY = -1.0


def draw_key(episode: int, t: int) -> int:
    """The step key of a session's draws: one per (episode, step), however long the session.

    ``episode * 1000 + t`` (the first key) made step 1,000 of one episode replay step 0 of the
    next.
    """
    return stable_int("gym", int(episode), int(t))


class SlateEnv(gym.Env):
    """A session of one simulated user, one slate per step.

    Args:
        dataset: real users, items and histories.
        backend: the users' LLM (any backend; score mode).
        slate_size: items per slate.
        max_steps: slates per episode.
        history_len: history items in the prompt and the observation.
        min_len: users with fewer interactions are not sampled.
        rules: how decisions become likes and exits.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, dataset: Dataset, backend: LLMBackend, *, slate_size: int = 5,
                 max_steps: int = 10, history_len: int = 10, min_len: int = 5,
                 rules: SessionRules | None = None) -> None:
        self.split = leave_one_out(dataset, min_len=min_len, max_len=max(min_len, 50))
        self.users = np.array(sorted(self.split.train), dtype=np.int64)
        if not len(self.users):
            raise ValueError(f"{dataset.name}: no user has {min_len} or more interactions")
        self.items = dataset.items["item_id"].astype(np.int64).to_numpy()
        self.index = {int(i): k for k, i in enumerate(self.items)}
        self.texts = item_texts(dataset.items)
        self.profiles = user_profiles(dataset.users, self.users.tolist())
        self.agent = USAgent(backend, mode="score", rules=rules or SessionRules())
        self.slate_size, self.max_steps, self.history_len = slate_size, max_steps, history_len
        n = len(self.items)
        self.action_space = spaces.MultiDiscrete([n] * slate_size)
        self.observation_space = spaces.MultiDiscrete([n + 1] * history_len)
        self._episode = 0
        self._user = 0
        self._t = 0
        self._history: list[int] = []

    def _observation(self) -> np.ndarray:
        recent = [self.index[i] + 1 for i in self._history[-self.history_len:]
                  if i in self.index]
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
        if self._user not in self.split.train:
            raise ValueError(f"user {self._user} has no history in this dataset")
        self._history = list(self.split.train[self._user])
        self._t = 0
        return self._observation(), {"user_id": self._user}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Show the slate ``action`` (catalogue indices) and return the user's response."""
        slate = [int(self.items[int(a)]) for a in np.asarray(action).ravel()]
        persona = build_persona(self.profiles.get(self._user, {}),
                                [self.texts[i] for i in self._history if i in self.texts],
                                history_len=self.history_len)
        request = SlateRequest(
            arm="gym", user_id=self._user, persona=persona,
            candidates=[Candidate(i, item_line(self.texts[i]), k, 0.0)
                        for k, i in enumerate(slate)])
        # Draws keyed by (episode, step): a new episode with the same user is a new session.
        outcome = self.agent.decide([request], step=draw_key(self._episode, self._t))[0]
        actions = [d.action for d in outcome.decisions]
        reward = sum(REWARD[a] for a in actions) + (LEAVE_PENALTY if outcome.left else 0.0)
        self._history += [d.item_id for d in outcome.decisions if d.action != "skip"]
        self._t += 1
        info = {"user_id": self._user, "items": slate, "actions": actions,
                "p_like": [d.p_like for d in outcome.decisions]}
        return (self._observation(), float(reward), bool(outcome.left),
                self._t >= self.max_steps, info)
