"""Matrix factorisation trained with the BPR pairwise loss (BPR-MF), in torch.

Import this module only when the model is asked for (the registry does so lazily): it
imports torch, which takes seconds.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)
from vragent.environments.recommenders.base import Recommender, _index_of

#: Most user×item float64 cells per scoring product (16 MiB).
_SCORE_CELLS = 1 << 21
#: Resampling rounds for a negative that hits one of the user's positives; a user who has
#: seen (almost) the whole catalogue keeps the last draw rather than looping forever.
_NEGATIVE_ROUNDS = 8


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` occurs in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[pos] == keys


def _fixed_point(weights: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Round ``weights`` to integers of at most ``bits`` bits after a power-of-two scaling.

    Returns:
        ``(q, e)``: float64 integers ``q = rint(weights * 2**e)`` with ``|q| <= 2**bits``.
    """
    w = np.asarray(weights, dtype=np.float64)
    peak = float(np.abs(w).max(initial=0.0))
    # frexp: peak = m * 2**p with 0.5 <= m < 1, so peak * 2**(bits - p) < 2**bits.
    exp = bits - math.frexp(peak)[1] if math.isfinite(peak) and peak > 0 else 0
    return np.rint(np.ldexp(w, exp)), exp


class MFRecommender(Recommender):
    """Bayesian personalised ranking matrix factorisation (Rendle et al., 2009).

    The score of item ``i`` for user ``u`` is ``p_u · q_i + b_i``. Training minimises, over
    the distinct (user, watched item ``i``) pairs each paired with a negative item ``j``
    drawn uniformly from the catalogue (redrawn if the user watched it)::

        -log σ(x_ui - x_uj) + reg * (|p_u|² + |q_i|² + |q_j|² + b_i² + b_j²)

    averaged over mini-batches, with Adam. Initial weights, the epoch order and the negatives
    all come from generators seeded with ``seed``, so on CPU the same seed and data give
    bit-identical scores (scoring is exact fixed-point arithmetic, see :meth:`_set_weights`,
    so they also do not depend on how users are batched). Unknown users get popularity
    scores; ties go to the more popular item, then to a seeded order.

    Args:
        seed: seeds initialisation, shuffling, negative sampling and the tie order.
        dim: embedding size.
        epochs: passes over the positive pairs.
        lr: Adam learning rate.
        reg: L2 weight on the embeddings and biases in each example.
        batch_size: positive pairs per optimiser step.
        device: torch device for training (scoring runs in numpy).

    Attributes:
        history_: one ``{"epoch", "loss", "seconds"}`` dict per training epoch of the last
            :meth:`fit` (mean loss over the epoch's pairs); empty after :meth:`load`.
    """

    name = "mf"

    def __init__(
        self,
        *,
        seed: int = 0,
        dim: int = 64,
        epochs: int = 20,
        lr: float = 0.01,
        reg: float = 1e-4,
        batch_size: int = 4096,
        device: str = "cpu",
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(
            seed=seed,
            dim=dim,
            epochs=epochs,
            lr=lr,
            reg=reg,
            batch_size=batch_size,
            device=device,
        )
        self.dim = int(dim)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.reg = float(reg)
        self.batch_size = int(batch_size)
        self.device = str(device)
        self.history_: list[dict[str, float]] = []

    # ------------------------------------------------------------------ fitting

    def _fit(self, interactions: pd.DataFrame) -> None:
        self.history_ = []
        n_users, n_items, dim = self.n_users, self.n_items, self.dim
        device = torch.device(self.device)
        # Initialise on CPU so the weights do not depend on the device's generator.
        gen = torch.Generator().manual_seed(self.seed)
        user_emb = (0.1 * torch.randn(n_users, dim, generator=gen)).to(device).requires_grad_()
        item_emb = (0.1 * torch.randn(n_items, dim, generator=gen)).to(device).requires_grad_()
        item_bias = torch.zeros(n_items, device=device, requires_grad=True)

        pairs = self._seen.tocoo()  # distinct (user, item) pairs: repeats are not extra data
        pos_u = pairs.row.astype(np.int64)
        pos_i = pairs.col.astype(np.int64)
        pos_keys = np.sort(pos_u * n_items + pos_i)
        n_pairs = pos_u.size
        # A separate stream from the weight initialisation, derived from the same seed.
        rng = np.random.default_rng([self.seed, 0x4D46])
        # The fused kernel halves the step time on CPU (every step updates all rows: the
        # embedding gradients are dense); other device types get the default implementation.
        fused = True if device.type in ("cpu", "cuda") else None
        opt = torch.optim.Adam([user_emb, item_emb, item_bias], lr=self.lr, fused=fused)
        epochs = self.epochs if n_pairs else 0

        for epoch in range(epochs):
            start_time = time.perf_counter()
            order = rng.permutation(n_pairs)
            users, items = pos_u[order], pos_i[order]
            negs = self._sample_negatives(rng, users, pos_keys)
            total = 0.0
            for start in range(0, n_pairs, self.batch_size):
                sl = slice(start, start + self.batch_size)
                u = torch.from_numpy(users[sl]).to(device)
                i = torch.from_numpy(items[sl]).to(device)
                j = torch.from_numpy(negs[sl]).to(device)
                pu, qi, qj = user_emb[u], item_emb[i], item_emb[j]
                bi, bj = item_bias[i], item_bias[j]
                diff = (pu * (qi - qj)).sum(dim=1) + bi - bj
                penalty = (pu.square() + qi.square() + qj.square()).sum(dim=1) + bi**2 + bj**2
                loss = -F.logsigmoid(diff).mean() + self.reg * penalty.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * int(u.numel())
            self.history_.append(
                {
                    "epoch": epoch + 1,
                    "loss": total / n_pairs,
                    "seconds": time.perf_counter() - start_time,
                }
            )

        self._set_weights(
            user_emb.detach().cpu().numpy(),
            item_emb.detach().cpu().numpy(),
            item_bias.detach().cpu().numpy(),
            np.arange(n_users, dtype=np.int64),
        )

    def _sample_negatives(
        self, rng: np.random.Generator, users: np.ndarray, pos_keys: np.ndarray
    ) -> np.ndarray:
        """One uniform negative per pair, redrawn while it is one of the user's positives."""
        n_items = self.n_items
        negs = rng.integers(0, n_items, size=users.size, dtype=np.int64)
        todo = np.arange(users.size)
        for _ in range(_NEGATIVE_ROUNDS):
            todo = todo[_contains(pos_keys, users[todo] * n_items + negs[todo])]
            if not todo.size:
                break
            negs[todo] = rng.integers(0, n_items, size=todo.size, dtype=np.int64)
        return negs

    def _set_weights(
        self,
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        item_bias: np.ndarray,
        emb_row: np.ndarray,
    ) -> None:
        """Keep numpy copies of the weights; ``emb_row`` maps user index -> embedding row.

        Scoring uses fixed-point copies: with ``bits`` chosen so that
        ``dim * 2**(2 * bits) <= 2**53``, every product and partial sum of a dot product is
        an integer float64 represents exactly, so the matrix product is exact whatever order
        BLAS sums in. A float32 product is not: its result for a user changes in the last
        bits with the user's row position in the batch, which would break the contract that
        a user's scores do not depend on the other users in the request. The rounding costs
        about 2**-bits of the largest weight (bits = 23 at dim 64), far below what ranks use.
        """
        self._user_w = np.ascontiguousarray(user_emb, dtype=np.float32)
        self._item_w = np.ascontiguousarray(item_emb, dtype=np.float32)
        self._item_b = np.ascontiguousarray(item_bias, dtype=np.float32)
        self._emb_row = emb_row
        bits = (53 - math.ceil(math.log2(self.dim))) // 2
        self._user_q, user_exp = _fixed_point(self._user_w, bits)
        item_q, item_exp = _fixed_point(self._item_w, bits)
        self._item_qt = np.ascontiguousarray(item_q.T)
        self._score_exp = -(user_exp + item_exp)
        self._item_b64 = self._item_b.astype(np.float64)

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, np.ndarray]:
        # The user ids travel with the embeddings, so a model loaded with other interactions
        # still matches rows by id (users without a row fall back to popularity).
        has_row = self._emb_row >= 0
        return {
            "user_emb": self._user_w[self._emb_row[has_row]],
            "item_emb": self._item_w,
            "item_bias": self._item_b,
            "user_ids": self.user_ids[has_row],
        }

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        from vragent.environments.recommenders.checkpoint import CheckpointError

        item_emb = tensors["item_emb"]
        if item_emb.shape[0] != self.n_items:
            raise CheckpointError(
                f"MF checkpoint has {item_emb.shape[0]} items, catalogue has {self.n_items}"
            )
        saved_ids = tensors["user_ids"].astype(np.int64)
        sorter = np.argsort(saved_ids, kind="stable")
        emb_row = _index_of(saved_ids[sorter], sorter, self.user_ids)
        self.history_ = []
        self._set_weights(tensors["user_emb"], item_emb, tensors["item_bias"], emb_row)

    # ------------------------------------------------------------------ scoring

    def _tie_priority(self) -> np.ndarray:
        return self.popularity

    def _score(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.tile(self.popularity.astype(np.float32), (user_ids.size, 1))
        emb_rows = np.full(user_ids.size, -1, dtype=np.int64)
        known_user = rows >= 0
        emb_rows[known_user] = self._emb_row[rows[known_user]]
        known = np.flatnonzero(emb_rows >= 0)
        step = max(1, _SCORE_CELLS // max(self.n_items, 1))
        for start in range(0, known.size, step):
            part = known[start : start + step]
            exact = self._user_q[emb_rows[part]] @ self._item_qt  # integers: no rounding
            out[part] = np.ldexp(exact, self._score_exp) + self._item_b64
        return out
