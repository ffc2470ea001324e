"""The store's response cache (table ``llm_cache``) and the wrapping of a run's backend.

The cache lives in the run's own database, so every run of a store shares it. Lookups are one
``SELECT … WHERE key IN (…)``; writes are ``INSERT … ON CONFLICT DO NOTHING`` in a short
transaction of their own (SQLite WAL: concurrent fan-out threads queue on the write lock, and
the first result stored for a key wins).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from vragent.agents.backends.base import LLMBackend
from vragent.agents.backends.caching import CacheKey, CachingBackend
from vragent.sandbox.config import BackendConfig
from vragent.sandbox.store import LlmCacheEntry, Store, insert_ignore

CHUNK = 500  # keys per IN (…) query


class SqlResponseCache:
    """A :class:`~agents.backends.caching.ResponseCache` over the store.

    Args:
        store: the run store.
        run_id: recorded with the entries this run computes (provenance only).
    """

    def __init__(self, store: Store, run_id: str | None = None) -> None:
        self.store = store
        self.run_id = run_id

    def get_many(self, keys: Sequence[CacheKey]) -> dict[str, dict[str, Any]]:
        """Stored results by key digest."""
        digests = list(dict.fromkeys(k.digest for k in keys))
        out: dict[str, dict[str, Any]] = {}
        with self.store.session() as s:
            for start in range(0, len(digests), CHUNK):
                chunk = digests[start : start + CHUNK]
                for key, result in s.execute(
                    select(LlmCacheEntry.key, LlmCacheEntry.result).where(
                        LlmCacheEntry.key.in_(chunk))
                ):
                    out[key] = result
        return out

    def put_many(self, entries: Sequence[tuple[CacheKey, dict[str, Any]]]) -> None:
        """Store results; keys already stored keep their first result."""
        rows = {}
        for key, result in entries:
            rows.setdefault(key.digest, {
                "key": key.digest, "backend_kind": key.backend_kind, "model_id": key.model_id,
                "prompt_hash": key.prompt_hash, "call": key.call, "params": key.params,
                "seed": key.seed, "prompt_index": key.index, "result": result,
                "run_id": self.run_id,
            })
        if not rows:
            return
        with self.store.session() as s:
            insert_ignore(s, LlmCacheEntry, list(rows.values()))


def wrap_backend(backend: LLMBackend, cfg: BackendConfig, store: Store,
                 run_id: str | None = None) -> CachingBackend:
    """The run's backend behind the response cache (``cfg.cache``) and the meter.

    A backend that is already a :class:`CachingBackend` is used as it is.
    """
    if isinstance(backend, CachingBackend):
        return backend
    return CachingBackend(backend, SqlResponseCache(store, run_id) if cfg.cache else None)
