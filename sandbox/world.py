"""Load the scenario's dataset and sample its simulated population."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from vragent.environments.datasets import SyntheticWorld, load_dataset, make_synthetic_world
from vragent.environments.schema import Dataset
from vragent.environments.sources import data_dir_path
from vragent.environments.splits import Split, leave_one_out
from vragent.sandbox.config import Scenario

log = logging.getLogger("vragent.population")


def dataset_path(sc: Scenario) -> Path | None:
    """The data folder (or file) a scenario reads (``None`` for synthetic data)."""
    ds = sc.dataset
    if ds.kind == "synthetic":
        return None
    if ds.path:
        return Path(os.path.expandvars(ds.path)).expanduser()
    if ds.kind == "movielens-100k":
        from vragent.sandbox.assets import require_movielens

        return require_movielens()
    default = data_dir_path(ds.kind)
    if default is not None:
        return default
    raise FileNotFoundError(
        f"dataset.path is required for {ds.kind} (or set VRAGENT_DATA_DIR)"
    )


def _synthetic_params(sc: Scenario) -> dict[str, Any]:
    return {"seed": sc.seed, **sc.dataset.synthetic}


def synthetic_world(sc: Scenario) -> SyntheticWorld:
    """The synthetic world of a ``dataset.kind: synthetic`` scenario, ground truth included."""
    return make_synthetic_world(**_synthetic_params(sc))


def load_world(sc: Scenario) -> tuple[Dataset, str]:
    """The scenario's dataset and a key naming it (used to cache item profiles)."""
    if sc.dataset.kind == "synthetic":
        params = _synthetic_params(sc)
        ds = load_dataset("synthetic", None, **params)
        key = "synthetic:" + ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        return ds, key
    path = dataset_path(sc)
    if not path.exists():
        raise FileNotFoundError(f"dataset.path: {path} does not exist")
    options = sc.dataset.loader_options()
    key = f"{sc.dataset.kind}:{path.resolve().name}"
    if options.get("items_path"):
        items = Path(options["items_path"])
        if not items.exists():
            raise FileNotFoundError(f"dataset.items_path: {items} does not exist")
        key += f"+{items.resolve().name}"
    return load_dataset(sc.dataset.kind, path, **options), key


def sample_population(split: Split, size: int, sampling: str, seed: int) -> list[int]:
    """Seeded sample of users that have a train history."""
    users = np.array(sorted(split.train), dtype=np.int64)
    if size >= len(users):
        if size > len(users):
            # Capped rather than refused (a scenario may aim high on a small sample); said
            # out loud so that the run's user count is no surprise.
            log.warning("population.size %d is more than the %d users with a training "
                        "history; capped at %d", size, len(users), len(users))
        return users.tolist()
    if sampling == "first":
        return users[:size].tolist()
    rng = np.random.default_rng([seed, 17])
    if sampling == "stratified":
        return _stratified(split, users, size, rng)
    return sorted(rng.choice(users, size=size, replace=False).tolist())


ACTIVITY_STRATA = 3  # light, medium, heavy users


def _stratified(split: Split, users: np.ndarray, size: int,
                rng: np.random.Generator) -> list[int]:
    """Equal shares of each activity tercile (by real history length).

    The remainder goes to the heaviest strata; a stratum too small passes its share on.
    """
    lengths = np.array([len(split.train[int(u)]) for u in users])
    order = users[np.argsort(lengths, kind="stable")]
    strata = np.array_split(order, ACTIVITY_STRATA)
    quota = [size // ACTIVITY_STRATA] * ACTIVITY_STRATA
    for k in range(size % ACTIVITY_STRATA):
        quota[-1 - k] += 1
    picked: list[int] = []
    spare = 0
    for stratum, q in zip(strata, quota, strict=True):
        take = min(len(stratum), q + spare)
        spare = q + spare - take
        picked += rng.choice(stratum, size=take, replace=False).tolist()
    if spare:  # a small stratum early on: fill from whatever is left
        rest = np.setdiff1d(users, picked)
        picked += rng.choice(rest, size=spare, replace=False).tolist()
    return sorted(int(u) for u in picked)


def make_split(sc: Scenario, ds: Dataset) -> Split:
    """The leave-one-out split the simulation is grounded in."""
    return leave_one_out(ds, min_len=sc.dataset.min_len, max_len=sc.dataset.max_len)


# Profile columns a simulated user carries (the persona sentence reads age, gender, occupation
# and activity; the rest is stored with the user).
PROFILE_COLUMNS = ("age", "gender", "occupation", "zip_code", "activity")


def _clean(value: Any) -> Any:
    """JSON-safe scalar: numpy scalars to Python, NaN to ``None``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def user_profiles(users: pd.DataFrame, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Each user's profile fields (:data:`PROFILE_COLUMNS` the dataset has), JSON-safe.

    The simulation and the RL data builder both call this, so a trained policy sees the same
    persona in training as in the simulator. Users missing from ``users`` get ``{}``.
    """
    ids = [int(u) for u in user_ids]
    cols = [c for c in PROFILE_COLUMNS if c in users.columns]
    frame = users.drop_duplicates("user_id").set_index("user_id")
    sub = frame.loc[frame.index.intersection(ids), cols]
    out: dict[int, dict[str, Any]] = {u: {} for u in ids}
    for u, rec in zip(sub.index.tolist(), sub.to_dict("records"), strict=True):
        out[int(u)] = {k: _clean(v) for k, v in rec.items()}
    return out


def item_vectors(sc: Scenario, ds: Dataset) -> dict[int, np.ndarray]:
    """Item vectors for intra-list diversity, as ``metrics.embeddings`` asks.

    ``minilm`` embeds titles with all-MiniLM-L6-v2 (cached under ``$VRAGENT_HOME/embeddings``,
    so a catalogue is embedded once); ``category`` is a multi-hot of the item's categories;
    ``none`` gives no vectors (ILD is then not recorded).
    """
    kind = sc.metrics.embeddings
    if kind == "auto":
        kind = "category" if sc.dataset.kind == "synthetic" else "minilm"
    ids = ds.items["item_id"].astype("int64").tolist()
    if kind == "none" or not ids:
        return {}
    if kind == "category":
        cats = [[c for c in str(v).split("|") if c] for v in ds.items["category"].fillna("")]
        vocab = {c: j for j, c in enumerate(sorted({c for cs in cats for c in cs}))}
        m = np.zeros((len(ids), max(1, len(vocab))), dtype=np.float32)
        for r, cs in enumerate(cats):
            for c in cs:
                m[r, vocab[c]] = 1.0
        return dict(zip(ids, m, strict=True))
    from vragent.environments.text_embeddings import SentenceEncoder, encode_cached
    from vragent.sandbox.paths import vragent_home

    titles = ds.items["title"].fillna("").astype(str).tolist()
    vecs = encode_cached(titles, SentenceEncoder(), vragent_home() / "embeddings")
    return dict(zip(ids, vecs, strict=True))
