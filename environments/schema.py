"""The one normalised data schema every loader produces.

A :class:`Dataset` is three pandas frames plus a load report:

* ``users``: ``user_id`` (int64) and optional profile columns (``age``, ``gender``,
  ``occupation``, ``zip_code``, ``activity`` ...). Profile columns are free-form.
* ``items``: ``item_id`` (int64), ``title`` (str), ``category`` (str, ``""`` when unknown),
  ``tags`` (str, space-separated ``#tags``; ``""`` when none) and optional ``cover_path``,
  ``frames_path``, ``likes``, ``views``, ``comments``.
* ``interactions``: ``user_id``, ``item_id``, ``order`` (int64, 0-based position in the user's
  time-ordered sequence) and optional ``timestamp``, ``rating``, ``like``, ``watch``.
  Rows are sorted by ``(user_id, order)``.

Ids are integers everywhere: every supported dataset uses integer ids, and int64 columns keep
100k-user populations cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

USER_COLUMNS = ("user_id",)
ITEM_COLUMNS = ("item_id", "title", "category", "tags")
INTERACTION_COLUMNS = ("user_id", "item_id", "order")


class DataFormatError(ValueError):
    """A data file is malformed beyond what skipping rows can fix.

    The message always names the file and, where it applies, the line.
    """


@dataclass
class LoadReport:
    """What a loader skipped, per file and reason, so nothing is dropped silently."""

    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, file: str, reason: str, line: int | None = None) -> None:
        """Count one skipped row of ``file`` for ``reason`` (keeps a few examples)."""
        per_file = self.skipped.setdefault(file, {})
        per_file[reason] = per_file.get(reason, 0) + 1
        ex = self.examples.setdefault(file, [])
        if len(ex) < 5:
            ex.append(f"line {line}: {reason}" if line is not None else reason)

    @property
    def total_skipped(self) -> int:
        """Number of rows skipped over all files."""
        return sum(sum(r.values()) for r in self.skipped.values())

    def lines(self) -> list[str]:
        """Human-readable one-liners, one per (file, reason)."""
        return [
            f"{file}: skipped {n} row(s): {reason}"
            for file, reasons in self.skipped.items()
            for reason, n in reasons.items()
        ]


@dataclass
class Dataset:
    """Users, items and interactions in the normalised schema."""

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    report: LoadReport = field(default_factory=LoadReport)

    def validate(self) -> Dataset:
        """Check the required columns and id consistency; return ``self``.

        Raises:
            DataFormatError: a required column is missing or an interaction points to an
                unknown item.
        """
        for frame_name, cols in (
            ("users", USER_COLUMNS),
            ("items", ITEM_COLUMNS),
            ("interactions", INTERACTION_COLUMNS),
        ):
            frame = getattr(self, frame_name)
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise DataFormatError(f"{self.name}: {frame_name} lacks columns {missing}")
        unknown = ~self.interactions["item_id"].isin(self.items["item_id"])
        if unknown.any():
            bad = int(self.interactions.loc[unknown, "item_id"].iloc[0])
            raise DataFormatError(
                f"{self.name}: {int(unknown.sum())} interaction(s) reference unknown items "
                f"(first: item {bad})"
            )
        return self

    def sequences(self) -> dict[int, list[int]]:
        """Each user's time-ordered item ids."""
        inter = self.interactions.sort_values(["user_id", "order"], kind="stable")
        return {
            int(u): g.tolist() for u, g in inter.groupby("user_id", sort=True)["item_id"]
        }

    def like_share(self) -> float:
        """The real logs' share of likes among watched items.

        Rated data (MovieLens and the interactions loader with a rating): the share of
        interactions with ``like`` (rating at or above the like threshold). Data with per-item
        like and view counts (MicroLens): likes per view over the catalogue.

        Raises:
            DataFormatError: the dataset has neither (one line naming it).
        """
        if "like" in self.interactions and self.interactions["like"].notna().any():
            return float(self.interactions["like"].dropna().astype(bool).mean())
        if {"likes", "views"} <= set(self.items.columns):
            views = float(pd.to_numeric(self.items["views"], errors="coerce").fillna(0).sum())
            if views > 0:
                likes = pd.to_numeric(self.items["likes"], errors="coerce").fillna(0).sum()
                return float(likes) / views
        raise DataFormatError(f"{self.name}: no like share in the logs (neither a like/rating "
                              "column nor per-item likes and views): give like_share a number")

    def summary(self) -> dict[str, int]:
        """Counts for logs and the CLI."""
        return {
            "users": len(self.users),
            "items": len(self.items),
            "interactions": len(self.interactions),
            "skipped_rows": self.report.total_skipped,
        }
