"""Rows per second of ``vragent rl eval`` in score mode: cell by cell against user-grouped.

Takes the held-out rows of an RL data folder (``vragent rl build-data``) for the first
``--users`` users, every protocol, the judgement m values given and selection, and scores them
with SmolLM2-135M-Instruct in process (the ``hf`` backend) twice:

* **cell by cell** (the layout before): each ``(task, protocol, m)`` cell is one ``score``
  call, no score kept between cells. ``--kv-cache-mb 0`` (default) for this run stands for an
  evaluation of hundreds of users, where a user's prefix KV has left the 1 GB cache long before
  the next cell comes back to the user (measured: 1.8 rows/s on 300 users);
* **grouped by user** (:meth:`rl.evaluation.LLMPolicy.prescore`): every cell's rows of a user
  in one call, so the user's prefix runs once, and a prompt repeated across cells (the m=1
  negative is the first of the m=9 ones) runs once.

It prints rows/s of each, the speed-up and the largest p(Yes) difference between the two.

    .venv/bin/python benchmarks/rl_eval_throughput.py --data runs/rl/ml100k-eval500 \\
        [--users 12] [--m 1 --m 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from vragent.agents.backends.hf import HFBackend
from vragent.rl.datasets import load_rl_data
from vragent.rl.evaluation import LLMPolicy, evaluate, judgement_score_prompt
from vragent.sandbox.assets import require_smollm2


def _rows(data: str, users: int, ms: list[int]) -> list[dict]:
    dd, _ = load_rl_data(data)
    rows = [dict(r) for r in dd["eval"]]
    keep = sorted({int(r["user_id"]) for r in rows})[:users]
    return [r for r in rows if int(r["user_id"]) in keep
            and (r["task"] == "selection" or int(r["m"]) in ms)]


def _backend(threads: int, kv_cache_mb: int) -> HFBackend:
    return HFBackend(require_smollm2(), model_name="SmolLM2-135M-Instruct", threads=threads,
                     max_prompt_tokens=2048, kv_cache_mb=kv_cache_mb)


def main() -> None:
    """Run both layouts on the same rows and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an RL data folder")
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--m", type=int, action="append", help="judgement m (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-cache-mb", type=int, default=0,
                    help="the cell-by-cell run's KV cache (0: hundreds of users' situation)")
    args = ap.parse_args()
    rows = _rows(args.data, args.users, args.m or [1, 9])
    judged = [r for r in rows if r["task"] == "judgement"]
    print(f"{len(rows)} rows ({len(judged)} judgement) of {args.users} users, "
          f"m in {args.m or [1, 9]}, every protocol, selection too")
    out = {}
    for name, grouped, kv in (("cell by cell", False, args.kv_cache_mb),
                              ("grouped by user", True, 1024)):
        backend = _backend(args.threads, kv)
        policy = LLMPolicy(backend, modes=("score",), keep_scores=grouped)
        t0 = time.perf_counter()
        evaluate({"base": policy}, rows, group_prefixes=grouped, n_boot=10)
        wall = time.perf_counter() - t0
        policy.keep_scores = True  # read the p(Yes) back without another pass when kept
        scores = (policy.score([judgement_score_prompt(r) for r in judged], ("Yes", "No"))
                  if grouped else None)
        out[name] = (wall, scores, backend.stats["tokens_run"])
        print(f"{name}: {wall:.1f} s, {len(rows) / wall:.2f} rows/s, "
              f"{backend.stats['tokens_run'] / len(rows):.0f} tokens run per row")
    base = _backend(args.threads, 0)
    naive = base.score_naive([judgement_score_prompt(r) for r in judged[:24]], ("Yes", "No"))
    grouped_p = np.array([s.probs["Yes"] for s in out["grouped by user"][1][:24]])
    diff = np.max(np.abs(grouped_p - np.array([s.probs["Yes"] for s in naive])))
    speedup = out["cell by cell"][0] / out["grouped by user"][0]
    print(f"speed-up {speedup:.1f}x; max |p(Yes) grouped - naive| over {len(naive)} rows: "
          f"{diff:.1e}")


if __name__ == "__main__":
    main()
