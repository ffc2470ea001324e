"""Dataset loaders and the synthetic world, all producing :class:`~environments.schema.Dataset`.

Use :func:`load_dataset` to pick a loader by name, or call a loader directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from environments.datasets._io import extract_tags
from environments.datasets.microlens import load_microlens
from environments.datasets.movielens import load_movielens_1m, load_movielens_100k
from environments.datasets.synthetic import SyntheticWorld, make_synthetic_world
from environments.schema import Dataset

__all__ = [
    "DATASET_KINDS",
    "SyntheticWorld",
    "extract_tags",
    "load_dataset",
    "load_microlens",
    "load_movielens_1m",
    "load_movielens_100k",
    "make_synthetic_world",
]

DATASET_KINDS = ("movielens-100k", "movielens-1m", "microlens", "synthetic")

_ALIASES = {
    "ml-100k": "movielens-100k",
    "ml100k": "movielens-100k",
    "ml-1m": "movielens-1m",
    "ml1m": "movielens-1m",
    "microlens-50k": "microlens",
    "microlens-100k": "microlens",
    "microlens-1m": "microlens",
}


def load_dataset(kind: str, path: str | Path | None = None, **kw: Any) -> Dataset:
    """Load a dataset by kind.

    Args:
        kind: One of :data:`DATASET_KINDS` (aliases such as ``"ml-100k"`` and
            ``"microlens-50k"`` are accepted; case-insensitive).
        path: The data folder; ignored for ``"synthetic"``.
        **kw: Passed to the loader; for ``"synthetic"`` these are the
            :func:`make_synthetic_world` arguments (``n_users``, ``seed`` ...).

    Returns:
        The dataset (for ``"synthetic"``, ``make_synthetic_world(**kw).dataset``).

    Raises:
        ValueError: Unknown kind, or no path for a file-based kind.
        DataFormatError: The files are missing or malformed.
    """
    key = kind.strip().lower()
    key = _ALIASES.get(key, key)
    if key == "synthetic":
        return make_synthetic_world(**kw).dataset
    if key not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}")
    if path is None:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    loaders = {
        "movielens-100k": load_movielens_100k,
        "movielens-1m": load_movielens_1m,
        "microlens": load_microlens,
    }
    return loaders[key](path, **kw)
