"""Statistics of a simulated A/B experiment: per-user metrics, intervals, tests, power.

The unit of analysis is a simulated user in one seed's run, ``(seed, user)``. Every arm of a
run sees the same users with the same random streams (common random numbers), so each unit
gives one paired observation per arm.

Two kinds of metric, each with one definition over several seeds:

* **user metrics** (:data:`USER_METRICS`): one value per unit and arm (its watch rate, whether
  it left, the diversity of its slates …). Arm values are means over units, every user of
  every seed counting once; differences are the mean of the units' paired differences, with
  a paired bootstrap interval and a sign-flip permutation test (:mod:`sandbox.stats`). The
  pooled difference is the seeds' differences weighted by their units, so it agrees in sign
  with them whenever they all agree.
* **arm metrics** (:data:`sandbox.ab_arm_metrics.ARM_METRICS`): properties of everything an arm
  showed in one run (catalogue coverage, the Gini of exposure, like-rate calibration against the
  real logs). Each seed's value is computed on that run; the pooled value is the **mean of the
  seeds' values**, never the metric of their union. They are recomputed on resampled units
  (:mod:`sandbox.ab_arm_metrics`): a bootstrap resamples units with the same draws in both arms,
  and the permutation test swaps a unit's two arms at random; over seeds, the seeds' resamples
  are averaged entry by entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from sqlalchemy import select
from vragent.environments import metrics as em
from vragent.sandbox.ab_arm_metrics import arm_draws, combine_seeds
from vragent.sandbox.config import Scenario, parse_scenario
from vragent.sandbox.stats import (
    adjusted_p,
    paired_bootstrap,
    paired_permutation_p,
    power_table,
)
from vragent.sandbox.store import Decision, Item, Run, SessionEvent, SimUser, Store
from vragent.sandbox.world import item_vectors, load_world, make_split

USER_METRICS = ("watch_rate", "like_rate", "session_length", "exit_rate", "ild", "novelty",
                "profile_entropy")
PRIMARY = ("watch_rate", "like_rate", "exit_rate")  # the power table's metrics
POWER_EFFECTS = (0.01, 0.02, 0.05, 0.10)

METRIC_HELP = {
    "watch_rate": "share of a user's impressions watched or liked",
    "like_rate": "share of a user's impressions liked",
    "session_length": "steps a user stayed before leaving (or the run ended)",
    "exit_rate": "share of users who left the session",
    "ild": "intra-list diversity: mean pairwise cosine distance within a slate",
    "novelty": "mean self-information -log2(popularity) of shown items, in bits",
    "profile_entropy": "entropy (bits) of the categories of a user's last consumed items, "
                       "at the end of the run; falling = filter bubble",
    "coverage": "share of the catalogue shown at least once",
    "exposure_gini": "Gini of exposure over the catalogue (1 = all on one item)",
    "like_calibration_error": "impression-weighted |simulated − real like rate| per item "
                              "(real: likes / views; datasets that have them)",
}

# Which way a metric is better for the platform: +1 higher, -1 lower (the A/B verdicts' words).
BETTER = {"watch_rate": 1, "like_rate": 1, "session_length": 1, "exit_rate": -1, "ild": 1,
          "novelty": 1, "profile_entropy": 1, "coverage": 1, "exposure_gini": -1,
          "like_calibration_error": -1}


def decision_rule(confidence: float) -> str:
    """The one rule that calls a difference, in words (the report and the dashboard state it)."""
    alpha = 1 - confidence
    return (f"A difference is called (▲ higher / ▼ lower than the baseline) when its permutation "
            f"p-value, adjusted by Benjamini–Hochberg over every metric × arm compared in the same "
            f"scope (pooled, or one seed), is below {alpha:.2g}; otherwise ≈ no clear difference. "
            "The adjustment keeps the share of false calls among the calls at that level although "
            "many metrics are tested at once. The bootstrap interval shows the size; near the "
            "threshold it can exclude 0 while the adjusted test does not call it.")


def call_differences(comparisons: Sequence[dict], confidence: float) -> list[dict]:
    """``comparisons`` with ``q_value``, ``verdict`` and ``better`` added, by one rule.

    The family of a comparison is its scope (its ``seed``, ``None`` for pooled): the q-values
    are Benjamini–Hochberg adjusted within it; a verdict is called when q < 1 − confidence.
    """
    def scope(c: dict) -> int | None:  # NaN (a seed column read into a frame) is the pool
        seed = c.get("seed")
        return None if seed is None or seed != seed else int(seed)

    out = [dict(c) for c in comparisons]
    for key in {scope(c) for c in out}:
        family = [c for c in out if scope(c) == key]
        for c, q in zip(family, adjusted_p([c.get("p_value") for c in family]), strict=True):
            c["q_value"] = q
            diff = c.get("diff")
            called = q is not None and diff is not None and q < 1 - confidence and diff != 0
            c["verdict"] = ("—" if q is None else "≈ no clear difference" if not called
                            else "▲ higher" if diff > 0 else "▼ lower")
            way = BETTER.get(str(c.get("metric")))
            c["better"] = (None if not called or way is None
                           else (diff > 0) == (way > 0))
    return out


@dataclass
class RunData:
    """What the analysis needs from one finished run."""

    seed: int
    run_id: str
    arms: list[str]
    units: pd.DataFrame  # one row per (arm, user): the user metrics
    exposure: dict[str, sp.csr_matrix]  # arm -> users x items impression counts
    likes: dict[str, sp.csr_matrix]  # arm -> users x items like counts
    users: list[int]  # row order of the matrices
    items: list[int]  # column order of the matrices (the catalogue)
    real_like_rate: dict[int, float] = field(default_factory=dict)


@dataclass
class AbAnalysis:
    """An experiment's results, ready for the store, the terminal and the report."""

    arms: list[str]
    baseline: str
    seeds: list[int]
    arm_values: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    power: list[dict[str, Any]]
    units: pd.DataFrame  # every (seed, arm, user) row of user metrics
    steps: pd.DataFrame  # per-step metrics averaged over seeds: arm, step, name, value
    confidence: float = 0.95


def _scenario(run: Run) -> Scenario:
    return parse_scenario(yaml.safe_load(run.scenario_yaml), f"run {run.id}")


def load_run_data(store: Store, run_id: str, world_cache: dict | None = None) -> RunData:
    """Read a finished run and compute its per-user metrics and count matrices.

    Args:
        store: the store holding the run.
        run_id: the run.
        world_cache: a dict reused across runs of one experiment, so a dataset is loaded and
            its items embedded once.
    """
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r} in {store.url}")
    sc = _scenario(run)
    cache = world_cache if world_cache is not None else {}
    ds, key = load_world(sc)
    if key not in cache:
        split = make_split(sc, ds)
        pop = pd.Series([i for h in split.train.values() for i in h]).value_counts()
        real = {}
        if {"likes", "views"} <= set(ds.items.columns):
            it = ds.items[ds.items["views"].fillna(0) > 0]
            real = dict(zip(it["item_id"].astype(int), (it["likes"] / it["views"]).astype(float),
                            strict=True))
        cache[key] = {"popularity": pop.to_dict(), "n_users": len(split.train),
                      "vectors": item_vectors(sc, ds), "real": real}
    world = cache[key]
    arms = [a.name for a in store.arms(run_id)]
    with store.session() as s:
        dec = pd.DataFrame(s.execute(
            select(Decision.arm, Decision.step, Decision.user_id, Decision.position,
                   Decision.item_id, Decision.action).where(Decision.run_id == run_id)
        ).all(), columns=["arm", "step", "user_id", "position", "item_id", "action"])
        sess = pd.DataFrame(s.execute(
            select(SessionEvent.arm, SessionEvent.step, SessionEvent.user_id, SessionEvent.left)
            .where(SessionEvent.run_id == run_id)).all(),
            columns=["arm", "step", "user_id", "left"])
        hist = dict(s.execute(select(SimUser.user_id, SimUser.history).where(
            SimUser.run_id == run_id)).all())
        cats = dict(s.execute(select(Item.item_id, Item.category).where(
            Item.run_id == run_id)).all())
    users = sorted(int(u) for u in hist)
    items = sorted(int(i) for i in cats)
    units = _user_metrics(dec, sess, arms, users, hist, cats, world, sc.metrics.entropy_window)
    row = {u: r for r, u in enumerate(users)}
    col = {i: c for c, i in enumerate(items)}
    exposure, likes = {}, {}
    for arm in arms:
        d = dec[dec["arm"] == arm]
        r = d["user_id"].map(row).to_numpy()
        c = d["item_id"].map(col).to_numpy()
        shape = (len(users), len(items))
        exposure[arm] = sp.csr_matrix((np.ones(len(d)), (r, c)), shape=shape)
        liked = (d["action"] == "like").to_numpy(dtype=np.float64)
        likes[arm] = sp.csr_matrix((liked, (r, c)), shape=shape)
    return RunData(int(run.seed), run_id, arms, units, exposure, likes, users, items,
                   world["real"])


def _user_metrics(dec: pd.DataFrame, sess: pd.DataFrame, arms: Sequence[str],
                  users: Sequence[int], hist: dict, cats: dict, world: dict,
                  window: int) -> pd.DataFrame:
    """One row per (arm, user) with every user metric (NaN where it is undefined)."""
    vectors, pop, n_pop = world["vectors"], world["popularity"], world["n_users"]
    rows = []
    dec = dec.sort_values(["arm", "user_id", "step", "position"])
    by = {k: g for k, g in dec.groupby(["arm", "user_id"], sort=False)}
    sess_by = {k: g for k, g in sess.groupby(["arm", "user_id"], sort=False)}
    for arm in arms:
        for u in users:
            g = by.get((arm, u))
            s = sess_by.get((arm, u))
            n = 0 if g is None else len(g)
            acts = g["action"].to_numpy() if n else np.array([], dtype=object)
            slates = ([grp["item_id"].tolist() for _, grp in g.groupby("step", sort=True)]
                      if n else [])
            consumed = [int(i) for i in hist[u]] + (
                g.loc[g["action"] != "skip", "item_id"].astype(int).tolist() if n else [])
            rows.append({
                "arm": arm, "user_id": u, "impressions": n,
                "watch_rate": float(np.mean(acts != "skip")) if n else np.nan,
                "like_rate": float(np.mean(acts == "like")) if n else np.nan,
                "session_length": float(0 if s is None else s["step"].nunique()),
                "exit_rate": float(bool(s is not None and s["left"].any())),
                "ild": _none_nan(em.intra_list_diversity(slates, vectors)) if vectors else np.nan,
                "novelty": _none_nan(em.novelty(slates, pop, n_pop)) if n and n_pop else np.nan,
                "profile_entropy": em.profile_entropy(
                    cats.get(i, "") for i in consumed[-window:]),
            })
    return pd.DataFrame(rows)


def _none_nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


# ---------------------------------------------------------------------------- the analysis

def _mean_interval(x: np.ndarray, *, n_resamples: int, confidence: float,
                   seed: int) -> tuple[float, float, float]:
    x = x[~np.isnan(x)]
    if not x.size:
        return (np.nan, np.nan, np.nan)
    # The same percentile bootstrap as a paired difference against a zero arm.
    ci = paired_bootstrap(x, np.zeros_like(x), n_resamples=n_resamples, confidence=confidence,
                          seed=seed)
    return ci.mean, ci.low, ci.high


def _paired(units: pd.DataFrame, arm: str, base: str, metric: str) -> tuple[np.ndarray, ...]:
    a = units[units["arm"] == arm].set_index(["seed", "user_id"])[metric]
    b = units[units["arm"] == base].set_index(["seed", "user_id"])[metric]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    return both["a"].to_numpy(), both["b"].to_numpy()


def analyse(runs: Sequence[RunData], *, baseline: str | None = None, confidence: float = 0.95,
            n_resamples: int = 2000, seed: int = 0,
            steps: pd.DataFrame | None = None) -> AbAnalysis:
    """Arm values, arm-vs-baseline comparisons and the power table, per seed and pooled.

    Args:
        runs: one finished run per seed, all with the same arms.
        baseline: the arm others are compared with (default: the first arm).
        confidence: level of every interval.
        n_resamples: bootstrap and permutation resamples.
        seed: seeds the resampling.
        steps: per-step metrics averaged over seeds (kept as they are in the result).

    Raises:
        ValueError: no runs, or runs whose arms differ, or an unknown baseline.
    """
    if not runs:
        raise ValueError("no runs to analyse")
    arms = runs[0].arms
    if any(r.arms != arms for r in runs):
        raise ValueError("the runs of an experiment must have the same arms")
    base = baseline or arms[0]
    if base not in arms:
        raise ValueError(f"baseline {base!r} is not an arm ({', '.join(arms)})")
    units = pd.concat([r.units.assign(seed=r.seed) for r in runs], ignore_index=True)
    groups: list[tuple[int | None, list[RunData]]] = [(None, list(runs))]
    if len(runs) > 1:
        groups += [(r.seed, [r]) for r in runs]
    # Each seed's arm-metric resamples, drawn once: a seed's own rows and the pooled rows
    # read the same draws, so the pooled figures are exactly the means of the seeds'.
    draws = {(r.run_id, arm): arm_draws(r, arm, base, n_resamples=n_resamples, seed=seed)
             for r in runs for arm in arms if arm != base}
    arm_values: list[dict] = []
    comparisons: list[dict] = []
    for g_seed, g_runs in groups:
        g_units = units if g_seed is None else units[units["seed"] == g_seed]
        _user_metric_rows(g_seed, g_units, arms, base, arm_values, comparisons,
                          n_resamples=n_resamples, confidence=confidence, seed=seed)
        g_draws = {arm: [draws[(r.run_id, arm)] for r in g_runs] for arm in arms if arm != base}
        _arm_metric_rows(g_seed, g_draws, base, arm_values, comparisons, confidence=confidence)
    power = _power_rows(units, arms, base)
    steps = steps if steps is not None else pd.DataFrame(columns=["arm", "step", "name", "value"])
    return AbAnalysis(list(arms), base, [r.seed for r in runs], arm_values, comparisons, power,
                      units, steps, confidence)


def _user_metric_rows(g_seed: int | None, g_units: pd.DataFrame, arms: Sequence[str], base: str,
                      arm_values: list[dict], comparisons: list[dict], *, n_resamples: int,
                      confidence: float, seed: int) -> None:
    """Per-user metrics: each arm's mean with its interval, each arm against the baseline."""
    for metric in USER_METRICS:
        for arm in arms:
            x = g_units.loc[g_units["arm"] == arm, metric].to_numpy(dtype=np.float64)
            v, lo, hi = _mean_interval(x, n_resamples=n_resamples, confidence=confidence,
                                       seed=seed)
            arm_values.append({"seed": g_seed, "arm": arm, "metric": metric,
                               "value": _nan_none(v), "low": _nan_none(lo),
                               "high": _nan_none(hi), "n_units": int(np.sum(~np.isnan(x)))})
        for arm in arms:
            a, b = _paired(g_units, arm, base, metric) if arm != base else (np.empty(0), None)
            if not a.size:
                continue
            ci = paired_bootstrap(a, b, n_resamples=n_resamples, confidence=confidence,
                                  seed=seed)
            p = paired_permutation_p(a, b, n_resamples=n_resamples, seed=seed)
            comparisons.append({"seed": g_seed, "metric": metric, "arm": arm, "baseline": base,
                                "mean_arm": float(a.mean()), "mean_baseline": float(b.mean()),
                                "diff": ci.mean, "low": ci.low, "high": ci.high,
                                "p_value": p, "n_units": ci.n})


def _arm_metric_rows(g_seed: int | None, g_draws: dict[str, list], base: str,
                     arm_values: list[dict], comparisons: list[dict], *,
                     confidence: float) -> None:
    """Arm metrics (coverage, Gini, ...) from the seeds' shared resamples, each arm vs base."""
    done_base: set[str] = set()  # the baseline's value is the same beside every arm: once
    for arm, draws in g_draws.items():
        values, diffs, ps, n_units = combine_seeds(draws, arm, base, confidence=confidence)
        for metric, per_arm in values.items():
            for a_name, (v, lo, hi) in per_arm.items():
                if a_name == base and metric in done_base:
                    continue
                arm_values.append({"seed": g_seed, "arm": a_name, "metric": metric,
                                   "value": v, "low": lo, "high": hi,
                                   "n_units": n_units[metric]})
            d, lo, hi = diffs[metric]
            comparisons.append({"seed": g_seed, "metric": metric, "arm": arm, "baseline": base,
                                "mean_arm": per_arm[arm][0], "mean_baseline": per_arm[base][0],
                                "diff": d, "low": lo, "high": hi, "p_value": ps[metric],
                                "n_units": n_units[metric]})
        done_base |= set(values)


def _power_rows(units: pd.DataFrame, arms: Sequence[str], base: str) -> list[dict]:
    """Users needed per arm and primary metric, at fixed effects and the observed one."""
    power = []
    for arm in (a for a in arms if a != base):
        for metric in PRIMARY:
            a, b = _paired(units, arm, base, metric)
            if a.size < 2:
                continue
            sd = float(np.std(a - b, ddof=1))
            if sd == 0:
                continue  # the arms never differ for any user: no test to power
            observed = float(np.mean(a - b))
            effects = [e for e in POWER_EFFECTS] + ([abs(observed)] if observed else [])
            for row in power_table(sd, effects):
                power.append({"arm": arm, "baseline": base, "metric": metric, "sd_diff": sd,
                              "observed": row["effect"] == abs(observed) and bool(observed),
                              **row})
    return power


def _nan_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def step_series(store: Store, run_ids: Sequence[str]) -> pd.DataFrame:
    """Per-step metrics of the runs, averaged over runs: columns arm, step, name, value."""
    rows = store.metric_series(run_ids)
    frame = pd.DataFrame(rows, columns=["run_id", "arm", "step", "name", "value"])
    if frame.empty:
        return frame.drop(columns="run_id")
    return frame.groupby(["arm", "step", "name"], as_index=False)["value"].mean()
