"""Evaluation of US-agent policies and non-LLM baselines (rl/evaluation.py, rl/baselines.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
    Scorer,
    argmax_tie_break,
    as_rows,
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
from vragent.rl.fitted_baselines import RecommenderScorer, history_interactions

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


# ---------------------------------------------------------------------------- baselines


def test_popularity_scorer_median_over_catalogue():
    pop = {1: 10, 2: 5, 3: 1}
    # The catalogue includes two never-watched items: median over (10, 5, 1, 0, 0) = 1.
    scorer = PopularityScorer(pop, catalogue=[1, 2, 3, 4, 5])
    assert scorer.median == 1.0 and scorer.threshold == 1.0
    rows = [bare_row("judgement", "g", 7, [i], [], label="Yes") for i in (1, 2, 3, 4)]
    assert scorer.judge(rows).tolist() == [True, True, False, False]
    assert scorer.judgement_scores(rows).tolist() == [10, 5, 1, 0]
    # Median over the mapping's keys only: (10, 5, 1) -> 5.
    assert PopularityScorer(pop).median == 5.0
    sel = [bare_row("selection", "s1", 7, [3, 1, 2], [], correct=1)]
    assert scorer.select(sel) == [1]


def test_popularity_from_interactions_and_tie_break_is_seeded_per_row():
    frame = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "order": [0, 1, 0]})
    scorer = PopularityScorer.from_interactions(frame, catalogue=[5, 6, 7, 8])
    assert scorer.popularity == {5: 2.0, 6: 1.0}
    assert scorer.median == 0.5
    rows = [bare_row("selection", f"s{k}", k, [7, 8, 9], [], correct=0) for k in range(60)]
    picks = scorer.select(rows)
    assert set(picks) == {0, 1, 2}  # all tied at 0: a seeded draw, not always the first
    assert picks == scorer.select(rows)
    # A row's pick does not depend on the other rows or their order.
    assert scorer.select(rows[::-1]) == picks[::-1]
    assert scorer.select(rows[5:6]) == picks[5:6]
    first = PopularityScorer.from_interactions(frame, tie_break="first")
    assert set(first.select(rows)) == {0}


def test_random_scorer_is_seeded_and_order_free():
    rows = [bare_row("selection", f"s{k}", k, [1, 2, 3, 4], [], correct=k % 4)
            for k in range(400)]
    a, b = RandomScorer(seed=3), RandomScorer(seed=4)
    assert a.select(rows) == RandomScorer(seed=3).select(rows)
    assert a.select(rows) != b.select(rows)
    assert a.select(rows[::-1]) == a.select(rows)[::-1]
    acc = selection_metrics([r["correct_index"] for r in rows], a.select(rows))["accuracy"]
    assert 0.15 < acc < 0.35
    jrows = [bare_row("judgement", f"g{k}", k, [k], [], label="Yes") for k in range(400)]
    scores = a.judgement_scores(jrows)
    assert ((scores >= 0) & (scores < 1)).all()
    assert 0.4 < a.judge(jrows).mean() < 0.6


def _toy_interactions() -> pd.DataFrame:
    seqs = {1: [1, 2, 3], 2: [1, 2], 3: [2, 3, 4], 4: [5]}
    return pd.DataFrame([(u, i, k) for u, s in seqs.items() for k, i in enumerate(s)],
                        columns=["user_id", "item_id", "order"])


def test_itemknn_scores_by_hand():
    frame = _toy_interactions()
    co = ItemKNNScorer(similarity="cooccurrence", k_neighbors=None,
                       popularity_fallback=False).fit(frame)
    # co(1,2) = 2 (users 1, 2); co(1,3) = 1; co(2,3) = 2; co(2,4) = co(3,4) = 1; 5 alone.
    rows = [bare_row("selection", "s", 9, [2, 3, 4, 5, 99], [1], correct=0),
            bare_row("selection", "t", 9, [1, 4], [2, 3, 3, 77], correct=0)]
    s = co.item_scores(rows)
    assert s[0].tolist() == [2.0, 1.0, 0.0, 0.0, 0.0]  # unknown item 99 scores 0
    assert s[1].tolist() == [3.0, 2.0]  # duplicate history item counted once; 77 ignored
    cos = ItemKNNScorer(shrink=0.0, k_neighbors=None, popularity_fallback=False).fit(frame)
    n = {1: 2, 2: 3, 3: 2, 4: 1}
    expected = [2 / math.sqrt(n[1] * n[2]), 1 / math.sqrt(n[1] * n[3]), 0.0, 0.0, 0.0]
    assert np.allclose(cos.item_scores(rows[:1])[0], expected)
    # k_neighbors=1: item 1 keeps only its best neighbour (2).
    top1 = ItemKNNScorer(similarity="cooccurrence", k_neighbors=1,
                         popularity_fallback=False).fit(frame)
    assert top1.item_scores(rows[:1])[0].tolist() == [2.0, 0.0, 0.0, 0.0, 0.0]
    # The popularity fallback orders unconnected candidates below every real score.
    fb = ItemKNNScorer(similarity="cooccurrence", k_neighbors=None).fit(frame)
    sc = fb.item_scores(rows[:1])[0]
    assert sc[0] == 2.0 and sc[1] == 1.0 and 0 < sc[3] < 1.0 and sc[4] == 0.0
    assert sc[2] == sc[3]  # items 4 and 5 are both watched once


def test_itemknn_threshold_tuned_on_training_rows():
    frame = _toy_interactions()
    knn = ItemKNNScorer(similarity="cooccurrence", k_neighbors=None, popularity_fallback=False)
    with pytest.raises(RuntimeError):
        knn.item_scores([bare_row("judgement", "g", 1, [1], [2])])
    knn.fit(frame)
    train = [bare_row("judgement", "a", 1, [2], [1], label="Yes"),
             bare_row("judgement", "a", 1, [5], [1], label="No"),
             bare_row("judgement", "b", 2, [3], [2], label="Yes"),
             bare_row("judgement", "b", 2, [4], [2], label="No")]
    with pytest.raises(ValueError, match="fit_threshold"):
        knn.judge(train)
    knn.fit_threshold(train)
    assert knn.judge(train).tolist() == [True, False, True, False]
    with pytest.raises(ValueError):
        knn.judgement_scores([bare_row("judgement", "x", 1, [1, 2], [])])


def test_recommender_scorer_and_history_interactions():
    from vragent.environments.recommenders import make_recommender

    train = _toy_interactions()
    rows = [bare_row("selection", "s", 50, [2, 3, 4, 99], [1, 2], correct=1),
            bare_row("judgement", "j", 50, [3], [1], label="Yes")]
    hist = history_interactions(rows)
    assert hist.to_dict("list") == {"user_id": [50, 50], "item_id": [1, 2], "order": [0, 1]}
    rec = make_recommender("itemknn").fit(pd.concat([train, hist], ignore_index=True))
    scorer = RecommenderScorer(rec)
    assert scorer.name == "itemknn"
    s = scorer.item_scores(rows)
    full = rec.score([50])[0]
    col = {int(i): k for k, i in enumerate(rec.item_ids)}
    assert s[0][:3].tolist() == [float(full[col[i]]) for i in (2, 3, 4)]
    assert s[0][3] == -np.inf  # not in the recommender's catalogue
    assert s[1][0] == float(full[col[3]])
    assert isinstance(scorer, Scorer)
    # Unknown users get the recommender's fallback (popularity for the built-in models).
    unknown = RecommenderScorer(make_recommender("popular").fit(train), name="pop")
    assert unknown.item_scores([bare_row("selection", "u", 999, [2, 5], [], correct=0)])[0] \
        .tolist() == [3.0, 1.0]


def test_as_rows_accepts_datasets_frames_and_lists():
    rows = [bare_row("judgement", "g", 1, [1], [2], label="Yes")]
    assert as_rows(rows) is rows
    assert as_rows(pd.DataFrame(rows))[0]["item_ids"] == [1]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(JUDGEMENT_ROWS)
    assert as_rows(ds)[0]["prompt"] == JUDGEMENT_ROWS[0]["prompt"]
    mixed = datasets.Dataset.from_list([*JUDGEMENT_ROWS, *_selection_rows()])
    backend = ScriptedBackendForTests(complete=lambda p: _answer("Yes"))
    df = evaluate({"s": LLMPolicy(backend, modes=("generate",)), "r": RandomScorer()}, mixed)
    assert df["n"].tolist() == [4, 4, 3, 3]


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


# ---------------------------------------------------------------------------- calibration


def real_next_item_rows(ds, seed: int, m_judgement: int = 1, m_selection: int = 3) -> list[dict]:
    """The calibration rows: each user's last item against uniform random unseen items.

    A small stand-in for rl/datasets.py's builder (scorer fields only, no prompt text).
    """
    seqs = ds.sequences()
    catalogue = ds.items["item_id"].to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows = []
    for user, seq in seqs.items():
        if len(seq) < 2:
            continue
        history, target, seen = seq[:-1], seq[-1], set(seq)
        negatives: list[int] = []
        while len(negatives) < m_judgement + m_selection:
            c = int(catalogue[rng.integers(catalogue.size)])
            if c not in seen and c not in negatives:
                negatives.append(c)
        for item, label in [(target, "Yes"), *((n, "No") for n in negatives[:m_judgement])]:
            rows.append(bare_row("judgement", f"j{user}", user, [item], history, label=label,
                                 m=m_judgement))
        cands = [target, *negatives[m_judgement:]]
        perm = rng.permutation(len(cands))
        rows.append(bare_row("selection", f"s{user}", user, [cands[i] for i in perm], history,
                             correct=int(np.flatnonzero(perm == 0)[0]), m=m_selection))
    return rows


CALIBRATION = [
    # kind, folder, seeds, issue's (judgement, selection) accuracy of the popularity prior
    ("movielens-100k", "movielens-100k", tuple(range(10)), (0.707, 0.618)),
    ("microlens", "microlens-100k", (0,), (0.627, 0.442)),
]


@pytest.mark.parametrize(("kind", "folder", "seeds", "expected"), CALIBRATION,
                         ids=[c[0] for c in CALIBRATION])
def test_calibration_popularity_prior_and_itemknn(data_dir: Path, kind, folder, seeds, expected,
                                                  capsys):
    from vragent.environments.datasets import load_dataset

    path = data_dir / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    t0 = time.perf_counter()
    ds = load_dataset(kind, path)
    catalogue = ds.items["item_id"].tolist()
    pop_acc, knn_res, rnd_res = [], [], []
    for seed in seeds:
        rows = real_next_item_rows(ds, seed)
        # Popularity over the users' histories: every held-out target excluded.
        histories = history_interactions(rows)
        pop = PopularityScorer.from_interactions(histories, catalogue, seed=seed)
        df = evaluate({"popularity": pop}, rows)
        pop_acc.append(df.set_index("task")["accuracy"])
        # Item-kNN vs. random on held-out users; the threshold is tuned on the other users.
        users = np.array(sorted({r["user_id"] for r in rows}))
        test_users = set(np.random.default_rng(seed).choice(users, users.size // 5,
                                                            replace=False).tolist())
        train = [r for r in rows if r["user_id"] not in test_users]
        test = [r for r in rows if r["user_id"] in test_users]
        knn = ItemKNNScorer(seed=seed).fit(histories, catalogue).fit_threshold(train)
        res = evaluate({"itemknn": knn, "random": RandomScorer(seed)}, test)
        knn_res.append(res[res["model"] == "itemknn"].set_index("task"))
        rnd_res.append(res[res["model"] == "random"].set_index("task"))
    jud = float(np.mean([a["judgement"] for a in pop_acc]))
    sel = float(np.mean([a["selection"] for a in pop_acc]))
    knn_j = float(np.mean([r.loc["judgement", "accuracy"] for r in knn_res]))
    knn_s = float(np.mean([r.loc["selection", "accuracy"] for r in knn_res]))
    knn_auc = float(np.mean([r.loc["judgement", "auc"] for r in knn_res]))
    rnd_j = float(np.mean([r.loc["judgement", "accuracy"] for r in rnd_res]))
    rnd_s = float(np.mean([r.loc["selection", "accuracy"] for r in rnd_res]))
    with capsys.disabled():
        print(f"\n{kind}: popularity judgement {jud:.3f} (issue {expected[0]}), selection "
              f"{sel:.3f} (issue {expected[1]}); item-kNN {knn_j:.3f}/{knn_s:.3f} "
              f"(AUC {knn_auc:.3f}) vs random {rnd_j:.3f}/{rnd_s:.3f}; "
              f"{time.perf_counter() - t0:.1f}s")
    assert jud == pytest.approx(expected[0], abs=0.03)
    assert sel == pytest.approx(expected[1], abs=0.03)
    assert knn_j > rnd_j + 0.1 and knn_s > rnd_s + 0.2 and knn_auc > 0.6


def test_response_model_scorer_is_a_real_baseline_on_movielens(data_dir: Path, capsys):
    """The simulator's learned user model, scored like any baseline on real next items: far
    above chance on held-out users, with collaborative item vectors from the histories."""
    from vragent.environments.datasets import load_dataset
    from vragent.rl.fitted_baselines import ResponseModelScorer

    path = data_dir / "movielens-100k"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    ds = load_dataset("movielens-100k", path)
    rows = real_next_item_rows(ds, 0)
    histories = history_interactions(rows)
    users = np.array(sorted({r["user_id"] for r in rows}))
    test_users = set(np.random.default_rng(0).choice(users, users.size // 5,
                                                     replace=False).tolist())
    train = [r for r in rows if r["user_id"] not in test_users]
    test = [r for r in rows if r["user_id"] in test_users]
    learned = ResponseModelScorer.fit_on(histories, seed=0).fit_threshold(train)
    res = evaluate({"learned": learned, "random": RandomScorer(0)}, test).set_index(
        ["model", "task"])
    with capsys.disabled():
        print(f"\nlearned response model on MovieLens-100K held-out users: judgement "
              f"{res.loc[('learned', 'judgement'), 'accuracy']:.3f} (AUC "
              f"{res.loc[('learned', 'judgement'), 'auc']:.3f}), selection "
              f"{res.loc[('learned', 'selection'), 'accuracy']:.3f}")
    assert res.loc[("learned", "judgement"), "auc"] > 0.75
    assert (res.loc[("learned", "selection"), "accuracy"]
            > res.loc[("random", "selection"), "accuracy"] + 0.2)
    # Scores depend on the row alone, not on which rows share the call.
    assert np.allclose(learned.item_scores(test[:3])[2], learned.item_scores(test[2:3])[0])
