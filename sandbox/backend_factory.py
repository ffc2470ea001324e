"""Build the LLM backend a scenario asks for."""

from __future__ import annotations

from pathlib import Path

from vragent.agents.backends.base import LLMBackend
from vragent.sandbox.config import BackendConfig, Scenario
from vragent.sandbox.policies import Policy


def make_backend(cfg: BackendConfig, seed: int = 0) -> LLMBackend:
    """The backend for ``cfg``.

    ``model: smollm2`` resolves to the embedded asset (``vragent assets fetch``); any other value
    is a model folder (``hf``) or a served model name (``openai``).
    """
    if cfg.kind == "hf":
        from vragent.agents.backends.hf import HFBackend
        from vragent.sandbox.assets import require_smollm2

        path = require_smollm2() if cfg.model == "smollm2" else Path(cfg.model)
        name = "SmolLM2-135M-Instruct" if cfg.model == "smollm2" else Path(cfg.model).name
        return HFBackend(path, model_name=name, batch_size=cfg.batch_size,
                         max_prompt_tokens=cfg.max_prompt_tokens, threads=cfg.threads,
                         device=cfg.device, dtype=cfg.dtype, kv_cache_mb=cfg.kv_cache_mb,
                         quantize=cfg.quantize)
    if cfg.kind == "hf-vision":
        from vragent.agents.backends.hf_vision import HFVisionBackend

        return HFVisionBackend(Path(cfg.model), model_name=Path(cfg.model).name,
                               batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype)
    if cfg.kind == "tiny-vision":
        from vragent.agents.backends.tiny_vision import tiny_vision_backend

        return tiny_vision_backend(seed=seed, batch_size=cfg.batch_size)
    if cfg.kind == "tiny":
        from vragent.agents.backends.tiny import tiny_hf_backend

        backend = tiny_hf_backend(seed=seed, batch_size=cfg.batch_size)
        backend.max_prompt_tokens = cfg.max_prompt_tokens
        if cfg.quantize == "int8":
            backend.quantize_int8()
        return backend
    if cfg.kind == "openai":
        from vragent.agents.backends.openai_backend import OpenAIBackend

        urls = [u for u in (cfg.base_url, *(cfg.base_urls or [])) if u]
        assert urls  # validated by BackendConfig
        tokenizer: str | Path | None = cfg.tokenizer
        if cfg.tokenizer == "smollm2":
            from vragent.sandbox.assets import require_smollm2

            tokenizer = require_smollm2()
        return OpenAIBackend(
            urls, cfg.model, api_key_env=cfg.api_key_env, prefill=cfg.prefill,
            max_concurrency=cfg.max_concurrency, timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries, backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s, score_api=cfg.score_api, tokenizer=tokenizer,
            guided=cfg.guided, guided_key=cfg.guided_key, seed=seed,
        )
    if cfg.kind == "constant":
        from vragent.agents.backends.constant import ConstantBackend

        return ConstantBackend(cfg.p_yes)
    raise ValueError(f"unknown backend kind {cfg.kind!r}")


def policy_backend(scenario: Scenario, base: LLMBackend | None = None) -> LLMBackend:
    """The backend of the US agents when the scenario names a trained ``policy``.

    ``hf`` and ``tiny`` scenarios load the policy's model folder in process (``hf``); an
    ``openai`` scenario asks its server for the model served under the policy's name, and is
    told so when the server lacks it. The policy's ``model_id`` (name and training run) is
    what the store and the response cache see.

    Raises:
        PolicyError: the policy is not in the registry.
        ValueError: the backend kind cannot run a trained policy.
    """
    from vragent.sandbox.policies import load_policy

    pol = load_policy(scenario.policy or "")
    cfg = scenario.backend
    if pol.is_head:
        return head_policy_backend(pol, cfg)
    if cfg.kind in ("hf", "tiny"):
        from vragent.agents.backends.hf import HFBackend

        return HFBackend(pol.model_dir, model_name=pol.manifest.model_id,
                         batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                         threads=cfg.threads, device=cfg.device, dtype=cfg.dtype,
                         kv_cache_mb=cfg.kv_cache_mb, quantize=cfg.quantize)
    if cfg.kind == "openai":
        return make_backend(cfg.model_copy(update={"model": pol.manifest.name}),
                            seed=scenario.seed)
    raise ValueError(f"policy: backend.kind {cfg.kind!r} cannot run a trained policy "
                     "(use hf, tiny or openai)")


def head_policy_backend(pol: Policy, cfg: BackendConfig) -> LLMBackend:
    """A head policy: the base model in process with its learned decision head.

    Raises:
        ValueError: the scenario's backend cannot run it (the head reads the hidden state of
            an in-process model), or the head does not fit the base model.
    """
    from vragent.agents.backends.hf import HFBackend
    from vragent.agents.policy_head import ScoreHead
    from vragent.sandbox.assets import require_smollm2

    head = ScoreHead.load(pol.path)
    if cfg.kind == "tiny" and pol.manifest.base_model == "tiny":
        # The randomly initialised test model: head policies tested end to end without weights.
        backend = make_backend(cfg.model_copy(update={"quantize": "none"}))
        assert isinstance(backend, HFBackend)
        return HFBackend(model=backend.model, tokenizer=backend.tokenizer,
                         model_name=pol.manifest.model_id, batch_size=cfg.batch_size,
                         max_prompt_tokens=cfg.max_prompt_tokens, score_head=head,
                         quantize=cfg.quantize)
    if cfg.kind != "hf":
        raise ValueError(f"policy {pol.manifest.name!r} reads the model's hidden state: it needs "
                         f"backend.kind 'hf', not {cfg.kind!r}")
    base = pol.manifest.base_model
    path = require_smollm2() if base == "smollm2" else Path(base)
    return HFBackend(path, model_name=pol.manifest.model_id, batch_size=cfg.batch_size,
                     max_prompt_tokens=cfg.max_prompt_tokens, threads=cfg.threads,
                     device=cfg.device, dtype=cfg.dtype, kv_cache_mb=cfg.kv_cache_mb,
                     score_head=head, quantize=cfg.quantize)
