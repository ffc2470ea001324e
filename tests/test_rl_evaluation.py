"""Evaluation of US-agent policies and non-LLM baselines (rl/evaluation.py, rl/baselines.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest
from vragent.agents.backends.base import ChatPrompt, Generation, LLMBackend, Score
from vragent.agents.prompts import SCORE_PREFIX, THINK_PREFIX, PersonaView, judgement_prompt
from vragent.agents.selection import (
    LETTER_PREFIX,
    selection_letter_prompt,
    selection_prompt,
    shown_titles,
)
from vragent.rl.baselines import (
    ItemKNNScorer,
    PopularityScorer,
    RandomScorer,
    argmax_tie_break,
    tune_threshold,
)
from vragent.rl.eval_report import results_markdown
from vragent.rl.evaluation import (
    COLUMNS,
    EVAL_TEMPERATURE,
    EVAL_TOP_P,
    LLMPolicy,
    evaluate,
    judgement_metrics,
    judgement_score_prompt,
    pairwise_auc,
    selection_metrics,
    selection_score_prompt,
    subsample_groups,
)

# ---------------------------------------------------------------------------- row builders


def _messages(prompt: ChatPrompt) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in prompt.messages]


def judgement_row(group: str, user: int, item: int, title: str, label: str, *,
                  history: Sequence[tuple[int, str]] = ((1, "Cooking pasta"), (2, "Cat nap")),
                  protocol: str = "random", m: int = 1) -> dict:
    persona = PersonaView(description="a test user", history_titles=tuple(t for _, t in history))
    prompt = judgement_prompt(persona, title)
    return {"task": "judgement", "protocol": protocol, "m": m, "group_id": group,
            "user_id": user, "item_ids": [item], "history_ids": [i for i, _ in history],
            "history_titles": shown_titles([t for _, t in history]),
            "prompt": _messages(prompt), "assistant_prefix": prompt.assistant_prefix,
            "candidates": [title], "label": label, "correct_index": -1, "source": "test",
            "split": "test"}


def selection_row(group: str, user: int, items: Sequence[int], titles: Sequence[str],
                  correct: int, *, history: Sequence[tuple[int, str]] = ((1, "Cooking pasta"),),
                  protocol: str = "random", m: int = 3) -> dict:
    prompt = selection_prompt([t for _, t in history], titles)
    shown = shown_titles(titles)
    return {"task": "selection", "protocol": protocol, "m": m, "group_id": group,
            "user_id": user, "item_ids": list(items), "history_ids": [i for i, _ in history],
            "history_titles": shown_titles([t for _, t in history]),
            "prompt": _messages(prompt), "assistant_prefix": prompt.assistant_prefix,
            "candidates": shown, "label": shown[correct], "correct_index": correct,
            "source": "test", "split": "test"}


def bare_row(task: str, group: str, user: int, items: Sequence[int], history: Sequence[int], *,
             label: str = "", correct: int = -1, protocol: str = "random", m: int = 1) -> dict:
    """A row without prompt text: enough for the non-LLM scorers."""
    return {"task": task, "protocol": protocol, "m": m, "group_id": group, "user_id": user,
            "item_ids": list(items), "history_ids": list(history), "history_titles": [],
            "prompt": [],
            "assistant_prefix": THINK_PREFIX, "candidates": [], "label": label,
            "correct_index": correct, "source": "test", "split": "test"}


# ---------------------------------------------------------------------------- fake backend


def _candidate_of(prompt: ChatPrompt) -> str:
    """The judgement candidate: the last line of the user message."""
    return str(prompt.messages[-1][1]).rsplit("\n", 1)[-1]


class ScriptedBackendForTests(LLMBackend):
    """Returns scripted completions and option probabilities; can inject faults.

    Args:
        complete: prompt -> completion text.
        probs: (prompt, options) -> option probabilities, or None for "no option found".
        drop_one: return one result fewer than asked (a broken backend).
    """

    kind = "scripted"

    def __init__(self, complete: Callable[[ChatPrompt], str] | None = None,
                 probs: Callable[[ChatPrompt, Sequence[str]], dict | None] | None = None,
                 drop_one: bool = False) -> None:
        self.complete = complete or (lambda p: "")
        self.probs = probs or (lambda p, o: {x: 1 / len(o) for x in o})
        self.drop_one = drop_one
        self.generate_calls: list[dict] = []
        self.score_calls: list[dict] = []

    @property
    def model_id(self) -> str:
        return "scripted"

    def generate(self, prompts, *, max_new_tokens=96, temperature=0.7, top_p=0.95, seed=0):
        self.generate_calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens,
                                    "temperature": temperature, "top_p": top_p, "seed": seed})
        out = [Generation(text=self.complete(p), tokens_in=1, tokens_out=1, latency_s=0.0)
               for p in prompts]
        return out[:-1] if self.drop_one else out

    def score(self, prompts, options=("Yes", "No")):
        self.score_calls.append({"prompts": list(prompts), "options": tuple(options)})
        out = []
        for p in prompts:
            probs = self.probs(p, options)
            found = probs is not None
            probs = probs if found else {o: 1 / len(options) for o in options}
            out.append(Score(probs=probs, tokens_in=1, latency_s=0.0, found=found))
        return out[:-1] if self.drop_one else out


def _answer(pred: str) -> str:
    # The assistant prefix "<think>" is already written; the completion continues it.
    return f" reasoning here </think><answer> (1) User_preference: pets\n(2) Prediction: {pred} " \
           "</answer>"


def _selection_answer(title: str) -> str:
    return f" thinking </think><answer> (1) User_preference: pets\n(2) Next_video: {title} " \
           "</answer>"


JUDGEMENT_ROWS = [
    judgement_row("g1", 1, 10, "Cat video", "Yes"),
    judgement_row("g1", 1, 11, "Car crash", "No"),
    judgement_row("g2", 2, 12, "Dog video", "Yes"),
    judgement_row("g2", 2, 13, "Stock news", "No"),
]


# ---------------------------------------------------------------------------- metrics


def test_judgement_metrics_exact():
    labels = ["Yes", "No", "Yes", "No", "Yes"]
    preds = [True, True, None, False, False]
    scores = [0.9, 0.6, 0.4, 0.4, 0.2]
    groups = ["a", "a", "b", "b", "b"]
    m = judgement_metrics(labels, preds, scores, groups)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(2 / 5)  # None is wrong even though the label is Yes
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # Pairs within groups only: a: (0.9 > 0.6) = 1; b: (0.4 vs 0.4) = 0.5, (0.2 vs 0.4) = 0.
    assert m["auc"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["none_rate"] == pytest.approx(1 / 5)


def test_judgement_metrics_edge_cases():
    m = judgement_metrics(["Yes", "No"], [False, False])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5 and m["auc"] is None
    m = judgement_metrics([False, False], [True, False], [0.3, 0.1], ["g", "g"])
    assert m["recall"] == 0.0 and m["auc"] is None  # no positive label: no pair
    assert judgement_metrics([], [])["accuracy"] is None
    with pytest.raises(ValueError):
        judgement_metrics(["Yes"], [True, False])
    # Booleans and strings mean the same labels.
    assert judgement_metrics([True, False], [True, False]) == \
        judgement_metrics(["Yes", "No"], [True, False])


def test_pairwise_auc_groups_and_ties():
    assert pairwise_auc(["Yes", "No"], [1.0, 1.0], ["g", "g"]) == 0.5
    # Across groups the negative is higher, but only within-group pairs count.
    assert pairwise_auc(["Yes", "No", "Yes", "No"], [0.5, 0.4, 0.9, 0.8],
                        ["a", "a", "b", "b"]) == 1.0
    assert pairwise_auc(["Yes", "No", "Yes", "No"], [0.5, 0.4, 0.9, 0.8]) == 0.75
    # Several negatives per positive (1:m).
    assert pairwise_auc(["Yes", "No", "No", "No"], [0.5, 0.1, 0.5, 0.9], list("gggg")) == \
        pytest.approx((1 + 0.5 + 0) / 3)


def test_selection_metrics():
    m = selection_metrics([0, 1, 2, 3], [0, None, 2, 1])
    assert m == {"n": 4, "accuracy": 0.5, "none_rate": 0.25}
    assert selection_metrics([], [])["accuracy"] is None
    with pytest.raises(ValueError):
        selection_metrics([0], [])


# ---------------------------------------------------------------------------- thresholds, ties


def test_tune_threshold():
    t = tune_threshold([0.1, 0.2, 0.8, 0.9], ["No", "No", "Yes", "Yes"])
    assert 0.2 <= t < 0.8
    assert t == pytest.approx(0.5)  # the midpoint between the classes
    # Everything Yes is best: the lowest threshold.
    assert tune_threshold([1.0, 2.0, 3.0], ["Yes", "Yes", "Yes"]) == -math.inf
    # Everything No is best: at (or above) the top score.
    t = tune_threshold([1.0, 2.0], ["No", "No"])
    assert not (np.array([1.0, 2.0]) > t).any()
    # -inf scores are fine.
    t = tune_threshold([-np.inf, -np.inf, 1.0, 2.0], ["No", "No", "Yes", "Yes"])
    assert -np.inf <= t < 1.0 and (np.array([1.0, 2.0]) > t).all()
    with pytest.raises(ValueError):
        tune_threshold([0.1], ["Yes", "No"])
    with pytest.raises(ValueError):
        tune_threshold([np.nan], ["Yes"])


def test_argmax_tie_break():
    assert argmax_tie_break(np.array([1, 3, 3]), None) == 1
    picks = {argmax_tie_break(np.array([3, 3, 3, 0]), np.random.default_rng(s)) for s in range(40)}
    assert picks == {0, 1, 2}
    # A lazily built generator is only needed on ties.
    assert argmax_tie_break(np.array([0, 5]), lambda: pytest.fail("no tie")) == 1


# ---------------------------------------------------------------------------- prompts


def test_letter_prompt_is_rebuilt_from_the_row_fields():
    history = ["Cooking pasta", "Cat <b>nap</b>", "Dr. Who recap"]
    titles = ["Funny cats", "Stock news", "Pasta 2", "Road trip"]
    row = selection_row("s", 1, [1, 2, 3, 4], titles, 2,
                        history=[(k, t) for k, t in enumerate(history)])
    assert selection_score_prompt(row) == selection_letter_prompt(history, titles)
    assert selection_score_prompt(row).assistant_prefix == LETTER_PREFIX
    # The rendered prompt is never read back: a row whose text says otherwise still scores
    # the history its fields hold.
    row["prompt"] = [{"role": "user", "content": "no headers here"}]
    assert selection_score_prompt(row) == selection_letter_prompt(history, titles)
    empty = selection_row("e", 1, [1, 2], titles[:2], 0, history=[])
    assert selection_score_prompt(empty) == selection_letter_prompt([], titles[:2])


def test_judgement_score_prompt_is_the_no_thinking_layout():
    row = JUDGEMENT_ROWS[0]
    persona = PersonaView(description="a test user", history_titles=("Cooking pasta", "Cat nap"))
    assert judgement_score_prompt(row) == judgement_prompt(persona, "Cat video", think=False)
    assert judgement_score_prompt(row).assistant_prefix == SCORE_PREFIX


# ---------------------------------------------------------------------------- LLM policy


def test_llm_judgement_generate_exact_with_scripted_backend():
    script = {"Cat video": _answer("Yes"), "Car crash": _answer("Yes"),
              "Dog video": "garbage without tags", "Stock news": _answer("No")}
    backend = ScriptedBackendForTests(complete=lambda p: script[_candidate_of(p)])
    policy = LLMPolicy(backend, modes=("generate",), max_new_tokens=64, seed=5, batch_size=3)
    df = evaluate({"scripted": policy}, JUDGEMENT_ROWS)
    assert list(df.columns) == list(COLUMNS) and len(df) == 1
    rec = df.iloc[0]
    assert (rec["model"], rec["mode"], rec["task"], rec["protocol"], rec["m"]) == \
        ("scripted", "generate", "judgement", "random", 1)
    assert rec["n"] == 4
    assert rec["accuracy"] == 0.5  # Cat right, Car wrong, Dog unreadable, Stock right
    assert rec["precision"] == 0.5 and rec["recall"] == 0.5 and rec["f1"] == 0.5
    assert rec["none_rate"] == 0.25 and rec["format_rate"] == 0.75
    words = [len(script[t].split()) for t in ("Cat video", "Car crash", "Dog video",
                                              "Stock news")]
    assert rec["answer_words"] == pytest.approx(np.mean(words))
    assert math.isnan(rec["auc"])  # no scores in generate mode
    # Sampling follows the paper's evaluation setting, seeded per batch, in batches.
    calls = backend.generate_calls
    assert [len(c["prompts"]) for c in calls] == [3, 1]
    assert [c["seed"] for c in calls] == [5, 8]
    assert all(c["temperature"] == EVAL_TEMPERATURE == 0.8 for c in calls)
    assert all(c["top_p"] == EVAL_TOP_P == 0.95 and c["max_new_tokens"] == 64 for c in calls)
    assert calls[0]["prompts"][0].assistant_prefix == THINK_PREFIX


def test_llm_judgement_score_mode_exact():
    p_yes = {"Cat video": 0.9, "Car crash": 0.6, "Dog video": 0.4, "Stock news": 0.1}
    backend = ScriptedBackendForTests(
        probs=lambda p, o: {"Yes": p_yes[_candidate_of(p)], "No": 1 - p_yes[_candidate_of(p)]})
    df = evaluate({"s": LLMPolicy(backend, modes=("score",))}, JUDGEMENT_ROWS)
    rec = df.iloc[0]
    assert rec["mode"] == "score" and rec["accuracy"] == 0.5
    assert rec["auc"] == 1.0  # within each group the positive has the higher p(Yes)
    assert rec["none_rate"] == 0.0
    assert math.isnan(rec["format_rate"]) and math.isnan(rec["answer_words"])
    call = backend.score_calls[0]
    assert call["options"] == ("Yes", "No")
    assert all(p.assistant_prefix == SCORE_PREFIX for p in call["prompts"])


def test_llm_score_mode_option_not_found_counts_as_no_answer():
    backend = ScriptedBackendForTests(
        probs=lambda p, o: None if _candidate_of(p) == "Cat video" else {"Yes": 0.2, "No": 0.8})
    rec = evaluate({"s": LLMPolicy(backend, modes=("score",))}, JUDGEMENT_ROWS).iloc[0]
    assert rec["none_rate"] == 0.25
    assert rec["accuracy"] == 0.5  # Cat: no answer; Dog: wrong; the two negatives right


SEL_TITLES = [["Funny cats", "Stock news", "Pasta 2", "Road trip"],
              ["Car review", "Cat yoga", "Bread", "Chess"],
              ["Opera", "Jazz", "Rock", "Blues"]]


def _selection_rows() -> list[dict]:
    return [selection_row(f"s{k}", k, [10 * k + j for j in range(4)], t, c)
            for k, (t, c) in enumerate(zip(SEL_TITLES, [0, 1, 3], strict=True))]


def test_llm_selection_generate_and_score_exact():
    picks = {"Funny cats": _selection_answer("Funny cats"),  # right
             "Car review": _selection_answer("2"),  # candidate number 2 = Cat yoga: right
             "Opera": "I like music"}  # no answer block: no pick
    rows = _selection_rows()

    def complete(p: ChatPrompt) -> str:
        return next(v for k, v in picks.items() if k in str(p.messages[-1][1]))

    def probs(p: ChatPrompt, options: Sequence[str]) -> dict:
        text = str(p.messages[-1][1])
        best = {"Funny cats": "B", "Car review": "B", "Opera": "D"}
        pick = next(v for k, v in best.items() if k in text)
        return {o: (0.7 if o == pick else 0.1) for o in options}

    backend = ScriptedBackendForTests(complete=complete, probs=probs)
    df = evaluate({"x": LLMPolicy(backend)}, rows)
    gen = df[df["mode"] == "generate"].iloc[0]
    assert gen["task"] == "selection" and gen["m"] == 3 and gen["n"] == 3
    assert gen["accuracy"] == pytest.approx(2 / 3)
    assert gen["none_rate"] == pytest.approx(1 / 3)
    assert gen["format_rate"] == pytest.approx(2 / 3)
    assert math.isnan(gen["precision"]) and math.isnan(gen["auc"])
    sc = df[df["mode"] == "score"].iloc[0]
    assert sc["accuracy"] == pytest.approx(2 / 3)  # B wrong for row 0, B and D right
    assert backend.score_calls[0]["options"] == ("A", "B", "C", "D")
    assert backend.score_calls[0]["prompts"][0].assistant_prefix == LETTER_PREFIX


def test_broken_backend_raises_instead_of_misaligning():
    backend = ScriptedBackendForTests(complete=lambda p: _answer("Yes"), drop_one=True)
    for mode in ("generate", "score"):
        with pytest.raises(RuntimeError, match="returned"):
            evaluate({"b": LLMPolicy(backend, modes=(mode,))}, JUDGEMENT_ROWS)


def test_bare_backend_gets_the_policy_defaults():
    backend = ScriptedBackendForTests(complete=lambda p: _answer("Yes"))
    df = evaluate({"bare": backend}, JUDGEMENT_ROWS)
    assert df["mode"].tolist() == ["score", "generate"]
    call = backend.generate_calls[0]
    assert (call["temperature"], call["top_p"], call["seed"]) == (0.8, 0.95, 0)


def test_evaluate_rejects_unknown_models_and_tasks():
    with pytest.raises(TypeError):
        evaluate({"x": object()}, JUDGEMENT_ROWS)
    with pytest.raises(ValueError, match="task"):
        evaluate({"r": RandomScorer()}, [{**JUDGEMENT_ROWS[0], "task": "ranking"}])
    with pytest.raises(ValueError):
        LLMPolicy(ScriptedBackendForTests(), modes=("beam",))


# ---------------------------------------------------------------------------- the table


def _many_rows(n_groups: int = 30) -> list[dict]:
    rows = []
    for g in range(n_groups):
        rows += [bare_row("judgement", f"j{g}", g, [g], [100 + g], label="Yes", m=2),
                 bare_row("judgement", f"j{g}", g, [g + 1000], [100 + g], label="No", m=2),
                 bare_row("judgement", f"j{g}", g, [g + 2000], [100 + g], label="No", m=2)]
        rows.append(bare_row("selection", f"s{g}", g, [g, g + 1000, g + 2000, g + 3000],
                             [100 + g], correct=g % 4, m=3))
    return rows


def test_subsample_groups_keeps_whole_groups():
    rows = [r for r in _many_rows() if r["task"] == "judgement"]
    kept = subsample_groups(rows, 10, seed=1)
    assert len(kept) == 9  # three whole groups of 3
    groups = {r["group_id"] for r in kept}
    assert all(sum(r["group_id"] == g for r in kept) == 3 for g in groups)
    assert kept == subsample_groups(rows, 10, seed=1)
    assert kept != subsample_groups(rows, 10, seed=2)
    assert subsample_groups(rows, None) == rows
    assert len(subsample_groups(rows, 1)) == 3  # at least one group


def test_evaluate_baselines_table_and_markdown():
    rows = _many_rows()
    pop = PopularityScorer({g: g for g in range(30)}, catalogue=range(4000))
    df = evaluate({"popularity": pop, "random": RandomScorer(seed=0)}, rows,
                  max_rows_per_group=12, seed=0)
    assert len(df) == 4 and set(df["mode"]) == {"scorer"}
    jud = df[df["task"] == "judgement"]
    assert (jud["n"] == 12).all() and (jud["m"] == 2).all()
    pop_j = jud[jud["model"] == "popularity"].iloc[0]
    # The positives (count g > 0 = median over the catalogue) vs. never-watched negatives.
    assert pop_j["auc"] >= 0.75 and pop_j["none_rate"] == 0.0
    sel = df[df["task"] == "selection"]
    assert (sel["n"] == 12).all()
    # The same rows for every model: the subsample is drawn once per cell.
    # (The paired differences depend on which baselines share the cell: left out here.)
    df2 = evaluate({"random": RandomScorer(seed=0)}, rows, max_rows_per_group=12, seed=0)
    own = [c for c in df.columns if c != "seconds" and c != "vs" and not c.startswith("diff")]
    assert df2[own].equals(df.loc[df["model"] == "random", own].reset_index(drop=True))
    md = results_markdown(df, "Baselines", "python -m vragent.rl.evaluation --demo")
    assert md.startswith("# Baselines\n")
    assert "python -m vragent.rl.evaluation --demo" in md
    assert "## judgement · random · 1:2" in md and "## selection · random · 1 of 4" in md
    assert "| popularity | scorer | 12 |" in md
    assert results_markdown(df.iloc[0:0], "Empty", "cmd").endswith("(no rows)\n")


def test_tiny_model_end_to_end(tiny_backend):
    rows = [*JUDGEMENT_ROWS, *_selection_rows()]
    policy = LLMPolicy(tiny_backend, max_new_tokens=8, batch_size=4, seed=0)
    knn = ItemKNNScorer().fit(pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 10, 2, 12],
                                            "order": [0, 1, 0, 1]}))
    knn.threshold = 0.0
    df = evaluate({"tiny": policy, "itemknn": knn}, rows)
    assert len(df) == 2 * 2 + 2
    for col in ("accuracy", "none_rate"):
        assert df[col].between(0, 1).all()
    gen = df[df["mode"] == "generate"]
    assert gen["format_rate"].between(0, 1).all() and (gen["answer_words"] >= 0).all()
    sc = df[(df["mode"] == "score") & (df["task"] == "judgement")].iloc[0]
    assert 0 <= sc["auc"] <= 1 and 0 <= sc["precision"] <= 1
    # Seeded: a rerun replays the same answers.
    again = evaluate({"tiny": policy}, rows)
    cols = ["accuracy", "format_rate", "answer_words", "none_rate"]
    assert again[cols].equals(df[df["model"] == "tiny"][cols].reset_index(drop=True))
