"""Recommenders the simulated platform can serve slates from.

Add a model by subclassing :class:`Recommender` and adding its class to
:data:`RECOMMENDERS` under its ``name``.
"""

from __future__ import annotations

from typing import Any

from environments.recommenders.base import PAD_ITEM, Recommendations, Recommender
from environments.recommenders.baselines import (
    CoOccurrenceRecommender,
    MostPopularRecommender,
    RandomRecommender,
)

#: Registry of recommender classes by name.
RECOMMENDERS: dict[str, type[Recommender]] = {
    cls.name: cls for cls in (RandomRecommender, MostPopularRecommender, CoOccurrenceRecommender)
}


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
    try:
        cls = RECOMMENDERS[name]
    except KeyError:
        choices = ", ".join(sorted(RECOMMENDERS))
        raise ValueError(f"unknown recommender {name!r}; choose from {choices}") from None
    return cls(**params)


__all__ = [
    "PAD_ITEM",
    "RECOMMENDERS",
    "CoOccurrenceRecommender",
    "MostPopularRecommender",
    "RandomRecommender",
    "Recommendations",
    "Recommender",
    "make_recommender",
]
