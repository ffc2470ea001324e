"""GRPORunConfig.paper_gpu() reaches the paper's entropy bonus (0.001) and 10 % warm-up, and a
warm-up ratio really ramps the learning rate in a (tiny) TRL run."""

from __future__ import annotations

from vragent.rl.configs import GRPORunConfig, LoraSettings
from vragent.rl.trainers import grpo_args, train_policy
from vragent.sandbox.store import Store
from vragent.sandbox.training_log import curves

from tests.test_rl_training import _rows, _save


def test_paper_gpu_has_the_entropy_bonus_and_the_warm_up(tmp_path):
    gpu = GRPORunConfig.paper_gpu()
    assert (gpu.entropy_coef, gpu.warmup_ratio) == (0.001, 0.1)
    # The GRPOConfig TRL receives (on this CPU: no vLLM, no bf16).
    args = grpo_args(GRPORunConfig.paper_gpu(use_vllm=False, bf16=False, use_cpu=True,
                                             gradient_checkpointing=False), tmp_path)
    assert args.entropy_coef == 0.001 and args.warmup_steps == 0.1
    assert args.lr_scheduler_type == "constant_with_warmup"  # a str enum
    assert (args.beta, args.epsilon, args.learning_rate, args.num_generations) == (
        0.001, 0.2, 4e-7, 16)
    cpu = grpo_args(GRPORunConfig(), tmp_path)  # the CPU defaults keep a constant rate
    assert cpu.entropy_coef == 0.0 and cpu.warmup_steps == 0
    assert cpu.lr_scheduler_type == "constant"


def test_warm_up_ramps_the_learning_rate_then_holds_it(tmp_path):
    data = _save(tmp_path / "d", _rows(16, lambda r: "Yes", 3))
    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    res = train_policy(GRPORunConfig(policy="tiny-warm", data=str(data), base_model="tiny-random",
                                     lr=1e-3, warmup_ratio=0.5, entropy_coef=0.001, max_steps=4,
                                     num_generations=2, prompts_per_step=2,
                                     max_completion_length=8, threads=1, thinking=False,
                                     lora=LoraSettings(r=0), output_dir=str(tmp_path / "s")),
                       store, registry=tmp_path / "reg", log=lambda *a: None)
    lr = [v for _, v in curves(store, res.training_run_id)["learning_rate"]]
    assert len(lr) == 4
    assert lr[0] < lr[1] and lr[2] == lr[3] == 1e-3, lr
