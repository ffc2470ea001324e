"""SASRec with an ID or a text item tower, after the MicroLens "VideoRec/SASRec" benchmark code.

This is the recommender VRAgent-R1 trains (see the paper notes, §2.3). The user encoder follows
the reference: learned positional embeddings over ``max_len`` positions, LayerNorm (eps 1e-6)
and dropout on the input, post-LN residual blocks (multi-head self-attention, then a ReLU
feed-forward of width 4·d, as in the reference and the original SASRec; ``activation="gelu"``
is the option), a causal + padding attention mask and xavier-normal init. The user vector is
the hidden state at the last position (sequences are left-padded).

Item towers:

* ``id``: one learned embedding per catalogue item;
* ``text``: a sentence embedding of each item's text (frozen, embedded once and cached on
  disk) followed by ``Linear(emb_dim -> dim)``. With ``finetune_layers > 0`` the last layers
  of the sentence model are trained too (the paper fine-tunes the last 2 BERT layers), and
  the items of each batch are embedded with gradients.

Training is the reference's in-batch sampled softmax: at every valid position the target is
scored against the unique items of the batch, with the logQ popularity correction and with
the user's other in-window items masked out. Everything is seeded, so two fits with the same
seed give bit-identical scores on CPU (with the same thread count).

The configuration and the network are in :mod:`environments.recommenders.sasrec_net`. The
module imports torch at the top on purpose: it is only imported on demand (the registry
names it by string), and every function in it needs torch.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from vragent.environments.recommenders.base import Recommender
from vragent.environments.recommenders.sasrec_net import SASRecConfig, _SASRecNet
from vragent.environments.text_embeddings import (
    SentenceEncoder,
    TextEncoder,
    embedding_dim,
    encode_cached,
)

_LOGIT_MASKED = -1e4  # the reference's value for same-user non-target candidates
_SCORE_CHUNK = 256  # users encoded at once when scoring
_EMBED_CHUNK = 256  # items embedded at once by a fine-tuned sentence model


# ---------------------------------------------------------------------------- recommender


class SASRecRecommender(Recommender):
    """SASRec next-item recommender with an ID or a text item tower.

    Args:
        seed: seeds initialisation, dropout, the batch order and the tie order.
        **params: fields of :class:`SASRecConfig` (``tower``, ``dim``, ``epochs`` ...).

    Hooks:
        * :meth:`set_item_text` (base class): the item texts the text tower embeds; items
          without text get the empty string.
        * :meth:`set_text_encoder`: use a given encoder (e.g. one shared
          :class:`~environments.text_embeddings.SentenceEncoder`, or a stand-in in tests)
          instead of loading ``text_model``.

    Attributes:
        history_: per-epoch ``{"epoch", "loss", "seconds"}`` of the latest fit (``epoch``
            counts all epochs the weights have been trained, across warm refits).
    """

    name = "sasrec"
    uses_item_text = True

    @classmethod
    def _checkpoint_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        # Checkpoints from before the reference's ReLU became the default name no activation:
        # they were trained with GELU.
        return {"activation": "gelu", **params}

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        if params.get("embed_cache_dir") is not None:
            params["embed_cache_dir"] = str(params["embed_cache_dir"])
        self.cfg = SASRecConfig(**params)
        super().__init__(seed=seed, **asdict(self.cfg))
        self.history_: list[dict[str, float]] = []
        self._net: _SASRecNet | None = None
        self._encoder: TextEncoder | None = None
        self._sentence_model: Any = None  # private fine-tuned copy (finetune_layers > 0)
        self._pending_text_state: dict[str, np.ndarray] | None = None
        self._text_input: torch.Tensor | None = None  # (n_items, emb_dim), text tower only
        self._texts: list[str] | None = None  # the texts behind _text_input
        self._item_vectors: torch.Tensor | None = None  # (n_items, dim), for scoring
        self._trained_items: np.ndarray | None = None
        self._warm_refits = 0
        self._epochs_trained = 0

    def set_text_encoder(self, encoder: TextEncoder) -> None:
        """Embed item texts with ``encoder`` instead of loading ``text_model``.

        Lets several models share one loaded sentence model, and tests use a cheap stand-in.
        The encoder needs ``model_id``, ``max_tokens`` and ``encode(texts)``; fine-tuning
        (``finetune_layers > 0``) also needs a ``model`` attribute holding a
        ``SentenceTransformer``, which is copied, never changed.
        """
        self._encoder = encoder

    # ------------------------------------------------------------------ helpers

    @property
    def _device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @contextmanager
    def _threads(self) -> Iterator[None]:
        if self.cfg.threads is None:
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def _text_encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = SentenceEncoder(
                self.cfg.text_model, device=self.cfg.device, max_tokens=self.cfg.text_max_tokens
            )
        return self._encoder

    def _item_texts(self) -> list[str]:
        texts = getattr(self, "item_text", None)
        if not texts:
            warnings.warn("SASRec text tower fitted without item text (set_item_text); every "
                          "item gets the empty string", stacklevel=3)
            texts = {}
        return [str(texts.get(int(i), "")) for i in self.item_ids]

    def _tail(self, rows: np.ndarray, length: int) -> np.ndarray:
        """The last ``length`` items of each user row as catalogue index + 1, left-padded with 0."""
        out = np.zeros((rows.size, length), dtype=np.int64)
        if rows.size == 0 or self._seq_item.size == 0:
            return out
        start, end = self._seq_indptr[rows], self._seq_indptr[rows + 1]
        idx = end[:, None] - length + np.arange(length)[None, :]
        ok = idx >= start[:, None]
        out[ok] = self._seq_item[idx[ok]] + 1
        return out

    # ------------------------------------------------------------------ sentence model

    def _trainable_sentence_model(self) -> Any:
        """A private copy of the sentence model with only its last layers trainable."""
        if self._sentence_model is None:
            encoder = self._text_encoder()
            source = getattr(encoder, "model", None)
            if source is None:
                raise TypeError("finetune_layers > 0 needs an encoder with a .model "
                                "(a SentenceTransformer)")
            model = copy.deepcopy(source).to(self._device)
            model.max_seq_length = self.cfg.text_max_tokens
            layers = _transformer_layers(model)
            if self.cfg.finetune_layers > len(layers):
                raise ValueError(f"finetune_layers={self.cfg.finetune_layers} but the sentence "
                                 f"model has {len(layers)} layers")
            for p in model.parameters():
                p.requires_grad_(False)
            for layer in layers[len(layers) - self.cfg.finetune_layers :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
            if self._pending_text_state is not None:
                named = dict(model.named_parameters())
                with torch.no_grad():
                    for k, v in self._pending_text_state.items():
                        named[k].copy_(torch.from_numpy(v))
                self._pending_text_state = None
            self._sentence_model = model
        return self._sentence_model

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings through the (fine-tuned) model, with gradients if enabled."""
        model = self._trainable_sentence_model()
        features = model.preprocess(texts)
        features = {k: v.to(self._device) if torch.is_tensor(v) else v
                    for k, v in features.items()}
        return model(features)["sentence_embedding"]

    # ------------------------------------------------------------------ fitting

    def _fit(self, interactions: pd.DataFrame) -> None:
        cfg = self.cfg
        warm = (
            cfg.refit_epochs is not None
            and self._net is not None
            and self._trained_items is not None
            and np.array_equal(self._trained_items, self.item_ids)
        )
        with self._threads():
            if warm:
                self._warm_refits += 1
                epochs = int(cfg.refit_epochs or 0)
            else:
                self._warm_refits, self._epochs_trained = 0, 0
                self._sentence_model, self._pending_text_state = None, None
                epochs = cfg.epochs
            # Warm refits draw fresh but reproducible randomness: (seed, refit number).
            seq = np.random.SeedSequence([self.seed, self._warm_refits])
            torch_seed = int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
            rng = np.random.default_rng(seq)
            with _forked_rng(self._device):
                torch.manual_seed(torch_seed)
                text_dim = self._prepare_text(warm)
                if not warm:
                    self._net = _SASRecNet(cfg, self.n_items, text_dim).to(self._device)
                self._train(epochs, rng)
                self._trained_items = self.item_ids.copy()
                self._item_vectors = self._compute_item_vectors()

    def _prepare_text(self, warm: bool) -> int | None:
        """Get the item texts (and, for a frozen tower, their embeddings) ready for training.

        Returns:
            The sentence-embedding width, or ``None`` for the ID tower.
        """
        if self.cfg.tower != "text":
            self._text_input, self._texts = None, None
            return None
        finetune = self.cfg.finetune_layers > 0
        has_text = bool(getattr(self, "item_text", None))
        # A warm refit without any item text set (e.g. right after load) keeps what it has:
        # the texts, or for a frozen tower the checkpoint's embeddings.
        keep = warm and not has_text and (
            self._texts is not None or (not finetune and self._text_input is not None))
        if not keep:
            texts = self._item_texts()
            if texts != self._texts:
                self._texts = texts
                if not finetune:
                    self._text_input = None  # re-embed below
        if finetune:
            model = self._trainable_sentence_model()
            return embedding_dim(model)
        if self._text_input is None:
            texts = self._texts if self._texts is not None else self._item_texts()
            matrix = encode_cached(texts, self._text_encoder(), self.cfg.embed_cache_dir)
            if matrix.shape[0] != self.n_items:
                raise ValueError(f"text encoder returned {matrix.shape[0]} rows for "
                                 f"{self.n_items} items")
            self._text_input = torch.from_numpy(np.ascontiguousarray(matrix, np.float32)).to(
                self._device)
        return int(self._text_input.shape[1])

    @torch.no_grad()
    def _embed_all(self, texts: list[str]) -> torch.Tensor:
        parts = [self._embed_texts(texts[s : s + _EMBED_CHUNK])
                 for s in range(0, len(texts), _EMBED_CHUNK)]
        if not parts:
            return torch.zeros(0, 1, device=self._device)
        return torch.cat(parts).float()

    def _train(self, epochs: int, rng: np.random.Generator) -> None:
        cfg, net = self.cfg, self._net
        assert net is not None
        self.history_ = []
        windows = self._tail(np.arange(self.n_users), cfg.max_len + 1)
        windows = windows[(windows > 0).sum(axis=1) >= 2]  # need one input and one target
        if epochs == 0 or len(windows) == 0:
            return
        pop = torch.as_tensor(self.popularity, dtype=torch.float32, device=self._device)
        with np.errstate(divide="ignore"):
            log_p = torch.log(pop / pop.sum())  # -inf only for items that are never candidates

        groups = [{"params": list(net.parameters()), "lr": cfg.lr,
                   "weight_decay": cfg.weight_decay}]
        finetune = cfg.tower == "text" and cfg.finetune_layers > 0
        if finetune:
            text_params = [p for p in self._trainable_sentence_model().parameters()
                           if p.requires_grad]
            groups.append({"params": text_params, "lr": cfg.text_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups)
        params = [p for g in groups for p in g["params"]]

        for _ in range(epochs):
            t0 = time.perf_counter()
            net.train()
            if finetune:
                self._sentence_model.train()
            order = rng.permutation(len(windows))
            total, count = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = torch.from_numpy(windows[order[start : start + cfg.batch_size]])
                loss, n = self._batch_loss(batch.to(self._device), log_p)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                total += float(loss.detach()) * n
                count += n
            self._epochs_trained += 1
            entry = {"epoch": self._epochs_trained, "loss": total / max(count, 1),
                     "seconds": time.perf_counter() - t0}
            self.history_.append(entry)
            if cfg.verbose:
                print(f"[sasrec/{cfg.tower}] epoch {entry['epoch']} loss {entry['loss']:.4f} "
                      f"({entry['seconds']:.1f}s)", file=sys.stderr, flush=True)
        net.eval()
        if finetune:
            self._sentence_model.eval()

    def _train_item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Item vectors ``(n, dim)`` for catalogue indices ``items``, with gradients."""
        net = self._net
        assert net is not None
        if self.cfg.tower == "id":
            return net.item_embedding(items)
        if self.cfg.finetune_layers:
            assert self._texts is not None
            emb = self._embed_texts([self._texts[i] for i in items.tolist()])
        else:
            assert self._text_input is not None
            emb = F.embedding(items, self._text_input)
        return net.item_projection(emb)

    def _batch_loss(self, windows: torch.Tensor, log_p: torch.Tensor) -> tuple[torch.Tensor, int]:
        """In-batch sampled-softmax loss over windows ``(B, L+1)`` of index + 1 (0 = pad)."""
        net = self._net
        assert net is not None
        valid = windows > 0
        # Candidates: the unique items at all valid positions (sorted, so deterministic).
        cand, inv = torch.unique(windows[valid], return_inverse=True)
        vecs = self._train_item_vectors(cand - 1)  # (C, d)
        slot = torch.zeros_like(windows)  # 1 + candidate index, 0 = pad
        slot[valid] = inv + 1
        padded = torch.cat([vecs.new_zeros(1, vecs.shape[1]), vecs])
        x = F.embedding(slot, padded)  # (B, L+1, d)
        in_valid = valid[:, :-1]
        hidden = net.user_encoder(x[:, :-1], in_valid)[in_valid]  # (N, d)
        target = slot[:, 1:][in_valid] - 1  # (N,); a valid input always has a valid target
        logits = hidden @ vecs.T  # (N, C)
        if self.cfg.logq:
            logits = logits - log_p[cand - 1]
        # Mask the user's other in-window items, as the reference does, but not the target.
        member = torch.zeros(windows.shape[0], cand.numel(), dtype=torch.bool,
                             device=windows.device)
        rows = torch.arange(windows.shape[0], device=windows.device)[:, None].expand_as(windows)
        member[rows[valid], inv] = True
        row_of = rows[:, :-1][in_valid]
        mask = member[row_of]
        mask[torch.arange(target.numel(), device=mask.device), target] = False
        logits = logits.masked_fill(mask, _LOGIT_MASKED)
        return F.cross_entropy(logits, target), int(target.numel())

    @torch.no_grad()
    def _compute_item_vectors(self) -> torch.Tensor:
        net = self._net
        assert net is not None
        net.eval()
        if self.cfg.tower == "id":
            return net.item_embedding.weight.detach().clone()
        if self.cfg.finetune_layers and self._sentence_model is not None:
            # Embed every item through the fine-tuned model once; scoring (and checkpoints)
            # then need no sentence model.
            assert self._texts is not None
            self._text_input = self._embed_all(self._texts)
        assert self._text_input is not None
        return net.item_projection(self._text_input)

    # ------------------------------------------------------------------ scoring

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, self.n_items), dtype=np.float32)
        known = np.flatnonzero(rows >= 0)
        out[rows < 0] = self.popularity.astype(np.float32)
        if known.size == 0 or self.n_items == 0:
            return out
        net, vecs = self._net, self._item_vectors
        assert net is not None and vecs is not None
        padded = torch.cat([vecs.new_zeros(1, vecs.shape[1]), vecs])
        net.eval()
        with self._threads(), torch.no_grad():
            for s in range(0, known.size, _SCORE_CHUNK):
                part = known[s : s + _SCORE_CHUNK]
                # Always run full-size chunks: BLAS picks kernels by matrix shape, so a user's
                # scores would otherwise change in the last bits with the batch size, and the
                # contract is that they depend on the user alone.
                seq = np.zeros((_SCORE_CHUNK, self.cfg.max_len), dtype=np.int64)
                seq[: part.size] = self._tail(rows[part], self.cfg.max_len)
                seq_t = torch.from_numpy(seq).to(self._device)
                user = net.user_encoder(F.embedding(seq_t, padded), seq_t > 0)[:, -1]
                out[part] = (user @ vecs.T)[: part.size].cpu().numpy()
        return out

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, np.ndarray]:
        if self._net is None:
            raise RuntimeError("nothing to save: the model has no weights")
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self._net.state_dict().items()}
        if self._text_input is not None:
            # The frozen item-text embeddings, so loading needs no sentence model.
            state["text_input"] = self._text_input.detach().cpu().numpy()
        if self._sentence_model is not None:
            for k, p in self._sentence_model.named_parameters():
                if p.requires_grad:
                    state[f"text_model.{k}"] = p.detach().cpu().numpy()
        elif self._pending_text_state is not None:
            state.update({f"text_model.{k}": v for k, v in self._pending_text_state.items()})
        state["counters"] = np.array([self._warm_refits, self._epochs_trained], dtype=np.int64)
        return state

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        text = tensors.get("text_input")
        self._text_input = None if text is None else torch.from_numpy(
            np.array(text, dtype=np.float32)).to(self._device)
        self._net = _SASRecNet(self.cfg, self.n_items, None if text is None else text.shape[1])
        weights = {k[len("net."):]: torch.from_numpy(np.array(v))
                   for k, v in tensors.items() if k.startswith("net.")}
        self._net.load_state_dict(weights, strict=True)
        self._net.to(self._device).eval()
        prefix = "text_model."
        pending = {k[len(prefix):]: np.array(v) for k, v in tensors.items()
                   if k.startswith(prefix)}
        # Applied when a warm refit first needs the sentence model; scoring never does.
        self._sentence_model, self._pending_text_state = None, pending or None
        # Unknown until a refit: the checkpoint holds embeddings, not texts.
        self._texts = None
        counters = tensors.get("counters", np.zeros(2, dtype=np.int64))
        self._warm_refits, self._epochs_trained = int(counters[0]), int(counters[1])
        self._trained_items = self.item_ids.copy()
        self.history_ = []
        self._item_vectors = self._compute_item_vectors()


def _transformer_layers(model: Any) -> nn.ModuleList:
    """The transformer layer list inside a SentenceTransformer (BERT-like or decoder)."""
    first = model[0]
    hf = getattr(first, "auto_model", None) or getattr(first, "model", None)
    for path in ("encoder.layer", "layers", "model.layers", "transformer.layer", "encoder.layers"):
        obj: Any = hf
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the transformer layers of {type(hf).__name__}")


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Seed torch inside without disturbing the caller's global generators."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
