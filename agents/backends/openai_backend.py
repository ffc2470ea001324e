"""OpenAI-compatible backend (vLLM or any compatible server): request bodies and answers.

Requests go through :class:`~agents.backends.openai_pool.EndpointPool` (concurrency, many
endpoints with health checks and failover, retries with backoff, and why that layer is written
on ``httpx`` rather than the official ``openai`` client). This module builds the bodies and
reads the answers:

* **Scoring.** ``score_api="completions"`` (default) posts the exact prompt text to
  ``/v1/completions`` with ``max_tokens=1, logprobs=20`` and reads the first token's top
  log-probs. The text is the chat template plus the assistant prefix: rendered locally when
  ``tokenizer`` is given (exactly like ``HFBackend.render``), else by the server's
  ``POST {root}/tokenize`` (``continue_final_message``), whose token ids become the prompt.
  ``score_api="chat"`` asks chat completions for ``top_logprobs`` instead.
* **Guided decoding.** ``guided="regex"`` or ``"json"`` constrains judgement completions
  (prompts opened with ``<think>``; IP-agent prompts are never constrained) to the
  ``<think>…</think><answer> (1) User_preference: … (2) Prediction: Yes|No </answer>`` shape,
  with the reasoning cut at ``max_new_tokens`` characters so the answer block fits. vLLM >= 0.12
  (0.32 included) takes ``{"structured_outputs": {"regex": …}}`` (or ``{"json": schema}``);
  older servers took top-level ``guided_regex`` / ``guided_json`` (``guided_key="guided"``).
  vLLM 0.32 accepts unknown fields and silently ignores the old names, so the default is the
  new one. JSON answers (``{"think", "user_preference", "prediction"}``) come back rewritten as
  the tagged text, so the parser sees one format.

The API key is read from the environment variable named by ``api_key_env`` and is never part
of a message, an exception or a repr.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from vragent.agents.backends.base import (
    ChatPrompt,
    Generation,
    LLMBackend,
    Score,
    renormalise,
)
from vragent.agents.backends.openai_pool import EndpointPool

# Judgement prompts open the assistant turn with this; only they get guided decoding.
GUIDED_PREFIX = "<think>"
PREFERENCE_CHARS = 60  # longest guided "User_preference" text


def judgement_regex(max_new_tokens: int | None = None) -> str:
    """What may follow the ``<think>`` prefix: reasoning, then the paper's answer block.

    With ``max_new_tokens`` the reasoning is cut at that many characters (a token is at least
    one character), so the answer block still fits the budget; measured on SmolLM2 under vLLM
    0.32, unbounded reasoning ran out of tokens before ``</think>`` in a third of the answers.
    """
    think = "*" if max_new_tokens is None else f"{{0,{max(16, max_new_tokens)}}}"
    pref = "*" if max_new_tokens is None else f"{{0,{PREFERENCE_CHARS}}}"
    return (rf"[^<]{think}</think>\s?<answer> ?\(1\) User_preference: [^<\n]{pref}\n"
            r"\(2\) Prediction: (Yes|No) ?</answer>")


def judgement_schema(max_new_tokens: int | None = None) -> dict[str, Any]:
    """The JSON form of a judgement (``guided="json"``), rewritten to tags on return."""
    think: dict[str, Any] = {"type": "string"}
    pref: dict[str, Any] = {"type": "string"}
    if max_new_tokens is not None:
        think["maxLength"] = max(16, max_new_tokens)
        pref["maxLength"] = PREFERENCE_CHARS
    return {
        "type": "object",
        "properties": {"think": think, "user_preference": pref,
                       "prediction": {"type": "string", "enum": ["Yes", "No"]}},
        "required": ["think", "user_preference", "prediction"],
        "additionalProperties": False,
    }


JUDGEMENT_REGEX = judgement_regex()
JUDGEMENT_SCHEMA = judgement_schema()
TOP_LOGPROBS = 20  # vLLM's default --max-logprobs
LOGPROB_SLACK = 1e-4  # a logprob this far above 0 is float rounding of a certain token


def _logprob(value: Any) -> float:
    """A server's log-probability, checked: a number in ``[-inf, 0]`` exclusive of ``-inf``.

    NaN, an infinity or a positive value (1000.0 overflows ``exp``) is a bad response: the
    ``ValueError`` makes :meth:`EndpointPool.post` retry it like a malformed answer, so it
    never reaches the response cache or the store.
    """
    lp = float(value)
    if not math.isfinite(lp) or lp > LOGPROB_SLACK:
        raise ValueError(f"logprob {lp!r} is not a finite number <= 0")
    return min(lp, 0.0)


def _option_score(top: list[tuple[str, float]], options: Sequence[str], tokens_in: int,
                  latency: float) -> Score:
    """Option log-scores from a first token's top log-probs.

    An option counts as itself and with a leading space ("Yes", " Yes"), summed: the same rule
    as the hf backend, so the two agree to float precision on the same model.
    """
    logits: dict[str, float] = {}
    for opt in options:
        hits = [lp for tok, lp in top if tok in (opt, " " + opt)]
        if hits:
            # Log-sum-exp around the largest: exp(-1000) underflows to 0, and log(0) fails.
            top_hit = max(hits)
            logits[opt] = top_hit + math.log(sum(math.exp(h - top_hit) for h in hits))
    found = bool(logits)
    # An option missing from the top-k is less likely than any listed token.
    floor = (min(lp for _, lp in top) - 1.0) if top else -30.0
    for opt in options:
        logits.setdefault(opt, floor)
    return Score(probs=renormalise(logits), logits=logits, tokens_in=tokens_in,
                 latency_s=latency, found=found)


def json_to_judgement(text: str) -> str:
    """A ``guided="json"`` answer rewritten as the ``…</think><answer>…</answer>`` text.

    The result continues a ``<think>`` prefix, like an unconstrained completion. Text that is
    not the expected JSON comes back unchanged (the parser then flags it).
    """
    try:
        obj = json.loads(text)
        think, pref, pred = obj["think"], obj["user_preference"], obj["prediction"]
    except (ValueError, KeyError, TypeError):
        return text
    return (f" {think} </think>\n<answer> (1) User_preference: {pref}\n"
            f"(2) Prediction: {pred} </answer>")


class OpenAIBackend(LLMBackend):
    """Talks to OpenAI-compatible servers (``/v1/chat/completions``, ``/v1/completions``).

    Args:
        base_url: one API base URL (e.g. ``http://127.0.0.1:8000/v1``) or a list of them.
        model: the served model name.
        base_urls: more endpoints (joined with ``base_url``).
        api_key_env: name of the environment variable holding the key. The key itself is never
            a config value, so it never reaches the store or the logs.
        prefill: continue the assistant prefix (vLLM's ``continue_final_message``). Servers
            without it get the prompt alone.
        max_concurrency: requests in flight at once, over all endpoints and callers.
        timeout_s: deadline of each attempt, the whole answer included (httpx's own timeout
            bounds each read only, which a server dripping bytes never trips).
        max_retries: retries after the first attempt of each request.
        backoff_base_s: first backoff ceiling; it doubles per retry (full jitter).
        backoff_max_s: backoff ceiling.
        score_api: ``"completions"`` (exact prompt text, first-token top log-probs) or
            ``"chat"`` (chat completions with ``top_logprobs``).
        tokenizer: a transformers model folder (or a loaded tokenizer) whose chat template
            renders the completions prompt locally; ``None`` asks the server's ``/tokenize``.
        guided: ``None``/``"none"``, ``"regex"`` or ``"json"``: constrain judgement completions.
        guided_key: ``"structured_outputs"`` (vLLM >= 0.12) or ``"guided"`` (older vLLM's
            ``guided_regex`` / ``guided_json``).
        cooldown_s: how long a failed endpoint is avoided before it is re-checked.
        top_logprobs: candidates asked for when scoring.
        seed: seeds the backoff jitter (results never depend on it).
        unique_cache_salt: send a fresh vLLM ``cache_salt`` with every generation or scoring
            request, which turns the server's prefix cache off for them (benchmarks).
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        model: str = "default",
        *,
        base_urls: Sequence[str] | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        prefill: bool = True,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        score_api: Literal["completions", "chat"] = "completions",
        tokenizer: str | Path | Any | None = None,
        guided: Literal["none", "regex", "json"] | None = None,
        guided_key: Literal["structured_outputs", "guided"] = "structured_outputs",
        cooldown_s: float = 5.0,
        top_logprobs: int = TOP_LOGPROBS,
        seed: int = 0,
        unique_cache_salt: bool = False,
    ) -> None:
        given = [base_url] if isinstance(base_url, str) else list(base_url or [])
        urls: list[str] = []
        for u in [*given, *(base_urls or [])]:
            u = str(u).rstrip("/")
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"openai backend: base URL must be http(s)://…, got {u!r}")
            if u not in urls:
                urls.append(u)
        if not urls:
            raise ValueError("openai backend needs base_url or base_urls")
        if score_api not in ("completions", "chat"):
            raise ValueError(f"score_api must be 'completions' or 'chat', not {score_api!r}")
        guided = guided or "none"
        if guided not in ("none", "regex", "json"):
            raise ValueError(f"guided must be None, 'regex' or 'json', not {guided!r}")
        if guided_key not in ("structured_outputs", "guided"):
            raise ValueError(f"guided_key must be 'structured_outputs' or 'guided', not "
                             f"{guided_key!r}")
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        self.model = model
        # vLLM without --api-key accepts any request; send no header when the env var is unset.
        self._pool = EndpointPool(
            urls, api_key=os.environ.get(api_key_env) or None, max_concurrency=max_concurrency,
            timeout_s=timeout_s, max_retries=max_retries, backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s, cooldown_s=cooldown_s, seed=seed,
            unique_cache_salt=unique_cache_salt)
        self.endpoints = self._pool.endpoints
        self.prefill = prefill
        self.max_concurrency = max_concurrency
        self.score_api = score_api
        self.guided = guided
        self.guided_key = guided_key
        self.top_logprobs = top_logprobs
        self.api_key_env = api_key_env
        self._tokenizer_src = tokenizer
        self._tokenizer: Any = None
        self._tok_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    @property
    def model_id(self) -> str:
        """The served model name."""
        return self.model

    @property
    def base_url(self) -> str:
        """The first endpoint's API base URL."""
        return self.endpoints[0].url

    def __repr__(self) -> str:
        urls = ", ".join(e.url for e in self.endpoints)
        return (f"OpenAIBackend(model={self.model!r}, endpoints=[{urls}], "
                f"score_api={self.score_api!r}, max_concurrency={self.max_concurrency})")

    def close(self) -> None:
        """Close the HTTP connections and stop the private event loop."""
        self._pool.close()

    def endpoint_stats(self) -> list[dict[str, Any]]:
        """Per endpoint: URL, health, requests served, failures and requests in flight."""
        return self._pool.endpoint_stats()

    def health(self) -> dict[str, bool]:
        """Check every endpoint now (``/health``, else ``/v1/models``); URL -> healthy."""
        return self._pool.health()

    # ------------------------------------------------------------------ bodies

    def _is_guided(self, prompt: ChatPrompt) -> bool:
        return self.guided != "none" and prompt.assistant_prefix.startswith(GUIDED_PREFIX)

    def _chat_body(self, prompt: ChatPrompt, prefill: bool, **params: Any) -> dict[str, Any]:
        messages = prompt.as_dicts()
        body: dict[str, Any] = {"model": self.model, "messages": messages, **params}
        if prefill and prompt.assistant_prefix:
            messages.append({"role": "assistant", "content": prompt.assistant_prefix})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def guided_fields(self, prefilled: bool = True,
                      max_new_tokens: int | None = None) -> dict[str, Any]:
        """The structured-output fields a guided judgement request carries.

        Args:
            prefilled: the ``<think>`` prefix is already in the prompt (else the regex
                starts with it).
            max_new_tokens: the completion budget the reasoning must fit in.
        """
        if self.guided == "none":
            return {}
        if self.guided == "regex":
            regex = judgement_regex(max_new_tokens)
            kind, spec = "regex", regex if prefilled else re.escape(GUIDED_PREFIX) + regex
        else:
            kind, spec = "json", judgement_schema(max_new_tokens)
        if self.guided_key == "structured_outputs":
            return {"structured_outputs": {kind: spec}}
        return {f"guided_{kind}": spec}

    # ------------------------------------------------------------------ generate

    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """Sample completions concurrently; prompt ``i`` is seeded with ``seed + i``.

        See :class:`LLMBackend`. Judgement prompts get guided decoding when ``guided`` is set.
        """
        coros = []
        for i, prompt in enumerate(prompts):
            guided = self._is_guided(prompt)
            as_json = guided and self.guided == "json"
            # JSON answers carry their own reasoning field: no "<think>" prefill for them.
            prefill = self.prefill and not as_json
            body = self._chat_body(prompt, prefill, max_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed + i)
            if guided:
                body.update(self.guided_fields(prefilled=prefill and bool(prompt.assistant_prefix),
                                               max_new_tokens=max_new_tokens))
            coros.append(self._generate_one(body, as_json))
        return self._pool.run_all(coros)

    async def _generate_one(self, body: dict[str, Any], as_json: bool) -> Generation:
        t0 = time.perf_counter()

        def parse(data: Any) -> Generation:
            text = data["choices"][0]["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            usage = data.get("usage") or {}
            return Generation(text=json_to_judgement(text) if as_json else text,
                              tokens_in=int(usage.get("prompt_tokens") or 0),
                              tokens_out=int(usage.get("completion_tokens") or 0),
                              latency_s=0.0)

        gen = await self._pool.post("/chat/completions", body, parse)
        gen.latency_s = time.perf_counter() - t0
        return gen

    # ------------------------------------------------------------------ score

    def _local_tokenizer(self) -> Any:
        with self._tok_lock:
            if self._tokenizer is None and self._tokenizer_src is not None:
                src = self._tokenizer_src
                if hasattr(src, "apply_chat_template"):
                    self._tokenizer = src
                else:
                    from transformers import AutoTokenizer

                    self._tokenizer = AutoTokenizer.from_pretrained(str(src))
            return self._tokenizer

    def render(self, prompt: ChatPrompt) -> str:
        """The completions prompt text with the local tokenizer (as ``HFBackend.render``).

        Raises:
            ValueError: no local tokenizer is configured.
        """
        tok = self._local_tokenizer()
        if tok is None:
            raise ValueError("OpenAIBackend.render needs tokenizer=")
        text = tok.apply_chat_template(prompt.as_dicts(), tokenize=False,
                                       add_generation_prompt=True)
        return text + prompt.assistant_prefix

    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Option probabilities from the first token's top log-probs (see :class:`LLMBackend`).

        Prompts with image parts are scored through chat completions (the completions API
        takes text only).
        """
        options = tuple(options)
        local = self.score_api == "completions" and self._local_tokenizer() is not None
        coros = []
        for prompt in prompts:
            if self.score_api == "chat" or prompt.has_images:
                coros.append(self._score_chat(prompt, options))
            elif local:
                coros.append(self._score_completions(self.render(prompt), prompt, options))
            else:
                coros.append(self._score_completions(None, prompt, options))
        return self._pool.run_all(coros)

    async def _score_chat(self, prompt: ChatPrompt, options: tuple[str, ...]) -> Score:
        t0 = time.perf_counter()
        body = self._chat_body(prompt, self.prefill, max_tokens=1, temperature=0.0,
                               logprobs=True, top_logprobs=self.top_logprobs)

        def parse(data: Any) -> Score:
            content = data["choices"][0]["logprobs"]["content"] or []
            top = content[0]["top_logprobs"] if content else []
            pairs = [(str(t["token"]), _logprob(t["logprob"])) for t in top]
            n_in = int((data.get("usage") or {}).get("prompt_tokens") or 0)
            # Scored inside parse: numbers that break the arithmetic are a broken answer.
            return _option_score(pairs, options, n_in, 0.0)

        score = await self._pool.post("/chat/completions", body, parse)
        score.latency_s = time.perf_counter() - t0
        return score

    async def _tokenize(self, prompt: ChatPrompt) -> list[int]:
        messages = prompt.as_dicts()
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if prompt.assistant_prefix:
            messages.append({"role": "assistant", "content": prompt.assistant_prefix})
            body.update(add_generation_prompt=False, continue_final_message=True)
        else:
            body.update(add_generation_prompt=True)

        def parse(data: Any) -> list[int]:
            tokens = data["tokens"]
            if not tokens or not all(isinstance(t, int) for t in tokens):
                raise ValueError("no token ids")
            return tokens

        return await self._pool.post("/tokenize", body, parse, at_root=True)

    async def _score_completions(self, text: str | None, prompt: ChatPrompt,
                                 options: tuple[str, ...]) -> Score:
        t0 = time.perf_counter()
        body: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0,
                                "logprobs": self.top_logprobs}
        if text is not None:
            # The template already holds any BOS token; the server must not add another.
            body.update(prompt=text, add_special_tokens=False)
        else:
            body["prompt"] = await self._tokenize(prompt)

        def parse(data: Any) -> Score:
            first = data["choices"][0]["logprobs"]["top_logprobs"][0] or {}
            pairs = [(str(t), _logprob(lp)) for t, lp in first.items()]
            n_in = int((data.get("usage") or {}).get("prompt_tokens") or 0)
            n_in = n_in or (len(body["prompt"]) if text is None else 0)
            # Scored inside parse: numbers that break the arithmetic are a broken answer.
            return _option_score(pairs, options, n_in, 0.0)

        score = await self._pool.post("/completions", body, parse)
        score.latency_s = time.perf_counter() - t0
        return score
