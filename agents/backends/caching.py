"""A response cache and a call meter around any LLM backend.

:class:`CachingBackend` wraps a backend. For every prompt of a ``score`` or ``generate`` call it
looks the result up in a :class:`ResponseCache`; the misses go to the inner backend in **one**
call, in their original relative order (the ``hf`` backend groups consecutive prompts of a
user's slate to reuse their KV cache), and are stored. Results from the cache carry
``cached=True`` and ``latency_s=0``. With ``cache=None`` nothing is looked up or stored and the
wrapper only meters.

Cache key
---------
``(backend kind, model id, backend settings, prompt hash, call, params, seed, index)``:

* *backend settings*: attributes of the inner backend that change its answers for the same
  model (:data:`RESULT_SETTINGS`: hf truncation; openai prefill, scoring route, guided
  decoding). The model itself is trusted
  to be what its ``model_id`` names: replace the weights under the same name and the cache is
  stale (turn it off with ``backend.cache: false`` in the scenario).
* *prompt hash*: SHA-256 of a canonical JSON form of the whole :class:`ChatPrompt` (every field,
  so messages and the assistant prefix; message content may be a string or a tuple of parts,
  which are hashed field by field with their type; bytes by their SHA-256). An image given as
  a ``data:`` URL is hashed with its bytes; one given as an ``http(s)://`` URL by the URL
  only, so a changed image behind the same URL is a stale hit. Fields still at their default
  are left out, so adding a defaulted field to ``ChatPrompt`` keeps existing entries valid.
* *params*: ``options`` for ``score``; ``max_new_tokens``, ``temperature``, ``top_p`` for
  ``generate``.

Seeds
-----
``score`` is deterministic (one forward pass), so its key has no seed and no index: the same
prompt hits whatever the run's seed, in any position, in any arm.

Greedy ``generate`` (``temperature == 0``, the IP agent's default) is deterministic too and is
keyed the same way.

Sampled ``generate`` depends on the seed. The hf backend seeds each chunk of ``batch_size``
prompts with ``seed + start`` and samples the chunk from one RNG stream, so a completion depends
on the call's seed *and* on the prompt's position in the call. Such entries are keyed by
``(prompt, the call's seed, the prompt's index in the call as the caller made it)``. The US agent
derives a call's seed from ``(run seed, step, task)`` and builds a task's prompts in a fixed
order, so a rerun of the same scenario with the same seed (a new run in the same store), or a
resumed run, makes the same calls and hits in full; another seed misses. When only part of a
call hits, the misses are sampled as a smaller batch, so their text differs from what the
uncached call would have drawn: still a sample under the same seed, and stored, so later reruns
reproduce it.

Metering
--------
Every prompt that passes through becomes a :class:`CallRecord` (score or generate, sent or
cached, tokens, latency). Records go to the innermost :meth:`CachingBackend.meter` scope of the
calling thread (a context variable, so concurrent fan-out threads keep theirs apart), and to
running totals in :attr:`CachingBackend.stats`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from vragent.agents.backends.base import BackendError, ChatPrompt, Generation, LLMBackend, Score

# Inner-backend attributes that change answers for the same model id (hf: truncation; openai:
# prefill, scoring route, guided decoding, logprob depth).
RESULT_SETTINGS = ("max_prompt_tokens", "prefill", "score_api", "guided", "guided_key",
                   "top_logprobs")


def _canon(obj: Any) -> Any:
    """A JSON-able, deterministic form of a prompt (or any part of it)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
                continue
            out[f.name] = _canon(value)
        return out
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_canon(v) for v in obj]
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"__bytes_sha256__": hashlib.sha256(bytes(obj)).hexdigest()}
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return {"__repr__": repr(obj)}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def prompt_hash(prompt: ChatPrompt) -> str:
    """SHA-256 (hex) of the whole prompt: messages, parts, assistant prefix."""
    return hashlib.sha256(_dumps(_canon(prompt)).encode()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a cached result is stored under (see the module docstring)."""

    backend_kind: str
    model_id: str
    prompt_hash: str
    call: str  # "score" | "generate"
    params: str  # canonical JSON: sampling parameters and result-changing backend settings
    seed: int | None = None
    index: int | None = None

    @cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of every field: the lookup key."""
        parts = [self.backend_kind, self.model_id, self.prompt_hash, self.call, self.params,
                 self.seed, self.index]
        return hashlib.sha256(_dumps(parts).encode()).hexdigest()


class ResponseCache(Protocol):
    """Storage of cached results (``sandbox.response_cache.SqlResponseCache`` is the store's)."""

    def get_many(self, keys: Sequence[CacheKey]) -> dict[str, dict[str, Any]]:
        """Stored results by :attr:`CacheKey.digest`; keys not stored are absent."""
        ...

    def put_many(self, entries: Sequence[tuple[CacheKey, dict[str, Any]]]) -> None:
        """Store results; a key already stored keeps its first result. Safe across threads."""
        ...


@dataclass(frozen=True)
class CallRecord:
    """One prompt of one call, as metered."""

    call: str  # "score" | "generate"
    cached: bool
    tokens_in: int
    tokens_out: int
    latency_ms: float


def score_to_dict(s: Score) -> dict[str, Any]:
    """The stored form of a score."""
    return {"probs": s.probs, "logits": s.logits, "found": s.found, "tokens_in": s.tokens_in,
            "truncated_prompt": s.truncated_prompt}


def score_from_dict(d: dict[str, Any]) -> Score:
    """A cached score (``cached=True``, no latency)."""
    return Score(probs=dict(d["probs"]), tokens_in=int(d["tokens_in"]), latency_s=0.0,
                 logits=dict(d.get("logits") or {}), found=bool(d.get("found", True)),
                 truncated_prompt=bool(d.get("truncated_prompt", False)), cached=True)


def generation_to_dict(g: Generation) -> dict[str, Any]:
    """The stored form of a generation."""
    return {"text": g.text, "tokens_in": g.tokens_in, "tokens_out": g.tokens_out,
            "truncated_prompt": g.truncated_prompt}


def generation_from_dict(d: dict[str, Any]) -> Generation:
    """A cached generation (``cached=True``, no latency)."""
    return Generation(text=d["text"], tokens_in=int(d["tokens_in"]),
                      tokens_out=int(d["tokens_out"]), latency_s=0.0,
                      truncated_prompt=bool(d.get("truncated_prompt", False)), cached=True)


def _usable(stored: dict[str, Any]) -> bool:
    """Whether a stored result may be served: a score's probabilities must be finite, in [0, 1]."""
    probs = stored.get("probs")
    if probs is None:
        return True  # a generation
    try:
        return all(0.0 <= float(p) <= 1.0 for p in probs.values())  # False for NaN
    except (TypeError, ValueError, AttributeError):
        return False


_SCOPE: ContextVar[list[CallRecord] | None] = ContextVar("vragent_llm_meter", default=None)


class CachingBackend(LLMBackend):
    """Caches and meters another backend's results.

    Args:
        inner: the backend that does the work.
        cache: where results are stored; ``None`` turns caching off (metering stays on).

    Attributes:
        stats: running totals: ``sent`` (prompts the inner backend received), ``cached``
            (prompts served from the cache), ``inner_calls`` (calls made to the inner backend).
    """

    def __init__(self, inner: LLMBackend, cache: ResponseCache | None = None) -> None:
        self.inner = inner
        self.cache = cache
        self.stats = {"sent": 0, "cached": 0, "inner_calls": 0}
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The inner backend's kind (the runner picks concurrency by it)."""
        return self.inner.kind

    @property
    def model_id(self) -> str:
        """The inner backend's model id."""
        return self.inner.model_id

    @property
    def decides_with_head(self) -> bool:
        """The inner backend's (a head policy decides through the cache too)."""
        return self.inner.decides_with_head

    def __getattr__(self, name: str) -> Any:
        # Reads of anything else (tokenizer, batch_size …) go to the inner backend.
        if name in ("inner", "cache", "stats", "_lock"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @contextmanager
    def meter(self) -> Iterator[list[CallRecord]]:
        """Collect the records of the calls this thread makes inside the block."""
        calls: list[CallRecord] = []
        token = _SCOPE.set(calls)
        try:
            yield calls
        finally:
            # A block abandoned by an interrupt is closed later by the garbage collector, in
            # another context, where the token cannot be reset (and need not be: the context
            # it was set in is gone). Resetting there printed a traceback after Ctrl+C.
            with contextlib.suppress(ValueError):
                _SCOPE.reset(token)

    # ------------------------------------------------------------------ API

    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Cached :meth:`LLMBackend.score`."""
        params = self._params({"options": list(options)})
        keys = [self._key(p, "score", params) for p in prompts]
        return self._serve(
            prompts, keys, lambda miss: self.inner.score(miss, options),
            score_to_dict, score_from_dict, "score",
        )

    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """Cached :meth:`LLMBackend.generate` (sampled calls keyed by seed and index)."""
        params = self._params({"max_new_tokens": max_new_tokens, "temperature": temperature,
                               "top_p": top_p})
        sampled = temperature > 0
        keys = [
            self._key(p, "generate", params, seed if sampled else None, i if sampled else None)
            for i, p in enumerate(prompts)
        ]
        return self._serve(
            prompts, keys,
            lambda miss: self.inner.generate(miss, max_new_tokens=max_new_tokens,
                                             temperature=temperature, top_p=top_p, seed=seed),
            generation_to_dict, generation_from_dict, "generate",
        )

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()

    # ------------------------------------------------------------------ helpers

    def _params(self, sampling: dict[str, Any]) -> str:
        settings = {a: _canon(getattr(self.inner, a)) for a in RESULT_SETTINGS
                    if getattr(self.inner, a, None) is not None}
        return _dumps({**sampling, "backend": settings})

    def _key(self, prompt: ChatPrompt, call: str, params: str, seed: int | None = None,
             index: int | None = None) -> CacheKey:
        return CacheKey(self.inner.kind, self.inner.model_id, prompt_hash(prompt), call, params,
                        seed, index)

    def _serve(
        self,
        prompts: Sequence[ChatPrompt],
        keys: list[CacheKey],
        send: Callable[[list[ChatPrompt]], list[Any]],
        to_dict: Callable[[Any], dict[str, Any]],
        from_dict: Callable[[dict[str, Any]], Any],
        call: str,
    ) -> list[Any]:
        results: list[Any] = [None] * len(prompts)
        if self.cache is not None and keys:
            found = self.cache.get_many(list({k.digest: k for k in keys}.values()))
            for i, k in enumerate(keys):
                # An entry a poisoned cache holds (NaN from an older version) is asked again.
                if k.digest in found and _usable(found[k.digest]):
                    results[i] = from_dict(found[k.digest])
        miss = [i for i, r in enumerate(results) if r is None]
        if miss:
            fresh = send([prompts[i] for i in miss])
            if len(fresh) != len(miss):
                raise BackendError(f"{self.inner.kind} backend returned {len(fresh)} results "
                                   f"for {len(miss)} prompts")
            for i, r in zip(miss, fresh, strict=True):
                if not _usable(to_dict(r)):
                    # Whatever the backend, a NaN or infinite score must never be cached for
                    # every run of the store, nor reach its metrics: stop here, naming it.
                    raise BackendError(f"{self.inner.kind} backend returned a score that is "
                                       f"not a finite probability: {r.probs}")
                results[i] = r
            if self.cache is not None:
                self.cache.put_many([(keys[i], to_dict(r)) for i, r in zip(miss, fresh,
                                                                             strict=True)])
        sent = set(miss)
        records = [
            CallRecord(call, i not in sent, int(r.tokens_in), int(getattr(r, "tokens_out", 0)),
                       1000.0 * float(r.latency_s))
            for i, r in enumerate(results)
        ]
        with self._lock:
            self.stats["sent"] += len(miss)
            self.stats["cached"] += len(results) - len(miss)
            self.stats["inner_calls"] += 1 if miss else 0
        scope = _SCOPE.get()
        if scope is not None:
            scope.extend(records)
        return results
