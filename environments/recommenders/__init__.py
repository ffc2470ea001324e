"""Recommenders the simulated platform can serve slates from.

Add a model by subclassing :class:`Recommender` and adding an entry to ``_SPECS`` under its
``name``: the class itself for light models, or a ``"module:Class"`` string for models that
import torch, so that importing this package stays fast and torch-free.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from vragent.environments.recommenders.base import PAD_ITEM, Recommendations, Recommender
from vragent.environments.recommenders.baselines import (
    CoOccurrenceRecommender,
    MostPopularRecommender,
    RandomRecommender,
)
from vragent.environments.recommenders.neighbors import ItemKNNRecommender

#: Name -> class, or ``"module:Class"`` imported on first use.
_SPECS: dict[str, type[Recommender] | str] = {
    **{
        cls.name: cls
        for cls in (
            RandomRecommender,
            MostPopularRecommender,
            CoOccurrenceRecommender,
            ItemKNNRecommender,
        )
    },
    "mf": "vragent.environments.recommenders.factorization:MFRecommender",
    "sasrec": "vragent.environments.recommenders.sasrec:SASRecRecommender",
}


class _Registry(Mapping[str, type[Recommender]]):
    """Read-only name -> class mapping that imports ``"module:Class"`` entries on access.

    Listing names (``sorted(RECOMMENDERS)``, ``in``) imports nothing; looking a class up
    imports its module once.
    """

    def __init__(self, specs: Mapping[str, type[Recommender] | str]) -> None:
        self.specs = specs
        self._classes: dict[str, type[Recommender]] = {}

    def __getitem__(self, name: str) -> type[Recommender]:
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        spec = self.specs[name]
        if isinstance(spec, str):
            module_name, _, attr = spec.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
        else:
            cls = spec
        if not (isinstance(cls, type) and issubclass(cls, Recommender)) or cls.name != name:
            raise TypeError(f"registry entry {name!r} -> {spec!r} is not a {name!r} Recommender")
        self._classes[name] = cls
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"RECOMMENDERS({sorted(self.specs)})"


#: Registry of recommender classes by name (torch-based ones load on first lookup).
RECOMMENDERS: Mapping[str, type[Recommender]] = _Registry(_SPECS)


def recommender_class(name: str) -> type[Recommender]:
    """Look up a registered recommender class, importing its module if needed.

    Args:
        name: registry key, e.g. ``"mf"``.

    Returns:
        The class.

    Raises:
        ValueError: ``name`` is not registered (the message lists the choices).
        ImportError: the model's module (or one of its dependencies) cannot be imported.
    """
    if name not in RECOMMENDERS:
        choices = ", ".join(sorted(RECOMMENDERS))
        raise ValueError(f"unknown recommender {name!r}; choose from {choices}")
    return RECOMMENDERS[name]


def make_recommender(name: str, **params: Any) -> Recommender:
    """Build a registered recommender.

    Args:
        name: registry key, e.g. ``"popular"``.
        **params: constructor keyword arguments (``seed`` and model parameters).

    Returns:
        An unfitted recommender.

    Raises:
        ValueError: ``name`` is not registered.
    """
    return recommender_class(name)(**params)


def check_recommender(name: str, params: Mapping[str, Any]) -> None:
    """Check that ``make_recommender(name, seed=…, **params)`` would succeed, building nothing.

    Scenario validation calls this, so an unknown recommender or parameter is a one-line
    error at load, before a run is created. Models whose module cannot be imported (no torch)
    pass here and fail when the run builds them.

    Raises:
        ValueError: an unknown name, a parameter the model does not take, ``seed`` (each run
            passes the scenario's), or a value its constructor rejects.
    """
    try:
        cls = recommender_class(name)
    except ImportError:
        return
    if "seed" in params:
        raise ValueError(f"recommender {name!r}: 'seed' comes from the scenario's seed, not "
                         "from params")
    if params and cls.__init__ is Recommender.__init__:
        # The base class stores any keyword; a model without its own parameters takes none.
        raise ValueError(f"recommender {name!r} takes no params, got {sorted(params)}")
    try:
        cls(seed=0, **params)  # constructors only check and store; fitting does the work
    except TypeError as exc:
        raise ValueError(f"recommender {name!r}: {_param_problem(exc)}") from None
    except ValueError as exc:
        raise ValueError(f"recommender {name!r}: {exc}") from None


def _param_problem(exc: TypeError) -> str:
    """``__init__() got an unexpected keyword argument 'x'`` without the function name."""
    return re.sub(r"^[\w.]*\(\) ", "", str(exc))


def load_recommender(path: str | Path, interactions: pd.DataFrame) -> Recommender:
    """Load a checkpoint of any registered model, picking the class from its config.

    Args:
        path: a folder written by :meth:`Recommender.save`.
        interactions: the history to mask and to encode users with (see
            :meth:`Recommender.load`).

    Returns:
        The fitted model.

    Raises:
        CheckpointError: the config is missing or unreadable, names no registered model, or
            the weights do not load.
    """
    from vragent.environments.recommenders.checkpoint import CONFIG_FILE, CheckpointError

    cfg_file = Path(path) / CONFIG_FILE
    try:
        name = json.loads(cfg_file.read_text(encoding="utf-8")).get("name")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{cfg_file}: unreadable checkpoint config ({exc})") from None
    if not isinstance(name, str) or name not in RECOMMENDERS:
        raise CheckpointError(f"{cfg_file}: checkpoint of unknown recommender {name!r}")
    return RECOMMENDERS[name].load(path, interactions)


__all__ = [
    "PAD_ITEM",
    "RECOMMENDERS",
    "CoOccurrenceRecommender",
    "ItemKNNRecommender",
    "MostPopularRecommender",
    "RandomRecommender",
    "Recommendations",
    "Recommender",
    "check_recommender",
    "load_recommender",
    "make_recommender",
    "recommender_class",
]
