"""Intervals for the evaluation table: a paired bootstrap over groups.

Every model of a ``(task, protocol, m)`` cell is scored on the same rows, made of groups (one
``group_id`` = one user's positive with its negatives, or one selection prompt). The groups are
the independent units, so the intervals resample **groups** with replacement:

* each model's accuracy and pairwise AUC get a percentile interval (default 95 %, 1,000
  resamples); the AUC of a resample is its within-group pairs' mean, as in
  :func:`rl.metrics.pairwise_auc`;
* each model is compared with the cell's **best baseline** (the non-LLM scorer, random
  excluded, with the highest AUC for judgement or accuracy for selection on the same rows): the
  difference ``model - best`` is computed on the *same* resampled groups for both, so its
  interval is paired. A model compared with itself differs by exactly 0 in every resample.

The resampling seed depends only on the evaluation seed and the cell, so every model of a cell
sees the same resamples, and a rerun reproduces every interval.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Columns :func:`add_intervals` fills (NaN where a metric does not apply).
INTERVAL_COLUMNS = ("accuracy_lo", "accuracy_hi", "auc_lo", "auc_hi", "diff_accuracy",
                    "diff_accuracy_lo", "diff_accuracy_hi", "diff_auc", "diff_auc_lo",
                    "diff_auc_hi")
CellKey = tuple[str, str, str, str, int]  # model, mode, task, protocol, m
#: Models never taken as the best baseline.
NOT_A_BASELINE = ("random",)


@dataclass
class RowOutcome:
    """What one model did on each row of a cell, for the bootstrap.

    Attributes:
        groups: each row's ``group_id``.
        correct: whether the row's prediction was right (a missing answer is wrong).
        labels: judgement: whether the row is a positive; ``None`` for selection.
        scores: judgement scores for the AUC (higher = more likely ``Yes``); ``None`` without.
    """

    groups: Sequence[str]
    correct: Sequence[bool]
    labels: Sequence[bool] | None = None
    scores: Sequence[float] | None = None

    def per_group(self) -> pd.DataFrame:
        """Per group: ``rows``, ``correct``, AUC ``wins`` (ties 0.5) and ``pairs``, by group."""
        g = pd.Series([str(x) for x in self.groups], dtype=object)
        frame = pd.DataFrame({"group": g, "rows": 1.0,
                              "correct": np.asarray(self.correct, dtype=np.float64)})
        out = frame.groupby("group", sort=True)[["rows", "correct"]].sum()
        out["wins"] = 0.0
        out["pairs"] = 0.0
        if self.labels is not None and self.scores is not None:
            y = np.asarray(self.labels, dtype=bool)
            s = np.asarray(self.scores, dtype=np.float64)
            pos = pd.DataFrame({"group": g[y].to_numpy(), "sp": s[y]})
            neg = pd.DataFrame({"group": g[~y].to_numpy(), "sn": s[~y]})
            pairs = pos.merge(neg, on="group", how="inner")
            if not pairs.empty:
                pairs["w"] = ((pairs["sp"] > pairs["sn"]).astype(float)
                              + 0.5 * (pairs["sp"] == pairs["sn"]).astype(float))
                agg = pairs.groupby("group", sort=True)["w"].agg(["sum", "size"])
                out.loc[agg.index, "wins"] = agg["sum"].to_numpy(dtype=np.float64)
                out.loc[agg.index, "pairs"] = agg["size"].to_numpy(dtype=np.float64)
        return out


def resample_counts(n_groups: int, n_boot: int, seed: int | Sequence[int]) -> np.ndarray:
    """How often each group is drawn in each bootstrap resample, shape ``(n_boot, n_groups)``.

    Args:
        n_groups: groups in the cell.
        n_boot: resamples.
        seed: a seed or compound seed (non-negative ints).

    Returns:
        Float counts; each row sums to ``n_groups``.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    flat = draws + (np.arange(n_boot)[:, None] * n_groups)
    return np.bincount(flat.ravel(), minlength=n_boot * n_groups).reshape(
        n_boot, n_groups).astype(np.float64)


def _ratio(counts: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    top, bottom = counts @ num, counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values (NaN resamples ignored).

    Returns:
        ``(lo, hi)``; ``(nan, nan)`` when every value is NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(v, [tail, 100.0 - tail])
    return float(lo), float(hi)


_METRICS = {"accuracy": ("correct", "rows"), "auc": ("wins", "pairs")}


def _cell_seed(seed: int, task: str, protocol: str, m: int) -> list[int]:
    return [int(seed) & 0xFFFFFFFF, zlib.crc32(f"boot/{task}/{protocol}/{m}".encode())]


def primary_metric(task: str) -> str:
    """The metric that names a cell's best baseline: AUC for judgement, else accuracy."""
    return "auc" if task == "judgement" else "accuracy"


def add_intervals(
    table: pd.DataFrame,
    outcomes: Mapping[CellKey, RowOutcome],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
) -> pd.DataFrame:
    """The table with :data:`INTERVAL_COLUMNS` filled from the rows' outcomes.

    Args:
        table: :func:`rl.evaluation.evaluate`'s table (``model, mode, task, protocol, m`` keys).
        outcomes: each table row's :class:`RowOutcome`; rows without one keep NaN.
        seed: the evaluation seed (with the cell, it seeds the resamples).
        n_boot: bootstrap resamples.
        level: the intervals' coverage.

    Returns:
        A copy of the table with the interval columns and ``vs`` (the best baseline's name, or
        ``None`` when the cell has no baseline).
    """
    out = table.copy()
    for col in INTERVAL_COLUMNS:
        out[col] = math.nan
    out["vs"] = None
    stats = {k: o.per_group() for k, o in outcomes.items()}
    for (task, protocol, m), cell in out.groupby(["task", "protocol", "m"], sort=False):
        main = primary_metric(str(task))
        for idx, rec in cell.iterrows():
            key = (rec["model"], rec["mode"], task, protocol, int(m))
            if key not in stats:
                continue
            mine = stats[key]
            counts = resample_counts(len(mine), n_boot, _cell_seed(seed, task, protocol, m))
            boots = {name: _ratio(counts, mine[a].to_numpy(), mine[b].to_numpy())
                     for name, (a, b) in _METRICS.items()}
            for name, values in boots.items():
                if mine[_METRICS[name][1]].sum() > 0:
                    out.loc[idx, [f"{name}_lo", f"{name}_hi"]] = percentile_interval(values, level)
            best = _best_baseline(cell, stats, task, protocol, int(m), mine.index, main)
            if best is None:
                continue
            name, theirs = best
            out.loc[idx, "vs"] = name
            for metric, (a, b) in _METRICS.items():
                if mine[b].sum() <= 0 or theirs[b].sum() <= 0:
                    continue
                point = (mine[a].sum() / mine[b].sum()) - (theirs[a].sum() / theirs[b].sum())
                diff = boots[metric] - _ratio(counts, theirs[a].to_numpy(), theirs[b].to_numpy())
                lo, hi = percentile_interval(diff, level)
                out.loc[idx, [f"diff_{metric}", f"diff_{metric}_lo", f"diff_{metric}_hi"]] = (
                    point, lo, hi)
    return out


def _best_baseline(cell: pd.DataFrame, stats: Mapping[CellKey, pd.DataFrame], task: str,
                   protocol: str, m: int, groups: pd.Index, metric: str,
                   ) -> tuple[str, pd.DataFrame] | None:
    """The scorer with the best ``metric`` on exactly these groups, and its per-group stats."""
    a, b = _METRICS[metric]
    best: tuple[float, str, pd.DataFrame] | None = None
    for model in cell.loc[cell["mode"] == "scorer", "model"]:
        if model in NOT_A_BASELINE:
            continue
        theirs = stats.get((model, "scorer", task, protocol, m))
        if theirs is None or not groups.isin(theirs.index).all():
            continue
        theirs = theirs.loc[groups]  # the model's rows only: a paired comparison
        if theirs[b].sum() <= 0:
            continue
        value = theirs[a].sum() / theirs[b].sum()
        if best is None or value > best[0]:
            best = (value, str(model), theirs)
    return None if best is None else (best[1], best[2])


def best_baselines(table: pd.DataFrame) -> list[str | None]:
    """For each row with a paired difference, its cell's best baseline on the full cell.

    The rule of :func:`add_intervals` applied to the table's point values (a table rebuilt from
    the store has the differences but not the names).
    """
    out: list[str | None] = []
    for rec in table.to_dict("records"):
        metric = primary_metric(str(rec["task"]))
        diff = rec.get(f"diff_{metric}")
        if diff is None or (isinstance(diff, float) and math.isnan(diff)):
            out.append(None)
            continue
        cell = table[(table["task"] == rec["task"]) & (table["protocol"] == rec["protocol"])
                     & (table["m"] == rec["m"]) & (table["mode"] == "scorer")
                     & ~table["model"].isin(NOT_A_BASELINE)].dropna(subset=[metric])
        out.append(None if cell.empty else str(cell.loc[cell[metric].idxmax(), "model"]))
    return out
