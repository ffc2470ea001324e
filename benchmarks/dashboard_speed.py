"""How fast each dashboard page renders over a big store (docs/dashboard.md, "Speed").

Builds a synthetic store with the real schema (``sandbox.store.Store``) holding one run of
2 arms x 10 steps x USERS users x slates of 10 decisions (and as many impressions and LLM
calls; 5,000 users = 1,000,000 decisions, 50,000 = 10,000,000, the size ``population_scale``
writes), an A/B experiment, item profiles and two training runs, with SQLAlchemy core bulk
inserts. Then renders every page with Streamlit's ``AppTest``: once with empty caches (first
render) and once more (cached render), and prints a table.

    .venv/bin/python benchmarks/dashboard_speed.py                  # temp store, removed after
    .venv/bin/python benchmarks/dashboard_speed.py --users 50000 --path /tmp/big.sqlite  # kept
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert
from vragent.sandbox import training_log
from vragent.sandbox.store import (
    AbArmValue,
    AbComparison,
    AbExperiment,
    Arm,
    Decision,
    Impression,
    Item,
    ItemProfileRow,
    LlmCall,
    Metric,
    Run,
    SessionEvent,
    SimUser,
    StepRow,
    Store,
    add_llm_totals,
)

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "dashboards" / "app.py"
RUN_ID = "bench000001"
ARMS = ("popular", "cooc")
CATEGORIES = ("comedy", "music", "gaming", "travel", "pets", "fitness", "diy", "food")
METRICS = ("active_users", "impressions", "watch_rate", "like_rate", "exit_rate", "coverage",
           "mean_p_like", "format_ok_rate", "ild", "novelty", "exposure_gini",
           "profile_entropy")
CHUNK = 50_000


def _write_catalogue(store: Store, rng: np.random.Generator, users: int,
                     items: int) -> list[str]:
    """Items, simulated users and item profiles; returns the titles."""
    titles = [f"Video {i}: {CATEGORIES[i % len(CATEGORIES)]} clip #{CATEGORIES[i % 8]}"
              for i in range(items)]
    hist = rng.integers(0, items, size=(users, 20))
    with store.engine.begin() as conn:
        conn.execute(insert(Item), [
            {"run_id": RUN_ID, "item_id": i, "title": titles[i],
             "category": CATEGORIES[i % len(CATEGORIES)], "tags": f"#{CATEGORIES[i % 8]}"}
            for i in range(items)])
        conn.execute(insert(SimUser), [
            {"run_id": RUN_ID, "user_id": u,
             "persona": f"{20 + u % 40}-year-old who mostly watches "
                        f"{CATEGORIES[u % 8]}, {CATEGORIES[(u + 3) % 8]}.",
             "profile": {"age": 20 + u % 40}, "history": hist[u].tolist(),
             "friends": [(u + 1) % users, (u + 7) % users]} for u in range(users)])
        conn.execute(insert(ItemProfileRow), [
            {"dataset": "synthetic:bench", "item_id": i, "model_id": "bench-model",
             "profile": f"A short video about {titles[i]}. #tag", "tags": "#tag",
             "prompt": "p", "completion": "c", "format_ok": i % 10 != 0,
             "problems": [] if i % 10 else ["no #tags"], "run_id": RUN_ID, "title": titles[i],
             "stages": [{"stage": s, "prompt": "p", "completion": "c", "output": "o",
                         "skipped": ""} for s in ("kfr", "sufficiency", "cmp", "rra")]}
            for i in range(items)])
    return titles


def _write_step(store: Store, rng: np.random.Generator, arm: str, step: int, users: int,
                slate: int, items: int, titles: list[str], trace_rate: float) -> int:
    """One arm's step: decisions, impressions, LLM calls, sessions and metrics; returns n."""
    slates = rng.integers(0, items, size=(users, slate))
    p = rng.random((users, slate))
    u = rng.random((users, slate))
    action = np.where(u < p * 0.5, "like", np.where(u < p, "watch", "skip"))
    traced = rng.random((users, slate)) < trace_rate
    leave_u = rng.random(users)
    left = leave_u < 0.02
    dec, imp, calls = [], [], []
    for uid in range(users):
        for pos in range(slate):
            item = int(slates[uid, pos])
            t = bool(traced[uid, pos])
            think = (f"The user likes {CATEGORIES[uid % 8]}; this is "
                     f"{CATEGORIES[item % 8]}.") if t else None
            dec.append({
                "run_id": RUN_ID, "arm": arm, "step": step, "user_id": uid,
                "position": pos, "item_id": item, "action": str(action[uid, pos]),
                "p_like": float(p[uid, pos]),
                "prompt": f"User {uid} profile ... candidate: {titles[item]}",
                "completion": f"{think}</think><answer>Prediction: Yes</answer>"
                if t else None,
                "think": think, "answer": "Prediction: Yes" if t else None,
                "format_ok": True, "fallback": None, "traced": t,
                "rule": "draw", "draw": float(u[uid, pos]),
                "like_cut": float(p[uid, pos] * 0.5),
                "trace_role": "separate" if t else None, "trace_ok": True if t else None,
                "model_id": "bench-model", "tokens_in": 900, "tokens_out": 60 if t else 1,
                "latency_ms": 20.0, "cache_hit": False, "attempts": None})
            imp.append({"run_id": RUN_ID, "arm": arm, "step": step, "user_id": uid,
                        "position": pos, "item_id": item,
                        "rec_score": float(slate - pos)})
            calls.append({"run_id": RUN_ID, "agent": "us", "arm": arm, "step": step,
                          "task": uid, "seq": pos, "call": "score", "cached": False,
                          "tokens_in": 900, "tokens_out": 1,
                          "latency_ms": float(15 + 10 * p[uid, pos])})
    watched = (action != "skip").sum(axis=1)
    liked = (action == "like").sum(axis=1)
    with store.engine.begin() as conn:
        for model, rows in ((Decision, dec), (Impression, imp), (LlmCall, calls)):
            for start in range(0, len(rows), CHUNK):
                conn.execute(insert(model), rows[start : start + CHUNK])
        add_llm_totals(conn, RUN_ID, calls)  # as Store.log_step keeps them
        conn.execute(insert(SessionEvent), [
            {"run_id": RUN_ID, "arm": arm, "step": step, "user_id": uid,
             "n_watch": int(watched[uid]), "n_like": int(liked[uid]),
             "left": bool(left[uid]), "leave_prob": 0.05,
             "leave_draw": float(leave_u[uid])} for uid in range(users)])
        conn.execute(insert(StepRow), [{"run_id": RUN_ID, "arm": arm, "step": step,
                                        "n_users": users, "n_decisions": users * slate,
                                        "wall_s": 180.0}])
        values = {"active_users": users, "impressions": users * slate,
                  "watch_rate": float((action != "skip").mean()),
                  "like_rate": float((action == "like").mean()),
                  "exit_rate": float(left.mean()), "coverage": min(1.0, 0.1 * (step + 1)),
                  "mean_p_like": float(p.mean()), "format_ok_rate": 1.0,
                  "ild": 0.8 - 0.01 * step, "novelty": 3.0 + 0.05 * step,
                  "exposure_gini": 0.5 + 0.02 * step, "profile_entropy": 2.0 - 0.03 * step}
        conn.execute(insert(Metric), [
            {"run_id": RUN_ID, "arm": arm, "step": step, "name": k, "value": float(v)}
            for k, v in values.items()])
    return len(dec)


def _write_experiment_and_training(store: Store, users: int) -> None:
    """An A/B experiment over the run, two training runs with curves, one evaluation."""
    store.create_experiment(AbExperiment(
        id="benchexp", scenario_name="bench", scenario_yaml="", baseline=ARMS[0],
        arms=list(ARMS), seeds=[0], run_ids=[RUN_ID], settings={"confidence": 0.95},
        status="finished"))
    with store.engine.begin() as conn:
        conn.execute(insert(AbArmValue), [
            {"experiment_id": "benchexp", "seed": s, "arm": a, "metric": m, "value": 0.5,
             "low": 0.45, "high": 0.55, "n_units": users}
            for s in (0, None) for a in ARMS for m in ("watch_rate", "like_rate", "exit_rate")])
        conn.execute(insert(AbComparison), [
            {"experiment_id": "benchexp", "seed": s, "metric": m, "arm": ARMS[1],
             "baseline": ARMS[0], "mean_arm": 0.5, "mean_baseline": 0.49, "diff": 0.01,
             "low": -0.01, "high": 0.03, "p_value": 0.3, "n_units": users}
            for s in (0, None) for m in ("watch_rate", "like_rate", "exit_rate")])
    for algo in ("sft", "grpo"):  # two runs, so the Training page can overlay them
        rid = training_log.start_training_run(
            store, policy=f"bench-{algo}", algo=algo, base_model="smollm2", config={},
            data_manifest={}, seed=0, git_revision=None, versions={})
        for step in range(1, 501):
            training_log.log_curve(store, rid, step, {"reward": step / 500, "kl": 0.001 * step,
                                                       "format_valid_rate": 0.9,
                                                       "accuracy": 0.6})
        training_log.finish_training_run(store, rid, status="finished", steps=500, wall_s=3600)
    training_log.log_eval(store, "benchevalid", [
        {"model": f"m{k}", "mode": "score", "task": "judgement", "protocol": proto, "m": m,
         "auc": 0.6, "accuracy": 0.55}
        for k in range(5) for proto in ("random", "popular", "hard") for m in (1, 4, 9)],
        policy="bench", data="bench")


def build_store(path: Path, users: int = 5000, steps: int = 10, slate: int = 10,
                items: int = 3000, trace_rate: float = 0.1) -> int:
    """Write the synthetic store at ``path``; returns the number of decisions."""
    rng = np.random.default_rng(0)
    store = Store(f"sqlite:///{path}")
    config = {"name": "bench", "seed": 0, "backend": {"kind": "hf", "model": "smollm2",
                                                       "prices": {"input_per_1m": 0.1,
                                                                  "output_per_1m": 0.4}},
              "dataset": {"kind": "synthetic"}, "arms": [{"name": a} for a in ARMS]}
    now = dt.datetime.now(dt.UTC)
    store.create_run(
        Run(id=RUN_ID, scenario_name="bench", scenario_path=None,
            scenario_yaml="name: bench\nseed: 0\n", config=config, seed=0, versions={},
            git_revision=None, status="finished", n_steps=steps, steps_done=steps,
            created_at=now, finished_at=now, wall_s=3600.0),
        [Arm(run_id=RUN_ID, name=a, recommender=a, params={}) for a in ARMS])
    titles = _write_catalogue(store, rng, users, items)
    n = sum(_write_step(store, rng, arm, step, users, slate, items, titles, trace_rate)
            for arm in ARMS for step in range(steps))
    _write_experiment_and_training(store, users)
    store.engine.dispose()
    return n


def _training_ids(url: str) -> list[str]:
    from vragent.dashboards import training_data

    return list(training_data.training_runs(url)["id"])


def time_pages(url: str, timeout: float = 60) -> list[tuple[str, float, float]]:
    """``(page, first render s, cached render s)`` of every page (and a few interactions)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["VRAGENT_DB"] = url
    AppTest.from_file(str(APP), default_timeout=timeout).run()  # warm imports
    out = []

    def timed(at: AppTest) -> float:
        t0 = time.perf_counter()
        at.run()
        dt_ = time.perf_counter() - t0
        if at.exception or at.error:
            raise RuntimeError(f"page failed: {[e.value for e in (*at.exception, *at.error)]}")
        return dt_

    for name, page, setup in (
        ("Runs", None, None),
        ("Runs: latency percentiles (opt-in)", None,
         lambda at: at.toggle(key="runs_pct").set_value(True)),
        ("A/B (experiment)", "views/ab.py", None),
        ("A/B (single run)", "views/ab.py", lambda at: at.radio(key="ab_mode").set_value(
            "Single run")),
        ("Trace explorer", "views/traces.py", None),
        ("Trace explorer: liked ≥ 5", "views/traces.py",
         lambda at: (at.selectbox(key="tx_beh").set_value("liked ≥ N"),
                     at.number_input(key="tx_n").set_value(5))),
        ("Trace explorer: persona search", "views/traces.py",
         lambda at: at.text_input(key="tx_q").set_value("gaming")),
        ("Trace explorer: users page 100", "views/traces.py",
         lambda at: at.number_input(key="tx_users_page").set_value(100)),
        ("Trace explorer: has a reasoning", "views/traces.py",
         lambda at: at.selectbox(key="tx_beh").set_value("has reasoning")),
        ("Trace explorer: text in a reasoning", "views/traces.py",
         lambda at: at.text_input(key="tx_rq").set_value("gaming; this is pets")),
        ("Trace explorer: every arm side by side", "views/traces.py",
         lambda at: at.toggle(key="tx_compare").set_value(True)),
        ("Feedback loops", "views/feedback.py", None),
        ("Feedback loops: Lorenz curve (opt-in)", "views/feedback.py",
         lambda at: at.toggle(key="fb_lorenz").set_value(True)),
        ("Items", "views/items.py", None),
        ("Training", "views/training.py", None),
        ("Training: two runs overlaid", "views/training.py",
         lambda at: at.multiselect(key="tr_overlay").set_value(
             [o for o in _training_ids(url) if o != at.selectbox(key="tr_run").value])),
    ):
        at = AppTest.from_file(str(APP), default_timeout=timeout)
        at.run()
        if page:
            at.switch_page(page)
            at.run()
        if setup:
            setup(at)
        st.cache_data.clear()
        first = timed(at)
        cached = timed(at)
        out.append((name, first, cached))
    return out


def main() -> None:
    """Build (or reuse) the store, time the pages, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", type=Path, help="SQLite file to build (kept) or reuse")
    ap.add_argument("--users", type=int, default=5000)
    args = ap.parse_args()
    tmp = None
    path = args.path
    if path is None:
        tmp = Path(tempfile.mkdtemp(prefix="vragent-dashboard-bench-"))
        path = tmp / "bench.sqlite"
    try:
        if not path.exists():
            t0 = time.perf_counter()
            n = build_store(path, users=args.users)
            print(f"built {path}: {n:,} decisions in {time.perf_counter() - t0:.0f} s, "
                  f"{path.stat().st_size / 2**20:.0f} MiB")
        else:
            print(f"reusing {path} ({path.stat().st_size / 2**20:.0f} MiB)")
        rows = time_pages(f"sqlite:///{path}")
        width = max(len(r[0]) for r in rows)
        print(f"\n| {'page'.ljust(width)} | first render (s) | cached render (s) |")
        print(f"|{'-' * (width + 2)}|-----------------|-------------------|")
        for name, first, cached in rows:
            print(f"| {name.ljust(width)} | {first:15.2f} | {cached:17.2f} |")
        print(json.dumps({"pages": {n: {"first_s": round(f, 3), "cached_s": round(c, 3)}
                                    for n, f, c in rows}}))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
