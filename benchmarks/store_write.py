"""How fast ``Store.log_step`` writes a step, on SQLite and (with ``$VRAGENT_PG_URL``) PostgreSQL.

Each step is written the way the runner writes it: one transaction holding the step row, the
impressions, the decisions, the session ends and the metrics. Two shapes of decision rows:

* ``llm``: an LLM run's rows, each with a 1.5 kB prompt (score mode, untraced);
* ``population``: a response-model run's rows, no prompt (``scenarios/population_scale.yaml``).

    .venv/bin/python benchmarks/store_write.py [--users 6 1000 20000] [--steps 20]
    VRAGENT_PG_URL=$(scripts/postgres-ci.sh start) .venv/bin/python benchmarks/store_write.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

from vragent.sandbox.store import Run, Store

SLATE = 10
PROMPT = ("<|system|>\nYou are a user of a short-video platform. " + "history line " * 100)[:1500]


def step_rows(step: int, users: int, prompt: str) -> dict:
    """One step's rows for ``users`` users of one arm."""
    impressions, decisions, sessions = [], [], []
    for u in range(users):
        for pos in range(SLATE):
            item = (u * 7 + pos * 13 + step) % 5000
            impressions.append({"arm": "a", "step": step, "user_id": u, "position": pos,
                                "item_id": item, "rec_score": 0.5, "source": "rec"})
            decisions.append({
                "arm": "a", "step": step, "user_id": u, "position": pos, "item_id": item,
                "action": "watch", "p_like": 0.6, "prompt": prompt, "completion": None,
                "think": None, "answer": None, "format_ok": True, "fallback": None,
                "model_id": "m", "tokens_in": 300 if prompt else 0, "tokens_out": 0,
                "latency_ms": 0.0, "traced": False, "prompt_truncated": False,
                "cache_hit": False, "attempts": 1})
        sessions.append({"arm": "a", "step": step, "user_id": u, "n_watch": SLATE,
                         "n_like": 0, "left": False, "leave_prob": 0.05})
    return {"steps": [{"arm": "a", "step": step, "n_users": users,
                       "n_decisions": users * SLATE, "wall_s": 0.0}],
            "impressions": impressions, "decisions": decisions, "sessions": sessions,
            "metrics": [{"arm": "a", "step": step, "name": "watch_rate", "value": 1.0}]}


def measure(url: str, users: int, steps: int, prompt: str) -> float:
    """Decisions written per second over ``steps`` steps of ``users`` users."""
    store = Store(url)
    run_id = uuid.uuid4().hex[:12]
    store.create_run(Run(id=run_id, scenario_name="bench", scenario_yaml="", config={},
                         seed=0, versions={}, status="running", n_steps=steps), [])
    batches = [step_rows(s, users, prompt) for s in range(steps)]
    t0 = time.perf_counter()
    for s, rows in enumerate(batches):
        assert store.log_step(run_id, s, **rows)
    wall = time.perf_counter() - t0
    store.engine.dispose()
    return users * SLATE * steps / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[6, 1000, 20000])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    pg = os.environ.get("VRAGENT_PG_URL")
    print("| rows | users a step | decisions a step | SQLite (WAL) decisions/s | "
          "PostgreSQL decisions/s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, prompt in (("llm", PROMPT), ("population", "")):
            for users in args.users:
                steps = max(2, min(args.steps, 200_000 // (users * SLATE) or 2))
                lite = measure(f"sqlite:///{tmp}/{kind}-{users}.sqlite", users, steps, prompt)
                post = measure(pg, users, steps, prompt) if pg else None
                print(f"| {kind} | {users:,} | {users * SLATE:,} | {lite:,.0f} | "
                      f"{f'{post:,.0f}' if post else 'n/a (no VRAGENT_PG_URL)'} |", flush=True)


if __name__ == "__main__":
    main()
