"""`vragent experiment ip-agent`: a hand-checked toy case, then the real data, reduced."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner
from vragent.sandbox.cli import app
from vragent.sandbox.ip_experiment import ARMS, IPExperimentConfig, prepare, run_ip_experiment
from vragent.sandbox.perception import item_text_for
from vragent.sandbox.store import Store

# Three users, six items. Leave-one-out: train = first 3, valid = 4th, test = 5th.
#   u1: 1 2 3 | 4 | 5     u2: 1 2 3 | 6 | 4     u3: 1 2 5 | 3 | 6
# Train counts (most-popular's scores): 1:3  2:3  3:2  5:1  4:0  6:0.
# Test ranks, history (train + valid) masked, ties pessimistic:
#   u1: left {5:1, 6:0}, target 5 -> rank 1 -> NDCG 1
#   u2: left {4:0, 5:1}, target 4 -> rank 2 -> NDCG 1/log2(3)
#   u3: left {4:0, 6:0}, target 6 ties 4 -> rank 2 -> NDCG 1/log2(3)
TOY_PAIRS = "1\t1 2 3 4 5\r\n2\t1 2 3 6 4\r\n3\t1 2 5 3 6\r\n"
TOY_TITLES = ("item,title\r\n1,cat jumps # cats\r\n2,dog runs # dogs\r\n3,cat sleeps # cats\r\n"
              "4,dog barks # dogs\r\n5,bird sings # birds\r\n6,fish swims # fish\r\n")
WANT_NDCG = (1 + 2 / math.log2(3)) / 3


@pytest.fixture
def toy_data(tmp_path):
    folder = tmp_path / "toy-microlens"
    sub = folder / "MicroLens-50k"
    sub.mkdir(parents=True)
    (sub / "MicroLens-50k_pairs.tsv").write_text(TOY_PAIRS)
    (sub / "MicroLens-50k_titles.csv").write_text(TOY_TITLES)
    return folder


def test_toy_case_metrics_are_the_hand_computed_ones(toy_data, tmp_path):
    cfg = IPExperimentConfig(data=str(toy_data), items=0, seeds=2, epochs=1, dim=8,
                             ip_backend="tiny", ip_batch=8, arms=["most-popular", "SASRec-ID"])
    res = run_ip_experiment(cfg, Store(f"sqlite:///{tmp_path}/toy.sqlite"), log=lambda m: None)
    assert res["data"] == {"catalogue_items": 6, "users": 3, "cold_start_users": 3,
                           "cold_start_rule": "full", "interactions_after_cut": 15,
                           "dataset_users": 3, "dataset_items": 6}
    pop = res["summary"]["most-popular"]
    for group in ("all", "cold"):  # every toy user has exactly 5 interactions
        assert pop[group]["HR@10"]["mean"] == 1.0
        assert pop[group]["NDCG@10"]["mean"] == pytest.approx(WANT_NDCG, abs=1e-9)
        assert pop[group]["NDCG@10"]["std"] == 0.0 and pop[group]["NDCG@10"]["n"] == 2
    sas = res["summary"]["SASRec-ID"]["all"]
    # Two items are left per user after masking, so any model has HR@10 = 1 and NDCG in
    # [1/log2(3), 1].
    assert sas["HR@10"]["mean"] == 1.0
    assert 1 / math.log2(3) - 1e-9 <= sas["NDCG@10"]["mean"] <= 1.0
    assert res["profiles"]["profiles"] == 6 and res["profiles"]["made_now"] == 6


def _cut_world() -> SimpleNamespace:
    """Items 1-6 are watched by everyone; item 7 by user 2 only, so a 6-item cut drops it.

    User 1: 5 interactions (cold by either rule). User 2: 6 in the full data, 5 after the cut
    (cold only after the cut). User 3: 7 interactions (never cold).
    """
    seqs = {1: [1, 2, 3, 4, 5], 2: [1, 7, 2, 3, 4, 6], 3: [1, 2, 3, 4, 5, 6, 2]}
    rows = [(u, i, t) for u, seq in seqs.items() for t, i in enumerate(seq)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "order"])
    items = pd.DataFrame({"item_id": range(1, 8), "title": [f"t{i}" for i in range(1, 8)]})
    return SimpleNamespace(interactions=inter, items=items)


def test_cold_start_users_are_counted_in_the_full_data_by_default():
    ds = _cut_world()
    paper = prepare(ds, IPExperimentConfig(data="x", items=6))
    assert 7 not in paper.items
    assert paper.users == [1, 2, 3]
    assert paper.cold == [1]  # user 2 had 6 interactions before the cut: not cold-start
    assert paper.stats["cold_start_rule"] == "full"
    after = prepare(ds, IPExperimentConfig(data="x", items=6, cold_start="after_cut"))
    assert after.cold == [1, 2]
    with pytest.raises(ValueError, match="cold_start"):
        IPExperimentConfig(data="x", cold_start="later")


def test_item_text_modes():
    titles = {1: "a cat", 2: "a dog"}
    profiles = {1: "A cat naps. #cats"}
    assert item_text_for("title", titles, profiles) == titles
    assert item_text_for("profile", titles, profiles) == {1: "A cat naps. #cats", 2: ""}
    assert item_text_for("profile", titles, profiles, fallback_to_title=True)[2] == "a dog"
    assert item_text_for("title+profile", titles, profiles)[1] == "a cat A cat naps. #cats"
    with pytest.raises(ValueError, match="unknown item text"):
        item_text_for("cover", titles, profiles)


def test_unknown_arm_is_rejected(toy_data, tmp_path):
    result = CliRunner().invoke(app, ["experiment", "ip-agent", "--data", str(toy_data),
                                      "--arms", "SASRec-XL", "--db",
                                      f"sqlite:///{tmp_path}/x.sqlite"])
    assert result.exit_code == 2 and "unknown arm" in result.output


@pytest.mark.slow
def test_reduced_experiment_on_real_microlens(data_dir, tmp_path):
    """The CI setting: a user subset, one seed, two epochs, tiny IP model, real MiniLM."""
    out = tmp_path / "out"
    report = tmp_path / "results.md"
    result = CliRunner().invoke(app, [
        "experiment", "ip-agent", "--data", str(data_dir / "microlens-100k"), "--items", "80",
        "--users", "300", "--seeds", "1", "--epochs", "2", "--ip-backend", "tiny",
        "--rerank-users", "10", "--out", str(out), "--report", str(report),
        "--db", f"sqlite:///{tmp_path}/real.sqlite"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {a[0] for a in ARMS}
    assert res["data"]["users"] == 300 and res["data"]["catalogue_items"] == 80
    for name, s in res["summary"].items():
        for group in ("all", "cold"):
            m = {k: v["mean"] for k, v in s[group].items()}
            assert 0 <= m["NDCG@10"] <= m["HR@10"] <= m["HR@20"] <= 1, name
            assert m["NDCG@10"] <= m["NDCG@20"], name
    # 80 items: most-popular is a real baseline, SASRec-ID must at least be in its league.
    assert res["summary"]["most-popular"]["all"]["HR@10"]["mean"] > 10 / 80
    assert res["rerank"]["users"] == 10 and res["rerank"]["hr_before"] == res["rerank"]["hr_after"]
    text = report.read_text()
    assert "| SASRec-text(title+IP) |" in text and "vragent experiment ip-agent" in text


@pytest.mark.parametrize(("flag", "value"), [("--cold-start", "later"),
                                             ("--sasrec-activation", "tanh")])
def test_bad_cold_start_or_activation_is_one_line(toy_data, tmp_path, flag, value):
    result = CliRunner().invoke(app, ["experiment", "ip-agent", "--data", str(toy_data), flag,
                                      value, "--db", f"sqlite:///{tmp_path}/x.sqlite"])
    assert result.exit_code == 2 and value in result.output
