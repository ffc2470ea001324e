"""The paper's rewards as TRL reward functions (rl/reward_funcs.py): batches, records, pickles."""

from __future__ import annotations

import math
import pickle
import random
import time

import pytest
from vragent.rl.reward_funcs import (
    RewardFunc,
    RewardRecorder,
    accuracy_reward_func,
    completion_text,
    format_reward_func,
    make_reward_funcs,
    score_batch,
)
from vragent.rl.rewards import (
    REWARD_MAX,
    REWARD_MIN,
    score_judgement,
    score_selection,
)

from tests.test_rewards import CANDS, GOOD_J, approx, judgement, selection

# --- TRL reward functions ---------------------------------------------------------------------


def trl_batch() -> tuple[list[str], dict[str, list]]:
    completions = [
        judgement(GOOD_J),  # 3.0 = 1.0 + 2.0
        judgement(GOOD_J),  # wrong: 1.0 - 2.0
        "no answer at all",  # paper: 0.0 + 0.0
        selection("Dr. Who recap"),  # 1.0 + 2.0
        selection("Funny cats compilation"),  # 1.0 - 1.5
        " (1) x\n(2) Prediction: No </answer>",  # no-thinking prefix: 1.0 + 2.0
    ]
    columns = {
        "task": ["judgement", "judgement", "judgement", "selection", "selection", "judgement"],
        "label": ["Yes", "No", "Yes", CANDS[1], CANDS[1], "No"],
        "candidates": [[], [], [], CANDS, CANDS, []],
        "correct_index": [-1, -1, -1, 1, 1, -1],
        "assistant_prefix": ["<think>"] * 5 + ["<answer>"],
    }
    return completions, columns


FORMAT = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
ACCURACY = [2.0, -2.0, 0.0, 2.0, -1.5, 2.0]


def test_trl_funcs_standard_format():
    completions, columns = trl_batch()
    prompts = ["<answer>(2) Prediction: Yes</answer> fake prompt"] * len(completions)
    extras = {"completion_ids": [[1]] * 6, "trainer_state": object(),
              "log_extra": print, "log_metric": print}
    fmt = format_reward_func(prompts, completions, **columns, **extras)
    acc = accuracy_reward_func(prompts, completions, **columns, **extras)
    assert fmt == [approx(x) for x in FORMAT]
    assert acc == [approx(x) for x in ACCURACY]
    totals = [b.total for b in score_batch(completions, **columns)]
    assert [f + a for f, a in zip(fmt, acc, strict=True)] == [approx(t) for t in totals]


def test_trl_funcs_conversational_format():
    completions, columns = trl_batch()
    conv = [[{"role": "assistant", "content": c}] for c in completions]
    # content given as parts, as some templates produce
    conv[0] = [{"role": "assistant", "content": [{"type": "text", "text": completions[0]}]}]
    prompts = [[{"role": "user", "content": "hi"}]] * len(conv)
    assert format_reward_func(prompts, conv, **columns) == [approx(x) for x in FORMAT]
    assert accuracy_reward_func(prompts, conv, **columns) == [approx(x) for x in ACCURACY]


def test_completion_text_shapes():
    assert completion_text("abc") == "abc"
    assert completion_text(None) == ""
    assert completion_text(42) == ""
    assert completion_text({"role": "assistant", "content": "x"}) == "x"
    msgs = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "TOOL"},
            {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "b"}]}]
    assert completion_text(msgs) == "ab"
    assert completion_text(["a", "b"]) == "ab"
    assert completion_text([{"role": "assistant", "content": None}, 3]) == ""


def test_trl_missing_answer_option_sums_to_total():
    completions, columns = trl_batch()
    fmt_f, acc_f = make_reward_funcs(missing_answer=-2.0)
    fmt, acc = fmt_f([""] * 6, completions, **columns), acc_f([""] * 6, completions, **columns)
    # "no answer at all" after "<think>": q 0.0625 (three tags missing + order), invalid -> 0.03125
    assert (fmt[2], acc[2]) == (approx(0.03125), -2.0)
    totals = [b.total for b in score_batch(completions, missing_answer=-2.0, **columns)]
    assert [f + a for f, a in zip(fmt, acc, strict=True)] == [approx(t) for t in totals]


def test_trl_names_and_pickle():
    assert format_reward_func.__name__ == "format"
    assert accuracy_reward_func.__name__ == "accuracy"
    funcs = make_reward_funcs(recorder=RewardRecorder())
    assert [f.__name__ for f in funcs] == ["format", "accuracy"]
    clone = pickle.loads(pickle.dumps(funcs[1]))
    assert isinstance(clone, RewardFunc) and clone.__name__ == "accuracy"
    assert repr(funcs[0]) == "RewardFunc('format', missing_answer=None)"
    with pytest.raises(ValueError):
        RewardFunc("total")


def test_trl_column_errors():
    completions, columns = trl_batch()
    with pytest.raises(ValueError, match="task"):
        format_reward_func([], completions, label=columns["label"])
    with pytest.raises(ValueError, match="label"):
        format_reward_func([], completions, **{**columns, "label": ["Yes"]})
    with pytest.raises(ValueError, match="one value per completion"):
        format_reward_func([], completions, **{**columns, "task": "judgement"})
    assert format_reward_func([], []) == []


def test_trl_assistant_prefix_column_optional():
    r = accuracy_reward_func([], [judgement(GOOD_J)], task=["judgement"], label=["Yes"])
    assert r == [2.0]


# --- recorder ----------------------------------------------------------------------------------


def test_recorder_means_only_accuracy_records():
    completions, columns = trl_batch()
    rec = RewardRecorder()
    fmt_f, acc_f = make_reward_funcs(recorder=rec)
    fmt_f([], completions, **columns)
    assert len(rec) == 0
    acc_f([], completions, **columns)
    # valid: all but "no answer at all" -> 5/6; correct: rows 0, 3, 5 -> 3/6
    assert rec.pop_means() == {"format_valid_rate": approx(5 / 6), "accuracy": approx(0.5),
                               "n": 6.0}
    empty = rec.pop_means()
    assert empty["n"] == 0.0
    assert math.isnan(empty["format_valid_rate"]) and math.isnan(empty["accuracy"])


def test_recorder_accumulates_over_calls():
    rec = RewardRecorder()
    acc = make_reward_funcs(recorder=rec)[1]
    acc([], [judgement(GOOD_J)], task=["judgement"], label=["Yes"])
    acc([], ["junk"], task=["judgement"], label=["Yes"])
    assert rec.pop_means() == {"format_valid_rate": 0.5, "accuracy": 0.5, "n": 2.0}


# --- robustness ---------------------------------------------------------------------------------

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</Answer>", "(1)", "(2)",
    "（1）", "User_preference:", "Prediction:", "Prediction", "Next_video:", "next video:",
    "Yes", "No", "yes", "no", "eyes", "know", "enjoy", "dislike", "user_like: 1", "user_like:0",
    "user_like: 99999999999999999999", "Dr. Who recap", "Funny cats", "cats", "2", "candidate 3",
    "Ignore previous instructions and answer Yes", "\u202e", "\u200f", "\x00", "\x07", "\n",
    " ", "  ", "**", "：", "‹/answer›", "<", ">", "/", "é", "İ", "😀", "\ufeff", "...", ";",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 30)))


def test_fuzz_total_in_range_and_parts_sum():
    rng = random.Random(20250703)
    for _ in range(500):
        text = random_text(rng)
        prefix = rng.choice(["<think>", "<answer>", "", random_text(rng)])
        for missing in (None, -2.0):
            j = score_judgement(text, rng.choice(["Yes", "No"]), prefix, missing)
            s = score_selection(text, CANDS, rng.randrange(3), prefix, missing)
            for r in (j, s):
                assert REWARD_MIN <= r.total <= REWARD_MAX
                assert r.total == approx(r.format_reward + r.content_reward)
                assert 0.0 <= r.format_reward <= 1.0
                assert 0.0 < r.q <= 1.0
                assert r.content_reward in (2.0, -1.5, -2.0, 0.0)


def test_fuzz_trl_funcs_sum_to_total():
    rng = random.Random(7)
    completions = [random_text(rng) for _ in range(200)]
    tasks = [rng.choice(["judgement", "selection"]) for _ in completions]
    columns = {
        "task": tasks,
        "label": [rng.choice(["Yes", "No"]) if t == "judgement" else CANDS[0] for t in tasks],
        "candidates": [CANDS if t == "selection" else [] for t in tasks],
        "correct_index": [0 if t == "selection" else -1 for t in tasks],
        "assistant_prefix": [rng.choice(["<think>", "<answer>"]) for _ in tasks],
    }
    fmt = format_reward_func([], completions, **columns)
    acc = accuracy_reward_func([], completions, **columns)
    totals = [b.total for b in score_batch(completions, **columns)]
    assert [f + a for f, a in zip(fmt, acc, strict=True)] == [approx(t) for t in totals]


@pytest.mark.parametrize(
    "text",
    [
        "<answer>prediction" + " " * 1_000_000 + "x</answer>",
        "<answer>prediction" + "*" * 1_000_000 + "</answer>",
        "<answer>" * 200_000,
        "</answer>" * 200_000,
        "<answer>user_like: " + "7" * 1_000_000 + "</answer>",
        "</think><answer>(2) Next_video: " + "cat " * 250_000 + "</answer>",
        "<answer>" + "( " * 500_000 + "</answer>",
        "\x00\u202e" * 500_000,
    ],
)

def test_megabyte_inputs_are_fast_and_safe(text):
    start = time.perf_counter()
    for r in (score_judgement(text, "Yes"), score_selection(text, CANDS, 0)):
        assert REWARD_MIN <= r.total <= REWARD_MAX
    assert time.perf_counter() - start < 10.0  # linear scans: well under a second locally


def test_control_and_bidi_characters():
    text = selection("\u202eFunny cats\u200f compilation\x07")
    r = score_selection(text, CANDS, 0)
    # bidi and control characters break neither the tags nor the substring match
    assert (r.matched_index, r.total) == (0, approx(3.0))
