"""Decisions and tokens per second of each LLM backend, next to this machine's FLOP roofline.

The setting is the simulator's: real MovieLens-100K users, a persona with 10 real history titles
(about 200 tokens), slates of 10 candidates, several steps in which each user's platform watches
grow by two titles. Rows:

* ``hf`` score mode: naive full forward at batch 1, 8 and 32; prefix reuse within a slate only;
  prefix reuse with each user's KV kept across steps (the default). The largest logit difference
  against the naive forward is printed beside each.
* ``hf`` generate mode (the ``<think>`` chain of thought) at batch 1, 8 and 32.
* vLLM (``--vllm-url``, e.g. ``scripts/vllm-cpu-server.sh start``) at concurrency 1, 8 and 32, in
  score and generate mode, with the server's prefix cache and without it (a unique
  ``cache_salt`` per request keeps vLLM from reusing any prefix).

The roofline column is the ceiling this machine could reach for the tokens a row actually runs:
``peak / (2 x non-embedding parameters x tokens run per decision)``, with ``peak`` what a large
fp32 matmul measures here.

    .venv/bin/python benchmarks/backend_throughput.py [--users 4] [--steps 3]
        [--vllm-url http://127.0.0.1:8011/v1] [--policy grounded-smollm2] [--int8]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch
from vragent.agents.backends.base import ChatPrompt
from vragent.agents.backends.hf import HFBackend
from vragent.agents.ip_agent import ItemText
from vragent.agents.persona import build_persona, item_line
from vragent.agents.prompts import judgement_prompt, score_prompt
from vragent.environments.datasets import load_dataset
from vragent.environments.splits import leave_one_out
from vragent.sandbox.assets import require_movielens, require_smollm2


@dataclass
class Row:
    """One line of the table."""

    backend: str
    mode: str
    setting: str
    decisions: int
    wall_s: float
    tokens_per_decision: float  # tokens the model actually ran (prompt part + generated)
    tokens_out: int = 0
    max_logit_diff: float | None = None

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.wall_s


def peak_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The best matmul rate (GFLOP/s) of the device in the model's dtype.

    2048-cubed fp32 on CPU with torch's thread setting; 8192-cubed on GPU.
    """
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def non_embedding_params(model: Any) -> int:
    """Parameters that run per token: all but the input embedding (tied to the output head)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters()) - emb.numel()


class World:
    """MovieLens users, their personas and a fresh slate per user and step."""

    def __init__(self, n_users: int, history_len: int = 10, slate: int = 10,
                 dataset: str = "movielens-100k", grounded: bool = False) -> None:
        path = require_movielens() if dataset == "movielens-100k" else None
        ds = load_dataset(dataset, path)
        split = leave_one_out(ds, max_len=50)
        self.items = {int(r.item_id): ItemText(int(r.item_id), r.title, r.category)
                      for r in ds.items.itertuples()}
        self.users = sorted(split.train)[:n_users]
        self.train = split.train
        self.history_len, self.slate = history_len, slate
        # A grounded policy's prompts carry the logs' evidence (environments.grounding).
        self.grounding = None
        if grounded:
            from vragent.environments.grounding import CollaborativeGrounding

            t0 = time.perf_counter()
            self.grounding = CollaborativeGrounding(self.train, list(self.items))
            self.grounding_fit_s = time.perf_counter() - t0

    def _persona(self, u: int, step: int):
        real = [self.items[i] for i in self.train[u]]
        unseen = [i for i in self.items if i not in self.train[u]]
        # Each step the user watched two of the previous slate: the platform history grows.
        watched = [self.items[unseen[self.slate * s + j]] for s in range(step) for j in (0, 3)]
        return build_persona({}, real, self.history_len, watched), unseen

    def prompts(self, step: int, think: bool = False) -> list[ChatPrompt]:
        """One slate per user for ``step``: score layout, or the paper's ``<think>`` layout."""
        out = []
        for u in self.users:
            persona, unseen = self._persona(u, step)
            cands = unseen[self.slate * step : self.slate * (step + 1)]
            evidence = (self.grounding.evidence(self.train[u], cands) if self.grounding
                        else [None] * len(cands))
            for i, ev in zip(cands, evidence, strict=True):
                text = item_line(self.items[i])
                out.append(judgement_prompt(persona, text, evidence=ev) if think
                           else score_prompt(persona, text, evidence=ev))
        return out


def _max_diff(a, b) -> float:
    return max(abs(x.logits[k] - y.logits[k]) for x, y in zip(a, b, strict=True) for k in x.logits)


def hf_score_rows(backend: HFBackend, world: World, steps: int) -> tuple[list[Row], list]:
    """Naive, per-slate reuse and cross-step reuse on the same prompts; and the default
    path's scores (prefix reuse with KV kept across steps)."""
    per_step = [world.prompts(s) for s in range(steps)]
    flat = [p for ps in per_step for p in ps]
    rows = []
    backend.score_naive(per_step[0][:2])  # warm-up
    naive = None
    for bs in (1, 8, 32):
        backend.batch_size = bs
        t0 = time.perf_counter()
        out = backend.score_naive(flat)
        wall = time.perf_counter() - t0
        naive = naive or out
        tokens = sum(s.tokens_in for s in out) / len(out)
        rows.append(Row("hf", "score", f"naive full forward, batch {bs}", len(out), wall, tokens))
    for setting, budget in (("prefix reuse within a slate", 0),
                            ("prefix reuse + KV kept across steps", 1 << 30)):
        backend.prefix_cache.clear()
        backend.prefix_cache.budget_bytes = budget
        backend.stats.clear()
        outs, walls = [], []
        for ps in per_step:
            t0 = time.perf_counter()
            outs += backend.score(ps)
            walls.append(time.perf_counter() - t0)
        tokens = backend.stats["tokens_run"] / len(outs)
        rows.append(Row("hf", "score", f"{setting}, all {steps} steps", len(outs), sum(walls),
                        tokens, max_logit_diff=_max_diff(outs, naive)))
    return rows + _warm_row(backend, world, steps, naive[len(per_step[0]) :]), outs


def int8_rows(backend: HFBackend, world: World, steps: int, exact) -> list[Row]:
    """The default path again with int8 decoder layers (``backend.quantize: int8``), and how
    many of the exact path's decisions it keeps: under the simulator's rule (watch when a
    seeded uniform draw falls below p(Yes)) and at p = 0.5."""
    import numpy as np

    backend.quantize_int8()
    backend.prefix_cache.clear()
    backend.prefix_cache.budget_bytes = 1 << 30
    backend.stats.clear()
    backend.score(world.prompts(0)[:2])  # warm-up of the quantised kernels
    backend.prefix_cache.clear()
    backend.stats.clear()
    outs, wall = [], 0.0
    for s in range(steps):
        t0 = time.perf_counter()
        outs += backend.score(world.prompts(s))
        wall += time.perf_counter() - t0
    p_exact = np.array([o.probs["Yes"] for o in exact])
    p_int8 = np.array([o.probs["Yes"] for o in outs])
    u = np.random.default_rng(0).random(p_exact.size)
    same_draw = float(np.mean((u < p_exact) == (u < p_int8)))
    same_half = float(np.mean((p_exact > 0.5) == (p_int8 > 0.5)))
    print(f"int8 vs exact, {p_exact.size} decisions: same action under seeded draws "
          f"{same_draw:.4f}, same at p = 0.5 {same_half:.4f}, max |dp| "
          f"{np.abs(p_exact - p_int8).max():.4f}, mean |dp| {np.abs(p_exact - p_int8).mean():.4f}")
    tokens = backend.stats["tokens_run"] / len(outs)
    return [Row("hf", "score", f"int8 layers, prefix reuse + KV kept, all {steps} steps",
                len(outs), wall, tokens, max_logit_diff=_max_diff(outs, exact))]


def _warm_row(backend: HFBackend, world: World, steps: int, naive) -> list[Row]:
    """Steps after the first, with step 0's prefixes already cached: the steady state."""
    if steps < 2:
        return []
    backend.prefix_cache.clear()
    backend.prefix_cache.budget_bytes = 1 << 30
    backend.score(world.prompts(0))
    backend.stats.clear()
    outs = []
    t0 = time.perf_counter()
    for s in range(1, steps):
        outs += backend.score(world.prompts(s))
    wall = time.perf_counter() - t0
    tokens = backend.stats["tokens_run"] / len(outs)
    return [Row("hf", "score", f"prefix reuse + KV kept across steps, steps 1-{steps - 1}",
                len(outs), wall, tokens, max_logit_diff=_max_diff(outs, naive))]


def hf_generate_rows(backend: HFBackend, world: World, new_tokens: int) -> list[Row]:
    """Chain-of-thought sampling at batch 1, 8 and 32."""
    prompts = world.prompts(0, think=True)
    while len(prompts) < 32:
        prompts += prompts
    rows = []
    for bs in (1, 8, 32):
        backend.batch_size = bs
        chunk = prompts[:bs]
        t0 = time.perf_counter()
        gens = backend.generate(chunk, max_new_tokens=new_tokens, seed=0)
        wall = time.perf_counter() - t0
        out = sum(g.tokens_out for g in gens)
        tokens = (sum(g.tokens_in for g in gens) + out) / len(gens)
        rows.append(Row("hf", "generate", f"batch {bs}, {new_tokens} new tokens", len(gens),
                        wall, tokens, tokens_out=out))
    return rows


def vllm_rows(url: str, new_tokens: int) -> list[Row]:
    """Score and generate through the openai backend against a vLLM server, with and without
    its prefix cache (``benchmarks/_vllm_bench.py`` does the measuring)."""
    from _vllm_bench import vllm_throughput

    rows = []
    for reuse in (True, False):
        tag = "prefix cache" if reuse else "no prefix reuse"
        # A unique cache_salt per request makes vLLM's prefix cache miss every time.
        for r in vllm_throughput(url, max_new_tokens=new_tokens, tokenizer=str(require_smollm2()),
                                 unique_cache_salt=not reuse):
            tokens = r["tokens_in_per_decision"] + (
                r["tokens_out_per_decision"] if r["mode"] == "generate" else 0)
            rows.append(Row("vllm-cpu", r["mode"], f"concurrency {r['concurrency']}, {tag}",
                            r["decisions"], r["wall_s"], tokens,
                            tokens_out=round(r["tokens_out_per_s"] * r["wall_s"])))
    return rows


def _random_backend(model_dir, config: str | None, device: str, name: str) -> HFBackend:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(config or str(model_dir))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with dev:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return HFBackend(model=model, tokenizer=tokenizer, model_name=name, device=str(dev))


def format_table(rows: list[Row], peak: float, n_params: int) -> str:
    """Markdown table with the roofline beside each measured rate."""
    lines = [
        "| backend | mode | setting | decisions | wall s | decisions/s | tokens run per decision "
        "| tokens/s | roofline decisions/s | % of roofline | max logit diff vs naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        roof = peak * 1e9 / (2 * n_params * r.tokens_per_decision)
        tps = r.tokens_out / r.wall_s if r.mode == "generate" else (
            r.tokens_per_decision * r.decisions_per_s)
        tps_s = f"{tps:.1f} out" if r.mode == "generate" else f"{tps:.0f} run"
        diff = "" if r.max_logit_diff is None else f"{r.max_logit_diff:.1e}"
        lines.append(
            f"| {r.backend} | {r.mode} | {r.setting} | {r.decisions} | {r.wall_s:.1f} | "
            f"**{r.decisions_per_s:.2f}** | {r.tokens_per_decision:.0f} | {tps_s} | "
            f"{roof:.1f} | {100 * r.decisions_per_s / roof:.0f} % | {diff} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--vllm-url", default=None)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--skip-hf", action="store_true", help="only the vLLM rows")
    ap.add_argument("--model", default=None, help="model folder (default: embedded SmolLM2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dataset", default="movielens-100k", choices=["movielens-100k", "synthetic"])
    ap.add_argument("--model-name", default="SmolLM2-135M-Instruct")
    ap.add_argument("--random-init", action="store_true",
                    help="random weights of the model's shape (throughput only; e.g. on a GPU "
                    "machine that has the tokenizer and config but not the weights)")
    ap.add_argument("--config", default=None, help="config.json of the shape to initialise "
                    "with --random-init (default: the model folder's)")
    ap.add_argument("--policy", default=None, help="a head policy (e.g. grounded-smollm2): its "
                    "head decides, its prompts carry the evidence")
    ap.add_argument("--int8", action="store_true", help="also the default path with int8 "
                    "decoder layers (backend.quantize: int8) and its agreement with the exact one")
    args = ap.parse_args()
    model_dir = args.model or require_smollm2()
    head = None
    if args.policy:
        from vragent.agents.policy_head import ScoreHead
        from vragent.sandbox.policies import load_policy

        head = ScoreHead.load(load_policy(args.policy).path)
    if args.random_init:
        backend = _random_backend(model_dir, args.config, args.device, args.model_name)
    else:
        backend = HFBackend(model_dir, model_name=args.policy or args.model_name,
                            device=args.device, score_head=head)
    world = World(args.users, dataset=args.dataset, grounded=head is not None)
    if head is not None:
        print(f"policy {args.policy}: head on layer {head.layer or 'final'}; grounding fitted "
              f"in {world.grounding_fit_s:.1f} s")
    peak = peak_gflops(backend.device, next(backend.model.parameters()).dtype)
    n_params = non_embedding_params(backend.model)
    if head is not None and head.layer:  # only the head's layers run (agents/backends/depth.py)
        n_params = n_params * head.layer // backend.model.config.num_hidden_layers
    rows, exact = ([], []) if args.skip_hf else hf_score_rows(backend, world, args.steps)
    if not (args.skip_generate or args.skip_hf):
        rows += hf_generate_rows(backend, world, args.gen_tokens)
    if args.int8 and not args.skip_hf:  # last: it quantises the backend in place
        rows += int8_rows(backend, world, args.steps, exact)
    if args.vllm_url:
        rows += vllm_rows(args.vllm_url, args.gen_tokens)
    where = (torch.cuda.get_device_name() if backend.device.type == "cuda" else "CPU")
    print(f"{backend.model_id} on {where}: {n_params / 1e6:.1f} M non-embedding parameters; "
          f"{len(world.users)} users x slate {world.slate} x {args.steps} steps; "
          f"torch threads {torch.get_num_threads()}; matmul peak {peak:.0f} GFLOP/s "
          f"({next(backend.model.parameters()).dtype})")
    print(format_table(rows, peak, n_params))


if __name__ == "__main__":
    main()
