"""Paired bootstrap and permutation test: ours against scipy's, at A/B-analysis sizes.

``sandbox.stats.paired_bootstrap`` runs ``scipy.stats.bootstrap``; ``paired_permutation_p``
flips the signs of the per-pair differences itself. This script times both against the scipy
calls they replace (``permutation_test(permutation_type="samples")``) and prints the p-values
and interval ends side by side, so the choice in stats.py's docstring can be checked.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stats_resampling.py [--users 1000 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import permutation_test
from vragent.sandbox.stats import block_size, paired_bootstrap, paired_permutation_p


def _abs_mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.abs(np.mean(x - y, axis=axis))


def _scipy_permutation(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> float:
    res = permutation_test((a, b), _abs_mean_diff, permutation_type="samples",
                           n_resamples=n_resamples, alternative="greater", vectorized=True,
                           batch=block_size(a.size), rng=np.random.default_rng(seed))
    return float(res.pvalue)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000])
    ap.add_argument("--resamples", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| users | resamples | bootstrap s (scipy) | 95 % interval | permutation s (ours) | "
          "p (ours) | permutation s (scipy) | p (scipy) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.users:
        rng = np.random.default_rng(args.seed)
        # Like/watch indicators of two arms on the same users, a small true difference.
        a = (rng.random(n) < 0.42).astype(float)
        b = (rng.random(n) < 0.41).astype(float)
        k = {"n_resamples": args.resamples, "seed": args.seed}
        ci, t_boot = _timed(paired_bootstrap, a, b, **k)
        p_ours, t_ours = _timed(paired_permutation_p, a, b, **k)
        p_sp, t_sp = _timed(_scipy_permutation, a, b, args.resamples, args.seed)
        print(f"| {n:,} | {args.resamples:,} | {t_boot:.2f} | [{ci.low:+.4f}, {ci.high:+.4f}] | "
              f"{t_ours:.2f} | {p_ours:.4f} | {t_sp:.2f} | {p_sp:.4f} |")


if __name__ == "__main__":
    main()
