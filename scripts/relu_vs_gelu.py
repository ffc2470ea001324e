"""SASRec-ID with a ReLU vs a GELU feed-forward in the IP-agent experiment's setting.

MicroLens-50k cut to the experiment's catalogue (``--items``, default 1,000), leave-one-out,
20 epochs, d=64, one thread; NDCG@10 paired over users (seed-averaged) with a 95 % bootstrap
interval, for all users and the paper's cold-start users. The numbers are in docs/results.md.

Usage: ``python scripts/relu_vs_gelu.py [SEEDS] [ITEMS]`` with ``VRAGENT_DATA_DIR`` set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from vragent.environments.datasets import load_dataset
from vragent.environments.evaluation import evaluate
from vragent.environments.recommenders import make_recommender
from vragent.sandbox.ip_experiment import IPExperimentConfig, prepare


def main(seeds: int = 3, items: int = 1000) -> dict:
    """Fit both variants for each seed and return the metrics and paired differences."""
    torch.set_num_threads(1)
    data = Path(os.environ["VRAGENT_DATA_DIR"]) / "microlens-100k"
    prep = prepare(load_dataset("microlens", str(data)), IPExperimentConfig(data=str(data),
                                                                            items=items))
    print(prep.stats, flush=True)
    train = prep.split.train_interactions()
    per_user: dict[tuple[str, str], list[np.ndarray]] = {}
    out: dict[str, list | dict] = {"data": prep.stats}
    for act in ("relu", "gelu"):
        for seed in range(seeds):
            rec = make_recommender("sasrec", seed=seed, tower="id", dim=64, max_len=10,
                                   epochs=20, batch_size=256, lr=1e-3, activation=act,
                                   threads=1)
            t0 = time.perf_counter()
            rec.fit(train, items=prep.items)
            for group, users in (("all", prep.users), ("cold", prep.cold)):
                m = evaluate(rec, prep.split, "test", users=users, return_per_user=True)
                per_user.setdefault((act, group), []).append(
                    np.asarray(m["per_user"]["NDCG@10"]))
                out.setdefault(f"{act}/{group}", []).append(
                    {k: float(m[k]) for k in ("HR@10", "NDCG@10")})
            print(act, seed, f"{time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    for group in ("all", "cold"):
        diff = np.mean(per_user[("relu", group)], axis=0) - np.mean(per_user[("gelu", group)],
                                                                    axis=0)
        boots = rng.choice(diff, size=(2000, diff.size)).mean(axis=1)
        lo, hi = np.percentile(boots, [2.5, 97.5])
        out[f"paired_relu_minus_gelu/{group}"] = {
            "mean": float(diff.mean()), "ci95": [float(lo), float(hi)], "n": int(diff.size)}
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(main(*args), indent=1))
