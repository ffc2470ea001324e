"""A least-recently-used store of KV caches, found by the longest shared token prefix.

The score prompts of one user share a long prefix: instructions, persona and real history,
which stay fixed during a run, then the simulated watches, which only grow. Keeping each
prefix's KV cache lets the next slate, arm or step run only the tokens that are new. Lookup
works like vLLM's automatic prefix caching: prefixes are hashed in blocks of ``block`` tokens
and the deepest block found names the candidate entry, whose tokens are then compared exactly,
so a hash collision can cost speed but never correctness.

The store is device- and model-agnostic: it holds per-layer ``(keys, values)`` tensors shaped
``[1, heads, tokens, head_dim]`` and slices them on the token axis.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    kv: KV
    nbytes: int
    hashes: list[int]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _block_hashes(tokens: Sequence[int], block: int) -> list[int]:
    out, h = [], 0
    for end in range(block, len(tokens) + 1, block):
        h = hash((h, tuple(tokens[end - block : end])))
        out.append(h)
    return out


class PrefixKVCache:
    """Prefix KV caches under a memory budget, evicted least recently used first.

    Args:
        budget_bytes: most bytes of KV tensors held; 0 disables the store.
        block: tokens per hashed block.
    """

    def __init__(self, budget_bytes: int = 1 << 30, block: int = 16) -> None:
        self.budget_bytes = budget_bytes
        self.block = block
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._index: dict[int, dict[int, None]] = {}
        self._next_id = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of KV tensors held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int]) -> tuple[KV | None, int]:
        """The cached KV sharing the longest prefix with ``tokens``.

        Returns:
            ``(kv, n)``: per-layer tensors whose first ``n`` positions equal ``tokens[:n]``
            (``n`` may be shorter than the tensors), or ``(None, 0)``.
        """
        with self._lock:
            best = None
            for h in _block_hashes(tokens, self.block):
                ids = self._index.get(h)
                if not ids:
                    break
                best = next(reversed(ids))
            if best is None:
                return None, 0
            entry = self._entries[best]
            n = common_prefix_len(entry.tokens, tokens)
            if n == 0:
                return None, 0
            self._entries.move_to_end(best)
            return entry.kv, n

    def put(self, tokens: Sequence[int], kv: KV) -> None:
        """Keep ``kv`` (covering exactly ``tokens``) and evict the oldest beyond the budget."""
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.budget_bytes or len(tokens) < self.block:
            return
        with self._lock:
            entry_id = self._next_id
            self._next_id += 1
            hashes = _block_hashes(tokens, self.block)
            self._entries[entry_id] = _Entry(tuple(tokens), kv, nbytes, hashes)
            self._bytes += nbytes
            for h in hashes:
                self._index.setdefault(h, {})[entry_id] = None
            while self._bytes > self.budget_bytes:
                self._evict(next(iter(self._entries)))

    def _evict(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self._bytes -= entry.nbytes
        for h in entry.hashes:
            ids = self._index.get(h)
            if ids is not None:
                ids.pop(entry_id, None)
                if not ids:
                    del self._index[h]

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._index.clear()
            self._bytes = 0
