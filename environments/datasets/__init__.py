"""Dataset loaders and the synthetic world, all producing :class:`~environments.schema.Dataset`.

Use :func:`load_dataset` to pick a loader by name, or call a loader directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vragent.environments.datasets._io import extract_tags
from vragent.environments.datasets.interactions import load_interactions
from vragent.environments.datasets.microlens import load_microlens
from vragent.environments.datasets.movielens import load_movielens_1m, load_movielens_100k
from vragent.environments.datasets.synthetic import SyntheticWorld, make_synthetic_world
from vragent.environments.schema import Dataset
from vragent.environments.sources import DATASET_KINDS, canonical_kind, interactions_options

__all__ = [
    "DATASET_KINDS",
    "SyntheticWorld",
    "extract_tags",
    "load_dataset",
    "load_interactions",
    "load_microlens",
    "load_movielens_1m",
    "load_movielens_100k",
    "make_synthetic_world",
]


def load_dataset(kind: str, path: str | Path | None = None, **kw: Any) -> Dataset:
    """Load a dataset by kind.

    Args:
        kind: One of :data:`DATASET_KINDS` (aliases such as ``"ml-100k"`` and
            ``"microlens-50k"`` are accepted; case-insensitive).
        path: The data folder (MovieLens: or its ``.zip``; ``"interactions"``: the log file);
            ignored for ``"synthetic"``.
        **kw: Passed to the loader; for ``"synthetic"`` these are the
            :func:`make_synthetic_world` arguments (``n_users``, ``seed`` ...), for
            ``"interactions"`` the :class:`~environments.sources.InteractionsOptions` fields
            (``items_path``, ``columns``, ``like_threshold``, ``sep``).

    Returns:
        The dataset (for ``"synthetic"``, ``make_synthetic_world(**kw).dataset``).

    Raises:
        ValueError: Unknown kind, no path for a file-based kind, or a bad option.
        FileNotFoundError: The path does not exist.
        DataFormatError: The files are missing or malformed.
    """
    key = canonical_kind(kind)
    if key == "synthetic":
        return make_synthetic_world(**kw).dataset
    if key not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of "
                         f"{', '.join(DATASET_KINDS)}")
    if path is None:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if key == "interactions":
        opts = interactions_options(kw)
        return load_interactions(path, opts.items_path, columns=opts.columns,
                                 like_threshold=opts.like_threshold, sep=opts.sep)
    loaders = {
        "movielens-100k": load_movielens_100k,
        "movielens-1m": load_movielens_1m,
        "microlens": load_microlens,
    }
    return loaders[key](path, **kw)
