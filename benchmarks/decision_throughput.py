"""Decisions per second of the US agent with SmolLM2-135M on this machine.

Real MovieLens-100K users and items: each user's slate of ``--slate`` candidates follows about
200 tokens of history. Prints score mode (prefix-reuse vs naive full forward, with the largest
logit difference between the two) and generate mode.

    .venv/bin/python benchmarks/decision_throughput.py [--users 4] [--slate 10]
"""

from __future__ import annotations

import argparse
import time

from agents.backends.hf import HFBackend
from agents.ip_agent import ItemText
from agents.persona import build_persona, item_line
from agents.prompts import judgement_prompt
from environments.datasets import load_dataset
from environments.splits import leave_one_out
from sandbox.assets import require_movielens, require_smollm2


def build_prompts(n_users: int, slate: int, history_len: int, think: bool):
    ds = load_dataset("movielens-100k", require_movielens())
    split = leave_one_out(ds, max_len=50)
    items = {int(r.item_id): ItemText(int(r.item_id), r.title, r.category)
             for r in ds.items.itertuples()}
    users = sorted(split.train)[:n_users]
    prompts = []
    for u in users:
        persona = build_persona({}, [items[i] for i in split.train[u]], history_len)
        cands = [i for i in items if i not in split.train[u]][:slate]
        prompts += [judgement_prompt(persona, item_line(items[i]), think=think) for i in cands]
    return prompts


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--slate", type=int, default=10)
    ap.add_argument("--history", type=int, default=8)
    ap.add_argument("--gen-prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=64)
    args = ap.parse_args()
    backend = HFBackend(require_smollm2(), model_name="SmolLM2-135M-Instruct", batch_size=10)
    prompts = build_prompts(args.users, args.slate, args.history, think=False)
    backend.score(prompts[: args.slate])  # warm-up
    fast, t_fast = timed(lambda: backend.score(prompts))
    naive, t_naive = timed(lambda: backend.score_naive(prompts))
    pairs = zip(fast, naive, strict=True)
    diff = max(abs(f.logits[k] - n.logits[k]) for f, n in pairs for k in f.logits)
    tokens = sum(s.tokens_in for s in fast) / len(fast)
    gen_prompts = build_prompts(1, args.gen_prompts, args.history, think=True)
    backend.batch_size = args.gen_prompts
    gens, t_gen = timed(lambda: backend.generate(gen_prompts, max_new_tokens=args.gen_tokens,
                                                 seed=0))
    out_tok = sum(g.tokens_out for g in gens)
    n = len(prompts)
    print(f"SmolLM2-135M-Instruct, {args.users} users x slate {args.slate}, "
          f"{tokens:.0f} prompt tokens per decision")
    print("| mode | decisions | wall s | decisions/s | tokens/s |")
    print("|---|---|---|---|---|")
    print(f"| score, prefix reuse | {n} | {t_fast:.1f} | {n / t_fast:.2f} | "
          f"{tokens * n / t_fast:.0f} in |")
    print(f"| score, naive full forward | {n} | {t_naive:.1f} | {n / t_naive:.2f} | "
          f"{tokens * n / t_naive:.0f} in |")
    print(f"| generate, batch {len(gens)}, {args.gen_tokens} new tokens | {len(gens)} | "
          f"{t_gen:.1f} | {len(gens) / t_gen:.2f} | {out_tok / t_gen:.1f} out |")
    print(f"max |logit(prefix reuse) - logit(naive)| = {diff:.2e}")


if __name__ == "__main__":
    main()
