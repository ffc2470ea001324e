"""One dataclass config per training algorithm, with CPU defaults that work.

The defaults train SmolLM2-135M with LoRA on a 2-core CPU: float32 (``bf16=False``),
``use_cpu``, no gradient checkpointing, short completions and small groups. The paper's GPU
settings (notes §3.5: Qwen2.5-7B, n=16 rollouts, lr 4e-7 with a 10 % warm-up, low-variance KL
at 0.001, clip 0.2, entropy bonus 0.001, 16 prompts per step, vLLM rollouts at temperature 1.0)
are one call away:
:meth:`GRPORunConfig.paper_gpu`. See docs/rl.md for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

TASKS = ("judgement", "selection")  # the default; "preference" (the open-ended task) too
ALL_TASKS = ("judgement", "selection", "preference")


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft). ``r=0`` means full fine-tuning."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class _Common:
    """What SFT and GRPO share.

    Attributes:
        policy: the registry name the trained model is saved under.
        data: an RL data folder (``vragent rl build-data``).
        base_model: ``smollm2`` (the embedded asset), ``tiny-random`` (a tiny random model,
            for tests), ``policy:NAME`` (continue from a registered policy, e.g. GRPO after
            SFT) or a transformers folder.
        tasks: which rows of the data's train split to train on, from :data:`ALL_TASKS`
            (``"preference"`` rows exist when the data was built with that task).
        protocols: which negative protocols' rows (``None``: all in the train split);
            preference rows have no negatives and are kept whatever this says.
        max_samples: at most this many training rows (a seeded sample).
        thinking: reason in ``<think>`` before answering; False is the paper's no_thinking
            ablation (assistant turn opened with ``<answer>``, the instruction asks for the
            answer only).
        lr: learning rate.
        warmup_ratio: share of the steps over which the learning rate rises linearly from 0
            (then constant, as veRL's ``lr_warmup_steps_ratio``); 0 is a constant rate.
        max_steps: optimiser steps (``-1``: ``epochs`` passes over the data).
        epochs: passes over the data when ``max_steps`` is ``-1``.
        lora: the adapter (``r=0``: full fine-tuning).
        seed: every random choice of the run.
        use_cpu, bf16, gradient_checkpointing: device settings; the CPU defaults are the only
            ones that work on a CPU (bf16 autocast and checkpointing slow it down or fail).
        threads: torch CPU threads (``None``: torch's default).
        logging_steps: curve points every this many steps.
        output_dir: TRL's scratch folder (checkpoints are not kept; the registry is).
    """

    policy: str = "us-policy"
    data: str = ""
    base_model: str = "smollm2"
    tasks: tuple[str, ...] = TASKS
    protocols: tuple[str, ...] | None = None
    max_samples: int = 512
    thinking: bool = True
    lr: float = 1e-4
    warmup_ratio: float = 0.0
    max_steps: int = 50
    epochs: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    seed: int = 0
    use_cpu: bool = True
    bf16: bool = False
    gradient_checkpointing: bool = False
    threads: int | None = None
    logging_steps: int = 1
    output_dir: str = "runs/rl-scratch"

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form, stored with the training run and the policy manifest."""
        return asdict(self)

    def with_updates(self, **kw: Any) -> _Common:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class SFTRunConfig(_Common):
    """Supervised fine-tuning on real labels (TRL ``SFTTrainer``, completion-only loss).

    The target completion states what the log shows: the user's recent history and the
    candidate in ``<think>``, then the real answer (``Prediction: Yes/No`` or the real next
    video's title). The paper ships no SFT recipe (notes §3.6); this is ours.

    Attributes:
        batch_size: rows per optimiser step.
        max_length: prompt + completion tokens (longer rows are cut from the left).
    """

    algo: Literal["sft"] = "sft"
    lr: float = 2e-4
    batch_size: int = 8
    max_length: int = 1024


@dataclass
class GRPORunConfig(_Common):
    """GRPO with the paper's rewards (TRL ``GRPOTrainer``).

    Attributes:
        num_generations: rollouts per prompt (the group); the paper uses 16.
        prompts_per_step: prompts per optimiser step; the paper uses 16.
        max_completion_length: completion budget in tokens; the paper allows 1024.
        temperature, top_p: rollout sampling (the paper: 1.0 and 1.0).
        beta: KL coefficient against the frozen reference (the paper: 0.001, low-variance KL).
        epsilon: PPO ratio clip (the paper: 0.2).
        loss_type: TRL's loss normalisation; ``dapo`` averages over every token of the batch,
            which is veRL's token-mean (the paper).
        scale_rewards: ``group`` divides advantages by the group's std, as the paper does.
        entropy_coef: weight of the entropy bonus (mean per-token entropy) added to the
            objective; veRL's ``entropy_coeff``, 0.001 in the paper. TRL's ``GRPOConfig``
            has it (``entropy_coef``), so no trainer subclass is needed.
        missing_answer: total reward of a completion with no ``<answer>`` block. ``None`` is
            the paper's 0.0, which pays more than a wrong answer (−1.5 to −2); set −2.0 to
            close that loophole.
        use_vllm, vllm_mode, vllm_server_base_url: vLLM rollouts on a GPU (``colocate``
            shares the training GPU; ``server`` uses ``trl vllm-serve``).
    """

    algo: Literal["grpo"] = "grpo"
    lr: float = 5e-5
    num_generations: int = 4
    prompts_per_step: int = 2
    max_completion_length: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.001
    epsilon: float = 0.2
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    entropy_coef: float = 0.0
    missing_answer: float | None = None
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None

    @classmethod
    def paper_gpu(cls, **kw: Any) -> GRPORunConfig:
        """The paper's selection-task settings on a GPU (notes §3.5), LoRA off.

        n=16 rollouts, 16 prompts per step, lr 4e-7 after a linear warm-up over the first 10 %
        of the steps, KL 0.001, entropy bonus 0.001, clip 0.2, completions up to 1024 tokens
        at temperature 1.0, bf16, vLLM rollouts colocated on the training GPU, gradient
        checkpointing on. Pass ``use_vllm=False`` without vLLM installed.
        """
        base = cls(num_generations=16, prompts_per_step=16, lr=4e-7, warmup_ratio=0.1,
                   beta=0.001, entropy_coef=0.001, epsilon=0.2,
                   max_completion_length=1024, temperature=1.0, top_p=1.0,
                   lora=LoraSettings(r=0), use_cpu=False, bf16=True,
                   gradient_checkpointing=True, use_vllm=True, vllm_mode="colocate",
                   max_steps=-1, epochs=3.0)
        return replace(base, **kw)
