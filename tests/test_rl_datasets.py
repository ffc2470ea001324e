"""RL datasets: user split, negative protocols, prompts, store rows, save/load (rl/datasets.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from vragent.agents.persona import build_persona, item_line
from vragent.agents.prompts import (
    judgement_prompt,
)
from vragent.agents.selection import selection_prompt, shown_titles
from vragent.environments.datasets import load_dataset
from vragent.environments.schema import Dataset
from vragent.environments.splits import as_sequences
from vragent.rl.datasets import (
    COLUMNS,
    BuildStats,
    RLDataConfig,
    RLDataError,
    build_and_save,
    build_rl_data,
    load_popularity,
    load_rl_data,
    save_rl_data,
    split_users,
    user_samples,
)
from vragent.rl.negatives import (
    STREAM_HARD_FALLBACK,
    NegativeSampler,
    fit_hard_recommender,
    hard_negatives,
    hard_slice,
    item_popularity,
    top_k_lists,
)
from vragent.sandbox.perception import item_texts

from tests.conftest import real_data

# ------------------------------------------------------------------------------ helpers


def _synthetic(n_users: int = 80, seed: int = 3, **kw) -> Dataset:
    return load_dataset("synthetic", None, n_users=n_users, seed=seed, **kw)


def _cfg(**kw) -> RLDataConfig:
    base = {"dataset": "synthetic", "eval_users": 20, "train_users": None, "seed": 1}
    return RLDataConfig(**{**base, **kw})


def _build(ds: Dataset, **kw) -> tuple:
    stats = BuildStats()
    return build_rl_data(_cfg(**kw), ds, stats=stats), stats


def _frame(part) -> pd.DataFrame:
    return part.select_columns([c for c in COLUMNS if c != "prompt"]).to_pandas()


def _real_dir(name: str) -> Path:
    """A folder of the shared real data; skipped locally when absent, a failure in CI."""
    return real_data(name, required_in_ci=True)


@pytest.fixture(scope="module")
def synth() -> Dataset:
    return _synthetic()


@pytest.fixture(scope="module")
def built(synth):
    return _build(synth)


@pytest.fixture(scope="module")
def ml100k():
    path = _real_dir("movielens-100k")
    ds = load_dataset("movielens-100k", path)
    stats = BuildStats()
    start = time.perf_counter()
    dd = build_rl_data(RLDataConfig(dataset="movielens-100k", dataset_path=str(path)), ds,
                       stats=stats)
    return ds, dd, stats, time.perf_counter() - start


# ------------------------------------------------------------------------------ checks


def _check_users(ds: Dataset, dd, stats: BuildStats, history_len: int = 10, max_len: int = 13
                 ) -> None:
    train, held_out = set(dd["train"]["user_id"]), set(dd["eval"]["user_id"])
    assert train and held_out and not train & held_out
    assert stats.users["train"] == len(train) and stats.users["eval"] == len(held_out)
    seqs = as_sequences(ds)
    for part in dd.values():
        frame = _frame(part)
        yes = frame[frame["label"] == "Yes"]
        for user, items, hist in zip(yes["user_id"], yes["item_ids"], yes["history_ids"],
                                     strict=True):
            cut = seqs[user][-max_len:]
            assert items.tolist() == [cut[-1]]  # the positive is the real next item
            assert hist.tolist() == cut[:-1][-history_len:]


def _check_unseen(ds: Dataset, dd) -> None:
    seqs = {u: set(s) for u, s in as_sequences(ds).items()}
    for part in dd.values():
        for r in _frame(part).itertuples():
            if r.task == "judgement" and r.label == "No":
                assert r.item_ids[0] not in seqs[r.user_id]
            if r.task == "selection":
                wrong = [i for k, i in enumerate(r.item_ids) if k != r.correct_index]
                assert not set(wrong) & seqs[r.user_id]


def _check_groups(dd) -> None:
    for part in dd.values():
        frame = _frame(part)
        jud = frame[frame["task"] == "judgement"].assign(
            yes=lambda f: f["label"] == "Yes", item=lambda f: f["item_ids"].str[0])
        assert set(jud["label"]) <= {"Yes", "No"} and (jud["correct_index"] == -1).all()
        groups = jud.groupby("group_id").agg(n=("yes", "size"), yes=("yes", "sum"),
                                             m=("m", "first"), first=("yes", "first"),
                                             items=("item", "nunique"))
        assert (groups["n"] == 1 + groups["m"]).all() and (groups["yes"] == 1).all()
        assert groups["first"].all()  # the positive leads its group
        assert (groups["items"] == groups["n"]).all()
        sel = frame[frame["task"] == "selection"]
        assert sel["group_id"].is_unique and (sel["m"] == 3).all()
        for r in sel.itertuples():
            assert len(r.item_ids) == 4 == len(set(r.item_ids)) == len(r.candidates)
            assert r.label == r.candidates[r.correct_index]


def _prior_accuracy(frame: pd.DataFrame, pop: pd.Series, protocol: str) -> tuple[float, float]:
    """Judgement m=1: how often the more popular item is the positive (ties count half),
    and the median |log popularity ratio| of negative to positive."""
    g = frame[(frame["task"] == "judgement") & (frame["m"] == 1) & (frame["protocol"] == protocol)]
    first = g.assign(item=g["item_ids"].map(lambda x: int(x[0])))
    pos = first[first["label"] == "Yes"].set_index("group_id")["item"]
    neg = first[first["label"] == "No"].set_index("group_id")["item"].reindex(pos.index)
    pp = pop.reindex(pos.to_numpy()).to_numpy(dtype=float)
    pn = pop.reindex(neg.to_numpy()).to_numpy(dtype=float)
    acc = float(np.mean((pp > pn) + 0.5 * (pp == pn)))
    return acc, float(np.median(np.abs(np.log((pn + 1) / (pp + 1)))))


# ------------------------------------------------------------------------------ synthetic


def test_split_is_disjoint_seeded_and_capped() -> None:
    users = range(1, 101)
    train, held_out = split_users(users, seed=0, eval_users=0.2)
    assert len(held_out) == 20 and len(train) == 80 and not set(train) & set(held_out)
    capped, held_again = split_users(users, seed=0, eval_users=0.2, train_users=10)
    assert held_again == held_out and len(capped) == 10 and set(capped) <= set(train)
    assert split_users(users, seed=1, eval_users=0.2)[1] != held_out
    assert split_users(users, seed=0, eval_users=500)[0] == []


def test_user_samples_cut_and_keep() -> None:
    seqs = {1: list(range(1, 21)), 2: [5, 6, 7], 3: [1, 2, 3, 4, 5]}
    samples = user_samples(seqs, min_len=5, max_len=13)
    assert sorted(samples) == [1, 3]
    assert samples[1].target == 20 and samples[1].history == tuple(range(8, 20))
    assert samples[1].sequence == frozenset(range(1, 21))
    assert samples[1].before_target == frozenset(range(1, 20))


def test_rows_on_synthetic_world(synth, built) -> None:
    dd, stats = built
    assert set(dd) == {"train", "eval"} and tuple(dd["eval"].column_names) == COLUMNS
    _check_users(synth, dd, stats)
    _check_unseen(synth, dd)
    _check_groups(dd)
    ev, tr = _frame(dd["eval"]), _frame(dd["train"])
    assert set(ev["protocol"]) == {"random", "popular", "hard"}
    assert set(ev.loc[ev["task"] == "judgement", "m"]) == {1, 2, 3, 9}
    assert set(tr["protocol"]) == {"random", "hard"}
    assert set(tr.loc[tr["task"] == "judgement", "m"]) == {1}
    assert (ev["split"] == "eval").all() and (tr["split"] == "train").all()
    assert (ev["source"] == "real").all()
    # 20 eval users x 3 protocols x (2 + 3 + 4 + 10 judgement rows + 1 selection row).
    assert len(ev) == 20 * 3 * 20 and len(tr) == 60 * 2 * 3


def test_prompts_are_the_agents_prompts(synth, built) -> None:
    """Rows carry exactly the prompts the simulator's helpers write."""
    dd, _ = built
    texts = item_texts(synth.items)
    users = synth.users.set_index("user_id")
    seqs = as_sequences(synth)
    for row in dd["eval"].select(range(0, len(dd["eval"]), 7)):
        assert row["assistant_prefix"] == "<think>"
        hist = seqs[row["user_id"]][-13:-1]
        if row["task"] == "judgement":
            prof = users.loc[row["user_id"], ["age", "gender", "activity"]].to_dict()
            persona = build_persona(prof, [texts[i] for i in hist], 10)
            line = item_line(texts[row["item_ids"][0]])
            assert row["candidates"] == [line]
            assert row["prompt"] == judgement_prompt(persona, line).as_dicts()
        else:
            titles = [texts[i].title for i in row["item_ids"]]
            chat = selection_prompt([texts[i].title for i in hist[-10:]], titles)
            assert row["prompt"] == chat.as_dicts()
            assert row["candidates"] == shown_titles(titles)


def test_reproducible_for_a_seed(synth, built) -> None:
    dd, _ = built
    again, _ = _build(synth)
    assert again["eval"].to_list() == dd["eval"].to_list()
    assert again["train"].to_list() == dd["train"].to_list()
    other, _ = _build(synth, seed=2)
    assert set(other["eval"]["user_id"]) != set(dd["eval"]["user_id"])
    same_users, _ = _build(synth, seed=2, eval_users=1000)
    all_users, _ = _build(synth, eval_users=1000)
    assert same_users["eval"]["item_ids"] != all_users["eval"]["item_ids"]


def test_popularity_helper() -> None:
    pop = item_popularity({1: [1, 2, 2], 2: [2, 3]}, items=[1, 2, 3, 4])
    assert pop.to_dict() == {1: 1, 2: 3, 3: 1, 4: 0} and pop.name == "popularity"
    assert item_popularity({1: [5]}).to_dict() == {5: 1}


def test_popularity_matched_negatives_defeat_the_prior() -> None:
    ds = _synthetic(n_users=400, n_items=1000, seed=0)
    dd, stats = _build(ds, eval_users=200, popular_window=20)
    frame = _frame(dd["eval"])
    acc_pop, ratio_pop = _prior_accuracy(frame, stats.popularity, "popular")
    acc_rand, ratio_rand = _prior_accuracy(frame, stats.popularity, "random")
    assert abs(acc_pop - 0.5) < 0.1 and acc_rand > 0.7
    assert ratio_pop < 0.3 < ratio_rand


def test_popular_sampler_balances_sides() -> None:
    pop = pd.Series({i: 1000 - i for i in range(1, 201)})
    sampler = NegativeSampler(pop.index, pop, seed=0, window=5)
    negs = sampler.popular(user=1, positive=100, seen={100, 99, 98}, n=10)
    assert len(set(negs)) == 10 and not {98, 99, 100} & set(negs)
    assert all(92 <= i <= 105 for i in negs)  # five unseen per side, nearest first
    assert sampler.popular(1, 100, {100}, 10) == sampler.popular(1, 100, {100}, 10)
    # At the top of the ranking there is nothing above: all negatives come from below.
    assert all(i > 1 for i in sampler.popular(2, 1, {1}, 4))


def test_hard_rule_units() -> None:
    top = list(range(101, 111))
    assert hard_slice(top, 3) == [108, 109, 110] and hard_slice(top, 9) == top[1:]
    assert hard_slice(top[:9], 3) is None
    fallback = [1, 2, 3]
    assert hard_negatives(top, {5, 6}, 3, fallback) == ([108, 109, 110], False)
    assert hard_negatives(top, {109}, 3, fallback) == ([1, 2, 3], True)  # all or nothing
    assert hard_negatives(top, {109}, 1, fallback) == ([110], False)
    assert hard_negatives(top[:8], set(), 1, fallback) == ([1], True)


def _hand_made() -> Dataset:
    """Item k (1..20) is watched by 25 - k filler users, so a popularity ranking is exact.

    User 500 watched 1..5 and then 14 (rank 9 of its masked list), user 501 1..5 and then 20.
    """
    seqs = {j: [*range(1, min(20, 25 - j) + 1), 100 + j] for j in range(1, 25)}
    seqs[500] = [1, 2, 3, 4, 5, 14]
    seqs[501] = [1, 2, 3, 4, 5, 20]
    inter = pd.DataFrame(
        [(u, i, k) for u, s in seqs.items() for k, i in enumerate(s)],
        columns=["user_id", "item_id", "order"]).astype("int64")
    ids = sorted(set(inter["item_id"]))
    items = pd.DataFrame({"item_id": ids, "title": [f"Video {i}" for i in ids],
                          "category": "", "tags": ""})
    return Dataset("hand", pd.DataFrame({"user_id": sorted(seqs)}), items, inter)


def test_hard_negatives_follow_the_recommender_or_fall_back() -> None:
    ds = _hand_made()
    dd, stats = _build(ds, hard_recommender="popular", protocols=("hard",), min_len=2,
                       max_len=50, eval_users=1000)
    frame = _frame(dd["eval"])
    samples = user_samples(ds, 2, 50)
    sampler = NegativeSampler(np.unique(ds.interactions["item_id"]), stats.popularity, 1)

    def negatives(user: int, task: str, m: int) -> list[int]:
        r = frame[(frame["user_id"] == user) & (frame["task"] == task) & (frame["m"] == m)]
        if task == "selection":
            row = r.iloc[0]
            return [i for k, i in enumerate(row["item_ids"]) if k != row["correct_index"]]
        return [int(i[0]) for i in r.loc[r["label"] == "No", "item_ids"]]

    fallback = sampler.random(500, samples[500].sequence, 9, STREAM_HARD_FALLBACK)
    assert negatives(500, "judgement", 1) == [15]  # rank 10 is not in the sequence
    assert negatives(500, "judgement", 2) == fallback[:2]  # the target sits at rank 9
    assert negatives(500, "judgement", 9) == fallback
    assert sorted(negatives(500, "selection", 3)) == sorted(fallback[:3])
    assert negatives(501, "judgement", 9) == list(range(7, 16))  # ranks 2-10
    assert sorted(negatives(501, "selection", 3)) == [13, 14, 15]  # ranks 8-10
    fb = stats.hard_fallbacks["eval"]
    assert fb["judgement:2"]["samples"] == len(samples) and fb["judgement:2"]["fallback"] >= 1


def test_hard_negatives_match_the_fitted_itemknn(synth, built) -> None:
    dd, stats = built
    samples = user_samples(synth, 5, 13)
    model = fit_hard_recommender("itemknn", {}, {u: s.history for u, s in samples.items()},
                                 np.unique(synth.interactions["item_id"]), seed=1)
    frame = _frame(dd["eval"])
    sel = frame[(frame["task"] == "selection") & (frame["protocol"] == "hard")]
    users = sel["user_id"].tolist()
    tops = top_k_lists(model, users, exclude={u: set(samples[u].before_target) for u in users})
    sampler = NegativeSampler(np.unique(synth.interactions["item_id"]), stats.popularity, 1)
    fell_back = 0
    for r in sel.itertuples():
        s = samples[r.user_id]
        negs = sorted(i for k, i in enumerate(r.item_ids) if k != r.correct_index)
        if set(tops[r.user_id][7:10]) & s.sequence:
            fell_back += 1
            random = sampler.random(r.user_id, s.sequence, 9, STREAM_HARD_FALLBACK)[:3]
            assert negs == sorted(random)
        else:
            assert negs == sorted(tops[r.user_id][7:10])
    assert stats.hard_fallbacks["eval"]["selection:3"] == {"samples": len(sel),
                                                           "fallback": fell_back}


def test_config_validation() -> None:
    with pytest.raises(RLDataError, match="datset: unknown setting"):
        RLDataConfig.from_dict({"datset": "x"})
    with pytest.raises(RLDataError, match="judgement_ms"):
        RLDataConfig.from_dict({"judgement_ms": [10]})
    with pytest.raises(RLDataError, match="protocols"):
        RLDataConfig(protocols=("easy",))
    with pytest.raises(RLDataError, match=r"^min_len: .*greater than or equal to 2$"):
        RLDataConfig(min_len=1)
    with pytest.raises(RLDataError, match="store_runs need a store_url"):
        RLDataConfig.from_dict({"store_runs": ["r1"]})
    cfg = RLDataConfig.from_dict({"judgement_ms": [1, 2], "protocols": ["random"]})
    assert cfg.judgement_ms == (1, 2) and cfg.protocols == ("random",)
    RLDataConfig(judgement_ms=(20,), protocols=("random",))  # no top-10 needed
    assert RLDataConfig(eval_users=0.2).eval_users == 0.2 and RLDataConfig().eval_users == 500


# ------------------------------------------------------------------------------ save / load


def test_save_load_round_trip(synth, tmp_path) -> None:
    cfg = _cfg()
    dd, manifest = build_and_save(cfg, tmp_path / "rl", synth)
    loaded, man = load_rl_data(tmp_path / "rl")
    assert man == json.loads(json.dumps(manifest, default=str))
    for split in ("train", "eval"):
        assert loaded[split].to_list() == dd[split].to_list()
        assert man["sizes"][split]["rows"] == len(dd[split])
    row = loaded["eval"][0]
    assert isinstance(row["prompt"][0], dict) and set(row["prompt"][0]) == {"role", "content"}
    by = man["sizes"]["eval"]["by"]
    assert by["judgement"]["popular"]["9"] == 20 * 10 and by["selection"]["hard"]["3"] == 20
    assert man["users"] == {"train": 60, "eval": 20, "kept": 80, "dropped": 0}
    assert man["seed"] == 1 and man["dataset"]["kind"] == "synthetic"
    assert man["hard"]["recommender"] == "itemknn" and "eval" in man["hard"]["fallbacks"]
    assert man["history_len"] == 10 and man["max_len"] == 13 and man["created"]
    pop = load_popularity(tmp_path / "rl")
    assert pop.sum() == man["popularity"]["interactions"]
    assert len(pop) == synth.interactions["item_id"].nunique() == man["popularity"]["items"]
    # Saving again replaces the folder in place.
    save_rl_data(dd, tmp_path / "rl", manifest)
    assert load_rl_data(tmp_path / "rl")[1]["sizes"] == man["sizes"]


def test_load_errors_name_the_folder(synth, tmp_path) -> None:
    with pytest.raises(RLDataError, match="no RL data folder") as err:
        load_rl_data(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(RLDataError, match="not an RL data folder"):
        save_rl_data(_build(synth)[0], tmp_path / "other", {})
    assert (tmp_path / "other" / "keep.txt").exists()
    with pytest.raises(RLDataError, match=r"manifest\.json"):
        load_rl_data(tmp_path / "other")
    build_and_save(_cfg(eval_users=5, train_users=5), tmp_path / "rl", synth)
    (tmp_path / "rl" / "dataset_dict.json").unlink()
    with pytest.raises(RLDataError, match="unreadable dataset") as err:
        load_rl_data(tmp_path / "rl")
    assert str(tmp_path / "rl") in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ real data


def test_movielens_100k_rows(ml100k) -> None:
    ds, dd, stats, seconds = ml100k
    assert seconds < 30  # a few seconds on an idle machine
    assert stats.users == {"train": 443, "eval": 500, "kept": 943, "dropped": 0}
    _check_users(ds, dd, stats)
    _check_unseen(ds, dd)
    _check_groups(dd)
    frame = _frame(dd["eval"])
    acc_pop, ratio_pop = _prior_accuracy(frame, stats.popularity, "popular")
    acc_rand, ratio_rand = _prior_accuracy(frame, stats.popularity, "random")
    assert abs(acc_pop - 0.5) < 0.08 and acc_rand > 0.7
    assert ratio_pop < 0.25 < 1.0 < ratio_rand
    fb = stats.hard_fallbacks["eval"]
    assert fb["selection:3"]["samples"] == 500 and 0 <= fb["selection:3"]["fallback"] < 100
