"""Shared fixtures: tiny real models, small scenarios, the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_backend():
    """A randomly initialised 0.1M-parameter Llama behind the hf backend."""
    from agents.backends.tiny import tiny_hf_backend

    return tiny_hf_backend(seed=0, batch_size=8)


@pytest.fixture
def data_dir() -> Path:
    """The shared real data (``VRAGENT_DATA_DIR``), or skip."""
    d = os.environ.get("VRAGENT_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("VRAGENT_DATA_DIR is not set")
    return Path(d)


def tiny_scenario(**overrides) -> dict:
    """A synthetic-world scenario with the tiny model; sections can be overridden."""
    sc = {
        "name": "tiny-synthetic",
        "seed": 11,
        "dataset": {"kind": "synthetic",
                    "synthetic": {"n_users": 40, "n_items": 60, "mean_history": 10}},
        "population": {"size": 6, "history_len": 5},
        "simulation": {"steps": 3, "slate_size": 3, "users_per_task": 2, "refit_every": 2},
        "arms": [{"name": "popular", "recommender": "popular"},
                 {"name": "cooc", "recommender": "cooccurrence"},
                 {"name": "random", "recommender": "random"}],
        "backend": {"kind": "tiny", "decision_mode": "score", "trace_rate": 0.3,
                    "max_new_tokens": 12, "max_prompt_tokens": 2048},
        "ip_agent": {"enabled": True, "items_per_step": 2, "max_new_tokens": 12,
                     "cmp_max_new_tokens": 12},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sc.get(key), dict):
            sc[key] = {**sc[key], **value}
        else:
            sc[key] = value
    return sc


def write_scenario(tmp_path: Path, sc: dict, name: str = "scenario.yaml") -> Path:
    """Write a scenario dict as YAML and return its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sc, sort_keys=False))
    return path
