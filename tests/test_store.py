from sqlalchemy import func, select, text
from vragent.sandbox.store import Arm, Decision, Run, Store


def _run(store, run_id="r1"):
    store.create_run(
        Run(id=run_id, scenario_name="t", scenario_path=None, scenario_yaml="name: t",
            config={}, seed=1, versions={"python": "3.11"}, git_revision="abc", n_steps=2),
        [Arm(run_id=run_id, name="a", recommender="popular", params={})],
    )


def _step_rows(step):
    dec = {"arm": "a", "step": step, "user_id": 5, "position": 0, "item_id": 9,
           "action": "like", "p_like": 0.8, "prompt": "P", "completion": "C", "think": "T",
           "answer": "A", "format_ok": True, "fallback": None, "traced": True,
           "prompt_truncated": False, "model_id": "m", "tokens_in": 10, "tokens_out": 3,
           "latency_ms": 1.0, "user_id_": None}
    dec.pop("user_id_")
    return dict(
        steps=[{"arm": "a", "step": step, "n_users": 1, "n_decisions": 1, "wall_s": 0.1}],
        impressions=[{"arm": "a", "step": step, "user_id": 5, "position": 0, "item_id": 9,
                      "rec_score": 1.5}],
        decisions=[dec],
        sessions=[{"arm": "a", "step": step, "user_id": 5, "n_watch": 1, "n_like": 1,
                   "left": False, "leave_prob": 0.05}],
        metrics=[{"arm": "a", "step": step, "name": "watch_rate", "value": 1.0}],
    )


def test_round_trip_and_no_double_logging(store_url):
    store = Store(store_url)
    _run(store)
    assert store.log_step("r1", 0, **_step_rows(0))
    assert not store.log_step("r1", 0, **_step_rows(0))  # replay after a crash: skipped
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 1
        d = s.scalars(select(Decision)).one()
        assert (d.prompt, d.completion, d.think, d.action) == ("P", "C", "T", "like")
    assert store.get_run("r1").steps_done == 1
    assert store.completed_steps("r1") == {"a": 1}
    (row,) = store.arm_summary("r1")
    assert row["impressions"] == 1 and row["like_rate"] == 1.0 and row["tokens_in"] == 10


def test_sqlite_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_profiles_are_cached_once(store_url):
    store = Store(store_url)
    row = {"dataset": "d", "item_id": 1, "model_id": "m", "profile": "p #t", "tags": "#t",
           "prompt": "x", "completion": "y", "format_ok": True, "problems": []}
    store.add_profiles([row])
    store.add_profiles([{**row, "profile": "other"}])
    cached = store.cached_profiles("d", "m", [1, 2])
    assert list(cached) == [1] and cached[1].profile == "p #t"


def test_text_with_nul_round_trips(store_url):
    # A raw completion can hold NUL, which PostgreSQL text cannot: it must read back unchanged.
    store = Store(store_url)
    _run(store)
    rows = _step_rows(0)
    weird = "\x00\x17q pory \ue000\ue001 food\ue000\x00"
    rows["decisions"][0].update(completion=weird, think=weird[:5])
    assert store.log_step("r1", 0, **rows)
    with store.session() as s:
        d = s.scalars(select(Decision)).one()
        assert (d.completion, d.think) == (weird, weird[:5])
        assert s.scalar(select(func.count()).select_from(Decision).where(
            Decision.completion == weird)) == 1


def test_row_ids_are_64_bit_and_autoincrement(store_url):
    """Surrogate ids hold more than 2**31 rows (PostgreSQL ``bigint``; SQLite's rowid already
    is 64-bit) and still number new rows themselves."""
    from sqlalchemy import insert, inspect, select
    from vragent.sandbox.store import Impression, Run

    store = Store(store_url)
    with store.session() as s:
        s.add(Run(id="r1", scenario_name="s", scenario_yaml="", config={}, seed=0, versions={},
                  status="created", n_steps=1))
    cols = {c["name"]: c for c in inspect(store.engine).get_columns("decisions")}
    kind = str(cols["id"]["type"]).upper()
    assert kind == ("BIGINT" if store.engine.dialect.name == "postgresql" else "INTEGER"), kind
    with store.session() as s:
        big = 2**31 + 5
        row = {"run_id": "r1", "arm": "a", "user_id": 1, "position": 0, "item_id": 3,
               "rec_score": 0.5}
        s.execute(insert(Impression), [{**row, "id": big, "step": 0}])
        s.execute(insert(Impression), [{**row, "step": 1}])
    with store.session() as s:
        ids = sorted(s.scalars(select(Impression.id)), key=lambda i: i != big)
    assert ids[0] == big and ids[1] > 0 and ids[1] != big


def _calls(step, arm="a"):
    return [{"agent": "us", "arm": arm, "step": step, "task": 0, "seq": k, "call": "score",
             "cached": k == 2, "tokens_in": 100 + k, "tokens_out": 1, "latency_ms": 10.0 + k}
            for k in range(3)]


def _totals(store, run_id="r1"):
    from vragent.sandbox.store import LlmTotal

    with store.session() as s:
        return {(r.agent, r.arm): (r.calls, r.cache_hits, r.tokens_in, r.tokens_out,
                                   r.latency_ms)
                for r in s.scalars(select(LlmTotal).where(LlmTotal.run_id == run_id))}


def test_llm_totals_follow_the_logged_calls(store_url):
    from vragent.sandbox.store import LlmTotal

    store = Store(store_url)
    _run(store)
    assert store.log_step("r1", 0, **_step_rows(0), llm_calls=_calls(0))
    assert not store.log_step("r1", 0, **_step_rows(0), llm_calls=_calls(0))  # not twice
    assert _totals(store) == {("us", "a"): (2, 1, 201, 2, 21.0)}
    # A run logged before the table existed has calls but no totals: revision 0002 sums them
    # when the store is next opened, and the next step adds its own.
    with store.session() as s:
        s.execute(LlmTotal.__table__.delete())
        s.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    store = Store(store_url)
    assert _totals(store) == {("us", "a"): (2, 1, 201, 2, 21.0)}
    assert store.log_step("r1", 1, **_step_rows(1), llm_calls=_calls(1))
    assert _totals(store) == {("us", "a"): (4, 2, 402, 4, 42.0)}
    (row,) = [m for m in store.metering("r1") if m["agent"] == "us"]
    assert (row["calls"], row["tokens_in"]) == (4, 402)
