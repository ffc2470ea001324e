"""OpenAI-compatible backend (vLLM or any compatible server) through ``langchain-openai``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

from agents.backends.base import (
    BackendError,
    ChatPrompt,
    Generation,
    LLMBackend,
    Score,
    renormalise,
)


def _to_lc_messages(prompt: ChatPrompt, prefill: bool) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    msgs = [kinds[r](content=c) for r, c in prompt.messages]
    if prefill and prompt.assistant_prefix:
        msgs.append(AIMessage(content=prompt.assistant_prefix))
    return msgs


class OpenAIBackend(LLMBackend):
    """Talks to ``POST {base_url}/chat/completions``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name.
        api_key_env: name of the environment variable holding the key. The key itself is never
            a config value, so it never reaches the store or the logs.
        prefill: continue the assistant prefix (vLLM's ``continue_final_message``). Servers
            without it get the prompt alone.
        max_concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_retries: client retries on connection errors and 5xx.
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        prefill: bool = True,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.prefill = prefill
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # Servers such as vLLM accept any key; "EMPTY" is their convention.
        self._api_key = os.environ.get(api_key_env, "EMPTY")

    @property
    def model_id(self) -> str:
        """The served model name."""
        return self.model

    def _client(self, **kwargs: Any):
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            base_url=self.base_url, api_key=self._api_key, model=self.model,
            timeout=self.timeout_s, max_retries=self.max_retries, **kwargs,
        )

    def _extra_body(self, prompt_has_prefix: bool) -> dict[str, Any]:
        if self.prefill and prompt_has_prefix:
            return {"continue_final_message": True, "add_generation_prompt": False}
        return {}

    def _batch(self, client: Any, prompts: Sequence[ChatPrompt]) -> list[Any]:
        inputs = [_to_lc_messages(p, self.prefill) for p in prompts]
        try:
            return client.batch(inputs, config={"max_concurrency": self.max_concurrency})
        except Exception as exc:  # openai/httpx raise many types; all mean the call failed
            raise BackendError(
                f"openai backend {self.base_url}: {type(exc).__name__}: {exc}"
            ) from exc

    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """Sample completions concurrently (see :class:`LLMBackend`)."""
        has_prefix = any(p.assistant_prefix for p in prompts)
        client = self._client(
            max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            extra_body=self._extra_body(has_prefix) or None,
        )
        t0 = time.perf_counter()
        replies = self._batch(client, prompts)
        latency = (time.perf_counter() - t0) / max(1, len(prompts))
        out = []
        for reply in replies:
            usage = reply.usage_metadata or {}
            out.append(
                Generation(
                    text=str(reply.content),
                    tokens_in=int(usage.get("input_tokens", 0)),
                    tokens_out=int(usage.get("output_tokens", 0)),
                    latency_s=latency,
                )
            )
        return out

    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Option probabilities from the first token's top log-probs (see :class:`LLMBackend`)."""
        has_prefix = any(p.assistant_prefix for p in prompts)
        client = self._client(
            max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20,
            extra_body=self._extra_body(has_prefix) or None,
        )
        t0 = time.perf_counter()
        replies = self._batch(client, prompts)
        latency = (time.perf_counter() - t0) / max(1, len(prompts))
        out = []
        for reply in replies:
            content = (reply.response_metadata.get("logprobs") or {}).get("content") or []
            top = content[0].get("top_logprobs", []) if content else []
            logits: dict[str, float] = {}
            for opt in options:
                hits = [t["logprob"] for t in top if t["token"].strip().lower() == opt.lower()]
                if hits:
                    logits[opt] = math.log(sum(math.exp(h) for h in hits))
            found = bool(logits)
            # An option missing from the top-20 is far less likely than any listed token.
            floor = (min(t["logprob"] for t in top) - 1.0) if top else -30.0
            for opt in options:
                logits.setdefault(opt, floor)
            usage = reply.usage_metadata or {}
            out.append(
                Score(
                    probs=renormalise(logits), logits=logits,
                    tokens_in=int(usage.get("input_tokens", 0)), latency_s=latency, found=found,
                )
            )
        return out
