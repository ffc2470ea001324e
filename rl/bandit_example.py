"""A simple RL recommender trained against simulated LLM users (the Gymnasium face).

An epsilon-greedy bandit over catalogue items: it keeps each item's mean reward per showing and
fills a slate with the best items, exploring with probability ``epsilon`` per slot. Run it::

    python -m vragent.rl.bandit_example --episodes 30 --backend tiny     # seconds, a tiny LLM
    python -m vragent.rl.bandit_example --episodes 30 --backend smollm2  # SmolLM2 users (minutes)

It prints the mean reward of the first and last fifth of the episodes.
"""

from __future__ import annotations

import argparse

import numpy as np
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.gym_env import REWARD, SlateEnv


class EpsilonGreedySlates:
    """Per-item mean reward, greedy slates with epsilon exploration (seeded)."""

    def __init__(self, n_items: int, slate_size: int, epsilon: float = 0.2, seed: int = 0):
        self.sums = np.zeros(n_items)
        self.counts = np.zeros(n_items)
        self.slate_size, self.epsilon = slate_size, epsilon
        self.rng = np.random.default_rng(seed)

    def act(self) -> np.ndarray:
        """A slate of distinct item indices."""
        # Unseen items get an optimistic mean so each is tried once.
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), 3.0)
        ranked = [int(i) for i in np.argsort(-means + 1e-9 * self.rng.random(len(means)))]
        slate: list[int] = []
        for _ in range(self.slate_size):
            pool = [i for i in ranked if i not in slate]
            pick = (int(self.rng.choice(pool)) if self.rng.random() < self.epsilon else pool[0])
            slate.append(pick)
        return np.array(slate)

    def update(self, slate: np.ndarray, actions: list[str]) -> None:
        """Credit each shown item with its own response (watch 1, like 2)."""
        for item, action in zip(slate.tolist(), actions, strict=True):
            self.sums[item] += REWARD[action]
            self.counts[item] += 1


def main() -> None:
    """Train the bandit for --episodes sessions and print the first and last returns."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--backend", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    backend = ({"kind": "tiny"} if args.backend == "tiny"
               else {"kind": "hf", "model": "smollm2"})
    scenario = parse_scenario({
        "name": "bandit", "seed": args.seed,
        "dataset": {"kind": "synthetic", "synthetic": {"n_users": 50, "n_items": 60}},
        "population": {"size": 50, "history_len": 8},
        "simulation": {"steps": 1, "slate_size": 5},
        # The environment's slates take this arm's place; its recommender is never asked.
        "arms": [{"name": "bandit", "recommender": "random"}],
        "backend": {**backend, "decision_mode": "score", "trace_rate": 0.0, "cache": False},
        "ip_agent": {"enabled": False},
    }, "bandit example")
    env = SlateEnv(scenario, max_steps=5, history_len=8)
    policy = EpsilonGreedySlates(len(env.items), env.slate_size, seed=args.seed)
    returns = []
    for ep in range(args.episodes):
        env.reset(seed=args.seed * 100_000 + ep)
        total, done = 0.0, False
        while not done:
            slate = policy.act()
            _, reward, terminated, truncated, info = env.step(slate)
            policy.update(slate, info["actions"])
            total += reward
            done = terminated or truncated
        returns.append(total)
    k = max(1, len(returns) // 5)
    env.close()
    print(f"episodes {len(returns)}: mean return first {k} = {np.mean(returns[:k]):.2f}, "
          f"last {k} = {np.mean(returns[-k:]):.2f}")


if __name__ == "__main__":
    main()
