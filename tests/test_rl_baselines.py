"""The non-LLM baselines of the held-out evaluation (rl/baselines.py, rl/fitted_baselines.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from vragent.rl.baselines import (
    ItemKNNScorer,
    PopularityScorer,
    RandomScorer,
    Scorer,
    as_rows,
)
from vragent.rl.evaluation import (
    LLMPolicy,
    evaluate,
    selection_metrics,
)
from vragent.rl.fitted_baselines import RecommenderScorer, history_interactions

from tests.test_rl_evaluation import (
    JUDGEMENT_ROWS,
    ScriptedBackendForTests,
    _answer,
    _selection_rows,
    bare_row,
)

# ---------------------------------------------------------------------------- row builders


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
