"""Helpers shared by the in-process backends (``hf`` and ``hf_vision``).

Device and dtype choice, int8 layers, the first tokens of answer options, and ``generate``
arguments: the same for a text model and an image-text model, so both backends call these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when present, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def weights_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` is float32 on CPU (bf16 matmuls are slow there) and bfloat16 on GPU."""
    if dtype == "auto":
        dtype = "float32" if device.type == "cpu" else "bfloat16"
    return getattr(torch, dtype)


def int8_layers(layers: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``layers`` with every ``nn.Linear`` dynamically quantised to int8 (a copy).

    Weights int8 per output channel, activations quantised on the fly
    (``torch.ao.quantization.quantize_dynamic``): about four times the fp32 matmul rate on
    this CPU. Given the decoder layers only, the embeddings, norms and output head stay as
    they were, so Yes/No logits and a head on a hidden state read a little perturbed numbers
    of the same kind (docs/performance.md measures speed and changed decisions).

    Raises:
        ValueError: ``device`` is not the CPU (the quantised kernels are CPU kernels).
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if device.type != "cpu":
        raise ValueError("int8 quantisation runs on the CPU only; on a GPU choose a dtype")
    with warnings.catch_warnings():  # its deprecation notice points at torchao
        warnings.simplefilter("ignore")
        # Per output channel: per tensor moved SmolLM2's p(Yes) by 0.25 on average, per
        # channel by 0.03 (docs/performance.md).
        return quantize_dynamic(layers, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


def option_first_tokens(tokenizer: Any, options: Sequence[str]) -> dict[str, list[int]]:
    """Each option's first token, with and without a leading space (after ":" either occurs)."""
    return {opt: sorted({tokenizer(v, add_special_tokens=False)["input_ids"][0]
                         for v in (opt, " " + opt)}) for opt in options}


def sampling_kwargs(max_new_tokens: int, temperature: float, top_p: float,
                    pad_token_id: int) -> dict[str, Any]:
    """``model.generate`` arguments: greedy at temperature 0, else nucleus sampling."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id,
                              "do_sample": temperature > 0}
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    return kwargs
