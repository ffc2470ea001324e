"""End to end on the synthetic world with a tiny random model: LangGraph, Mesa, SQLite."""

import pandas as pd
import pytest
from sqlalchemy import func, select
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.export import export_run
from vragent.sandbox.runner import create_run, execute
from vragent.sandbox.store import Decision, ItemProfileRow, Metric, Run, SessionEvent, Store

from tests.conftest import tiny_scenario


def _run(tmp_path, llm, **overrides):
    sc = parse_scenario(tiny_scenario(**overrides))
    import yaml

    store = Store(f"sqlite:///{tmp_path}/sim.sqlite")
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
    events = []
    rows = execute(store, run_id, backend=llm, progress=lambda *a: events.append(a))
    return store, run_id, rows, events


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_backend):
    return _run(tmp_path_factory.mktemp("sim"), tiny_backend)


def test_run_finishes_and_records_its_environment(finished):
    store, run_id, _, events = finished
    run = store.get_run(run_id)
    assert run.status == "finished" and run.steps_done == 3
    assert run.seed == 11 and run.versions["torch"].startswith("2.13.0")
    assert "name: tiny-synthetic" in run.scenario_yaml
    assert ("step", 3, 3) in events


def test_every_impression_has_a_decision_with_its_prompt(finished):
    store, run_id, rows, _ = finished
    with store.session() as s:
        decs = list(s.scalars(select(Decision).where(Decision.run_id == run_id)))
        sessions = list(s.scalars(select(SessionEvent).where(SessionEvent.run_id == run_id)))
    assert decs and all(d.prompt and "Candidate video:" in d.prompt for d in decs)
    assert {d.action for d in decs} <= {"skip", "watch", "like"}
    assert all(d.p_like is not None and 0 <= d.p_like <= 1 for d in decs)
    traced = [d for d in decs if d.traced]
    assert traced and all(d.completion is not None and "<think>" in d.prompt for d in traced)
    # Users who left stop getting slates in that arm.
    left = {(s.arm, s.user_id): s.step for s in sessions if s.left}
    assert all(d.step <= left.get((d.arm, d.user_id), 99) for d in decs)
    assert sum(r["impressions"] for r in rows) == len(decs)


def test_paired_arms_share_random_draws(finished):
    """Same user, step and position: the same uniform decides in every arm."""
    store, run_id, _, _ = finished
    from vragent.agents.us_agent import user_uniforms

    with store.session() as s:
        decs = list(s.scalars(select(Decision).where(Decision.run_id == run_id,
                                                     Decision.step == 0)))
    for d in decs:
        u = user_uniforms(11, 0, d.user_id, 3)["action"][d.position]
        expect = "like" if u < d.p_like * 0.5 else ("watch" if u < d.p_like else "skip")
        assert d.action == expect


def test_metrics_and_profiles_are_stored(finished):
    store, run_id, _, _ = finished
    with store.session() as s:
        names = set(s.scalars(select(Metric.name).where(Metric.run_id == run_id)))
        n_prof = s.scalar(select(func.count()).select_from(ItemProfileRow))
    assert {"watch_rate", "like_rate", "exit_rate", "coverage"} <= names
    assert n_prof == 6  # 2 items per step x 3 steps


def test_export_round_trips(finished, tmp_path):
    store, run_id, _, _ = finished
    files = export_run(store, run_id, tmp_path / "pq", "parquet")
    decisions = pd.read_parquet(tmp_path / "pq" / "decisions.parquet")
    with store.session() as s:
        n = s.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id))
    assert len(decisions) == n and len(files) == 12  # 11 tables + metering
    # The IP agent's output too: the profiles this run made (2 items x 3 steps).
    profiles = pd.read_parquet(tmp_path / "pq" / "item_profiles.parquet")
    assert len(profiles) == 6 and set(profiles["run_id"]) == {run_id}
    assert profiles["profile"].str.len().gt(0).all()
    export_run(store, run_id, tmp_path / "js", "jsonl")
    runs = pd.read_json(tmp_path / "js" / "runs.jsonl", lines=True)
    assert runs.loc[0, "id"] == run_id


def test_export_covers_every_table_a_run_owns():
    """Every table whose rows carry a run id is exported, or says why it is not."""
    import vragent.sandbox.training_log  # noqa: F401  (its tables join the metadata)
    from vragent.sandbox.store import RUN_TABLES_NOT_EXPORTED, TABLES_IN_EXPORT, Base

    with_run = {name for name, t in Base.metadata.tables.items()
                if "run_id" in t.columns or name == "runs"}
    assert with_run == set(TABLES_IN_EXPORT) | set(RUN_TABLES_NOT_EXPORTED)
    assert not set(TABLES_IN_EXPORT) & set(RUN_TABLES_NOT_EXPORTED)


def test_generate_mode_parses_or_falls_back(tmp_path, tiny_backend):
    store, run_id, _, _ = _run(
        tmp_path, tiny_backend, backend={"kind": "tiny", "decision_mode": "generate",
                                         "max_new_tokens": 8},
        simulation={"steps": 1, "slate_size": 2, "users_per_task": 3, "refit_every": 0},
        ip_agent={"enabled": False})
    with store.session() as s:
        decs = list(s.scalars(select(Decision).where(Decision.run_id == run_id)))
        assert s.get(Run, run_id).status == "finished"
    assert decs and all(d.traced and d.completion is not None and d.p_like is None for d in decs)
    # A random model writes no valid answer: every decision is re-asked twice (format_retries)
    # and then recorded as invalid.
    assert all(d.action == "skip" and d.fallback == "invalid" and not d.format_ok
               and d.attempts == 3 for d in decs)


def test_mesa_population_and_social_graph(tmp_path, tiny_backend):
    from vragent.sandbox.runtime import SimulationRuntime

    sc = parse_scenario(tiny_scenario())
    store = Store(f"sqlite:///{tmp_path}/p.sqlite")
    rt = SimulationRuntime(sc, store, "x", backend=tiny_backend)
    assert len(rt.model.agents) == 6
    assert rt.model.social.number_of_nodes() == 6
    assert all(rt.model.friends(u) for u in rt.model.by_user)
    rt.model.begin_step(0)
    first = rt.model.active_users("popular")
    rt.model.begin_step(0)
    assert rt.model.active_users("popular") == first


def test_every_recommender_serves_as_an_arm_with_refits(tmp_path, tiny_backend):
    """Item-kNN, BPR-MF and SASRec (ID and profile-text towers) as arms, refit every step."""
    arms = [
        {"name": "itemknn", "recommender": "itemknn", "params": {"k_neighbors": 20}},
        {"name": "mf", "recommender": "mf", "params": {"dim": 8, "epochs": 2}},
        {"name": "sasrec-id", "recommender": "sasrec",
         "params": {"dim": 16, "epochs": 2, "refit_epochs": 1}},
        {"name": "sasrec-ip", "recommender": "sasrec", "item_text": "profile",
         "params": {"tower": "text", "dim": 16, "epochs": 2}},
    ]
    store, run_id, rows, _ = _run(tmp_path, tiny_backend, arms=arms,
                                  simulation={"steps": 2, "refit_every": 1})
    assert store.get_run(run_id).status == "finished"
    assert {r["arm"] for r in rows} == {a["name"] for a in arms}
    assert all(r["impressions"] > 0 for r in rows)


def test_like_share_real_takes_the_datasets_own_share(tmp_path, tiny_backend):
    """``session.like_share: real``: P(like | watched) in score mode is the logs' like share."""
    from vragent.sandbox.runtime import SimulationRuntime

    sc = parse_scenario(tiny_scenario(simulation={"session": {"like_share": "real"}}))
    rt = SimulationRuntime(sc, Store(f"sqlite:///{tmp_path}/l.sqlite"), "x", backend=tiny_backend)
    assert rt.us_agent.rules.like_share == pytest.approx(rt.dataset.like_share())
    assert 0.2 < rt.us_agent.rules.like_share < 0.8
    with pytest.raises(ValueError, match="like_share"):
        parse_scenario(tiny_scenario(simulation={"session": {"like_share": 1.5}}))
