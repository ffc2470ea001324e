"""Cost of a simulated A/B experiment outside the LLM: simulation and analysis.

Users answer with the synthetic world's true like probability (``response_model: truth``), so
no LLM runs and what is measured is the platform (LangGraph, Mesa, recommenders, the store)
plus ``vragent ab``'s analysis (per-user metrics, paired bootstrap and permutation tests, arm
metrics on resampled users) and the report.

    python benchmarks/ab_analysis.py --users 100 1000 5000 --steps 5 --resamples 2000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import yaml
from vragent.sandbox.ab import analyse_experiment, create_experiment, run_experiment
from vragent.sandbox.ab_report import write_report
from vragent.sandbox.store import Store


def scenario(users: int, steps: int, slate: int) -> dict:
    return {
        "name": f"bench-{users}",
        "seed": 1,
        "dataset": {"kind": "synthetic",
                    "synthetic": {"n_users": max(2 * users, 500), "n_items": 1000,
                                  "mean_history": 20}},
        "population": {"size": users, "history_len": 5},
        "simulation": {"steps": steps, "slate_size": slate, "users_per_task": 500,
                       "refit_every": 0},
        "arms": [{"name": "random", "recommender": "random"},
                 {"name": "popular", "recommender": "popular"}],
        "backend": {"kind": "tiny", "trace_rate": 0.0},
        "response_model": "truth",
        "ip_agent": {"enabled": False},
        "social": {"graph": "none"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--slate", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    from vragent.sandbox.ab import AbSettings

    rows = []
    for n in args.users:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.yaml"
            path.write_text(yaml.safe_dump(scenario(n, args.steps, args.slate)))
            store = Store(f"sqlite:///{tmp}/ab.sqlite")
            exp = create_experiment(store, str(path), [1],
                                    settings=AbSettings(n_resamples=args.resamples))
            t0 = time.perf_counter()
            run_ids = run_experiment(store, exp)
            t_sim = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = analyse_experiment(store, exp)
            t_an = time.perf_counter() - t0
            t0 = time.perf_counter()
            write_report(res, Path(tmp) / "report", title="bench", experiment_id=exp,
                         run_ids=run_ids, command="bench")
            t_rep = time.perf_counter() - t0
            decisions = n * 2 * args.steps * args.slate
            store.engine.dispose()
            # The WAL file too: a store not yet checkpointed keeps its newest pages there.
            db_mb = sum(f.stat().st_size for f in Path(tmp).glob("ab.sqlite*")) / 2**20
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append((n, decisions, t_sim, t_an, t_rep, rss, db_mb))
    print(f"steps={args.steps} slate={args.slate} arms=2 resamples={args.resamples}")
    print("| users | decisions (≤) | simulate s | analyse s | report s | peak RSS MiB "
          "(process) | store MiB |")
    print("|---|---|---|---|---|---|---|")
    for n, d, ts, ta, tr, rss, mb in rows:
        print(f"| {n} | {d} | {ts:.1f} | {ta:.1f} | {tr:.1f} | {rss:.0f} | {mb:.1f} |")


if __name__ == "__main__":
    main()
