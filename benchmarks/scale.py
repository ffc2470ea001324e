"""Population scale without an LLM: wall time, peak memory and store size against users, steps
and fan-out batch size.

Runs ``scenarios/population_scale.yaml`` (synthetic users deciding with the learned response
model, ``response_model: learned``) at each size, every size in its own process so each peak
RSS is its own. Besides the total it splits a step's time into the user model (the response
model's predictions), the recommender (slates and refits) and the rest, which is the sandbox's
own cost: LangGraph (fan-out, state, checkpoint), Mesa (activation, memory, metrics) and the
store (one transaction per step).

    OMP_NUM_THREADS=1 python benchmarks/scale.py                    # users 1k, 10k, 100k
    OMP_NUM_THREADS=1 python benchmarks/scale.py --users 10000 --steps 5 10 20
    OMP_NUM_THREADS=1 python benchmarks/scale.py --users 10000 --users-per-task 10 100 2000
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "population_scale.yaml"


class Timer:
    """Accumulates the time spent in the wrapped callables."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def run_one(users: int, steps: int, users_per_task: int, db_dir: str) -> dict:
    """One run in this process; returns its measurements."""
    from vragent.sandbox.config import apply_overrides, parse_scenario
    from vragent.sandbox.runner import RunDriver, create_run
    from vragent.sandbox.store import Store

    data = apply_overrides(yaml.safe_load(SCENARIO.read_text()), [
        f"population.size={users}", f"dataset.synthetic.n_users={users}",
        f"simulation.steps={steps}", f"simulation.users_per_task={users_per_task}",
    ], str(SCENARIO))
    sc = parse_scenario(data, str(SCENARIO))
    db = Path(db_dir) / "scale.sqlite"
    store = Store(f"sqlite:///{db}")
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), str(SCENARIO))
    t0 = time.perf_counter()
    policy, recommender = Timer(), Timer()
    with RunDriver(store, run_id) as driver:
        setup = time.perf_counter() - t0
        rt = driver.rt
        rt.us_agent.response_model = policy.wrap(rt.us_agent.response_model)
        rt.platform.slates = recommender.wrap(rt.platform.slates)
        rt.platform.refit = recommender.wrap(rt.platform.refit)
        t1 = time.perf_counter()
        while not driver.done:
            driver.step()
        stepping = time.perf_counter() - t1
    total = time.perf_counter() - t0
    n = sum(r["impressions"] for r in store.arm_summary(run_id))
    store.engine.dispose()
    size = sum(p.stat().st_size for p in Path(db_dir).glob("scale*"))
    return {
        "users": users, "steps": steps, "users_per_task": users_per_task, "decisions": n,
        "setup_s": setup, "steps_s": stepping, "total_s": total,
        "policy_s": policy.seconds, "recommender_s": recommender.seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "db_gib": size / 2**30,
    }


def measure(users: int, steps: int, users_per_task: int, db_dir: str | None) -> dict:
    """:func:`run_one` in a fresh process (so its peak memory is its own)."""
    with tempfile.TemporaryDirectory(dir=db_dir) as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(users), str(steps), str(users_per_task),
             tmp], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| users | steps | users/task | decisions | setup s | steps s | ms/decision | user "
        "model ms/dec | recommender ms/dec | **sandbox ms/dec** | peak RSS GiB | store GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = max(r["decisions"], 1)
        rest = r["steps_s"] - r["policy_s"] - r["recommender_s"]
        lines.append(
            f"| {r['users']:,} | {r['steps']} | {r['users_per_task']:,} | {r['decisions']:,} | "
            f"{r['setup_s']:.1f} | {r['steps_s']:.1f} | {1000 * r['steps_s'] / n:.3f} | "
            f"{1000 * r['policy_s'] / n:.3f} | {1000 * r['recommender_s'] / n:.3f} | "
            f"**{1000 * rest / n:.3f}** | {r['peak_rss_gib']:.2f} | {r['db_gib']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--steps", type=int, nargs="+", default=[10])
    ap.add_argument("--users-per-task", type=int, nargs="+", default=[2000])
    ap.add_argument("--db-dir", default=None, help="where the temporary stores go")
    ap.add_argument("--one", nargs=4, metavar=("USERS", "STEPS", "PER_TASK", "DIR"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        users, steps, per_task, tmp = args.one
        print(json.dumps(run_one(int(users), int(steps), int(per_task), tmp)))
        return
    rows = []
    for users in args.users:
        for steps in args.steps:
            for per_task in args.users_per_task:
                rows.append(measure(users, steps, per_task, args.db_dir))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
