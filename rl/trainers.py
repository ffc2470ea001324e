"""SFT and GRPO of the US-agent policy with TRL, logged to the store, saved to the registry.

``train_policy(cfg, store)`` runs one training job:

1. load the RL data's train split (``vragent rl build-data``) and keep the configured tasks,
   protocols and at most ``max_samples`` rows (a seeded sample);
2. render every prompt exactly as the simulator's ``hf`` backend does (chat template plus the
   ``<think>`` prefix), so training and simulation see the same tokens;
3. train with TRL's ``SFTTrainer`` (completion-only loss on the real answer) or
   ``GRPOTrainer`` (the paper's format and accuracy rewards, ``rl.rewards``: judgement,
   selection and the open-ended preference task's embedding similarity), with a LoRA
   adapter (peft) or full fine-tuning;
4. write the curves to the store while training (reward, format-valid rate, accuracy, KL, loss,
   step time: ``training_curves``), and save the model to the policy registry
   (``sandbox.policies``) with a manifest naming its data, config and training run.

A failed run is marked ``failed`` in the store with its error and registers nothing.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from vragent.rl.configs import GRPORunConfig, SFTRunConfig
from vragent.rl.prompting import prompt_for, render, sft_target
from vragent.sandbox.policies import (
    ADAPTER_DIR,
    MODEL_DIR,
    PolicyManifest,
    check_name,
    load_policy,
    policy_dir,
    write_manifest,
)
from vragent.sandbox.runner import git_revision, package_versions
from vragent.sandbox.store import Store
from vragent.sandbox.training_log import finish_training_run, log_curve, start_training_run

TINY_RANDOM = "tiny-random"
# TRL log keys -> curve names the dashboard plots.
CURVE_NAMES = {
    "reward": "reward",
    "reward_std": "reward_std",
    "rewards/format/mean": "format_reward",
    "rewards/accuracy/mean": "accuracy_reward",
    "format_valid_rate": "format_valid_rate",
    "accuracy": "accuracy",
    "kl": "kl",
    "loss": "loss",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "mean_token_accuracy": "token_accuracy",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "frac_reward_zero_std": "frac_reward_zero_std",
}


class TrainingError(RuntimeError):
    """Training could not start (bad data, unknown base model). The message is one line."""


@dataclass
class TrainResult:
    """What a training run produced."""

    policy: str
    training_run_id: str
    algo: str
    steps: int
    wall_s: float
    rows: int
    first: dict[str, float]  # mean of the first logged quarter of each curve
    last: dict[str, float]  # mean of the last logged quarter


def resolve_base_model(spec: str, scratch: Path,
                       registry: str | Path | None = None) -> tuple[Path, str]:
    """The folder of a base model spec, and the name recorded for it.

    Args:
        spec: ``smollm2``, ``tiny-random``, ``policy:NAME`` or a transformers folder.
        scratch: where a tiny random model is written.
        registry: the policy registry ``policy:NAME`` is looked up in.

    Raises:
        TrainingError: the folder or policy does not exist.
    """
    if spec == "smollm2":
        from vragent.sandbox.assets import require_smollm2

        return require_smollm2(), "SmolLM2-135M-Instruct"
    if spec == TINY_RANDOM:
        from vragent.agents.backends.tiny import save_tiny_model

        return save_tiny_model(scratch / "tiny-random-base"), TINY_RANDOM
    if spec.startswith("policy:"):
        pol = load_policy(spec.removeprefix("policy:"), registry)
        return pol.model_dir, spec
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise TrainingError(f"base model {spec!r}: not 'smollm2', '{TINY_RANDOM}', "
                            "'policy:NAME' or a transformers folder with config.json")
    return path, str(path)


def training_rows(data: str | Path, cfg: SFTRunConfig | GRPORunConfig) -> tuple[
        list[dict[str, Any]], dict[str, Any]]:
    """The train-split rows a config trains on, and the data's manifest.

    Raises:
        TrainingError: no rows are left after the filters.
    """
    from vragent.rl.datasets import load_rl_data

    dd, manifest = load_rl_data(data)
    if "train" not in dd:
        raise TrainingError(f"{data}: the data has no train split")
    rows = [r for r in dd["train"]
            if r["task"] in cfg.tasks and (cfg.protocols is None or r["protocol"] in
                                           cfg.protocols or r["task"] == "preference")]
    if not rows:
        raise TrainingError(f"{data}: no train rows for tasks {list(cfg.tasks)} and protocols "
                            f"{cfg.protocols or 'any'}")
    if len(rows) > cfg.max_samples:
        rng = np.random.default_rng([cfg.seed, 5])
        keep = np.sort(rng.choice(len(rows), size=cfg.max_samples, replace=False))
        rows = [rows[i] for i in keep]
    return rows, manifest


def _load(path: Path, cfg: SFTRunConfig | GRPORunConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vragent.agents.backends.hf_bars import quiet_hf_bars_outside_terminal

    quiet_hf_bars_outside_terminal()  # "Loading weights" bars stay out of logs
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    return model, tok


def _peft_config(cfg: SFTRunConfig | GRPORunConfig):
    if cfg.lora.r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")


def _common_args(cfg: SFTRunConfig | GRPORunConfig, out: Path) -> dict[str, Any]:
    return {
        "output_dir": str(out), "learning_rate": cfg.lr, "max_steps": cfg.max_steps,
        "num_train_epochs": cfg.epochs, "seed": cfg.seed, "data_seed": cfg.seed,
        "use_cpu": cfg.use_cpu, "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "logging_steps": cfg.logging_steps, "save_strategy": "no", "report_to": [],
        "disable_tqdm": True, "dataloader_num_workers": 0,
        # veRL's actor schedule: constant after a linear warm-up (a float below 1 is a ratio).
        "lr_scheduler_type": "constant_with_warmup" if cfg.warmup_ratio > 0 else "constant",
        "warmup_steps": float(cfg.warmup_ratio) if cfg.warmup_ratio > 0 else 0,
    }


def _curve_callback(store: Store, run_id: str, recorder: Any | None):
    """A TrainerCallback writing each log to ``training_curves`` with the step time."""
    from transformers import TrainerCallback

    class CurveToStore(TrainerCallback):
        def __init__(self) -> None:
            self._t0 = time.perf_counter()
            self._step_times: list[float] = []
            self.history: list[dict[str, float]] = []

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self._step_times.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kw):
            values = {CURVE_NAMES[k]: v for k, v in (logs or {}).items() if k in CURVE_NAMES}
            if recorder is not None:
                means = recorder.pop_means()
                if means.get("n"):
                    values["format_valid_rate"] = means["format_valid_rate"]
                    values["accuracy"] = means["accuracy"]
            if self._step_times:
                values["step_time_s"] = float(np.mean(self._step_times))
                self._step_times.clear()
            if values:
                self.history.append(values)
                log_curve(store, run_id, state.global_step, values)

    return CurveToStore()


def _summary(history: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    names = sorted({k for h in history for k in h})
    first, last = {}, {}
    for n in names:
        vals = [h[n] for h in history if n in h]
        q = max(1, len(vals) // 4)
        first[n], last[n] = float(np.mean(vals[:q])), float(np.mean(vals[-q:]))
    return first, last


def _sft_trainer(cfg: SFTRunConfig, model, tok, rows, out: Path, callback):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    records = []
    for r in rows:
        messages, prefix = prompt_for(r, cfg.thinking)
        records.append({"prompt": render(tok, messages, prefix),
                        "completion": sft_target(r, cfg.thinking)})
    args = SFTConfig(**_common_args(cfg, out), per_device_train_batch_size=cfg.batch_size,
                     max_length=cfg.max_length, completion_only_loss=True, packing=False)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                      processing_class=tok, peft_config=_peft_config(cfg), callbacks=[callback])


def grpo_args(cfg: GRPORunConfig, out: Path) -> Any:
    """TRL's ``GRPOConfig`` for a run config (the paper's entropy bonus and warm-up included).

    Args:
        cfg: the run config.
        out: TRL's scratch folder.

    Returns:
        The ``GRPOConfig``.
    """
    from trl import GRPOConfig

    batch = cfg.num_generations * cfg.prompts_per_step
    extra: dict[str, Any] = {}
    if cfg.use_vllm:
        extra = {"use_vllm": True, "vllm_mode": cfg.vllm_mode}
        if cfg.vllm_server_base_url:
            extra["vllm_server_base_url"] = cfg.vllm_server_base_url
    return GRPOConfig(
        **_common_args(cfg, out), per_device_train_batch_size=batch,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta, epsilon=cfg.epsilon,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
        entropy_coef=cfg.entropy_coef, **extra,
    )


def _grpo_trainer(cfg: GRPORunConfig, model, tok, rows, out: Path, callback, reward_funcs):
    from datasets import Dataset
    from trl import GRPOTrainer

    records = []
    for r in rows:
        messages, prefix = prompt_for(r, cfg.thinking)
        records.append({
            "prompt": render(tok, messages, prefix), "task": r["task"], "label": r["label"],
            "candidates": list(r["candidates"]), "correct_index": int(r["correct_index"]),
            "assistant_prefix": prefix,
        })
    args = grpo_args(cfg, out)
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                       train_dataset=Dataset.from_list(records), processing_class=tok,
                       peft_config=_peft_config(cfg), callbacks=[callback])


def _save_policy(trainer, tok, cfg, base_label: str, run_id: str, manifest_data: dict,
                 registry: str | Path | None) -> None:
    folder = policy_dir(cfg.policy, registry)
    tmp = folder.with_name(f".{folder.name}.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = trainer.model
    lora = cfg.lora.r > 0
    if lora:
        model.save_pretrained(str(tmp / ADAPTER_DIR))
        model = model.merge_and_unload()  # the simulator loads a plain model folder
    model.save_pretrained(str(tmp / MODEL_DIR), safe_serialization=True)
    tok.save_pretrained(str(tmp / MODEL_DIR))
    # Replace the old policy only once the new one is complete on disk.
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    write_manifest(PolicyManifest(
        name=cfg.policy, algo=cfg.algo, base_model=base_label,
        model_id=f"{cfg.policy}@{run_id[:8]}", thinking=cfg.thinking, lora=lora,
        training_run_id=run_id, data=manifest_data, config=cfg.as_dict(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_revision=git_revision(),
        versions=package_versions(),
    ), registry)


def train_policy(cfg: SFTRunConfig | GRPORunConfig, store: Store,
                 registry: str | Path | None = None,
                 log: Any = print) -> TrainResult:
    """Train a US-agent policy and register it.

    Args:
        cfg: an :class:`SFTRunConfig` or :class:`GRPORunConfig`.
        store: where the training run and its curves are logged.
        registry: the policy registry folder (default ``$VRAGENT_POLICIES`` or
            ``runs/policies``).
        log: a print-like function for progress lines.

    Returns:
        The run's summary; the policy is in the registry under ``cfg.policy``.

    Raises:
        TrainingError: bad data or base model (nothing is logged or registered).
    """
    import torch

    check_name(cfg.policy)
    if not cfg.data:
        raise TrainingError("no training data: give --data PATH (vragent rl build-data)")
    rows, manifest = training_rows(cfg.data, cfg)
    scratch = Path(cfg.output_dir) / cfg.policy
    base_path, base_label = resolve_base_model(cfg.base_model, scratch, registry)
    torch.manual_seed(cfg.seed)
    model, tok = _load(base_path, cfg)
    data_summary = {"path": str(cfg.data), **{k: manifest.get(k) for k in
                                              ("dataset", "seed", "sizes", "source_runs")
                                              if k in manifest}}
    run_id = start_training_run(
        store, policy=cfg.policy, algo=cfg.algo, base_model=base_label, config=cfg.as_dict(),
        data_manifest=data_summary, seed=cfg.seed, git_revision=git_revision(),
        versions=package_versions())
    recorder = None
    t0 = time.perf_counter()
    try:
        if cfg.algo == "grpo":
            from vragent.rl.reward_funcs import RewardRecorder, make_reward_funcs

            recorder = RewardRecorder()
            callback = _curve_callback(store, run_id, recorder)
            trainer = _grpo_trainer(cfg, model, tok, rows, scratch, callback,
                                    make_reward_funcs(cfg.missing_answer, recorder))
        else:
            callback = _curve_callback(store, run_id, None)
            trainer = _sft_trainer(cfg, model, tok, rows, scratch, callback)
        log(f"training {cfg.algo} policy {cfg.policy!r} from {base_label} on {len(rows)} rows "
            f"(run {run_id})")
        trainer.train()
        steps = int(trainer.state.global_step)
        _save_policy(trainer, tok, cfg, base_label, run_id, data_summary, registry)
    except BaseException as exc:
        finish_training_run(store, run_id, status="failed", steps=0,
                            wall_s=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
        raise
    wall = time.perf_counter() - t0
    # Peak memory of the whole process (model, reference, optimiser, rollouts), for
    # docs/performance.md; ru_maxrss is in KiB on Linux.
    log_curve(store, run_id, steps, {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps_per_hour": 3600 * steps / max(wall, 1e-9)})
    finish_training_run(store, run_id, status="finished", steps=steps, wall_s=wall)
    shutil.rmtree(scratch, ignore_errors=True)
    first, last = _summary(callback.history)
    return TrainResult(cfg.policy, run_id, cfg.algo, steps, wall, len(rows), first, last)
