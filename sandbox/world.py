"""Load the scenario's dataset and sample its simulated population."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from environments.datasets import load_dataset
from environments.schema import Dataset
from environments.splits import Split, leave_one_out
from sandbox.config import Scenario

# Where $VRAGENT_DATA_DIR keeps each dataset when a scenario gives no path.
DATA_DIR_DEFAULTS = {"movielens-100k": "movielens-100k", "microlens": "microlens-100k"}


def dataset_path(sc: Scenario) -> Path | None:
    """The data folder a scenario reads (``None`` for synthetic data)."""
    ds = sc.dataset
    if ds.kind == "synthetic":
        return None
    if ds.path:
        return Path(os.path.expandvars(ds.path)).expanduser()
    if ds.kind == "movielens-100k":
        from sandbox.assets import require_movielens

        return require_movielens()
    data_dir = os.environ.get("VRAGENT_DATA_DIR")
    if data_dir and ds.kind in DATA_DIR_DEFAULTS:
        return Path(data_dir) / DATA_DIR_DEFAULTS[ds.kind]
    raise FileNotFoundError(
        f"dataset.path is required for {ds.kind} (or set VRAGENT_DATA_DIR)"
    )


def load_world(sc: Scenario) -> tuple[Dataset, str]:
    """The scenario's dataset and a key naming it (used to cache item profiles)."""
    if sc.dataset.kind == "synthetic":
        params = {"seed": sc.seed, **sc.dataset.synthetic}
        ds = load_dataset("synthetic", None, **params)
        key = "synthetic:" + ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        return ds, key
    path = dataset_path(sc)
    if not path.exists():
        raise FileNotFoundError(f"dataset.path: {path} does not exist")
    return load_dataset(sc.dataset.kind, path), f"{sc.dataset.kind}:{path.resolve().name}"


def sample_population(split: Split, size: int, sampling: str, seed: int) -> list[int]:
    """Seeded sample of users that have a train history."""
    users = np.array(sorted(split.train), dtype=np.int64)
    if size >= len(users):
        return users.tolist()
    if sampling == "first":
        return users[:size].tolist()
    rng = np.random.default_rng([seed, 17])
    return sorted(rng.choice(users, size=size, replace=False).tolist())


def make_split(sc: Scenario, ds: Dataset) -> Split:
    """The leave-one-out split the simulation is grounded in."""
    return leave_one_out(ds, min_len=sc.dataset.min_len, max_len=sc.dataset.max_len)
