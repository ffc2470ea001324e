"""Macro fidelity: does the simulator rank recommenders the way the real logs do?

For every arm of a scenario, two numbers:

* **offline**: the arm's recommender fitted on the real train split, scored by full-ranking
  HR@10 and NDCG@10 of each user's held-out test item (:func:`environments.evaluation.evaluate`);
* **simulated**: the arm's like rate and watch rate in a paired A/B experiment on the same
  split (:mod:`sandbox.ab`).

The Spearman correlation between the two orderings is the macro-fidelity figure (SimUSER
reports 0.72 for its simulator). ``vragent fidelity SCENARIO`` prints the table and can write
it into ``docs/results.md``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr
from vragent.environments.evaluation import evaluate
from vragent.environments.recommenders import make_recommender
from vragent.sandbox.ab import (
    AbError,
    AbSettings,
    analyse_experiment,
    create_experiment,
    experiment_progress,
    run_experiment,
    scenario_for_seed,
)
from vragent.sandbox.ab_report import pooled
from vragent.sandbox.config import Scenario
from vragent.sandbox.progress import Tracker
from vragent.sandbox.store import Store
from vragent.sandbox.world import load_world, make_split

SIMUSER_ANCHOR = 0.72
SIM_METRICS = ("like_rate", "watch_rate")


@dataclass
class FidelityResult:
    """Offline and simulated scores per arm, and their rank correlations."""

    scenario: str
    dataset: str
    experiment_id: str
    rows: list[dict[str, Any]]  # arm, HR@10, NDCG@10, like_rate (+ CI), watch_rate (+ CI)
    spearman: dict[str, float]  # simulated metric -> rho against HR@10
    kendall: dict[str, float]
    spearman_ci: dict[str, tuple[float, float]]  # bootstrap over simulated users
    n_eval_users: int
    n_sim_units: int
    wall_s: float


def offline_scores(sc: Scenario, *, max_users: int | None = None,
                   tracker: Tracker | None = None) -> tuple[dict, int]:
    """HR@10 and NDCG@10 of every arm's recommender on the scenario's real test items.

    Args:
        sc: the scenario (dataset, split and arms).
        max_users: evaluate a seeded sample of this many users (all when ``None``).
        tracker: shows a count of the arms fitted and evaluated.

    Returns:
        ``{arm: {"HR@10": …, "NDCG@10": …}}`` and the number of users evaluated.
    """
    ds, _ = load_world(sc)
    split = make_split(sc, ds)
    users = split.users
    if max_users and len(users) > max_users:
        rng = np.random.default_rng([sc.seed, 23])
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
    train = split.train_interactions()
    items = ds.items["item_id"].astype("int64").to_numpy()
    titles = dict(zip(items.tolist(), ds.items["title"].astype(str), strict=True))
    out = {}
    task = tracker.task("offline evaluation", len(sc.arms), unit="arms") if tracker else None
    for arm in sc.arms:
        rec = make_recommender(arm.recommender, seed=sc.seed, **arm.params)
        if rec.uses_item_text:
            rec.set_item_text(titles)  # offline there are no IP profiles: titles only
        rec.fit(train, items=items)
        res = evaluate(rec, split, "test", users=users, ks=(10,))
        out[arm.name] = {"HR@10": res["HR@10"], "NDCG@10": res["NDCG@10"]}
        if task:
            task.update(task.done + 1, label=f"offline evaluation ({arm.name} done)")
    return out, len(users)


def run_fidelity(store: Store, scenario_ref: str, *, seeds: list[int],
                 overrides: tuple[str, ...] = (), max_eval_users: int | None = 5000,
                 n_resamples: int = 1000, tracker: Tracker | None = None) -> FidelityResult:
    """Run the simulated A/B experiment and the offline evaluation; correlate them.

    ``tracker`` shows the offline arms and the experiment's seeds, arms and steps.

    Raises:
        ScenarioError: the scenario or an override is invalid.
        AbError: fewer than three arms, or a bad seed list.
    """
    t0 = time.perf_counter()
    exp_id = create_experiment(store, scenario_ref, seeds, overrides=overrides,
                               settings=AbSettings(n_resamples=n_resamples))
    exp = store.get_experiment(exp_id)
    assert exp is not None
    if len(exp.arms) < 3:
        raise AbError(f"macro fidelity needs at least 3 arms, {scenario_ref} has {exp.arms}")
    sc, _ = scenario_for_seed(exp.scenario_yaml, seeds[0])
    offline, n_eval = offline_scores(sc, max_users=max_eval_users, tracker=tracker)
    run_experiment(store, exp_id, **(experiment_progress(store, exp_id, tracker)
                                     if tracker else {}))
    res = analyse_experiment(store, exp_id)
    values = {(r["arm"], r["metric"]): r for r in pooled(res.arm_values)}
    rows = []
    for arm in exp.arms:
        row: dict[str, Any] = {"arm": arm, **offline[arm]}
        for m in SIM_METRICS:
            v = values.get((arm, m), {})
            row[m], row[f"{m}_low"], row[f"{m}_high"] = v.get("value"), v.get("low"), v.get(
                "high")
        rows.append(row)
    hr = [r["HR@10"] for r in rows]
    rho = {m: float(spearmanr(hr, [r[m] for r in rows]).statistic) for m in SIM_METRICS}
    tau = {m: float(kendalltau(hr, [r[m] for r in rows]).statistic) for m in SIM_METRICS}
    n_units = int(res.units[res.units["arm"] == exp.arms[0]].shape[0])
    ci = {m: spearman_interval(res.units, exp.arms, hr, m, n_resamples=n_resamples,
                               seed=seeds[0]) for m in SIM_METRICS}
    return FidelityResult(exp.scenario_name, sc.dataset.kind, exp_id, rows, rho, tau, ci,
                          n_eval, n_units, time.perf_counter() - t0)


def spearman_interval(units: pd.DataFrame, arms: list[str], offline: list[float], metric: str,
                      *, n_resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of Spearman's ρ, resampling simulated users (the same in every arm).

    The offline scores are held fixed: the question is how much the simulated ordering would
    move with other users. Resamples where an arm's values tie everywhere give ``nan`` and are
    dropped.
    """
    wide = units.pivot_table(index=["seed", "user_id"], columns="arm", values=metric)
    wide = wide[arms].dropna()
    if len(wide) < 2:
        return (float("nan"), float("nan"))
    x = wide.to_numpy()
    rng = np.random.default_rng(seed)
    rhos = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample where every arm ties gives nan, dropped
        for _ in range(n_resamples):
            means = x[rng.integers(0, len(x), size=len(x))].mean(axis=0)
            rhos.append(spearmanr(offline, means).statistic)
    rhos = np.asarray(rhos, dtype=np.float64)
    rhos = rhos[~np.isnan(rhos)]
    if not rhos.size:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(rhos, [alpha, 1 - alpha])
    return float(lo), float(hi)


def fidelity_markdown(res: FidelityResult, command: str) -> str:
    """The result as a markdown table with its correlations and the command that made it."""
    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    order_off = _ranks([r["HR@10"] for r in res.rows])
    order_sim = _ranks([r["like_rate"] for r in res.rows])
    lines = [f"**{res.dataset}** (scenario `{res.scenario}`, experiment `{res.experiment_id}`; "
             f"offline: {res.n_eval_users} users' test items, full ranking; simulated: "
             f"{res.n_sim_units} paired users, 95% bootstrap intervals; "
             f"{res.wall_s / 60:.1f} min)", "",
             "| arm | HR@10 | NDCG@10 | offline rank | sim. like rate | sim. watch rate | "
             "sim. rank |", "|---|---|---|---|---|---|---|"]
    for r, ro, rs in zip(res.rows, order_off, order_sim, strict=True):
        lines.append(f"| {r['arm']} | {f(r['HR@10'])} | {f(r['NDCG@10'])} | {ro} | "
                     f"{f(r['like_rate'])} [{f(r['like_rate_low'])}, {f(r['like_rate_high'])}]"
                     f" | {f(r['watch_rate'])} | {rs} |")
    lo, hi = res.spearman_ci["like_rate"]
    wlo, whi = res.spearman_ci["watch_rate"]
    lines += ["", f"Spearman ρ (HR@10 vs simulated like rate) = **{res.spearman['like_rate']:.2f}**"
              f" (95% bootstrap interval over simulated users [{lo:.2f}, {hi:.2f}]), vs watch "
              f"rate = {res.spearman['watch_rate']:.2f} [{wlo:.2f}, {whi:.2f}]; Kendall τ = "
              f"{res.kendall['like_rate']:.2f} / {res.kendall['watch_rate']:.2f}. "
              f"SimUSER's anchor: ρ = {SIMUSER_ANCHOR}.", "", f"Command: `{command}`"]
    return "\n".join(lines)


def _ranks(x: list[float]) -> list[int]:
    order = np.argsort(-np.asarray(x, dtype=np.float64), kind="stable")
    ranks = np.empty(len(x), dtype=int)
    ranks[order] = np.arange(1, len(x) + 1)
    return ranks.tolist()
