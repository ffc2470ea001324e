"""Which dataset kinds exist, and the options of the generic interactions loader.

Kept free of pandas so the command line and the scenario config can import it cheaply:
``--help`` lists :data:`DATASET_KINDS`, and ``dataset.columns`` of a scenario is validated by
:class:`InteractionColumns` before any file is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DATASET_KINDS = ("movielens-100k", "movielens-1m", "microlens", "interactions", "synthetic")
"""Every dataset kind, as scenarios, ``vragent rl build-data`` and ``vragent perceive`` name it."""

KIND_ALIASES = {
    "ml-100k": "movielens-100k",
    "ml100k": "movielens-100k",
    "ml-1m": "movielens-1m",
    "ml1m": "movielens-1m",
    "microlens-50k": "microlens",
    "microlens-100k": "microlens",
    "microlens-1m": "microlens",
    "csv": "interactions",
    "parquet": "interactions",
}
"""Other spellings accepted by :func:`canonical_kind` (the loaders, not the scenario files)."""

KINDS_HELP = "Dataset kind: " + ", ".join(DATASET_KINDS) + "."
"""One line for ``--dataset`` options."""


def canonical_kind(kind: str) -> str:
    """The kind an alias names (case-insensitive); unknown names come back lower-cased."""
    key = kind.strip().lower()
    return KIND_ALIASES.get(key, key)


DATA_DIR_FOLDERS = {"movielens-100k": "movielens-100k", "microlens": "microlens-100k"}
"""The folder under ``$VRAGENT_DATA_DIR`` that holds each file-based kind (by canonical kind)."""


def data_dir_path(kind: str) -> Path | None:
    """``$VRAGENT_DATA_DIR/<folder>`` of ``kind`` (an alias is fine), else ``None``.

    ``None`` when the variable is unset or the kind has no folder there. The one place a
    dataset's default location is decided: scenarios, ``vragent rl``, ``vragent
    ip-experiment`` and the dashboard's cover search all read it.
    """
    folder = DATA_DIR_FOLDERS.get(canonical_kind(kind))
    root = os.environ.get("VRAGENT_DATA_DIR")
    return Path(root) / folder if folder and root else None


OptionalColumn = str | Literal[False] | None
"""An optional column: a name (it must exist), ``None`` (its usual name, when the file has
it) or ``False`` (ignored even when present)."""


class InteractionColumns(BaseModel):
    """Column names of a ``kind: interactions`` log and its optional items file.

    ``user``, ``item`` and (with an items file) ``title`` must exist. The optional columns
    are used under their usual names (``timestamp``, ``rating``, ``category``) when the file
    has them; a name given explicitly must exist, and ``false`` ignores the column.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field("user_id", min_length=1, description="User id column.")
    item: str = Field("item_id", min_length=1,
                      description="Item id column (the same name in the items file).")
    title: str = Field("title", min_length=1, description="Items file: the title column.")
    timestamp: OptionalColumn = Field(
        None, description="Orders each user's interactions: numbers (e.g. Unix seconds) or "
        "ISO 8601 date-times. Without one the file order is the time order.")
    rating: OptionalColumn = Field(
        None, description="Numeric rating; like = rating >= like_threshold.")
    category: OptionalColumn = Field(
        None, description="Items file: categories, '|' between several.")

    def pick(self, role: str, have: Sequence[str]) -> str | None:
        """The column to read for ``role`` among the file's columns ``have``.

        Returns:
            The column name, or ``None`` when the role is not used.

        Raises:
            KeyError: the role's column is required (or named explicitly) but missing; the
                value is the name looked for.
        """
        value = getattr(self, role)
        if value is False:
            return None
        if value is None and role in OPTIONAL_DEFAULTS:
            return OPTIONAL_DEFAULTS[role] if OPTIONAL_DEFAULTS[role] in have else None
        if value not in have:
            raise KeyError(value)
        return value


OPTIONAL_DEFAULTS = {"timestamp": "timestamp", "rating": "rating", "category": "category"}
"""The usual names of the optional columns."""


class InteractionsOptions(BaseModel):
    """Everything :func:`environments.datasets.load_interactions` takes besides the path.

    The scenario's ``dataset`` section (``sandbox.config.DatasetConfig``) extends this model,
    so a scenario, ``vragent rl build-data`` and the loader check the same fields.
    """

    model_config = ConfigDict(extra="forbid")

    items_path: str | None = Field(
        None, description="CSV or Parquet with an item column and titles (optional).")
    columns: InteractionColumns = Field(default_factory=InteractionColumns)
    like_threshold: float = Field(4.0, allow_inf_nan=False,
                                  description="A rating at or above this is a like.")
    sep: str | None = Field(None, min_length=1, max_length=1,
                            description="CSV field separator; default tab for .tsv, else comma.")


def interactions_options(params: Mapping[str, Any]) -> InteractionsOptions:
    """Validate loader options given as plain data (a scenario, an RL config, CLI flags).

    Raises:
        ValueError: one line naming the first bad option.
    """
    try:
        return InteractionsOptions.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "options"
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"interactions {where}: {msg}") from None
