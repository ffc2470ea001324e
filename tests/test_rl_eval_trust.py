"""Evaluation you can trust: intervals, paired differences, user-grouped prefix scoring and
baselines fitted on all logs but the held-out targets (rl/eval_stats.py, rl/evaluation.py,
rl/fitted_baselines.py, rl/policy_eval.py)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from vragent.agents.prompts import PersonaView, judgement_prompt
from vragent.rl.baselines import PopularityScorer, RandomScorer
from vragent.rl.eval_report import paired_markdown, results_markdown
from vragent.rl.eval_stats import RowOutcome, add_intervals, percentile_interval, resample_counts
from vragent.rl.evaluation import LLMPolicy, evaluate, judgement_score_prompt
from vragent.rl.fitted_baselines import row_targets, training_interactions

# ---------------------------------------------------------------------------- rows


def _row(task: str, group: str, user: int, items: list[int], history: list[int], *,
         label: str = "No", correct: int = -1, m: int = 1, protocol: str = "random") -> dict:
    return {"task": task, "protocol": protocol, "m": m, "group_id": group, "user_id": user,
            "item_ids": items, "history_ids": history, "prompt": [], "assistant_prefix": "",
            "candidates": [f"item {i}" for i in items], "label": label,
            "correct_index": correct, "source": "test", "split": "eval"}


def _cells(n_users: int = 60) -> list[dict]:
    """Judgement 1:2 groups and selection rows; popular items (low ids) are the positives."""
    rows = []
    for u in range(n_users):
        pos = u % 20
        rows += [_row("judgement", f"j{u}", u, [pos], [99], label="Yes", m=2),
                 _row("judgement", f"j{u}", u, [200 + u], [99], m=2),
                 _row("judgement", f"j{u}", u, [30 + u % 5], [99], m=2),
                 _row("selection", f"s{u}", u, [200 + u, pos, 300 + u, 25], [99], correct=1,
                      m=3)]
    return rows


def _popularity() -> PopularityScorer:
    return PopularityScorer({i: 100 - i for i in range(40)}, catalogue=range(400))


# ---------------------------------------------------------------------------- statistics


def test_intervals_contain_the_point_estimate_and_are_seeded():
    rows = _cells()
    models = {"popularity": _popularity(), "random": RandomScorer(0)}
    df = evaluate(models, rows, seed=3)
    for rec in df.to_dict("records"):
        metrics = ["accuracy", "auc"] if rec["task"] == "judgement" else ["accuracy"]
        for metric in metrics:
            lo, hi = rec[f"{metric}_lo"], rec[f"{metric}_hi"]
            assert lo <= rec[metric] <= hi, (rec["model"], rec["task"], metric)
            assert 0.0 <= lo <= hi <= 1.0
        if rec["task"] == "selection":
            assert np.isnan(rec["auc_lo"])
    # Random is near chance with a wide interval, popularity well above it.
    jud = df[df.task == "judgement"].set_index("model")
    assert jud.loc["random", "auc_lo"] < 0.5 < jud.loc["random", "auc_hi"]
    assert jud.loc["popularity", "auc_lo"] > jud.loc["random", "auc_hi"]
    # The same seed gives the same intervals; another seed other ones.
    again = evaluate(models, rows, seed=3)
    assert again.drop(columns="seconds").equals(df.drop(columns="seconds"))
    other = evaluate(models, rows, seed=4)
    assert not np.allclose(other["accuracy_lo"], df["accuracy_lo"], equal_nan=True)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rows = _cells()
    pop = _popularity()
    df = evaluate({"popularity": pop, "popularity again": _popularity(),
                   "random": RandomScorer(0)}, rows, seed=0)
    for task, metric in (("judgement", "auc"), ("judgement", "accuracy"),
                         ("selection", "accuracy")):
        part = df[df.task == task].set_index("model")
        # Random is never the best baseline; the two identical models tie for it.
        assert set(part["vs"]) == {"popularity"}
        for name in ("popularity", "popularity again"):
            assert part.loc[name, f"diff_{metric}"] == 0.0
            assert part.loc[name, f"diff_{metric}_lo"] == 0.0
            assert part.loc[name, f"diff_{metric}_hi"] == 0.0
        # Random against it: the point difference and an interval around it, below zero.
        diff = part.loc["random", f"diff_{metric}"]
        assert diff == pytest.approx(part.loc["random", metric] - part.loc["popularity", metric])
        assert part.loc["random", f"diff_{metric}_lo"] <= diff <= part.loc[
            "random", f"diff_{metric}_hi"] < 0
    md = results_markdown(df, "T", "cmd")
    assert "Best baseline (Δ columns): popularity." in md
    assert "+0.000 [+0.000, +0.000]" in md
    assert "| judgement random 1:2 (AUC) | 180 | popularity |" in paired_markdown(df, "scorer")


def test_paired_bootstrap_matches_a_direct_resampling():
    """The vectorised paired bootstrap against a plain loop over resampled groups."""
    rng = np.random.default_rng(0)
    groups = [f"g{k:02d}" for k in range(40) for _ in range(3)]  # sorted as by the code
    labels = [j == 0 for _ in range(40) for j in range(3)]
    a, b = rng.random(120), rng.random(120)
    outcomes = {(name, "scorer", "judgement", "random", 2): RowOutcome(
        groups, [(s > 0.5) == y for s, y in zip(sc, labels, strict=True)], labels, list(sc))
        for name, sc in (("a", a), ("b", b))}
    table = pd.DataFrame([{"model": n, "mode": "scorer", "task": "judgement",
                           "protocol": "random", "m": 2} for n in ("a", "b")])
    out = add_intervals(table, outcomes, seed=7, n_boot=200).set_index("model")
    counts = resample_counts(40, 200, [7, zlib.crc32(b"boot/judgement/random/2")])

    def auc(scores: np.ndarray, weights: np.ndarray) -> float:
        s = scores.reshape(40, 3)
        wins = (s[:, :1] > s[:, 1:]).sum(axis=1)
        return float((weights * wins).sum() / (weights * 2).sum())

    direct = np.array([auc(b, w) - auc(a, w) for w in counts])  # vs is the better of the two
    best = out.loc["a", "vs"]
    assert best in ("a", "b")
    other = "b" if best == "a" else "a"
    sign = 1.0 if other == "b" else -1.0
    lo, hi = percentile_interval(sign * direct)
    assert out.loc[other, "diff_auc_lo"] == pytest.approx(lo)
    assert out.loc[other, "diff_auc_hi"] == pytest.approx(hi)


# ---------------------------------------------------------------------------- prefix scoring


def _prompt_rows() -> list[dict]:
    """Three users, each with judgement 1:1 and 1:3 groups over nested negatives."""
    titles = ["Cat video [pets]", "Car crash [autos]", "Dog video [pets]", "Stock news [news]",
              "Pasta night [food]", "Chess final [sports]"]
    rows = []
    for user in range(3):
        persona = PersonaView(f"User {user} likes {titles[user]}",
                              tuple(titles[(user + k) % 6] for k in range(3)))
        cands = [titles[(user + k) % 6] for k in range(4)]
        for m in (1, 3):
            for k, title in enumerate(cands[: m + 1]):
                chat = judgement_prompt(persona, title)
                rows.append({**_row("judgement", f"u{user}:m{m}", user, [k], [9],
                                    label="Yes" if k == 0 else "No", m=m),
                             "prompt": chat.as_dicts(),
                             "assistant_prefix": chat.assistant_prefix,
                             "candidates": [title]})
    return rows


def test_grouped_prefix_scoring_equals_the_naive_path(tiny_backend):
    rows = _prompt_rows()
    policy = LLMPolicy(tiny_backend, modes=("score",), users_per_call=2)
    tiny_backend.stats.clear()
    distinct = policy.prescore(rows)
    # 3 users x 4 candidates: the 1:1 prompts recur in the 1:3 groups and run once.
    assert distinct == 12 and len(rows) == 18
    grouped = [s.probs["Yes"] for s in policy.score(
        [judgement_score_prompt(r) for r in rows], ("Yes", "No"))]
    assert tiny_backend.stats["prefix_tokens"] > 0  # the prefix-reuse path ran
    naive = [s.probs["Yes"] for s in tiny_backend.score_naive(
        [judgement_score_prompt(r) for r in rows], ("Yes", "No"))]
    assert np.max(np.abs(np.array(grouped) - np.array(naive))) < 1e-4
    # And the table is the one the cell-by-cell path gives.
    fresh = LLMPolicy(tiny_backend, modes=("score",))
    by_cell = evaluate({"t": fresh}, rows, group_prefixes=False)
    prescored = evaluate({"t": LLMPolicy(tiny_backend, modes=("score",))}, rows)
    for col in ("accuracy", "auc", "auc_lo", "auc_hi"):
        assert np.allclose(by_cell[col], prescored[col], atol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------- fits


def test_training_interactions_keep_everything_but_the_targets():
    seqs = {1: [5, 6, 7, 8], 2: [5, 9, 7], 3: [8, 9, 6, 5], 4: [6, 6, 7]}
    rows = [_row("judgement", "g1", 1, [8], [6, 7], label="Yes"),
            _row("judgement", "g1", 1, [9], [6, 7]),
            _row("selection", "s4", 4, [1, 7], [6], correct=1, m=1)]
    held = row_targets(rows)
    assert held == {1: {8}, 4: {7}}
    inter = training_interactions(seqs, held)
    got = {u: g["item_id"].tolist() for u, g in inter.groupby("user_id")}
    # Held-out users keep what came before their target; everyone else everything.
    assert got == {1: [5, 6, 7], 2: [5, 9, 7], 3: [8, 9, 6, 5], 4: [6, 6]}
    assert (inter.groupby("user_id")["order"].apply(list).map(
        lambda o: o == list(range(len(o))))).all()
    with pytest.raises(ValueError, match="other logs"):
        training_interactions(seqs, {2: {8}})


def test_no_held_out_target_enters_any_baseline_fit(tmp_path: Path, monkeypatch):
    """End to end on a synthetic build: every fit sees all logs but no row's target."""
    import vragent.rl.policy_eval as pe
    from vragent.rl.datasets import RLDataConfig, build_and_save, load_source
    from vragent.rl.policy_eval import EvalConfig, run_eval

    cfg = RLDataConfig(dataset="synthetic", dataset_params={"n_users": 60, "seed": 2},
                       eval_users=15, train_users=None, judgement_ms=(1,),
                       protocols=("random",), train_protocols=("random",), seed=1)
    dd, _ = build_and_save(cfg, tmp_path / "data")
    seen: list[pd.DataFrame] = []
    real_fit = pe.fit_baselines

    def spy(interactions: pd.DataFrame, *args, **kwargs):
        # Every baseline (popularity, item-kNN, MF, the response model) fits on this frame.
        seen.append(interactions.copy())
        return real_fit(interactions, *args, **kwargs)

    monkeypatch.setattr(pe, "fit_baselines", spy)
    table, _ = run_eval(EvalConfig(data=str(tmp_path / "data"), base_model=None,
                                   recommenders=("mf",), max_groups=None, generate_groups=0,
                                   n_boot=50), log=lambda *_: None)
    assert {"popularity", "item-kNN", "mf scores"} <= set(table["model"])
    assert len(seen) == 1
    targets = row_targets([*dd["eval"], *dd["train"]])
    full = load_source(cfg).interactions
    for inter in seen:
        pairs = set(zip(inter["user_id"].tolist(), inter["item_id"].tolist(), strict=True))
        leaked = [(u, t) for u, ts in targets.items() for t in ts if (u, t) in pairs]
        assert not leaked
        # Not just the prompts' histories: the fit sees (nearly) the whole log.
        assert len(inter) >= len(full) - 2 * len(targets) - len(full) // 20
    assert table["auc_lo"].notna().any() and table["diff_auc"].notna().any()


def test_intervals_survive_the_store_and_the_report(tmp_path: Path):
    from vragent.rl.eval_report import headline_markdown, report_markdown, table_from_store
    from vragent.sandbox.store import Store
    from vragent.sandbox.training_log import log_eval

    df = evaluate({"popularity": _popularity(), "random": RandomScorer(0)}, _cells(), seed=0)
    store = Store(f"sqlite:///{tmp_path}/e.sqlite")
    log_eval(store, "e1", df.to_dict("records"), policy=None, data="d")
    keys = ["model", "mode", "task", "protocol", "m"]
    back = table_from_store(store, "e1").sort_values(keys).reset_index(drop=True)
    live = df.sort_values(keys).reset_index(drop=True)
    cols = ["auc", "auc_lo", "auc_hi", "accuracy_lo", "diff_accuracy", "diff_auc_hi"]
    assert np.allclose(back[cols].to_numpy(float), live[cols].to_numpy(float), equal_nan=True)
    assert back["vs"].tolist() == live["vs"].tolist()  # names found again by the same rule
    rec = df[(df.model == "popularity") & (df.task == "judgement")].iloc[0]
    assert f"{rec['auc']:.3f} [{rec['auc_lo']:.3f}, {rec['auc_hi']:.3f}]" in headline_markdown(df)
    assert "Brackets: 95 %" in report_markdown(df, "T", "cmd")
