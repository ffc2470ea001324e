"""Throughput of the US agent against a vLLM server, through the project's openai backend.

``vllm_throughput(base_url)`` returns one row per (mode, concurrency): decisions per second and
prompt / completion tokens per second. The prompts are the paper's judgement prompts
(``agents.prompts.score_prompt`` in score mode, ``judgement_prompt`` with ``<think>`` in
generate mode) for real MovieLens-100K users: a persona with about 200
tokens of history titles (10 titles) and slates of 10 candidates. Score mode reads p(Yes) (one
output token per decision); generate mode samples the ``<think>…`` chain of thought.

Every run uses users no earlier run used, so the server's prefix cache only helps within a
slate (as in a simulation step), never across runs.

    scripts/vllm-cpu-server.sh start
    .venv/bin/python benchmarks/_vllm_bench.py [--url http://127.0.0.1:8011/v1]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from vragent.agents.backends.base import ChatPrompt


def _user_prompts(think: bool, history_len: int, slate: int) -> Iterator[list[ChatPrompt]]:
    """One slate of judgement prompts per MovieLens user, users in id order."""
    from vragent.agents.ip_agent import ItemText
    from vragent.agents.persona import build_persona, item_line
    from vragent.agents.prompts import judgement_prompt, score_prompt
    from vragent.environments.datasets import load_dataset
    from vragent.environments.splits import leave_one_out
    from vragent.sandbox.assets import require_movielens

    ds = load_dataset("movielens-100k", require_movielens())
    split = leave_one_out(ds, max_len=50)
    items = {int(r.item_id): ItemText(int(r.item_id), r.title, r.category)
             for r in ds.items.itertuples()}
    order = sorted(items)
    for k, u in enumerate(sorted(split.train)):
        persona = build_persona({}, [items[i] for i in split.train[u]], history_len)
        seen = set(split.train[u])
        # A different window of the catalogue per user, so slates differ too.
        start = (k * slate) % len(order)
        cands = [i for i in order[start:] + order[:start] if i not in seen][:slate]
        yield [judgement_prompt(persona, item_line(items[i])) if think
               else score_prompt(persona, item_line(items[i])) for i in cands]


def vllm_throughput(
    base_url: str | Sequence[str],
    *,
    model: str = "smollm2",
    modes: Sequence[str] = ("score", "generate"),
    concurrencies: Sequence[int] = (1, 8, 32),
    score_decisions: int = 40,
    generate_decisions: int = 8,
    max_new_tokens: int = 64,
    history_len: int = 10,
    slate: int = 10,
    warmup: bool = True,
    **backend_kwargs: Any,
) -> list[dict[str, Any]]:
    """Measure decisions/s and tokens/s per decision mode and concurrency.

    Args:
        base_url: the server's API base (e.g. ``http://127.0.0.1:8011/v1``), or several.
        model: the served model name.
        modes: ``"score"`` and/or ``"generate"``.
        concurrencies: requests in flight (the backend's ``max_concurrency``).
        score_decisions: decisions per score run; at least ``4 x concurrency`` are made.
        generate_decisions: decisions per generate run; at least ``2 x concurrency``.
        max_new_tokens: generate mode's completion budget (the model may stop earlier).
        history_len: history titles in the persona (10 is about 200 tokens on SmolLM2).
        slate: candidates per user (consecutive prompts share the user's prefix).
        warmup: send one request of each mode before timing.
        **backend_kwargs: passed to ``OpenAIBackend`` (e.g. ``score_api``, ``tokenizer``).

    Returns:
        Rows with ``mode, concurrency, decisions, wall_s, decisions_per_s, tokens_in_per_s,
        tokens_out_per_s, tokens_in_per_decision, tokens_out_per_decision``. Score mode counts
        one output token per decision (``max_tokens=1``).
    """
    from vragent.agents.backends.openai_backend import OpenAIBackend

    streams = {m: _user_prompts(m == "generate", history_len, slate) for m in modes}

    def take(mode: str, n: int) -> list[ChatPrompt]:
        out: list[ChatPrompt] = []
        for _ in range(math.ceil(n / slate)):
            out += next(streams[mode])
        return out[:n]

    rows: list[dict[str, Any]] = []
    for mode in modes:
        if mode not in ("score", "generate"):
            raise ValueError(f"mode must be 'score' or 'generate', not {mode!r}")
        for conc in concurrencies:
            backend = OpenAIBackend(base_url, model, max_concurrency=conc, **backend_kwargs)
            try:
                if mode == "score":
                    n = max(score_decisions, 4 * conc)
                    if warmup and conc == concurrencies[0]:
                        backend.score(take(mode, 1))
                    prompts = take(mode, n)
                    t0 = time.perf_counter()
                    scores = backend.score(prompts)
                    wall = time.perf_counter() - t0
                    tin, tout = sum(s.tokens_in for s in scores), len(scores)
                else:
                    n = max(generate_decisions, 2 * conc)
                    if warmup and conc == concurrencies[0]:
                        backend.generate(take(mode, 1), max_new_tokens=8)
                    prompts = take(mode, n)
                    t0 = time.perf_counter()
                    gens = backend.generate(prompts, max_new_tokens=max_new_tokens, seed=conc)
                    wall = time.perf_counter() - t0
                    tin, tout = sum(g.tokens_in for g in gens), sum(g.tokens_out for g in gens)
            finally:
                backend.close()
            rows.append({
                "mode": mode, "concurrency": conc, "decisions": n, "wall_s": wall,
                "decisions_per_s": n / wall, "tokens_in_per_s": tin / wall,
                "tokens_out_per_s": tout / wall, "tokens_in_per_decision": tin / n,
                "tokens_out_per_decision": tout / n,
            })
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| mode | concurrency | decisions | wall s | decisions/s | tokens/s in "
             "| tokens/s out | tokens in/out per decision |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['decisions']} | {r['wall_s']:.1f} | "
            f"{r['decisions_per_s']:.2f} | {r['tokens_in_per_s']:.0f} | "
            f"{r['tokens_out_per_s']:.1f} | {r['tokens_in_per_decision']:.0f} / "
            f"{r['tokens_out_per_decision']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8011/v1")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--modes", default="score,generate")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--score-decisions", type=int, default=40)
    ap.add_argument("--generate-decisions", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--score-api", default="completions", choices=["completions", "chat"])
    args = ap.parse_args()
    rows = vllm_throughput(
        args.url, model=args.model, modes=args.modes.split(","),
        concurrencies=[int(c) for c in args.concurrency.split(",")],
        score_decisions=args.score_decisions, generate_decisions=args.generate_decisions,
        max_new_tokens=args.max_new_tokens, score_api=args.score_api)
    print(format_rows(rows))


if __name__ == "__main__":
    main()
