"""OpenAI-compatible backend (vLLM or any compatible server) over ``httpx``.

Production concerns live here rather than in a client library:

* **Concurrency.** Requests go out from one private asyncio loop (a daemon thread), bounded by
  one semaphore of ``max_concurrency`` slots shared by every caller, so LangGraph's worker
  threads can all call :meth:`OpenAIBackend.generate` / :meth:`OpenAIBackend.score` at once
  and the server still sees at most ``max_concurrency`` requests. Results keep prompt order.
* **Many endpoints.** ``base_url`` may be a list. Each request goes to the healthy endpoint
  with the fewest requests in flight (round-robin among ties). An endpoint that fails
  (connection refused, timeout, 5xx, broken response) is marked unhealthy for ``cooldown_s``;
  traffic goes to the others and the endpoint is re-checked (``GET {root}/health``, vLLM's, with
  ``GET {base_url}/models`` as the fallback) once its cool-down is over. With every endpoint
  down, the one that failed longest ago is probed and used as soon as it answers.
* **Retries.** Connection errors, timeouts, HTTP 408/429/5xx and truncated or malformed
  responses are retried up to ``max_retries`` times with exponential backoff and full jitter
  (``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``). Other 4xx are not retried. What
  escapes is a :class:`~agents.backends.base.BackendError` whose message is one line naming the
  endpoints, the last error and the attempts.
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

Why one module of ~790 lines: the pool, the retry loop, the endpoint chooser and the
response checks share one request life cycle and its state; issue 19 replaces the hand-written
HTTP layer with the official ``openai`` client, which removes most of it, so it is not split
before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from vragent.agents.backends.base import (
    BackendError,
    ChatPrompt,
    Generation,
    LLMBackend,
    Score,
    renormalise,
)

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


class _Secret:
    """Holds the API key; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<none>"


class _RetryableError(Exception):
    def __init__(self, kind: str, detail: str = "", *, mark_down: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind, self.detail, self.mark_down, self.retry_after = (
            kind, detail, mark_down, retry_after)


class _FatalError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind, self.detail = kind, detail


@dataclass
class _Endpoint:
    url: str  # the API base, e.g. http://host:8000/v1
    root: str  # the server root (url without /v1), where vLLM serves /health and /tokenize
    in_flight: int = 0
    down: bool = False
    down_until: float = 0.0  # time.monotonic() after which it is worth re-checking
    served: int = 0
    failures: int = 0
    last_error: str = ""
    probe: asyncio.Task | None = field(default=None, repr=False)


class _LoopThread:
    """A private event loop in a daemon thread; sync code submits coroutines to it.

    Works from any thread, including threads that run their own loop (no nested-loop errors).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("OpenAIBackend's sync API was called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def stop(self, final: Coroutine[Any, Any, Any] | None = None) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            if final is not None:
                final.close()
            return
        if final is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                asyncio.run_coroutine_threadsafe(final, loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()


def _one_line(text: str, limit: int = 200, scrub: Callable[[str], str] | None = None) -> str:
    """``text`` on one line, cut at ``limit`` characters, scrubbed of secrets *before* the cut.

    Scrubbing after the cut would miss a key that straddles it, leaving its prefix behind.
    """
    text = str(text)
    if scrub is not None:
        text = scrub(text)
    # Square brackets would be read as markup by a console that has it on.
    text = " ".join(text.split()).replace("[", "(").replace("]", ")")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _root_of(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _logprob(value: Any) -> float:
    """A server's log-probability, checked: a number in ``[-inf, 0]`` exclusive of ``-inf``.

    NaN, an infinity or a positive value (1000.0 overflows ``exp``) is a bad response: the
    ``ValueError`` makes :meth:`OpenAIBackend._post` retry it like a malformed answer, so it
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
        # Benchmarks only: a fresh vLLM `cache_salt` per request, so no prefix is ever reused.
        self.unique_cache_salt = unique_cache_salt
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
        self.endpoints = [_Endpoint(u, _root_of(u)) for u in urls]
        self.prefill = prefill
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.score_api = score_api
        self.guided = guided
        self.guided_key = guided_key
        self.cooldown_s = cooldown_s
        self.top_logprobs = top_logprobs
        self.api_key_env = api_key_env
        # vLLM without --api-key accepts any request; send no header when the env var is unset.
        self._key = _Secret(os.environ.get(api_key_env) or None)
        self._tokenizer_src = tokenizer
        self._tokenizer: Any = None
        self._tok_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rr = 0
        self._loop = _LoopThread(f"openai-backend-{id(self):x}")
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None

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
        self._loop.stop(self._aclose())

    async def _aclose(self) -> None:
        for ep in self.endpoints:
            if ep.probe is not None and not ep.probe.done():
                ep.probe.cancel()
            ep.probe = None
        if self._client is not None:
            await self._client.aclose()
        self._client = self._sem = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                limits=httpx.Limits(max_connections=self.max_concurrency + len(self.endpoints),
                                    max_keepalive_connections=self.max_concurrency),
            )
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._client

    def _headers(self) -> dict[str, str]:
        key = self._key.get()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _scrub(self, text: str) -> str:
        key = self._key.get()
        return text.replace(key, "***") if key else text

    def endpoint_stats(self) -> list[dict[str, Any]]:
        """Per endpoint: URL, health, requests served, failures and requests in flight."""
        return [{"url": e.url, "healthy": not e.down, "served": e.served,
                 "failures": e.failures, "in_flight": e.in_flight} for e in self.endpoints]

    def health(self) -> dict[str, bool]:
        """Check every endpoint now (``/health``, else ``/v1/models``); URL -> healthy."""

        async def check() -> dict[str, bool]:
            self._http()
            oks = await asyncio.gather(*(self._probe_once(e) for e in self.endpoints))
            return {e.url: ok for e, ok in zip(self.endpoints, oks, strict=True)}

        return self._loop.run(check())

    # ------------------------------------------------------------------ endpoints

    def _mark_down(self, ep: _Endpoint) -> None:
        ep.down = True
        ep.down_until = time.monotonic() + self.cooldown_s

    async def _probe_once(self, ep: _Endpoint) -> bool:
        client = self._http()
        timeout = min(self.timeout_s, 5.0)
        for url in (ep.root + "/health", ep.url + "/models"):
            try:
                async with asyncio.timeout(timeout):  # the whole answer, not each read
                    resp = await client.get(url, headers=self._headers(), timeout=timeout)
            except (httpx.HTTPError, TimeoutError) as exc:
                ep.last_error = f"{type(exc).__name__}: {_one_line(str(exc), 120, self._scrub)}"
                break  # unreachable: the other path is on the same server
            if 200 <= resp.status_code < 300:
                ep.down = False
                return True
            ep.last_error = f"HTTP {resp.status_code} from {url.removeprefix(ep.root)}"
        self._mark_down(ep)
        return False

    def _probe(self, ep: _Endpoint) -> asyncio.Task:
        if ep.probe is None or ep.probe.done():
            ep.probe = asyncio.get_running_loop().create_task(self._probe_once(ep))
        return ep.probe

    async def _choose(self) -> _Endpoint | None:
        """The endpoint for the next attempt, or ``None`` when none answers a health check."""
        now = time.monotonic()
        for ep in self.endpoints:  # re-check in the background once a cool-down is over
            if ep.down and ep.down_until <= now and (ep.probe is None or ep.probe.done()):
                self._probe(ep)
        healthy = [e for e in self.endpoints if not e.down]
        if healthy:
            self._rr += 1
            n = len(self.endpoints)
            # Fewest in flight; ties go round-robin.
            return min(healthy, key=lambda e: (
                e.in_flight, (self.endpoints.index(e) - self._rr) % n))
        # All down: wait for the one that failed longest ago to answer a health check.
        for ep in sorted(self.endpoints, key=lambda e: e.down_until):
            if await self._probe(ep):
                return ep
        return None

    # ------------------------------------------------------------------ requests

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    async def _post(self, path: str, body: dict[str, Any], parse: Callable[[Any], Any], *,
                    at_root: bool = False) -> Any:
        """POST ``body`` with retries and failover; return ``parse(json)``.

        Raises:
            BackendError: retries exhausted, or a non-retryable HTTP error.
        """
        client = self._http()
        assert self._sem is not None
        tried: list[str] = []
        last, retry_after = "no attempt", None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, retry_after))
            retry_after = None
            attempts += 1
            ep = await self._choose()
            if ep is None:
                for e in self.endpoints:
                    if e.url not in tried:
                        tried.append(e.url)
                errs = sorted({e.last_error for e in self.endpoints if e.last_error})
                last = f"{'; '.join(errs) or 'unhealthy'} (health check)"
                continue
            if ep.url not in tried:
                tried.append(ep.url)
            async with self._sem:
                ep.in_flight += 1
                try:
                    result = await self._attempt(client, ep, path, body, parse, at_root)
                except _RetryableError as exc:
                    ep.failures += 1
                    if exc.mark_down:
                        self._mark_down(ep)
                    last = f"{exc.kind}: {exc.detail}" if exc.detail else exc.kind
                    ep.last_error = last
                    retry_after = exc.retry_after
                    continue
                except _FatalError as exc:
                    ep.failures += 1
                    raise BackendError(_one_line(
                        f"openai backend: POST {path} to {ep.url} failed with {exc.kind} "
                        f"(not retried): {exc.detail}", 400, self._scrub)) from None
                finally:
                    ep.in_flight -= 1
            ep.served += 1
            return result
        raise BackendError(_one_line(
            f"openai backend: POST {path} failed after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} on "
            f"{', '.join(tried)} (last error: {last})", 500, self._scrub))

    async def _attempt(self, client: httpx.AsyncClient, ep: _Endpoint, path: str,
                       body: dict[str, Any], parse: Callable[[Any], Any], at_root: bool) -> Any:
        url = (ep.root if at_root else ep.url) + path
        if self.unique_cache_salt and not at_root:
            body = {**body, "cache_salt": uuid.uuid4().hex}
        try:
            # httpx's timeout bounds each read, so a server that drips a byte a second never
            # trips it: the deadline bounds the whole request, headers and body.
            async with asyncio.timeout(self.timeout_s):
                resp = await client.post(url, json=body, headers=self._headers())
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise _RetryableError(type(exc).__name__, f"no full answer within "
                                  f"{self.timeout_s:g} s", mark_down=True) from None
        except httpx.RequestError as exc:  # refused, reset, truncated body, protocol errors
            raise _RetryableError(type(exc).__name__, _one_line(str(exc), 120, self._scrub),
                                  mark_down=True) from None
        status = resp.status_code
        if status >= 500 or status == 408:
            raise _RetryableError(f"HTTP {status}", _server_message(resp, self._scrub),
                                  mark_down=status >= 500)
        if status == 429:
            raise _RetryableError("HTTP 429", _server_message(resp, self._scrub),
                                  retry_after=_retry_after(resp.headers.get("retry-after")))
        if status >= 400:
            raise _FatalError(f"HTTP {status}", _server_message(resp, self._scrub))
        try:
            return parse(resp.json())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError,
                OverflowError) as exc:
            # RecursionError: JSON nested deeper than Python's stack; OverflowError: a
            # number no float holds (a log-prob of 1000 under exp). Both are broken answers.
            raise _RetryableError("MalformedResponse", type(exc).__name__) from None

    def _run_all(self, coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
        async def gather() -> list[Any]:
            self._http()
            tasks = [asyncio.ensure_future(c) for c in coros]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        if not coros:
            return []
        return self._loop.run(gather())

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
        return self._run_all(coros)

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

        gen = await self._post("/chat/completions", body, parse)
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
        return self._run_all(coros)

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

        score = await self._post("/chat/completions", body, parse)
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

        return await self._post("/tokenize", body, parse, at_root=True)

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

        score = await self._post("/completions", body, parse)
        score.latency_s = time.perf_counter() - t0
        return score


def _server_message(resp: httpx.Response, scrub: Callable[[str], str]) -> str:
    """A short one-line form of an error response's message, scrubbed before it is cut."""
    try:
        data = resp.json()
        msg = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        text = str(msg)
    except (ValueError, RecursionError):
        text = resp.text
    return _one_line(text, 160, scrub)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
