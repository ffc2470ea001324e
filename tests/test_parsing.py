from agents.parsing import parse_judgement

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
    from agents.parsing import parse_judgement

    ok = parse_judgement(" (1) User_preference: drama\n(2) Prediction: No </answer>", "<answer>")
    assert ok.format_ok and ok.prediction == "No"
    bad = parse_judgement(" (2) Prediction: No </answer></answer>", "<answer>")
    assert not bad.format_ok and bad.prediction == "No"
    assert not parse_judgement(" x </think> <answer> Prediction: Yes </answer>", "").format_ok
