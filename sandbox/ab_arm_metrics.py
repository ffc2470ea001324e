"""Arm metrics of an A/B run (coverage, exposure Gini, like calibration) on resampled users.

An arm metric is a property of everything one arm showed in one run, so it has no per-user
value to difference. Its interval and test resample users instead: a bootstrap draws users
with the same draws in both arms (the interval re-centred on the estimate, see
:func:`recentred`), and the permutation test swaps a user's two arms at random. Each resample is
a weight vector over users, so one sparse product gives every item's exposure in it. Over
seeds, the seeds' resamples are averaged entry by entry (:func:`combine_seeds`). The per-user
metrics and the analysis itself are in :mod:`sandbox.ab_analysis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from vragent.environments import metrics as em
from vragent.sandbox.stats import resample_blocks

if TYPE_CHECKING:  # ab_analysis imports this module; the run's type is only annotated here
    from vragent.sandbox.ab_analysis import RunData

ARM_METRICS = ("coverage", "exposure_gini", "like_calibration_error")


def arm_stats(exposure: np.ndarray, likes: np.ndarray, n_items: int,
               real: np.ndarray) -> dict[str, np.ndarray]:
    """Arm metrics for each row (a resample) of item-level exposure and like counts."""
    cov = em.coverage_rows(exposure, n_items)
    gini = em.gini_rows(exposure, n_items)
    calib = em.like_calibration_rows(exposure, likes, real)
    return {"coverage": cov, "exposure_gini": gini, "like_calibration_error": calib}


@dataclass
class ArmDraws:
    """One seed's arm metrics, ``arm`` against ``base``: observed, bootstrapped and permuted.

    Every array has one entry per resample, in the same order for every seed of an experiment,
    so the seeds' draws can be averaged entry by entry (:func:`combine_seeds`).
    """

    n_units: int
    obs_a: dict[str, float]
    obs_b: dict[str, float]
    boot_a: dict[str, np.ndarray]
    boot_b: dict[str, np.ndarray]
    null: dict[str, np.ndarray]  # arm − base with each unit's two arms swapped at random


def arm_draws(run: RunData, arm: str, base: str, *, n_resamples: int,
               seed: int) -> ArmDraws:
    """Arm metrics of one seed's run, with bootstrap and permutation resamples of its units."""
    n_items = len(run.items)
    e_a, e_b = run.exposure[arm], run.exposure[base]
    l_a, l_b = run.likes[arm], run.likes[base]
    # Only columns shown in either arm matter; the rest are zeros the Gini pads back in.
    shown = np.unique(np.concatenate([e_a.indices, e_b.indices]))
    e_a, e_b, l_a, l_b = (m[:, shown] for m in (e_a, e_b, l_a, l_b))
    real = np.array([run.real_like_rate.get(run.items[c], np.nan) for c in shown],
                    dtype=np.float64)
    n = e_a.shape[0]
    # Each seed's own stream: the seeds' resamples are independent, so their mean is a
    # bootstrap stratified by seed.
    rng = np.random.default_rng([seed, run.seed])

    def stats(w: np.ndarray, ea, eb, la, lb):
        sa = arm_stats(np.asarray((ea.T @ w.T).T), np.asarray((la.T @ w.T).T), n_items, real)
        sb = arm_stats(np.asarray((eb.T @ w.T).T), np.asarray((lb.T @ w.T).T), n_items, real)
        return sa, sb

    obs_a, obs_b = stats(np.ones((1, n)), e_a, e_b, l_a, l_b)
    d_e, d_l = (e_b - e_a), (l_b - l_a)
    sum_ea, sum_eb = np.asarray(e_a.sum(axis=0)), np.asarray(e_b.sum(axis=0))
    sum_la, sum_lb = np.asarray(l_a.sum(axis=0)), np.asarray(l_b.sum(axis=0))
    parts: dict[str, list] = {"boot_a": [], "boot_b": [], "perm_a": [], "perm_b": []}
    # Blocks of resamples keep the (resamples x users) weights small for big populations.
    for k in resample_blocks(n + shown.size, n_resamples):
        idx = rng.integers(0, n, size=(k, n))
        w = np.zeros((k, n))
        np.add.at(w, (np.repeat(np.arange(k), n), idx.ravel()), 1.0)
        ba, bb = stats(w, e_a, e_b, l_a, l_b)
        # Permutation: each unit's two arms swapped with probability 1/2.
        flips = rng.integers(0, 2, size=(k, n)).astype(np.float64)
        fe, fl = np.asarray((d_e.T @ flips.T).T), np.asarray((d_l.T @ flips.T).T)
        parts["boot_a"].append(ba)
        parts["boot_b"].append(bb)
        parts["perm_a"].append(arm_stats(sum_ea + fe, sum_la + fl, n_items, real))
        parts["perm_b"].append(arm_stats(sum_eb - fe, sum_lb - fl, n_items, real))
    boot_a, boot_b, perm_a, perm_b = (
        {m: np.concatenate([p[m] for p in parts[key]]) for m in ARM_METRICS}
        for key in ("boot_a", "boot_b", "perm_a", "perm_b"))
    return ArmDraws(n, {m: float(obs_a[m][0]) for m in ARM_METRICS},
                     {m: float(obs_b[m][0]) for m in ARM_METRICS}, boot_a, boot_b,
                     {m: perm_a[m] - perm_b[m] for m in ARM_METRICS})


def combine_seeds(draws: Sequence[ArmDraws], arm: str, base: str, *, confidence: float
             ) -> tuple[dict[str, dict], dict[str, tuple], dict[str, float], dict[str, int]]:
    """Values, intervals and permutation p of the arm metrics over seeds: means of the seeds'.

    An arm metric is a property of one run's exposure, so over several seeds it is the mean
    of the seeds' values (never the metric of their union: two seeds' SASRec models, trained
    apart, cover more items together than either does, and the union could then disagree in
    sign with every seed). Its interval and p follow the same definition: the entry-wise mean
    of the seeds' bootstrap and permutation resamples. A seed where a metric is undefined
    (no shown item with a known real like rate) is left out of that metric.
    """
    alpha = (1 - confidence) / 2
    values, diffs, ps, n_units = {}, {}, {}, {}
    for name in ARM_METRICS:
        ok = [d for d in draws if not (np.isnan(d.obs_a[name]) or np.isnan(d.obs_b[name]))]
        if not ok:
            continue
        va = float(np.mean([d.obs_a[name] for d in ok]))
        vb = float(np.mean([d.obs_b[name] for d in ok]))
        ba = np.mean([d.boot_a[name] for d in ok], axis=0)
        bb = np.mean([d.boot_b[name] for d in ok], axis=0)
        null = np.abs(np.mean([d.null[name] for d in ok], axis=0))
        null = null[~np.isnan(null)]
        values[name] = {arm: (va, *recentred(ba, va, alpha)),
                        base: (vb, *recentred(bb, vb, alpha))}
        diffs[name] = (va - vb, *recentred(ba - bb, va - vb, alpha))
        ps[name] = float((np.sum(null >= abs(va - vb) - 1e-12) + 1) / (null.size + 1))
        n_units[name] = sum(d.n_units for d in ok)
    return values, diffs, ps, n_units


def recentred(x: np.ndarray, estimate: float, alpha: float) -> tuple[float, float]:
    """Percentile interval of ``x`` shifted so that its median sits on ``estimate``.

    Coverage and Gini are biased under resampling with replacement (a resample repeats some
    users and drops others, so it covers fewer items and looks more concentrated); the plain
    percentile interval can then miss the estimate entirely. The spread is kept, the bias
    removed.
    """
    x = x[~np.isnan(x)]
    if not x.size:
        return (np.nan, np.nan)
    lo, mid, hi = np.quantile(x, [alpha, 0.5, 1 - alpha])
    return float(estimate + lo - mid), float(estimate + hi - mid)
