"""What LangGraph, Mesa and the store cost per decision, with the LLM taken out.

Runs the synthetic world with the ``constant`` backend (fixed p(Yes), no model), so the wall
time is the sandbox's own overhead: recommenders, graph, checkpoints, Mesa and SQLite. Also
reports the database size per 1,000 decisions.

    .venv/bin/python benchmarks/graph_overhead.py [--users 1000] [--steps 3] [--slate 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.runner import create_run, execute
from vragent.sandbox.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--slate", type=int, default=10)
    ap.add_argument("--users-per-task", type=int, default=100)
    args = ap.parse_args()
    sc = parse_scenario({
        "name": "overhead", "seed": 1,
        "dataset": {"kind": "synthetic", "synthetic": {"n_users": args.users, "n_items": 2000}},
        "population": {"size": args.users},
        "simulation": {"steps": args.steps, "slate_size": args.slate,
                       "users_per_task": args.users_per_task,
                       "session": {"base_leave_prob": 0.0, "bored_leave_prob": 0.0}},
        "arms": [{"name": "popular", "recommender": "popular"},
                 {"name": "cooc", "recommender": "cooccurrence"}],
        "backend": {"kind": "constant", "trace_rate": 0.0, "cache": False},  # no LLM to save
        "ip_agent": {"enabled": False},
    })
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "o.sqlite"
        store = Store(f"sqlite:///{db}")
        run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
        t0 = time.perf_counter()
        rows = execute(store, run_id)
        wall = time.perf_counter() - t0
        n = sum(r["impressions"] for r in rows)
        size = db.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("o.sqlite-*"))
        ckpt = Path(tmp) / "o.checkpoints.sqlite"
    print("| users | steps | slate | arms | decisions | wall s | ms per decision | "
          "store MB per 1,000 decisions |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.users} | {args.steps} | {args.slate} | 2 | {n} | {wall:.1f} | "
          f"{1000 * wall / n:.3f} | {size / 1e6 / n * 1000:.3f} |")
    assert ckpt  # checkpoint file lives beside the store


if __name__ == "__main__":
    main()
