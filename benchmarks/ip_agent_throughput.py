"""IP-agent items per second: the staged text-only pipeline on a real catalogue.

Profiles the N most-watched items of a dataset (MicroLens-50k by default) with the hf backend
(SmolLM2 unless --model says otherwise), for each batch size, without any cache, and prints the
items per second, the output tokens per second and each stage's share of the time.

    .venv/bin/python benchmarks/ip_agent_throughput.py [--items 64] [--batch-sizes 8,16,32]
        [--data ../shared/data/microlens-100k] [--threads 2]

Run it on a quiet machine: other processes on the two cores halve the figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from vragent.agents.backends.hf import HFBackend
from vragent.agents.ip_agent import IPAgent
from vragent.environments.datasets import load_dataset
from vragent.sandbox.assets import require_smollm2
from vragent.sandbox.perception import item_texts, most_popular_first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("VRAGENT_DATA_DIR",
                                                                  "../shared/data"),
                                                   "microlens-100k"))
    ap.add_argument("--dataset", default="microlens")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--cmp-tokens", type=int, default=64)
    ap.add_argument("--profile-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, Path(args.data))
    texts = item_texts(ds.items)
    order = most_popular_first(ds.interactions, texts)[: args.items]
    items = [texts[i] for i in order]
    path = require_smollm2() if args.model == "smollm2" else Path(args.model)

    print(f"{len(items)} items of {ds.name}, {args.model}, {args.threads} threads, budgets "
          f"perception {args.cmp_tokens} / profile {args.profile_tokens} tokens")
    print("| batch | items/s | output tok/s | perception s | profile s | format ok |")
    print("|---|---|---|---|---|---|")
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        backend = HFBackend(path, batch_size=bs)
        agent = IPAgent(backend, max_new_tokens=args.profile_tokens,
                        cmp_max_new_tokens=args.cmp_tokens)
        agent.profile(items[:2])  # warm-up: first-call allocations
        t0 = time.perf_counter()
        out = []
        for start in range(0, len(items), bs):
            out += agent.profile(items[start : start + bs])
        wall = time.perf_counter() - t0
        tokens = sum(p.tokens_out for p in out)
        # Stage latency is per prompt (batch time / batch size): summing gives stage wall time.
        cmp_s = sum(p.stages[2]["latency_ms"] for p in out) / 1000
        rra_s = sum(p.stages[3]["latency_ms"] for p in out) / 1000
        ok = sum(p.format_ok for p in out) / len(out)
        print(f"| {bs} | {len(out) / wall:.2f} | {tokens / wall:.0f} | {cmp_s:.1f} | "
              f"{rra_s:.1f} | {ok:.0%} |")


if __name__ == "__main__":
    main()
