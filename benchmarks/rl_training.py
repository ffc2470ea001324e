"""Training speed and memory of the RL runs in a store, as a table (docs/performance.md).

The figures are what `vragent rl train` measured and stored (`training_runs`, and the
`peak_rss_mib` / `steps_per_hour` points it writes at the last step):

    .venv/bin/python benchmarks/rl_training.py --db sqlite:///runs/rl/rl.sqlite
"""

from __future__ import annotations

import argparse

from vragent.sandbox.store import Store
from vragent.sandbox.training_log import curves, training_runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="sqlite:///runs/rl/rl.sqlite")
    args = ap.parse_args()
    store = Store(args.db)
    cols = ("policy", "algo", "base", "steps", "rows/step", "tokens", "wall s", "s/step",
            "steps/h", "peak RSS MiB")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for run in reversed(training_runs(store)):
        if run.status != "finished":
            continue
        cfg = run.config
        if run.algo == "grpo":
            per_step = f"{cfg['prompts_per_step']}×{cfg['num_generations']}"
            tokens = f"≤{cfg['max_completion_length']} out"
        else:
            per_step, tokens = str(cfg["batch_size"]), f"≤{cfg['max_length']}"
        rss = curves(store, run.id).get("peak_rss_mib")
        print(f"| {run.policy} | {run.algo} | {run.base_model} | {run.steps} | {per_step} | "
              f"{tokens} | {run.wall_s:.0f} | {run.wall_s / max(run.steps, 1):.1f} | "
              f"{3600 * run.steps / max(run.wall_s, 1e-9):.0f} | "
              f"{'–' if not rss else f'{rss[-1][1]:.0f}'} |")


if __name__ == "__main__":
    main()
