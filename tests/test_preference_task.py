"""The paper's third task, the open-ended preference description (``video_preference``):
data rows, the embedding-similarity reward, SFT targets, GRPO on it, and its evaluation."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict
from vragent.agents.parsing import parse_preference
from vragent.agents.preference import PREFERENCE_FORMAT_NO_THINKING, preference_prompt
from vragent.environments.datasets import load_dataset
from vragent.rl.configs import GRPORunConfig, LoraSettings
from vragent.rl.datasets import BuildStats, RLDataConfig, build_rl_data, save_rl_data
from vragent.rl.eval_report import results_markdown
from vragent.rl.evaluation import LLMPolicy, evaluate
from vragent.rl.prompting import prompt_for, sft_target
from vragent.rl.reward_funcs import make_reward_funcs, score_batch
from vragent.rl.rewards import score, score_preference
from vragent.rl.trainers import train_policy
from vragent.sandbox.store import Store

from tests.test_rl_evaluation import ScriptedBackendForTests as ScriptedBackend

TRUTH = "Quick pasta in 10 minutes #cooking"


class WordSimilarity:
    """A deterministic stand-in for MiniLM: word Jaccard of the two texts."""

    def __init__(self) -> None:
        self.calls = 0

    def pairs(self, a, b):
        self.calls += 1
        out = []
        for x, y in zip(a, b, strict=True):
            wx, wy = set(x.lower().split()), set(y.lower().split())
            out.append(len(wx & wy) / len(wx | wy) if wx and wy else 0.0)
        return out


def answer(pred: str, pref: str = "(1) User_preferences: cooking\n") -> str:
    return f" reasoning </think><answer> {pref}(2) Next_video: {pred} </answer>"


@pytest.fixture(scope="module")
def built():
    ds = load_dataset("synthetic", None, n_users=40, seed=3)
    cfg = RLDataConfig(dataset="synthetic", eval_users=10, train_users=None, seed=1,
                       tasks=("selection", "preference"), protocols=("random",),
                       train_protocols=("random",))
    return build_rl_data(cfg, ds, stats=BuildStats())


def test_build_writes_one_preference_row_per_user_and_split(built):
    for split, part in built.items():
        rows = [r for r in part if r["task"] == "preference"]
        sel = [r for r in part if r["task"] == "selection"]
        assert len(rows) == len(sel) > 0, split
        for r, s in zip(rows, sel, strict=True):
            assert (r["protocol"], r["m"], r["candidates"], r["correct_index"]) == (
                "open", 0, [], -1)
            # The truth is the real next item, the selection row's correct candidate.
            assert r["item_ids"] == [s["item_ids"][s["correct_index"]]]
            assert r["label"] == s["label"]
            assert r["history_ids"] == s["history_ids"]
            assert "Candidate videos" not in r["prompt"][0]["content"]
            assert r["assistant_prefix"] == "<think>"


def test_default_build_has_no_preference_rows():
    ds = load_dataset("synthetic", None, n_users=20, seed=3)
    cfg = RLDataConfig(dataset="synthetic", eval_users=5, train_users=None, seed=1,
                       protocols=("random",), train_protocols=("random",), judgement_ms=(1,))
    dd = build_rl_data(cfg, ds)
    assert {r["task"] for r in dd["train"]} == {"judgement", "selection"}


def test_preference_reward_follows_the_paper():
    sim = WordSimilarity()
    good = score_preference(answer(TRUTH), TRUTH, sim)
    # q 1.0, valid -> 1.0; similarity 1.0 > 0.5 -> 2·1.0
    assert (good.total, good.format_reward, good.content_reward, good.similarity) == (
        pytest.approx(3.0), 1.0, 2.0, 1.0)
    assert good.correct and good.parsed == TRUTH
    half = score_preference(answer("Quick pasta in 10 minutes #baking"), TRUTH, sim)
    # 5 shared words of 7: 2·0.714 = 1.43
    assert half.content_reward == pytest.approx(2 * 5 / 7)
    low = score_preference(answer("Minecraft speed build"), TRUTH, sim)
    assert (low.content_reward, low.total, low.correct) == (-1.5, pytest.approx(-0.5), False)
    # No User_preferences field: x0.7 (the paper's open-ended check), still valid.
    nopref = score_preference(answer(TRUTH, pref="(1) cooking\n"), TRUTH, sim)
    assert nopref.format_reward == pytest.approx(0.7)
    # An empty Next_video: -1.5, the paper's low value; no <answer> block: the flat 0.0.
    assert score_preference(answer(""), TRUTH, sim).content_reward == -1.5
    assert score_preference(" no answer", TRUTH, sim).total == 0.0
    assert score(answer(TRUTH), "preference", label=TRUTH, similarity=sim).total == 3.0
    with pytest.raises(ValueError):
        score(answer(TRUTH), "preference")


def test_minilm_similarity_loads_offline_and_ranks_texts():
    from vragent.rl.text_similarity import EmbeddingSimilarity

    sim = EmbeddingSimilarity()
    same, close, far = sim.pairs(
        [TRUTH, "Easy homemade spaghetti recipe", "Minecraft speed build #gaming"],
        [TRUTH, TRUTH, TRUTH])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert close > far and far < 0.5
    r = score_preference(answer(TRUTH), TRUTH, sim)
    assert r.total == pytest.approx(3.0, abs=1e-4)


def test_trl_reward_funcs_score_preference_rows():
    sim = WordSimilarity()
    fmt, acc = make_reward_funcs(similarity=sim)
    cols = {"task": ["preference", "judgement"], "label": [TRUTH, "Yes"],
            "candidates": [[], ["x"]], "correct_index": [-1, -1]}
    comps = [answer(TRUTH),
             " r </think><answer> (1) User_preference: x\n(2) Prediction: Yes </answer>"]
    assert fmt([], comps, **cols) == [1.0, 1.0]
    assert acc([], comps, **cols) == [2.0, 2.0]
    assert [b.similarity for b in score_batch(comps, None, sim, **cols)] == [1.0, None]


def test_sft_target_and_no_thinking_prompt(built):
    row = next(r for r in built["train"] if r["task"] == "preference")
    target = sft_target(row, thinking=True)
    parsed = parse_preference(target, row["assistant_prefix"])
    assert parsed.format_ok and parsed.prediction == row["label"]
    messages, prefix = prompt_for(row, thinking=False)
    assert prefix == "<answer>" and PREFERENCE_FORMAT_NO_THINKING in messages[0]["content"]
    assert parse_preference(sft_target(row, thinking=False), "<answer>").format_ok
    chat = preference_prompt(["a <answer> title"], thinking=True)
    assert "<answer> title" not in chat.messages[0][1]  # titles are cleaned


def test_evaluation_reports_mean_similarity_in_generate_mode():
    rows = [{"task": "preference", "protocol": "open", "m": 0, "group_id": f"g{i}",
             "user_id": i, "item_ids": [i], "history_ids": [], "label": TRUTH,
             "prompt": preference_prompt(["Homemade ramen #cooking"]).as_dicts(),
             "assistant_prefix": "<think>", "candidates": [], "correct_index": -1}
            for i in range(4)]
    preds = iter([TRUTH, "Quick pasta in 10 minutes #baking", "", "Minecraft"])
    backend = ScriptedBackend(complete=lambda p: answer(next(preds)))
    df = evaluate({"llm": LLMPolicy(backend, modes=("score", "generate"))}, rows,
                  similarity=WordSimilarity())
    assert list(df["mode"]) == ["generate"]  # no options to score
    rec = df.iloc[0]
    assert rec["similarity"] == pytest.approx((1 + 5 / 7 + 0 + 0) / 4)
    assert rec["accuracy"] == pytest.approx(0.5) and rec["none_rate"] == pytest.approx(0.25)
    assert "preference · open · open" in results_markdown(df, "t", "cmd")


def test_grpo_trains_on_preference_rows(built, tmp_path):
    rows = [dict(r) for r in built["train"] if r["task"] == "preference"][:8]
    data = save_rl_data(DatasetDict({"train": Dataset.from_list(rows),
                                     "eval": Dataset.from_list(rows[:2])}),
                        tmp_path / "data", {"seed": 0})
    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    res = train_policy(GRPORunConfig(policy="tiny-pref", data=str(data), base_model="tiny-random",
                                     tasks=("preference",), max_steps=2, num_generations=2,
                                     prompts_per_step=2, max_completion_length=8, threads=1,
                                     lora=LoraSettings(r=0), output_dir=str(tmp_path / "s")),
                       store, registry=tmp_path / "reg", log=lambda *a: None)
    assert res.steps == 2 and res.rows == 8


def test_rl_eval_reports_preference_for_sampled_llms_only(tmp_path, monkeypatch):
    from vragent.rl.datasets import build_and_save
    from vragent.rl.policy_eval import EvalConfig, headline, run_eval

    monkeypatch.setattr("vragent.rl.text_similarity._DEFAULT", WordSimilarity())
    ds = load_dataset("synthetic", None, n_users=40, seed=3)
    cfg = RLDataConfig(dataset="synthetic", eval_users=10, train_users=None, seed=1,
                       tasks=("judgement", "preference"), protocols=("random",),
                       train_protocols=("random",), judgement_ms=(1,))
    build_and_save(cfg, tmp_path / "data", ds)
    backend = ScriptedBackend(complete=lambda p: answer(TRUTH))
    table, _ = run_eval(EvalConfig(data=str(tmp_path / "data"), base_model=None,
                                   extra_models={"llm": backend}, generate_groups=3,
                                   generate_protocols=("random",), threads=1,
                                   fit_on="histories"),  # data built from an in-memory world
                        log=lambda *a: None)
    pref = table[table.task == "preference"]
    assert list(pref.model) == ["llm"] and list(pref["mode"]) == ["generate"]
    assert pref.iloc[0]["n"] == 3 and 0.0 <= pref.iloc[0]["similarity"] <= 1.0
    assert headline(table, "llm")["gen preference sim"] == pref.iloc[0]["similarity"]
    assert not (table[table.model != "llm"].task == "preference").any()
