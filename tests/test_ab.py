"""Simulated A/B experiments: pairing, the known-better arm, reports, resume, sweeps."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import select
from vragent.environments import metrics as em
from vragent.sandbox.ab import (
    AbError,
    analyse_experiment,
    create_experiment,
    run_experiment,
)
from vragent.sandbox.ab_arm_metrics import arm_stats
from vragent.sandbox.config import ScenarioError, apply_overrides, list_scenarios, parse_scenario
from vragent.sandbox.store import Decision, Impression, Metric, SimUser, Store
from vragent.sandbox.world import make_split, synthetic_world

from tests.conftest import REPO, tiny_scenario, write_scenario


def truth_scenario(**overrides) -> dict:
    """No LLM decisions: users answer with the synthetic world's true like probability."""
    sc = tiny_scenario(
        dataset={"kind": "synthetic",
                 "synthetic": {"n_users": 300, "n_items": 120, "mean_history": 12}},
        population={"size": 60, "history_len": 5},
        simulation={"steps": 3, "slate_size": 5, "users_per_task": 30, "refit_every": 0},
        arms=[{"name": "random", "recommender": "random"},
              {"name": "popular", "recommender": "popular"}],
        backend={"kind": "tiny", "trace_rate": 0.0},
        ip_agent={"enabled": False},
        social={"graph": "none"},
        response_model="truth",
    )
    for key, value in overrides.items():
        sc[key] = {**sc[key], **value} if isinstance(value, dict) and isinstance(
            sc.get(key), dict) else value
    return sc


def _experiment(tmp_path, sc, seeds, **kw):
    store = Store(f"sqlite:///{tmp_path}/ab.sqlite")
    path = write_scenario(tmp_path, sc)
    exp_id = create_experiment(store, str(path), seeds, **kw)
    run_experiment(store, exp_id)
    return store, exp_id, analyse_experiment(store, exp_id)


def _pooled(rows, metric, arm=None):
    return next(r for r in rows if r["seed"] is None and r["metric"] == metric
                and (arm is None or r["arm"] == arm))


def test_paired_ab_finds_the_arm_that_is_better_by_construction(tmp_path):
    sc = truth_scenario()
    store, exp_id, res = _experiment(tmp_path, sc, [3, 4])
    # The ground truth: the mean true like probability of what each arm showed. The simulated
    # actions are drawn from exactly these probabilities, so this is the arm that is better.
    exp = store.get_experiment(exp_id)
    truth = {"random": [], "popular": []}
    for seed, run_id in zip(exp.seeds, exp.run_ids, strict=True):
        world = synthetic_world(parse_scenario({**sc, "seed": seed}))
        with store.session() as s:
            rows = s.execute(select(Impression.arm, Impression.user_id, Impression.item_id)
                             .where(Impression.run_id == run_id)).all()
        for arm, user, item in rows:
            truth[arm].append(float(world.true_like_prob(np.array([user]), np.array([item]))[0]))
    better = max(truth, key=lambda a: np.mean(truth[a]))
    worse = "random" if better == "popular" else "popular"
    assert abs(np.mean(truth[better]) - np.mean(truth[worse])) > 0.02
    for metric in ("watch_rate", "like_rate"):
        c = _pooled(res.comparisons, metric)
        assert c["arm"] == "popular" and c["baseline"] == "random"
        sign = 1 if better == "popular" else -1
        assert sign * c["low"] > 0 and sign * c["high"] > 0, (metric, c)  # CI excludes 0
        assert c["p_value"] < 0.05
    # Per-seed rows exist for both seeds, and the results are in the store.
    assert {c["seed"] for c in res.comparisons} == {None, 3, 4}
    values, comps = store.ab_results(exp_id)
    assert len(comps) == len(res.comparisons) and len(values) == len(res.arm_values)
    assert store.get_experiment(exp_id).status == "finished"


def test_same_user_sees_the_same_random_stream_in_every_arm(tmp_path):
    # Two arms with the same recommender: common random numbers make every decision equal, so
    # every paired difference is exactly zero.
    sc = truth_scenario(arms=[{"name": "a", "recommender": "popular"},
                              {"name": "b", "recommender": "popular"}])
    store, exp_id, res = _experiment(tmp_path, sc, [5])
    run_id = store.get_experiment(exp_id).run_ids[0]
    with store.session() as s:
        rows = s.execute(select(Decision.arm, Decision.step, Decision.user_id,
                                Decision.position, Decision.item_id, Decision.action,
                                Decision.p_like).where(Decision.run_id == run_id)).all()
    by_arm = {arm: sorted(r[1:] for r in rows if r[0] == arm) for arm in ("a", "b")}
    assert by_arm["a"] == by_arm["b"] and len(by_arm["a"]) > 100
    for c in res.comparisons:
        if c["metric"] in ("watch_rate", "like_rate", "exit_rate", "session_length"):
            assert c["diff"] == 0 and c["low"] == 0 and c["high"] == 0
            assert c["p_value"] == 1.0


def test_a_different_arm_changes_decisions_only_through_the_slate(tmp_path):
    # Pairing does not mean equal outcomes: where two arms show the same item at the same slot
    # to the same user in the same step, the draw (and so the action) is the same.
    sc = truth_scenario(arms=[{"name": "random", "recommender": "random"},
                              {"name": "popular", "recommender": "popular"}])
    store, exp_id, _ = _experiment(tmp_path, sc, [7])
    run_id = store.get_experiment(exp_id).run_ids[0]
    with store.session() as s:
        rows = s.execute(select(Decision.arm, Decision.step, Decision.user_id,
                                Decision.position, Decision.item_id, Decision.action)
                         .where(Decision.run_id == run_id)).all()
    frame = pd.DataFrame(rows, columns=["arm", "step", "user", "pos", "item", "action"])
    both = frame[frame["arm"] == "random"].merge(frame[frame["arm"] == "popular"],
                                                 on=["step", "user", "pos", "item"])
    assert len(both) > 0
    assert (both["action_x"] == both["action_y"]).all()


def test_arm_metric_resampling_matches_the_plain_metrics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(3, 7)).astype(float)
    likes = np.minimum(x, 1.0)
    real = np.array([0.1, 0.2, np.nan, 0.5, 0.0, 0.3, 0.9])
    stats = arm_stats(x, likes, 20, real)
    for k, row in enumerate(x):
        padded = np.concatenate([np.zeros(13), row])
        assert stats["exposure_gini"][k] == pytest.approx(em.gini(padded))
        shown = [i for i, c in enumerate(row) for _ in range(int(c))]
        assert stats["coverage"][k] == pytest.approx(em.catalogue_coverage([shown], 20))
        known = [i for i in range(7) if not np.isnan(real[i]) and row[i] > 0]
        want = (sum(abs(likes[k, i] / row[i] - real[i]) * row[i] for i in known)
                / sum(row[i] for i in known))
        assert stats["like_calibration_error"][k] == pytest.approx(want)


def test_overrides_set_nested_keys_and_list_items():
    data = {"seed": 1, "population": {"size": 8},
            "arms": [{"name": "a", "recommender": "popular"},
                     {"name": "b", "recommender": "sasrec", "params": {"epochs": 20}}]}
    out = apply_overrides(data, ["population.size=3", "arms.1.params.epochs=2", "seed=9"],
                          "x.yaml")
    assert out["population"]["size"] == 3 and out["arms"][1]["params"]["epochs"] == 2
    assert out["seed"] == 9 and data["population"]["size"] == 8  # the input is not changed
    with pytest.raises(ScenarioError, match=r"override arms\.5\.name: '5' is not an index"):
        apply_overrides(data, ["arms.5.name=z"], "x.yaml")
    with pytest.raises(ScenarioError, match=r"not key\.path=value"):
        apply_overrides(data, ["population.size"], "x.yaml")


def test_experiment_needs_two_arms_and_a_real_baseline(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/ab.sqlite")
    one = write_scenario(tmp_path, truth_scenario(arms=[{"name": "a", "recommender": "popular"}]),
                         "one.yaml")
    with pytest.raises(AbError, match="at least two arms"):
        create_experiment(store, str(one), [1])
    two = write_scenario(tmp_path, truth_scenario(), "two.yaml")
    from vragent.sandbox.ab import AbSettings

    with pytest.raises(AbError, match="baseline 'nope' is not an arm"):
        create_experiment(store, str(two), [1], settings=AbSettings(baseline="nope"))
    with pytest.raises(AbError, match="distinct"):
        create_experiment(store, str(two), [1, 1])


def test_truth_users_need_the_synthetic_world():
    sc = tiny_scenario(response_model="truth", dataset={"kind": "movielens-100k"})
    with pytest.raises(ScenarioError, match=r"response_model 'truth' needs dataset\.kind"):
        parse_scenario(sc, "s.yaml")


def _cli(args, env_extra=None, timeout=900):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vragent.sandbox.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_interrupted_experiment_resumes_without_duplicate_runs(tmp_path):
    sc = truth_scenario(population={"size": 20}, simulation={"steps": 2})
    path = write_scenario(tmp_path, sc)
    db = f"sqlite:///{tmp_path}/ab.sqlite"
    out = tmp_path / "report"
    # Two seeds of two steps: the 3rd step's commit is inside the second seed's run.
    first = _cli(["ab", str(path), "--db", db, "--seeds", "2", "--out", str(out),
                  "--set", "seed=40"], {"VRAGENT_FAULT_KILL_AT": "log:3"})
    assert first.returncode == -9, first.stderr[-2000:]
    store = Store(db)
    (exp,) = store.list_experiments()
    assert exp.run_ids[0] and exp.run_ids[1]
    assert list(exp.seeds) == [40, 41]  # --set seed moves the experiment's seeds
    again = _cli(["ab", "--resume", exp.id, "--db", db, "--out", str(out)])
    assert again.returncode == 0, again.stderr[-2000:]
    exp = store.get_experiment(exp.id)
    assert exp.status == "finished" and len(store.list_runs()) == 2
    assert all(store.get_run(r).status == "finished" for r in exp.run_ids)
    assert (out / "report.md").is_file()


def test_ab_cli_rejects_bad_input_with_one_line(tmp_path):
    db = f"sqlite:///{tmp_path}/ab.sqlite"
    bad = _cli(["ab", str(tmp_path / "missing.yaml"), "--db", db])
    assert bad.returncode == 2 and "cannot read scenario" in bad.stderr
    path = write_scenario(tmp_path, truth_scenario())
    bad = _cli(["ab", str(path), "--db", db, "--set", "population.size=-1"])
    assert bad.returncode == 2 and "population.size" in bad.stderr
    bad = _cli(["ab", "--resume", "ab-nope", "--db", db])
    assert bad.returncode == 2 and "no experiment 'ab-nope'" in bad.stderr
    missing = write_scenario(tmp_path, {**truth_scenario(), "policy": "no-such-policy"}, "p.yaml")
    bad = _cli(["ab", str(missing), "--db", db], {"VRAGENT_POLICIES": str(tmp_path / "reg")})
    assert bad.returncode == 2 and "policy" in bad.stderr and "no-such-policy" in bad.stderr
    bad = _cli(["ab", str(path), "--db", db, "--set", "policy=no-such-policy"],
               {"VRAGENT_POLICIES": str(tmp_path / "reg")})
    assert bad.returncode == 2 and "no-such-policy" in bad.stderr
    assert Store(db).list_experiments() == []  # nothing was created


@pytest.mark.slow
def test_ab_popular_vs_sasrec_fast_variant_writes_the_report(tmp_path):
    """The bundled A/B scenario, CI-sized, with the real SmolLM2 users."""
    out = tmp_path / "report"
    res = _cli(["ab", "scenarios/ab_popular_vs_sasrec.yaml", "--db",
                f"sqlite:///{tmp_path}/ab.sqlite", "--out", str(out), "--seeds", "2",
                "--set", "population.size=4", "--set", "simulation.steps=2",
                "--set", "arms.1.params.epochs=2", "--resamples", "500"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "popular" in res.stdout and "sasrec − popular" in res.stdout
    for name in ("report.md", "arm_values.csv", "comparisons.csv", "power.csv",
                 "per_user.csv", "steps.csv", "curves.png", "differences.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "## Differences from the baseline" in md and "| watch_rate | sasrec |" in md
    comps = pd.read_csv(out / "comparisons.csv")
    pooled = comps[comps["seed"].isna()]
    assert set(pooled["metric"]) >= {"watch_rate", "like_rate", "ild", "coverage",
                                     "exposure_gini", "profile_entropy", "novelty"}
    assert (pooled["low"] <= pooled["high"]).all()
    assert set(comps["seed"].dropna().astype(int)) == {21, 22}
    # Every pooled difference has its seeds' sign when they agree (issue 17: coverage did not).
    for metric, group in comps.groupby("metric"):
        seeds = group[group["seed"].notna()]["diff"]
        if (seeds > 0).all() or (seeds < 0).all():
            assert np.sign(pooled.loc[pooled["metric"] == metric, "diff"].item()) == np.sign(
                seeds.iloc[0]), metric
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_step_metrics_include_diversity_entropy_and_exposure(tmp_path):
    sc = truth_scenario(simulation={"steps": 3, "refit_every": 1},
                        arms=[{"name": "random", "recommender": "random"},
                              {"name": "itemknn", "recommender": "itemknn"}])
    store, exp_id, res = _experiment(tmp_path, sc, [2])
    run_id = store.get_experiment(exp_id).run_ids[0]
    with store.session() as s:
        rows = s.execute(select(Metric.arm, Metric.step, Metric.name, Metric.value)
                         .where(Metric.run_id == run_id)).all()
    names = {(a, st, n) for a, st, n, _ in rows}
    for arm in ("random", "itemknn"):
        for step in range(3):
            for name in ("ild", "novelty", "exposure_gini", "profile_entropy", "coverage"):
                assert (arm, step, name) in names
    # Exposure accumulates: coverage never falls, and random covers more than item-kNN.
    cov = {(a, st): v for a, st, n, v in rows if n == "coverage"}
    assert cov[("random", 2)] >= cov[("random", 0)]
    assert cov[("random", 2)] > cov[("itemknn", 2)]
    assert set(res.steps["name"]) >= {"ild", "profile_entropy"}


def test_friends_likes_are_injected_into_one_arms_slates(tmp_path):
    sc = truth_scenario(
        population={"size": 30}, simulation={"steps": 3},
        # Random slates: with "popular", friends like what everyone was already shown.
        arms=[{"name": "feed", "recommender": "random", "inject_friends_likes": 0},
              {"name": "social", "recommender": "random"}],
        social={"graph": "watts_strogatz", "k": 6, "p": 0.1, "inject_friends_likes": 2,
                "show_friends_likes": 3},
        # Every decision traced: a response-model decision stores a prompt only then.
        backend={"kind": "tiny", "trace_rate": 1.0, "max_new_tokens": 4})
    store, exp_id, _ = _experiment(tmp_path, sc, [1])
    run_id = store.get_experiment(exp_id).run_ids[0]
    with store.session() as s:
        imps = pd.DataFrame(s.execute(select(
            Impression.arm, Impression.step, Impression.user_id, Impression.position,
            Impression.item_id, Impression.source).where(Impression.run_id == run_id)).all(),
            columns=["arm", "step", "user", "pos", "item", "source"])
        prompts = s.execute(select(Decision.prompt).where(
            Decision.run_id == run_id, Decision.arm == "social", Decision.step > 0)).scalars()
        marked = sum("(a friend liked this)" in p for p in prompts)
        hist = dict(s.execute(select(SimUser.user_id, SimUser.history).where(
            SimUser.run_id == run_id)).all())
        friends_likes = s.execute(select(Decision.step, Decision.user_id, Decision.item_id)
                                  .where(Decision.run_id == run_id, Decision.arm == "social",
                                         Decision.action == "like")).all()
    social = imps[imps["source"] == "social"]
    assert len(social) > 0 and marked == len(social)
    assert (imps.loc[imps["arm"] == "feed", "source"] == "rec").all()
    assert social["step"].min() >= 1  # nobody has liked anything before step 0
    assert set(social["pos"]) <= {3, 4}  # the last two slots of five
    liked_before = {(st, i) for st, _u, i in friends_likes}
    for row in social.itertuples():
        assert row.item not in hist[row.user]
        assert any(st < row.step and i == row.item for st, i in liked_before)
        earlier = imps[(imps["arm"] == "social") & (imps["user"] == row.user)
                       & (imps["step"] < row.step)]
        assert row.item not in set(earlier["item"])


def test_cold_start_cap_keeps_the_first_interactions(tmp_path):
    sc = truth_scenario(population={"size": 10, "history_cap": 3}, simulation={"steps": 1})
    store, exp_id, _ = _experiment(tmp_path, sc, [1])
    run_id = store.get_experiment(exp_id).run_ids[0]
    scenario = parse_scenario({**sc, "seed": 1})
    split = make_split(scenario, synthetic_world(scenario).dataset)
    with store.session() as s:
        hist = dict(s.execute(select(SimUser.user_id, SimUser.history).where(
            SimUser.run_id == run_id)).all())
    for user, h in hist.items():
        assert len(h) == 3
        assert h == split.train[user][:3]  # the earliest of the (max_len-cut) train history


def test_sweep_runs_every_point_through_mesa_batch_run(tmp_path):
    from vragent.sandbox.sweep import parse_grid, run_sweep

    sc = truth_scenario(population={"size": 12}, simulation={"steps": 2})
    path = write_scenario(tmp_path, sc)
    db = f"sqlite:///{tmp_path}/sweep.sqlite"
    grid = parse_grid(["simulation.refit_every=0,1"])
    frame = run_sweep(str(path), grid, db, iterations=2)
    # 2 points x 2 seeds x 2 steps.
    assert len(frame) == 8
    assert set(frame["simulation.refit_every"]) == {0, 1} and set(frame["seed"]) == {11, 12}
    assert sorted(set(frame["Step"])) == [0, 1]
    assert frame["popular/watch_rate"].notna().all() and frame["random/ild"].notna().all()
    runs = Store(db).list_runs()
    assert len(runs) == 4 and all(r.status == "finished" for r in runs)
    assert {yaml.safe_load(r.scenario_yaml)["simulation"]["refit_every"] for r in runs} == {0, 1}
    with pytest.raises(ValueError, match=r"not key\.path=v1,v2"):
        parse_grid(["simulation.steps"])


def test_bundled_scenario_library_is_complete_and_valid():
    names = {p.stem for p in list_scenarios()}
    assert names >= {"quickstart", "ab_popular_vs_sasrec", "ab_ip_profiles", "filter_bubble",
                     "popularity_bias", "cold_start", "social_influence"}
    for p in list_scenarios():
        text = p.read_text()
        assert text.startswith(f"# {p.stem}:"), f"{p.name} must document itself at the top"
        sc = parse_scenario(yaml.safe_load(text), str(p))
        for arm in sc.arms:
            from vragent.environments.recommenders import recommender_class

            cls = recommender_class(arm.recommender)
            cls(seed=0, **arm.params)  # every parameter is one the recommender takes
    listed = _cli(["scenarios"])
    assert listed.returncode == 0
    for name in names:
        assert name in listed.stdout


def test_mesa_datacollector_records_every_step_metric(tmp_path):
    from vragent.sandbox.runner import RunDriver, create_run

    sc = truth_scenario(population={"size": 10}, simulation={"steps": 2})
    store = Store(f"sqlite:///{tmp_path}/dc.sqlite")
    scenario = parse_scenario(sc, "dc")
    run_id = create_run(store, scenario, yaml.safe_dump(sc), None)
    with RunDriver(store, run_id) as driver:
        while not driver.done:
            driver.step()
        frame = driver.rt.model.datacollector.get_model_vars_dataframe()
    assert len(frame) == 2 and set(frame["run_id"]) == {run_id}
    for col in ("random/ild", "popular/profile_entropy", "popular/exposure_gini",
                "random/watch_rate"):
        assert frame[col].notna().all(), col
    assert store.get_run(run_id).status == "finished"
    # What the collector recorded is exactly what the store logged, step by step.
    logged = {(f"{r['arm']}/{r['name']}", r["step"]): r["value"]
              for r in store.metric_series([run_id])}
    collected = {(col, step): value for step, row in frame.iterrows()
                 for col, value in row.items() if col != "run_id" and pd.notna(value)}
    assert logged == pytest.approx(collected) and len(logged) > 20


@pytest.mark.parametrize("name", sorted(p.stem for p in list_scenarios()))
def test_every_bundled_scenario_runs_one_small_step(tmp_path, name, data_dir):
    """Each library scenario, shrunk (tiny LLM, 3 users, one step, one epoch), runs end to end
    on its real dataset, so a broken parameter or mechanism fails here, not in a user's run."""
    from vragent.sandbox.runner import start

    data = yaml.safe_load((REPO / "scenarios" / f"{name}.yaml").read_text())
    data["backend"] = {"kind": "tiny", "decision_mode": "score", "trace_rate": 0.0,
                       "max_new_tokens": 8}
    data.pop("policy", None)  # trained policies live outside the repository
    data["population"]["size"] = 3
    data["simulation"]["steps"] = 1
    data["ip_agent"] = {**data.get("ip_agent", {}), "items_per_step": 1, "max_new_tokens": 8,
                        "cmp_max_new_tokens": 8}
    for arm in data["arms"]:
        if "epochs" in arm.get("params", {}):
            arm["params"]["epochs"] = 1
    if data["dataset"]["kind"] == "microlens":
        # Fitting SASRec and MF on 50k MicroLens users costs minutes even for one epoch; both
        # are covered on MovieLens here and on MicroLens by the IP-agent experiment's test.
        data["arms"] = [a for a in data["arms"] if a["recommender"] not in ("sasrec", "mf")]
    synthetic = data["dataset"].get("synthetic", {})
    if synthetic.get("n_users", 0) > 2000:  # population_scale's world: 100k users to fit on
        synthetic["n_users"] = 2000
    path = write_scenario(tmp_path, data)
    _run_id, rows = start(str(path), f"sqlite:///{tmp_path}/s.sqlite")
    assert [r["arm"] for r in rows] == [a["name"] for a in data["arms"]]
    assert all(r["impressions"] > 0 for r in rows)


def test_fidelity_correlates_offline_and_simulated_orderings(tmp_path):
    from vragent.sandbox.fidelity import fidelity_markdown, run_fidelity
    from vragent.sandbox.report_sections import write_section

    sc = truth_scenario(
        population={"size": 60}, simulation={"steps": 1, "slate_size": 10},
        arms=[{"name": "random", "recommender": "random"},
              {"name": "popular", "recommender": "popular"},
              {"name": "cooccurrence", "recommender": "cooccurrence"}])
    path = write_scenario(tmp_path, sc)
    store = Store(f"sqlite:///{tmp_path}/f.sqlite")
    with pytest.raises(AbError, match="at least 3 arms"):
        run_fidelity(store, str(write_scenario(tmp_path, truth_scenario(), "two.yaml")),
                     seeds=[1])
    res = run_fidelity(store, str(path), seeds=[1, 2], max_eval_users=200, n_resamples=200)
    assert [r["arm"] for r in res.rows] == ["random", "popular", "cooccurrence"]
    hr = {r["arm"]: r["HR@10"] for r in res.rows}
    assert hr["random"] < hr["popular"]  # the offline side sees real signal
    for m in ("like_rate", "watch_rate"):
        assert -1 <= res.spearman[m] <= 1
        lo, hi = res.spearman_ci[m]
        assert -1 <= lo <= hi <= 1
    # Ground-truth users: random is last in both orderings.
    like = {r["arm"]: r["like_rate"] for r in res.rows}
    assert min(like, key=like.get) == "random"
    md = fidelity_markdown(res, "vragent fidelity x")
    assert "Spearman ρ" in md and "| random |" in md
    doc = write_section(tmp_path / "results.md", f"macro-fidelity-{res.scenario}", md)
    assert "BEGIN macro-fidelity-tiny-synthetic" in doc.read_text()
