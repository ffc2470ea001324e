"""The first ``k`` decoder layers of a causal LM as a model of their own, sharing the weights.

A score head may read an earlier layer's state (:class:`agents.policy_head.ScoreHead`
``layer``). Running only those layers, rather than all of them with every hidden state kept,
is what makes such a head cheaper than the model's own output layer: SmolLM2-135M's 30 layers
become 18 for a head on layer 18.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def truncated_body(body: Any, depth: int) -> Any:
    """A shallow copy of a decoder ``body`` (``model.model``) that runs its first ``depth`` layers.

    The copy shares every parameter, the embeddings, the rotary table and the final norm with
    ``body``; only its layer list and config (``num_hidden_layers``, ``layer_types``) are its
    own, so KV caches built from the copy's config have ``depth`` layers.

    Raises:
        ValueError: ``depth`` is not between 1 and the body's layer count.
    """
    n = len(body.layers)
    if not 1 <= depth <= n:
        raise ValueError(f"a head on layer {depth}: the model has {n} layers")
    if depth == n:
        return body
    out = copy.copy(body)
    # nn.Module keeps submodules in its own dict: give the copy a fresh one before replacing.
    out._modules = dict(body._modules)
    out.layers = torch.nn.ModuleList(list(body.layers)[:depth])
    cfg = copy.copy(body.config)
    cfg.num_hidden_layers = depth
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:depth]
    out.config = cfg
    return out
