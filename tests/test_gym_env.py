"""The Gymnasium face of the platform: the API contract and a seeded, replayable episode."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from vragent.agents.backends.constant import ConstantBackend
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.gym_env import SlateEnv, draw_key

from tests.conftest import tiny_scenario


@pytest.fixture(scope="module")
def world():
    """The tiny synthetic scenario: 30 users, 40 items, slates of 3, one arm."""
    return parse_scenario(tiny_scenario(
        dataset={"kind": "synthetic",
                 "synthetic": {"n_users": 30, "n_items": 40, "mean_history": 8}},
        population={"size": 30, "history_len": 5},
        arms=[{"name": "gym", "recommender": "random"}],
        ip_agent={"enabled": False}, backend={"kind": "tiny", "decision_mode": "score",
                                               "trace_rate": 0.0, "cache": False}), "gym")


def test_env_passes_the_gymnasium_checker(world):
    env = SlateEnv(world, backend=ConstantBackend(0.6), max_steps=4, history_len=5)
    check_env(env, skip_render_check=True)
    env.close()


def test_episode_is_seeded_and_rewards_follow_the_actions(world, tiny_backend):
    env = SlateEnv(world, backend=tiny_backend, max_steps=3, history_len=5)

    def episode(seed):
        obs, info = env.reset(seed=seed)
        out = [(info["user_id"], obs.tolist())]
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(np.array([0, 1, 2]))
            expected = sum({"skip": 0, "watch": 1, "like": 2}[a] for a in info["actions"])
            assert reward == expected - (1 if terminated else 0)
            assert len(info["p_like"]) == 3 and all(0 <= p <= 1 for p in info["p_like"])
            out.append((reward, info["actions"], obs.tolist()))
            done = terminated or truncated
        return out

    first = episode(5)
    assert episode(5) == first
    assert episode(6) != first
    obs, _ = env.reset(options={"user_id": first[0][0]})
    assert obs.tolist() == first[0][1]


def test_long_sessions_never_replay_another_episodes_draws(world):
    """Step 1,000 of one episode used the key of step 0 of the next (episode * 1000 + t)."""
    keys = {draw_key(e, t) for e in range(3) for t in range(2500)}
    assert len(keys) == 3 * 2500
    assert draw_key(7, 1000) != draw_key(8, 0)
    # The actions of a constant-p user are the draws alone: two such steps now differ.
    env = SlateEnv(world.model_copy(update={"simulation": world.simulation.model_copy(
        update={"slate_size": 8})}), backend=ConstantBackend(0.5), max_steps=2000, history_len=5)
    env.reset(seed=1)
    user, episode = env._user, env._episode
    env._t = 1000
    late = env.step(np.arange(8))[4]["actions"]
    env.reset(options={"user_id": user})
    env._episode, env._t = episode + 1, 0
    assert env.step(np.arange(8))[4]["actions"] != late


def test_bandit_example_runs(monkeypatch, capsys):
    import sys

    from vragent.rl import bandit_example

    monkeypatch.setattr(sys, "argv", ["bandit", "--episodes", "3"])
    bandit_example.main()
    assert "episodes 3: mean return first 1" in capsys.readouterr().out
