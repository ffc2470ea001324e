"""Calibration of the non-LLM baselines on real held-out rows (MovieLens, MicroLens)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from vragent.rl.baselines import (
    ItemKNNScorer,
    PopularityScorer,
    RandomScorer,
)
from vragent.rl.evaluation import (
    evaluate,
)
from vragent.rl.fitted_baselines import history_interactions

from tests.test_rl_evaluation import bare_row

# ---------------------------------------------------------------------------- row builders


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
