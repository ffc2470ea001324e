"""SFT then GRPO of a tiny random model through the real TRL trainers, the registry and the
store; then a scenario runs the trained policy.

The GRPO task is one a 0.1M-parameter model can learn in seconds: a population that likes
every candidate. SFT first teaches the answer format on labels drawn at random (so it ends
answering Yes about half the time); GRPO, rewarded by the paper's rules, must then move it to
Yes. The test asserts that the reward rises over the steps.
"""

from __future__ import annotations

import json
import random

import pytest
import yaml
from datasets import Dataset, DatasetDict
from sqlalchemy import select
from vragent.agents.prompts import PersonaView, judgement_prompt
from vragent.rl.configs import GRPORunConfig, LoraSettings, SFTRunConfig
from vragent.rl.datasets import load_rl_data, save_rl_data
from vragent.rl.prompting import history_lines, no_thinking_messages, prompt_for, sft_target
from vragent.rl.trainers import TrainingError, train_policy
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.policies import PolicyError, list_policies, load_policy
from vragent.sandbox.runner import create_run, execute
from vragent.sandbox.store import Decision, Store
from vragent.sandbox.training_log import curves, training_runs

from tests.conftest import tiny_scenario

LIKED = ["Quick pasta #cooking", "Street food tour #travel"]
OTHER = ["Funny cat compilation #pets #comedy", "Gaming highlights #gaming"]


def _rows(n: int, label, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cand = rng.choice(LIKED + OTHER)
        chat = judgement_prompt(PersonaView("A platform user.", ("Quick pasta [cooking]",)), cand)
        rows.append({
            "task": "judgement", "protocol": "random", "m": 1, "group_id": f"g{i}",
            "user_id": i, "item_ids": [i], "history_ids": [0],
            "history_titles": ["Quick pasta [cooking]"], "prompt": chat.as_dicts(),
            "assistant_prefix": chat.assistant_prefix, "candidates": [cand],
            "label": label(rng), "correct_index": -1, "source": "real", "split": "train",
        })
    return rows


def _save(path, rows):
    dd = DatasetDict({"train": Dataset.from_list(rows), "eval": Dataset.from_list(rows[:4])})
    return save_rl_data(dd, path, {"seed": 0, "sizes": {"train": len(rows)}, "test": True})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    registry = tmp / "policies"
    store = Store(f"sqlite:///{tmp}/rl.sqlite")
    sft_data = _save(tmp / "sft-data", _rows(64, lambda r: r.choice(["Yes", "No"]), 1))
    grpo_data = _save(tmp / "grpo-data", _rows(64, lambda r: "Yes", 2))
    common = {"thinking": False, "lora": LoraSettings(r=0), "threads": 1,
              "output_dir": str(tmp / "scratch")}
    sft = train_policy(SFTRunConfig(policy="tiny-sft", data=str(sft_data),
                                    base_model="tiny-random", lr=3e-3, max_steps=100,
                                    batch_size=8, **common), store, registry=registry,
                       log=lambda *a: None)
    grpo = train_policy(GRPORunConfig(policy="tiny-grpo", data=str(grpo_data),
                                      base_model="policy:tiny-sft", lr=5e-4, max_steps=40,
                                      num_generations=8, prompts_per_step=2,
                                      max_completion_length=24, **common),
                        store, registry=registry, log=lambda *a: None)
    return tmp, store, registry, sft, grpo


def test_prompting_helpers_follow_the_row():
    row = _rows(1, lambda r: "Yes", 0)[0]
    assert history_lines(row["prompt"]) == ["Quick pasta [cooking]"]
    messages, prefix = prompt_for(row, thinking=False)
    assert prefix == "<answer>" and messages == no_thinking_messages(row["prompt"])
    assert "<think>" not in messages[0]["content"]
    target = sft_target(row, thinking=True)
    assert target.endswith("(2) Prediction: Yes </answer>") and "</think>" in target
    assert "User_preference: cooking" in sft_target(row, thinking=False)


def test_grpo_reward_rises_after_sft(trained):
    _, store, _, sft, grpo = trained
    assert sft.steps == 100 and grpo.steps == 40
    reward = [v for _, v in curves(store, grpo.training_run_id)["reward"]]
    assert len(reward) == 40
    first, last = sum(reward[:10]) / 10, sum(reward[-10:]) / 10
    assert last > first + 0.5, (first, last)
    acc = [v for _, v in curves(store, grpo.training_run_id)["accuracy"]]
    assert sum(acc[-10:]) / 10 > sum(acc[:10]) / 10
    # SFT taught the format: its loss fell.
    loss = [v for _, v in curves(store, sft.training_run_id)["loss"]]
    assert loss[-1] < loss[0]


def test_curves_and_runs_are_in_the_store(trained):
    _, store, _, sft, grpo = trained
    names = set(curves(store, grpo.training_run_id))
    assert {"reward", "format_reward", "accuracy_reward", "format_valid_rate", "accuracy",
            "kl", "step_time_s", "loss", "peak_rss_mib", "steps_per_hour"} <= names
    runs = {r.id: r for r in training_runs(store)}
    assert runs[grpo.training_run_id].status == "finished"
    assert runs[grpo.training_run_id].steps == 40
    assert runs[sft.training_run_id].algo == "sft"
    assert runs[grpo.training_run_id].data_manifest["path"].endswith("grpo-data")


def test_policies_are_registered_with_manifests(trained):
    _, _, registry, _, grpo = trained
    # The registry's policies first, then the package's bundled ones.
    names = [p.manifest.name for p in list_policies(registry)]
    assert names[:2] == ["tiny-grpo", "tiny-sft"] and "grounded-smollm2" in names[2:]
    pol = load_policy("tiny-grpo", registry)
    assert pol.manifest.algo == "grpo" and pol.manifest.base_model == "policy:tiny-sft"
    assert pol.manifest.training_run_id == grpo.training_run_id
    assert not pol.manifest.thinking and not pol.manifest.lora
    assert (pol.model_dir / "config.json").is_file()
    saved = json.loads((pol.path / "manifest.json").read_text())
    assert saved["config"]["max_steps"] == 40
    with pytest.raises(PolicyError, match="not found"):
        load_policy("nope", registry)


def test_a_scenario_runs_the_trained_policy(trained, monkeypatch):
    tmp, _, registry, _, _ = trained
    monkeypatch.setenv("VRAGENT_POLICIES", str(registry))
    sc = parse_scenario(tiny_scenario(
        policy="tiny-grpo", simulation={"steps": 1, "refit_every": 0},
        ip_agent={"enabled": False}))
    store = Store(f"sqlite:///{tmp}/sim.sqlite")
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
    execute(store, run_id)
    with store.session() as s:
        models = set(s.scalars(select(Decision.model_id).where(Decision.run_id == run_id)))
    assert models == {load_policy("tiny-grpo", registry).manifest.model_id}


def test_bad_inputs_fail_with_one_line(tmp_path):
    with pytest.raises(PolicyError, match="invalid"):
        train_policy(SFTRunConfig(policy="../escape", data="x"), Store("sqlite://"))
    data = _save(tmp_path / "d", _rows(4, lambda r: "Yes", 0))
    with pytest.raises(TrainingError, match="no train rows"):
        train_policy(SFTRunConfig(policy="p", data=str(data), tasks=("selection",)),
                     Store("sqlite://"))
    with pytest.raises(TrainingError, match="base model"):
        train_policy(SFTRunConfig(policy="p", data=str(data), base_model=str(tmp_path)),
                     Store("sqlite://"))
    dd, manifest = load_rl_data(data)
    assert manifest["test"] and len(dd["train"]) == 4


def test_loop_simulates_trains_and_simulates_again(tmp_path):
    from vragent.rl.loop import LoopConfig, loop_markdown, run_loop

    from tests.conftest import write_scenario

    sc = tiny_scenario(simulation={"steps": 2, "refit_every": 0}, ip_agent={"enabled": False},
                       population={"size": 6, "history_len": 5})
    path = write_scenario(tmp_path, sc)
    cfg = LoopConfig(scenario=str(path), policy="tiny-loop", algo="sft", steps=3,
                     data_out=str(tmp_path / "data"), eval_users=6, train_users=20,
                     eval_groups=2,
                     train={"batch_size": 4, "threads": 1, "lora": LoraSettings(r=0),
                            "output_dir": str(tmp_path / "scratch")})
    res = run_loop(cfg, f"sqlite:///{tmp_path}/loop.sqlite", registry=str(tmp_path / "reg"),
                   log=lambda *a: None)
    store = Store(f"sqlite:///{tmp_path}/loop.sqlite")
    assert res.run_before != res.run_after
    assert store.get_run(res.run_after).status == "finished"
    assert store.get_run(res.run_after).config["policy"] == "tiny-loop"
    dd, _ = load_rl_data(res.data)
    assert any(r["source"] == f"run:{res.run_before}" for r in dd["train"])
    metrics = {r["metric"]: r for r in res.table}
    assert metrics["simulation decisions"]["before"] > 0
    assert metrics["simulation decisions"]["after"] > 0
    assert "held-out judge acc 1:1 random" in metrics
    assert 0 <= metrics["held-out judge acc 1:1 random"]["after"] <= 1
    assert "| metric | before | after |" in loop_markdown(res, "vragent loop x")


def test_cli_builds_data_and_evaluates_a_policy(trained, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from vragent.sandbox.cli import app
    from vragent.sandbox.training_log import eval_rows

    _, _, registry, _, _ = trained
    monkeypatch.setenv("VRAGENT_POLICIES", str(registry))
    db = f"sqlite:///{tmp_path}/eval.sqlite"
    runner = CliRunner()
    res = runner.invoke(app, ["rl", "build-data", "--dataset", "synthetic", "--out",
                              str(tmp_path / "data"), "--eval-users", "8", "--train-users", "20"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["rl", "eval", "--data", str(tmp_path / "data"), "--policy",
                              "tiny-grpo", "--base-model", "none", "--max-groups", "2",
                              "--generate-groups", "1", "--max-new-tokens", "8", "--threads",
                              "1", "--db", db, "--report", str(tmp_path / "report.md"),
                              "--results", str(tmp_path / "direct.md")])
    assert res.exit_code == 0, res.output
    report = (tmp_path / "report.md").read_text()
    assert "BEGIN rl-eval-data" in (tmp_path / "direct.md").read_text()
    assert "vragent rl eval" in report and "| popularity |" in report
    stored = eval_rows(Store(db))
    models = {r["model"] for r in stored}
    assert {"random", "popularity", "item-kNN", "mf scores", "learned response model",
            "tiny-grpo"} <= models
    modes = {r["mode"] for r in stored if r["model"] == "tiny-grpo"}
    assert modes == {"score", "generate"}
    cells = {(r["task"], r["protocol"], r["m"]) for r in stored}
    assert {("judgement", p, m) for p in ("random", "popular", "hard")
            for m in (1, 2, 3, 9)} <= cells
    assert load_policy("tiny-grpo", registry).manifest.metrics  # a summary was added
    eval_id = next(w for line in res.output.splitlines() if line.startswith("eval ")
                   for w in line.split()[1:2])
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nprose\n")
    res = runner.invoke(app, ["rl", "report", eval_id, "--data", str(tmp_path / "data"),
                              "--db", db, "--results", str(results), "--command", "cmd"])
    assert res.exit_code == 0, res.output
    row = next(line for line in report.splitlines() if line.startswith("| tiny-grpo | ")
               and "score" not in line and "generate" not in line)
    assert row in results.read_text() and "prose" in results.read_text()
    res = runner.invoke(app, ["rl", "policies"])
    assert res.exit_code == 0 and "tiny-grpo" in res.output
    res = runner.invoke(app, ["rl", "eval", "--data", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


def test_configs_cpu_defaults_and_paper_gpu_settings():
    cpu = GRPORunConfig()
    assert (cpu.use_cpu, cpu.bf16, cpu.gradient_checkpointing) == (True, False, False)
    assert cpu.lora.r > 0 and cpu.max_completion_length <= 128 and cpu.num_generations <= 8
    gpu = GRPORunConfig.paper_gpu(policy="x")
    assert (gpu.num_generations, gpu.prompts_per_step, gpu.lr, gpu.beta, gpu.epsilon) == (
        16, 16, 4e-7, 0.001, 0.2)
    assert gpu.use_vllm and gpu.vllm_mode == "colocate" and gpu.bf16 and not gpu.use_cpu
    assert gpu.lora.r == 0 and gpu.policy == "x"
    assert SFTRunConfig().with_updates(lr=None, max_steps=7).max_steps == 7


def test_decision_auc_matches_mann_whitney():
    import numpy as np
    from scipy.stats import mannwhitneyu
    from vragent.rl.metrics import pairwise_auc

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 60).astype(float)
    u = mannwhitneyu(pos, neg).statistic
    labels = [True] * 40 + [False] * 60
    scores = np.concatenate([pos, neg])
    assert pairwise_auc(labels, scores) == pytest.approx(u / (len(pos) * len(neg)))
    # One group holding everything: the pair-merge path gives the same number.
    assert pairwise_auc(labels, scores, ["g"] * 100) == pytest.approx(u / (40 * 60))
    assert pairwise_auc([True, True], [0.1, 0.2]) is None


def test_run_with_a_missing_policy_fails_before_creating_a_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from vragent.sandbox.cli import app

    from tests.conftest import write_scenario

    monkeypatch.setenv("VRAGENT_POLICIES", str(tmp_path / "empty"))
    path = write_scenario(tmp_path, tiny_scenario(policy="absent"))
    db = f"sqlite:///{tmp_path}/s.sqlite"
    res = CliRunner().invoke(app, ["run", str(path), "--db", db])
    assert res.exit_code == 2
    assert "policy 'absent' not found" in res.output
    assert Store(db).list_runs() == []


def test_lora_training_saves_the_adapter_and_a_merged_model(tmp_path):
    from transformers import AutoModelForCausalLM

    data = _save(tmp_path / "d", _rows(16, lambda r: "Yes", 3))
    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    res = train_policy(SFTRunConfig(policy="tiny-lora", data=str(data), base_model="tiny-random",
                                    max_steps=3, batch_size=4, lora=LoraSettings(r=4, alpha=8),
                                    threads=1, output_dir=str(tmp_path / "scratch")),
                       store, registry=tmp_path / "reg", log=lambda *a: None)
    pol = load_policy("tiny-lora", tmp_path / "reg")
    assert res.steps == 3 and pol.manifest.lora
    assert (pol.adapter_dir / "adapter_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(pol.model_dir))  # plain, merged weights
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_a_no_thinking_policy_is_evaluated_with_its_own_prompt(tiny_backend):
    from vragent.rl.evaluation import LLMPolicy

    row = _rows(1, lambda r: "Yes", 0)[0]
    thinking = LLMPolicy(tiny_backend).prompt(row)
    answer_only = LLMPolicy(tiny_backend, thinking=False).prompt(row)
    assert thinking.assistant_prefix == "<think>" and answer_only.assistant_prefix == "<answer>"
    assert "<think>" in thinking.messages[0][1] and "<think>" not in answer_only.messages[0][1]
