"""In-process transformers backend: batched generation and one-pass option scoring on CPU or GPU."""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache
from vragent.agents.backends.base import ChatPrompt, Generation, LLMBackend, Score, renormalise
from vragent.agents.backends.depth import truncated_body
from vragent.agents.backends.loading import (
    int8_layers,
    option_first_tokens,
    resolve_device,
    sampling_kwargs,
    weights_dtype,
)
from vragent.agents.backends.prefix_cache import PrefixKVCache
from vragent.agents.backends.prefix_tree import Unit, prefix_groups, shared_prefix_len, tree_inputs
from vragent.agents.policy_head import ScoreHead


class HFBackend(LLMBackend):
    """A causal LM from transformers, run in this process.

    Args:
        model_path: a transformers model folder (e.g. the converted SmolLM2).
        model: an already built model (tests pass tiny randomly initialised ones).
        tokenizer: its tokenizer; required with ``model``.
        model_name: the id stored with decisions; defaults to the folder name.
        batch_size: prompts per forward pass.
        max_prompt_tokens: longer prompts keep their last tokens and are flagged truncated.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        threads: torch intra-op threads (``None`` leaves torch's default).
        reuse_prefix: score a slate's shared prefix once and reuse its KV cache.
        min_shared_prefix: fewest shared tokens worth reusing.
        kv_cache_mb: memory for prefix KV caches kept across calls (a user's persona and
            history, reused at the next slate, arm and step); 0 keeps none.
        chunk_tokens: most tokens run in one scoring forward (several slates share one).
        kv_block: prefixes are computed, kept and reused in blocks of this many tokens.
        dtype: weights' dtype when loading from ``model_path``: ``"auto"`` is float32 on CPU
            (bf16 matmuls are slow there) and bfloat16 on GPU; or ``"float32"``,
            ``"bfloat16"``, ``"float16"``.
        score_head: a learned decision head (:mod:`agents.policy_head`): :meth:`score` of
            ``("Yes", "No")`` then reads p(Yes) from it instead of the output layer's rows.
    """

    kind = "hf"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        model_name: str | None = None,
        batch_size: int = 8,
        max_prompt_tokens: int = 1024,
        device: str = "auto",
        threads: int | None = None,
        reuse_prefix: bool = True,
        min_shared_prefix: int = 16,
        kv_cache_mb: int = 1024,
        chunk_tokens: int = 2048,
        kv_block: int = 64,
        dtype: str = "auto",
        score_head: ScoreHead | None = None,
        quantize: str = "none",
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        if model is None:
            if model_path is None:
                raise ValueError("HFBackend needs model_path or model")
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from vragent.agents.backends.hf_bars import quiet_hf_bars_outside_terminal

            quiet_hf_bars_outside_terminal()  # "Loading weights" bars stay out of logs
            tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            model = AutoModelForCausalLM.from_pretrained(
                str(model_path), dtype=weights_dtype(dtype, self.device))
        elif tokenizer is None:
            raise ValueError("HFBackend(model=...) needs tokenizer=")
        self.model = model.to(self.device).eval()
        self.quantized = False
        if quantize not in ("none", "int8"):
            raise ValueError(f"quantize must be 'none' or 'int8', got {quantize!r}")
        self.score_head = score_head
        if quantize == "int8":
            self.quantize_int8()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Left padding keeps every prompt's last token at the end, where we read the logits.
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.min_shared_prefix = min_shared_prefix
        self.max_prompt_tokens = max_prompt_tokens
        self._model_id = model_name or (Path(model_path).name if model_path else "in-memory")
        self._option_ids: dict[tuple[str, ...], dict[str, list[int]]] = {}
        self._heads: dict[tuple, tuple[torch.Tensor, list[slice]]] = {}
        self.kv_block = kv_block
        # One KV store per depth: a head on layer k runs only k layers (agents.backends.depth).
        self._caches = {0: PrefixKVCache(budget_bytes=kv_cache_mb << 20, block=kv_block)}
        self._bodies: dict[int, Any] = {0: model.model}
        self._depth = 0  # layers the current call runs; 0: all
        # transformers >= 5.2x takes the KV cache as `cache`; older releases as
        # `past_key_values`, and silently ignore the other name.
        params = inspect.signature(self.model.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.chunk_tokens = chunk_tokens
        if score_head is not None and score_head.width != self.model.config.hidden_size:
            raise ValueError(f"score head reads {score_head.width} units, the model has "
                             f"{self.model.config.hidden_size}")
        if score_head is not None and score_head.layer:
            self._body(score_head.layer)  # a missing layer fails here, not at the first score
        # Tokens actually run by score(): what the FLOP roofline of the benchmark counts.
        self.stats: Counter[str] = Counter()

    def quantize_int8(self) -> None:
        """Dynamic int8 linear layers in the decoder (CPU, opt-in; ``loading.int8_layers``).

        Raises:
            ValueError: a learned head decides: int8 moves the hidden state it reads too far
                (SmolLM2's grounded head: mean |Δp(Yes)| 0.6; docs/performance.md).
        """
        if self.score_head is not None:
            raise ValueError("quantize: int8 cannot run a head policy (its head reads a hidden "
                             "state that int8 moves too far; docs/performance.md): use none")
        self.model.model.layers = int8_layers(self.model.model.layers, self.device)
        self.quantized = True
        if hasattr(self, "_bodies"):  # bodies and KV made from the exact layers: start again
            self._bodies = {0: self.model.model}
            for cache in self._caches.values():
                cache.clear()

    @property
    def model_id(self) -> str:
        """The model's stored name (``+int8`` when quantised: other numbers, other cache)."""
        return self._model_id + ("+int8" if self.quantized else "")

    @property
    def decides_with_head(self) -> bool:
        """Whether a learned head decides Yes/No (see :class:`LLMBackend`)."""
        return self.score_head is not None

    @property
    def prefix_cache(self) -> PrefixKVCache:
        """The KV store of the depth that Yes/No scores run at (the head's layer, if any)."""
        return self._store(self.score_head.layer if self.score_head else 0)

    def _store(self, depth: int) -> PrefixKVCache:
        if depth not in self._caches:
            self._caches[depth] = PrefixKVCache(budget_bytes=self._caches[0].budget_bytes,
                                                block=self.kv_block)
        return self._caches[depth]

    def _body(self, depth: int | None = None) -> Any:
        """The decoder of ``depth`` layers (default: the current call's; 0: all of them)."""
        depth = self._depth if depth is None else depth
        if depth not in self._bodies:
            self._bodies[depth] = truncated_body(self.model.model, depth)
        return self._bodies[depth]

    @contextmanager
    def _at_depth(self, depth: int) -> Iterator[None]:
        """Run the prefix-reuse path (KV store and tree forward) with ``depth`` layers."""
        self._depth = depth
        try:
            yield
        finally:
            self._depth = 0

    def _uses_head(self, options: Sequence[str]) -> bool:
        return self.score_head is not None and tuple(options) == ("Yes", "No")

    # ------------------------------------------------------------------ helpers

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model sees: chat template plus the assistant prefix."""
        prompt.require_text_only("hf")  # image parts need a vision model behind openai
        text = self.tokenizer.apply_chat_template(
            prompt.as_dicts(), tokenize=False, add_generation_prompt=True
        )
        return text + prompt.assistant_prefix

    def _encode(self, prompts: Sequence[ChatPrompt]) -> tuple[dict[str, torch.Tensor], list[bool]]:
        ids = [
            self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"] for p in prompts
        ]
        truncated = [len(x) > self.max_prompt_tokens for x in ids]
        ids = [x[-self.max_prompt_tokens :] for x in ids]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x) :] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}, (
            truncated
        )

    def _option_token_ids(self, options: Sequence[str]) -> dict[str, list[int]]:
        key = tuple(options)
        if key not in self._option_ids:
            self._option_ids[key] = option_first_tokens(self.tokenizer, options)
        return self._option_ids[key]

    # ------------------------------------------------------------------ API

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """Sample completions in batches of ``batch_size`` (see :class:`LLMBackend`)."""
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc, truncated = self._encode(chunk)
            # One seed per chunk: reruns (and resumed runs) see identical samples.
            torch.manual_seed(seed + start)
            t0 = time.perf_counter()
            seqs = self.model.generate(**enc, **sampling_kwargs(
                max_new_tokens, temperature, top_p, self.tokenizer.pad_token_id))
            latency = (time.perf_counter() - t0) / len(chunk)
            new = seqs[:, enc["input_ids"].shape[1] :]
            eos = self.tokenizer.eos_token_id
            for row in range(len(chunk)):
                toks = new[row].tolist()
                if eos in toks:
                    toks = toks[: toks.index(eos) + 1]
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                out.append(
                    Generation(
                        text=text,
                        tokens_in=int(enc["attention_mask"][row].sum()),
                        tokens_out=len(toks),
                        latency_s=latency,
                        truncated_prompt=truncated[row],
                    )
                )
        return out

    @torch.inference_mode()
    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Option probabilities after each prompt (see :class:`LLMBackend`).

        Prompts that share a long token prefix (one user's slate: instructions, persona and
        history, then one candidate each) run that prefix once, or reuse its KV from an earlier
        call; the candidates then run as short suffixes behind it, several slates per forward.
        Only the options' rows of the output head are computed. The logits equal the naive full
        forward's (tested).
        """
        if not self.reuse_prefix:
            return self.score_naive(prompts, options)
        table = self._option_token_ids(options)
        head, slices = self._option_head(table)
        ids = [self._token_ids(p) for p in prompts]
        out: list[Score | None] = [None] * len(prompts)
        t0 = time.perf_counter()
        with self._at_depth(self.score_head.layer if self._uses_head(options) else 0):
            for units, h in self._unit_batches(ids):
                self._score_units(units, h, table, head, slices, out)
        latency = (time.perf_counter() - t0) / max(1, len(prompts))
        for s in out:
            s.latency_s = latency
        return [s for s in out if s is not None]

    @torch.inference_mode()
    def hidden_states(self, prompts: Sequence[ChatPrompt], layer: int = 0) -> torch.Tensor:
        """The (normed) hidden state after each prompt, through the same prefix reuse.

        With ``layer=0`` it is what :meth:`score` multiplies by the options' output rows; with
        ``layer=k`` the state after the first ``k`` layers, normed by the final norm, which is
        what a head on layer ``k`` reads. A learned head (:mod:`agents.policy_head`) is
        trained on it.

        Returns:
            A float32 tensor of shape ``(len(prompts), hidden_size)``.
        """
        ids = [self._token_ids(p) for p in prompts]
        out = torch.zeros((len(prompts), self.model.config.hidden_size), dtype=torch.float32)
        with self._at_depth(layer):
            for units, h in self._unit_batches(ids):
                order = [i for u in units for i in u.prompt_ids]
                out[torch.tensor(order)] = h.float().cpu()
        return out

    def _unit_batches(self, ids: list[list[int]]):
        """Yield ``(units, last hidden states)`` over the prompts' token ids, in call order."""
        units = [u for g in prefix_groups(ids, self.min_shared_prefix)
                 for u in self._group_units(ids, g)]
        # Several slates share one forward: the weights are read from memory once for all of
        # them and the matmuls are taller. Batches follow the call's order, so a rerun of the
        # same call batches (and rounds) exactly alike.
        batch: list[Unit] = []
        for unit in units:
            if batch and sum(u.n_query for u in [*batch, unit]) > self.chunk_tokens:
                yield batch, self._tree_forward(batch)
                batch = []
            batch.append(unit)
        if batch:
            yield batch, self._tree_forward(batch)

    def _token_ids(self, prompt: ChatPrompt) -> list[int]:
        return self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"]

    def _option_head(self, table: dict[str, list[int]]) -> tuple[torch.Tensor, list[slice]]:
        """The output-head rows of the options (cached: the head is frozen at inference)."""
        key = tuple((k, tuple(v)) for k, v in table.items())
        if key not in self._heads:
            self._heads[key] = self._build_option_head(table)
        return self._heads[key]

    def _build_option_head(self, table: dict[str, list[int]]) -> tuple[torch.Tensor, list[slice]]:
        rows, slices, at = [], [], 0
        for ids in table.values():
            rows += ids
            slices.append(slice(at, at + len(ids)))
            at += len(ids)
        weight = self.model.get_output_embeddings().weight[rows]
        return weight, slices

    def _group_units(self, ids, group: list[int]) -> list[Unit]:
        """A slate's shared prefix (KV from the store) and its candidates, in bounded chunks."""
        seqs = [ids[i][-self.max_prompt_tokens :] for i in group]
        n_prefix = shared_prefix_len(seqs)
        # Every prompt keeps at least one token of its own, whose logits we read.
        n_prefix = min(n_prefix, min(len(x) for x in seqs) - 1)
        # Whole blocks of the prefix come from (or go to) the KV store; the partial block at its
        # end rides along in front of the candidates, which saves a forward per slate.
        kv, n_kv = self._prefix_kv(seqs[0][:n_prefix])
        trunk = seqs[0][n_kv:n_prefix]

        def unit(rows: list[int]) -> Unit:
            return Unit(kv, n_kv, trunk, [group[j] for j in rows],
                         [seqs[j][n_prefix:] for j in rows], [len(ids[group[j]]) for j in rows])

        units, rows = [], []
        for r in range(len(group)):
            if rows and sum(len(seqs[j]) - n_prefix for j in [*rows, r]) > self.chunk_tokens:
                units.append(unit(rows))
                rows = []
            rows.append(r)
        units.append(unit(rows))
        return units

    def _score_units(self, units: list[Unit], h: torch.Tensor, table, head, slices,
                     out: list) -> None:
        if self._uses_head(tuple(table)):
            z = self.score_head.logits(h)
            logits = torch.stack([z, torch.zeros_like(z)], dim=1)
            slices = [slice(0, 1), slice(1, 2)]
        else:
            logits = h.float() @ head.float().T
        j = 0
        for unit in units:
            for i, n_tokens in zip(unit.prompt_ids, unit.prompt_lens, strict=True):
                opt = {
                    name: float(torch.logsumexp(logits[j, sl], dim=0))
                    for name, sl in zip(table, slices, strict=True)
                }
                out[i] = Score(probs=renormalise(opt), logits=opt,
                               tokens_in=min(n_tokens, self.max_prompt_tokens), latency_s=0.0,
                               truncated_prompt=n_tokens > self.max_prompt_tokens)
                j += 1

    def _prefix_kv(self, tokens: list[int]) -> tuple[list | None, int]:
        """The KV cache of the whole ``kv_block`` blocks at the start of ``tokens``.

        Blocks are reused from earlier calls where possible, else computed, one forward per
        block, and kept. Computing and reusing only fixed blocks means the numbers never depend
        on what was cached: a resumed run, whose earlier steps came from the response cache,
        computes bit for bit what an uninterrupted run computed.

        Returns:
            Per-layer ``(keys, values)`` (or ``None``) and the number of tokens they cover.
        """
        block = self.kv_block
        aligned = len(tokens) // block * block
        self.stats["prefix_tokens"] += len(tokens)
        if not aligned:
            return None, 0
        store = self._store(self._depth)
        kv, n_hit = store.lookup(tokens[:aligned])
        n_hit = min(n_hit, aligned) // block * block
        self.stats["prefix_tokens_reused"] += n_hit
        cache = None
        if n_hit:
            cache = DynamicCache(
                ddp_cache_data=[(k[:, :, :n_hit], v[:, :, :n_hit]) for k, v in kv],
                config=self._body().config,
            )
        if n_hit == aligned:
            return [(layer.keys, layer.values) for layer in cache.layers], aligned
        for lo in range(n_hit, aligned, block):
            new = torch.tensor([tokens[lo : lo + block]], dtype=torch.long, device=self.device)
            pos = torch.arange(lo, lo + block, device=self.device).unsqueeze(0)
            res = self._body()(input_ids=new, position_ids=pos, use_cache=True,
                                   **{self._cache_kw: cache})
            # transformers >= 5.2x names it `cache`; older releases `past_key_values`.
            cache = getattr(res, "cache", None) or res.past_key_values
            self.stats["tokens_run"] += block
        kv_full = [(layer.keys, layer.values) for layer in cache.layers]
        store.put(tokens[:aligned], kv_full)
        return kv_full, aligned

    def _tree_forward(self, units: list[Unit]) -> torch.Tensor:
        """Last hidden state of every candidate of every unit, in one forward.

        Each unit is one row: its trunk (the end of the shared prefix that is not in its KV),
        then its candidates end to end. A 4-D mask lets trunk tokens see the unit's cached
        prefix and the trunk causally, and each candidate token see the prefix, the whole trunk
        and the earlier tokens of its own candidate; positions restart after the trunk for each
        candidate. So every candidate computes what it would alone behind its full prompt, and
        cached KV is read, never copied per candidate. Rows of different prefix lengths are
        padded; padded keys are masked out and padded queries see only themselves.
        """
        n_rows = len(units)
        l_max = max(u.n_kv for u in units)
        tokens, pos, mask, last = tree_inputs(units, self.tokenizer.pad_token_id)
        for u in units:
            self.stats["suffix_tokens"] += u.n_query - len(u.trunk)
            self.stats["tokens_run"] += u.n_query
        cache = None
        if l_max:
            layers = []
            for layer in range(len(next(u.kv for u in units if u.kv is not None))):
                ref = next(u.kv for u in units if u.kv is not None)[layer][0]
                keys = ref.new_zeros((n_rows, ref.shape[1], l_max, ref.shape[3]))
                values = torch.zeros_like(keys)
                for row, u in enumerate(units):
                    if u.kv is not None:
                        keys[row, :, : u.n_kv] = u.kv[layer][0][0, :, : u.n_kv]
                        values[row, :, : u.n_kv] = u.kv[layer][1][0, :, : u.n_kv]
                layers.append((keys, values))
            cache = DynamicCache(ddp_cache_data=layers, config=self._body().config)
        hidden = self._body()(
            input_ids=tokens.to(self.device), position_ids=pos.to(self.device),
            attention_mask=mask.to(self.device), use_cache=cache is not None,
            **{self._cache_kw: cache},
        ).last_hidden_state
        rows = torch.tensor([r for r, _ in last], device=self.device)
        cols = torch.tensor([c for _, c in last], device=self.device)
        return hidden[rows, cols]

    @torch.inference_mode()
    def score_naive(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Reference scorer: one full forward per prompt (batched), raw option logits."""
        table = self._option_token_ids(options)
        out: list[Score] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc, truncated = self._encode(chunk)
            t0 = time.perf_counter()
            # Explicit positions: with left padding the model would otherwise shift them.
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            head = self.score_head if self._uses_head(tuple(table)) else None
            if head is not None:
                h = self._body(head.layer)(**enc, position_ids=pos).last_hidden_state[:, -1, :]
                z = head.logits(h)
            else:
                logits = self.model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1, :]
            latency = (time.perf_counter() - t0) / len(chunk)
            for row in range(len(chunk)):
                opt_logits = (
                    {"Yes": float(z[row]), "No": 0.0} if head is not None else {
                        opt: float(torch.logsumexp(logits[row, ids].float(), dim=0))
                        for opt, ids in table.items()
                    })
                out.append(
                    Score(
                        probs=renormalise(opt_logits),
                        logits=opt_logits,
                        tokens_in=int(enc["attention_mask"][row].sum()),
                        latency_s=latency,
                        truncated_prompt=truncated[row],
                    )
                )
        return out
