import random

import pytest
from vragent.agents.parsing import parse_judgement, parse_selection, read_judgement
from vragent.rl.rewards import score_judgement, score_selection

GOOD = (" The user likes drama. </think><answer> (1) User_preference: drama\n"
        "(2) Prediction: Yes </answer>")


def test_well_formed_answer():
    p = parse_judgement(GOOD)
    assert p.format_ok and p.prediction == "Yes"
    assert p.think == "The user likes drama."
    assert p.user_preference == "drama"


def test_no_prediction_falls_back():
    p = parse_judgement(" hmm </think><answer> (1) User_preference: x </answer>")
    assert p.prediction is None and not p.format_ok
    assert "no Yes/No prediction in the answer" in p.problems


def test_empty_completion():
    p = parse_judgement("")
    assert p.prediction is None and not p.format_ok
    assert "empty completion" in p.problems


def test_several_answer_blocks_use_the_last_and_flag():
    text = (" a </think><answer>(2) Prediction: Yes</answer>"
            "<answer>(2) Prediction: No</answer>")
    p = parse_judgement(text)
    assert p.prediction == "No" and not p.format_ok
    assert any("<answer> occurs 2 times" in x for x in p.problems)


def test_endless_completion_without_closing_tags():
    p = parse_judgement(" I think " * 500)
    assert p.prediction is None and not p.format_ok


def test_wrong_language():
    p = parse_judgement(" 用户喜欢 </think><answer> (2) 预测: 是 </answer>")
    assert p.prediction is None and not p.format_ok


def test_bare_yes_is_read_but_flagged():
    p = parse_judgement(" ok </think><answer>Yes</answer>")
    assert p.prediction == "Yes" and not p.format_ok


def test_tags_out_of_order():
    p = parse_judgement("<answer>(2) Prediction: No</answer>", assistant_prefix="</think><think>")
    assert not p.format_ok
    assert "tags out of order" in p.problems


def test_prediction_case_insensitive():
    p = parse_judgement(" x </think><answer>(2) prediction: NO</answer>")
    assert p.prediction == "No"


def test_an_answer_only_turn_needs_no_think_tags():
    from vragent.agents.parsing import parse_judgement

    ok = parse_judgement(" (1) User_preference: drama\n(2) Prediction: No </answer>", "<answer>")
    assert ok.format_ok and ok.prediction == "No"
    bad = parse_judgement(" (2) Prediction: No </answer></answer>", "<answer>")
    assert not bad.format_ok and bad.prediction == "No"
    assert not parse_judgement(" x </think> <answer> Prediction: Yes </answer>", "").format_ok


# --- one reading for the simulator, the selection agent and the rewards ------------------------



@pytest.mark.parametrize(
    ("body", "label"),
    [
        ("No, the user would not enjoy it", "No"),  # the reward read "enjoy" as Yes
        ("Yes, they will enjoy it", "Yes"),
        ("The user would not enjoy it", "No"),
        ("The user wouldn't really enjoy this clip", "No"),
        ("They never enjoy cooking videos", "No"),
        ("The user doesn't dislike it", "Yes"),
        ("(1) User_preference: cats (2) the user will enjoy it", "Yes"),
        ("**No** - too long for this viewer", "No"),
        ("user_like: 0, although they enjoy cats", "No"),
    ],
)
def test_bare_answers_read_the_same_everywhere(body, label):
    completion = f" x </think><answer>{body}</answer>"
    assert read_judgement(body) == label
    assert parse_judgement(completion).prediction == label
    assert score_judgement(completion, "Yes").parsed == label


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "(1)", "(2)", "Prediction:",
             "Next_video:", "Yes", "No", "yes", "no", "not", "enjoy", "dislike", "user_like: 1",
             "Dr. Who recap", "Funny cats", "2", " ", "\n", ",", "won't", "**"]
CANDS = ["Funny cats compilation", "Dr. Who recap", "Cooking pasta at home"]


def test_fuzz_parser_and_reward_agree():
    rng = random.Random(18)
    for _ in range(2000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 14)))
        prefix = rng.choice(["<think>", "<answer>", ""])
        j = score_judgement(text, "Yes", prefix)
        s = score_selection(text, CANDS, 0, prefix)
        if j.problems and "no <answer>...</answer> block" in j.problems:
            continue  # the reward's flat missing-answer rule: it reads nothing
        assert parse_judgement(text, prefix).prediction == j.parsed, (prefix, text)
        assert parse_selection(text, CANDS, prefix).index == s.matched_index, (prefix, text)


@pytest.mark.parametrize("completion, line", [
    (" Mostly action and sci-fi.\n(2) Prediction: Yes", "Mostly action and sci-fi."),
    (" likes dramas (2) Prediction: No </answer>", "likes dramas"),
    (" Comedies, Prediction: Yes", "Comedies,"),
    (" Thrillers.\nCandidate video: x", "Thrillers."),
    ("  Romance  and\tdrama </answer> more", "Romance and drama"),
    (" <think>hidden</think>", ""),
    ("", ""),
])
def test_preference_line_keeps_what_the_model_wrote_about_the_user(completion, line):
    from vragent.agents.parsing import preference_line

    assert preference_line(completion) == line


def test_preference_line_is_bounded():
    from vragent.agents.parsing import PREFERENCE_CHARS, preference_line

    assert len(preference_line("word " * 500)) <= PREFERENCE_CHARS
