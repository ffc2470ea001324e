"""In-process transformers backend: batched generation and one-pass option scoring on CPU or GPU."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agents.backends.base import ChatPrompt, Generation, LLMBackend, Score, renormalise


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
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if model is None:
            if model_path is None:
                raise ValueError("HFBackend needs model_path or model")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
        elif tokenizer is None:
            raise ValueError("HFBackend(model=...) needs tokenizer=")
        self.model = model.to(self.device).eval()
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

    @property
    def model_id(self) -> str:
        """The model's stored name."""
        return self._model_id

    # ------------------------------------------------------------------ helpers

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model sees: chat template plus the assistant prefix."""
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
            table: dict[str, list[int]] = {}
            for opt in options:
                # The answer may follow ":" with or without a space; take both first tokens.
                cands = {
                    self.tokenizer(v, add_special_tokens=False)["input_ids"][0]
                    for v in (opt, " " + opt)
                }
                table[opt] = sorted(cands)
            self._option_ids[key] = table
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
            gen_kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "pad_token_id": self.tokenizer.pad_token_id,
                "do_sample": temperature > 0,
            }
            if temperature > 0:
                gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            seqs = self.model.generate(**enc, **gen_kwargs)
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
        history, then one candidate each) run that prefix once; its KV cache is repeated for
        every candidate and only the short suffixes run. Only the options' rows of the output
        head are computed. Both give the same logits as the naive full forward (tested).
        """
        if not self.reuse_prefix:
            return self.score_naive(prompts, options)
        table = self._option_token_ids(options)
        ids = [self._token_ids(p) for p in prompts]
        out: list[Score | None] = [None] * len(prompts)
        for group in _prefix_groups(ids, self.min_shared_prefix):
            self._score_group(ids, group, table, out)
        return [s for s in out if s is not None]

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

    def _score_group(self, ids, group: list[int], table, out: list) -> None:
        seqs = [ids[i] for i in group]
        truncated = [len(x) > self.max_prompt_tokens for x in seqs]
        seqs = [x[-self.max_prompt_tokens :] for x in seqs]
        n_prefix = _common_prefix_len(seqs)
        # Every prompt keeps at least one token of its own, whose logits we read.
        n_prefix = min(n_prefix, min(len(x) for x in seqs) - 1)
        head, slices = self._option_head(table)
        t0 = time.perf_counter()
        prefix_cache = None
        if n_prefix > 0:
            prefix = torch.tensor([seqs[0][:n_prefix]], dtype=torch.long, device=self.device)
            prefix_out = self.model.model(input_ids=prefix, use_cache=True)
            # transformers >= 5.2x names it `cache`; older releases `past_key_values`.
            prefix_cache = getattr(prefix_out, "cache", None) or prefix_out.past_key_values
        for start in range(0, len(group), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(group))))
            suffixes = [seqs[r][n_prefix:] for r in rows]
            width = max(len(x) for x in suffixes)
            pad = self.tokenizer.pad_token_id
            # Right padding: padded slots come after the real tokens, so causal attention keeps
            # them from touching any position we read.
            inp = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), n_prefix + width), dtype=torch.long)
            mask[:, :n_prefix] = 1
            for j, x in enumerate(suffixes):
                inp[j, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[j, n_prefix : n_prefix + len(x)] = 1
            pos = (n_prefix + torch.arange(width)).unsqueeze(0).expand(len(rows), -1)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(rows))
            hidden = self.model.model(
                input_ids=inp.to(self.device), attention_mask=mask.to(self.device),
                position_ids=pos.to(self.device), cache=cache, use_cache=cache is not None,
            ).last_hidden_state
            last = torch.tensor([len(x) - 1 for x in suffixes], device=self.device)
            h = hidden[torch.arange(len(rows), device=self.device), last]
            logits = h.float() @ head.float().T
            for j, r in enumerate(rows):
                opt = {
                    name: float(torch.logsumexp(logits[j, sl], dim=0))
                    for name, sl in zip(table, slices, strict=True)
                }
                out[group[r]] = Score(probs=renormalise(opt), logits=opt,
                                      tokens_in=len(seqs[r]), latency_s=0.0,
                                      truncated_prompt=truncated[r])
        latency = (time.perf_counter() - t0) / len(group)
        for i in group:
            out[i].latency_s = latency

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
            logits = self.model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1, :]
            latency = (time.perf_counter() - t0) / len(chunk)
            for row in range(len(chunk)):
                opt_logits = {
                    opt: float(torch.logsumexp(logits[row, ids].float(), dim=0))
                    for opt, ids in table.items()
                }
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


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(x) for x in seqs)
    for i in range(n):
        tok = first[i]
        if any(x[i] != tok for x in seqs[1:]):
            return i
    return n


def _prefix_groups(ids: list[list[int]], min_shared: int) -> list[list[int]]:
    """Runs of consecutive prompts that share a long leading prefix.

    A prompt joins the current run when it shares at least ``min_shared`` tokens with the run's
    first prompt *and* does not shorten the run's common prefix. So one user's slate (same
    instructions, persona and history) forms a run, and the next user, who shares only the
    instructions, starts a new one.
    """
    groups: list[list[int]] = []
    shared: list[int] = []  # common prefix length of each group so far
    for i, x in enumerate(ids):
        if groups:
            lcp = _common_prefix_len([ids[groups[-1][0]], x])
            if lcp >= min_shared and (len(groups[-1]) == 1 or lcp >= shared[-1]):
                shared[-1] = lcp if len(groups[-1]) == 1 else min(shared[-1], lcp)
                groups[-1].append(i)
                continue
        groups.append([i])
        shared.append(len(x))
    return groups
