"""Build the LLM backend a scenario asks for."""

from __future__ import annotations

from pathlib import Path

from agents.backends.base import LLMBackend
from sandbox.config import BackendConfig


def make_backend(cfg: BackendConfig, seed: int = 0) -> LLMBackend:
    """The backend for ``cfg``.

    ``model: smollm2`` resolves to the embedded asset (``vragent assets fetch``); any other value
    is a model folder (``hf``) or a served model name (``openai``).
    """
    if cfg.kind == "hf":
        from agents.backends.hf import HFBackend
        from sandbox.assets import require_smollm2

        path = require_smollm2() if cfg.model == "smollm2" else Path(cfg.model)
        name = "SmolLM2-135M-Instruct" if cfg.model == "smollm2" else Path(cfg.model).name
        return HFBackend(path, model_name=name, batch_size=cfg.batch_size,
                         max_prompt_tokens=cfg.max_prompt_tokens, threads=cfg.threads)
    if cfg.kind == "tiny":
        from agents.backends.tiny import tiny_hf_backend

        backend = tiny_hf_backend(seed=seed, batch_size=cfg.batch_size)
        backend.max_prompt_tokens = cfg.max_prompt_tokens
        return backend
    if cfg.kind == "openai":
        from agents.backends.openai_backend import OpenAIBackend

        assert cfg.base_url  # validated by BackendConfig
        return OpenAIBackend(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env,
                             prefill=cfg.prefill, max_concurrency=cfg.max_concurrency)
    if cfg.kind == "constant":
        from agents.backends.constant import ConstantBackend

        return ConstantBackend(cfg.p_yes)
    raise ValueError(f"unknown backend kind {cfg.kind!r}")
