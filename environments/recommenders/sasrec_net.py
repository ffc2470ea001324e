"""SASRec's configuration and network (the user encoder and the trainable item tower).

The layout follows the MicroLens "VideoRec/SASRec" reference (``model/modules.py``): learned
positional embeddings, LayerNorm (eps 1e-6) and dropout on the input, post-LN residual blocks of
multi-head self-attention and a position-wise feed-forward of width 4·d (ReLU as in the reference,
GELU as an option), a causal + padding mask and xavier-normal init. The recommender that trains
and scores it is :class:`environments.recommenders.sasrec.SASRecRecommender`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

_LN_EPS = 1e-6
_ATTN_MASKED = -1e9  # the reference's additive attention mask
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


@dataclass(frozen=True)
class SASRecConfig:
    """Hyper-parameters of :class:`SASRecRecommender` (all JSON-serialisable).

    Defaults are sized for a CPU sandbox. The paper's configuration (notes §2.3) is
    ``dim=512, lr=1e-4, epochs=120, finetune_layers=2`` with a BERT text model, text truncated
    to 30 tokens and batches of 256 users on each of 4 GPUs.

    Attributes:
        tower: item tower, ``"id"`` or ``"text"``.
        dim: model width d (item and user vectors).
        n_blocks: transformer blocks.
        n_heads: attention heads (must divide ``dim``).
        max_len: positions the user encoder sees (the reference's ``max_seq_len``).
        dropout: dropout rate (input, attention, residual branches).
        activation: the feed-forward's activation, ``"relu"`` (the reference's
            ``PositionwiseFeedForward`` and the original SASRec) or ``"gelu"`` (this project's
            default before it matched the reference; see docs/results.md for the effect).
        epochs: epochs of a from-scratch fit.
        batch_size: users per step.
        lr: AdamW learning rate of the recommender parameters.
        weight_decay: AdamW weight decay of the recommender parameters.
        logq: subtract ``log p_pop(item)`` from training logits (popularity debiasing).
        grad_clip: max global gradient norm (``0`` or ``None`` disables clipping).
        text_model: sentence model for the text tower (``"minilm"`` or a
            ``SentenceTransformer`` name/path).
        text_max_tokens: token budget per item text.
        finetune_layers: last N transformer layers of the sentence model to train (0 = frozen).
        text_lr: AdamW learning rate of the fine-tuned sentence layers (weight decay 0).
        embed_cache_dir: folder for cached frozen item embeddings (``None``: no cache).
        refit_epochs: when set, a refit on an unchanged catalogue continues from the current
            weights for this many epochs instead of training from scratch.
        device: torch device.
        threads: torch CPU threads during fit/score (``None``: leave torch's setting).
        verbose: print one line per epoch to stderr.
    """

    tower: Literal["id", "text"] = "id"
    dim: int = 64
    n_blocks: int = 2
    n_heads: int = 2
    max_len: int = 10
    dropout: float = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    logq: bool = True
    grad_clip: float | None = 5.0
    text_model: str = "minilm"
    text_max_tokens: int = 32
    finetune_layers: int = 0
    text_lr: float = 5e-5
    embed_cache_dir: str | None = None
    refit_epochs: int | None = None
    device: str = "cpu"
    threads: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.tower not in ("id", "text"):
            raise ValueError(f"tower must be 'id' or 'text', got {self.tower!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        for name in ("dim", "n_blocks", "n_heads", "max_len", "batch_size", "text_max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.epochs < 0 or self.finetune_layers < 0:
            raise ValueError("epochs and finetune_layers must be >= 0")
        if self.refit_epochs is not None and self.refit_epochs < 0:
            raise ValueError("refit_epochs must be >= 0 or None")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1 or None")


# ---------------------------------------------------------------------------- network


class _Attention(nn.Module):
    """Multi-head self-attention with a post-LN residual (the reference's MultiHeadedAttention)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_k = n_heads, dim // n_heads
        self.w_q, self.w_k, self.w_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_heads, self.d_k).transpose(1, 2)

        q, k, v = heads(self.w_q(x)), heads(self.w_k(x)), heads(self.w_v(x))
        att = q @ k.transpose(-1, -2) / math.sqrt(self.d_k) + bias
        att = self.dropout(att.softmax(dim=-1))
        ctx = (att @ v).transpose(1, 2).reshape(b, n, d)
        return self.norm(x + self.dropout(self.fc(ctx)))


class _FeedForward(nn.Module):
    """Position-wise feed-forward (ReLU or GELU) with a post-LN residual."""

    def __init__(self, dim: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.activation = _ACTIVATIONS[activation]
        self.w_1, self.w_2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.w_2(self.dropout(self.activation(self.w_1(x))))
        return self.norm(x + self.dropout(y))


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.attention = _Attention(dim, n_heads, dropout)
        self.feed_forward = _FeedForward(dim, dropout, activation)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(x, bias))


class _UserEncoder(nn.Module):
    """SASRec over left-padded sequences of item vectors."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.position = nn.Embedding(cfg.max_len, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=_LN_EPS)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            _Block(cfg.dim, cfg.n_heads, cfg.dropout, cfg.activation) for _ in range(cfg.n_blocks)
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of item vectors ``x`` with key mask ``valid`` ``(B, L)``."""
        n = x.shape[1]
        h = self.dropout(self.norm(x + self.position.weight[:n]))
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        allowed = valid[:, None, None, :] & causal  # (B, 1, L, L): query row, key column
        # Padded queries see no key and attend uniformly; their outputs are never used.
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        bias.masked_fill_(~allowed, _ATTN_MASKED)
        for block in self.blocks:
            h = block(h, bias)
        return h


class _SASRecNet(nn.Module):
    """User encoder plus the trainable part of the item tower."""

    def __init__(self, cfg: SASRecConfig, n_items: int, text_dim: int | None) -> None:
        super().__init__()
        self.user_encoder = _UserEncoder(cfg)
        if cfg.tower == "id":
            self.item_embedding = nn.Embedding(n_items, cfg.dim)
        else:
            assert text_dim is not None
            self.item_projection = nn.Linear(text_dim, cfg.dim)
        for module in self.modules():
            if isinstance(module, nn.Embedding | nn.Linear) and module.weight.numel():
                nn.init.xavier_normal_(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
