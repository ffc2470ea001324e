"""The dashboard's pages under Streamlit's AppTest, over a store the real simulator wrote.

The fixture store (tests/dashboard_fixture.py) holds two runs of the tiny synthetic scenario,
an A/B experiment over them, a training run and a policy evaluation. The app gets the store
the way the CLI hands it over: through ``VRAGENT_DB``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select, text
from vragent.dashboards import data, traces_data
from vragent.dashboards.cli import streamlit_command
from vragent.sandbox.store import Decision, SessionEvent, Store

from tests.dashboard_fixture import DashboardStore, think_snippet
from tests.dashboard_pages import PAGES, charts, frames, markdown_strings, open_page, texts


@pytest.fixture
def store(dashboard_store: DashboardStore) -> DashboardStore:
    return dashboard_store


@pytest.fixture
def env(dashboard_env: DashboardStore) -> DashboardStore:
    return dashboard_env


def test_runs_page(env: DashboardStore) -> None:
    at = open_page("runs")
    assert "Runs" in at.title[0].value
    runs = frames(at)[0]
    traced, second = env.runs
    assert set(runs["run"]) == {traced, second}
    newest = env.runs[-1]
    assert runs.iloc[0]["run"] == newest  # newest first
    assert set(runs["arms"]) == {"popular, cooc, random"}
    s = Store(env.url, create=False)
    with s.session() as ses:
        n_dec = ses.scalar(select(func.count()).select_from(Decision)
                           .where(Decision.run_id == traced))
    row = runs.set_index("run").loc[traced]
    assert row["decisions"] == n_dec and row["users"] == 6 and row["steps"] == "3/3"
    metering = pd.DataFrame(s.metering(traced))
    us = metering[metering["agent"] == "us"]
    assert row["llm_calls"] == metering["calls"].sum()
    assert row["tokens_in"] == metering["tokens_in"].sum() and len(us) == 3
    metering = pd.DataFrame(s.metering(newest))  # the open run's
    # The open run: its status, arms, per-arm table and scenario.
    assert {m.label: m.value for m in at.metric}["status"] == "finished"
    arms, overview, meter = frames(at)[1:4]
    assert list(arms["arm"]) == ["popular", "cooc", "random"]
    assert list(overview["arm"]) == ["popular", "cooc", "random"]
    summary = {r["arm"]: r for r in s.arm_summary(newest)}
    for r in overview.itertuples():
        assert r.decisions == summary[r.arm]["impressions"]
        assert r.watch_rate == pytest.approx(summary[r.arm]["watch_rate"])
        assert r.exits == summary[r.arm]["exits"]
    assert list(meter["calls"]) == list(metering["calls"])
    assert any("tiny-synthetic" in c.value for c in at.code)
    # Latency percentiles on demand equal Store.metering's.
    at.toggle(key="runs_pct").set_value(True).run()
    assert not at.exception
    pct = frames(at)[3]
    assert pct["latency_p95_ms"].tolist() == pytest.approx(metering["latency_p95_ms"].tolist())


def test_ab_page_experiment(env: DashboardStore) -> None:
    at = open_page("ab")
    assert "A/B" in at.title[0].value
    assert {m.label: m.value for m in at.metric}["baseline"] == "popular"
    values, comps = data.ab_results(env.url, env.experiment)
    per_arm, against = frames(at)[:2]
    assert list(per_arm.columns) == ["metric", "popular", "cooc", "random"]
    assert set(per_arm["metric"]) == set(values["metric"])
    assert {"watch_rate", "like_rate", "exit_rate"} <= set(per_arm["metric"])
    pooled = values[values["seed"].isna()].set_index(["metric", "arm"])
    cell = per_arm.set_index("metric").loc["watch_rate", "cooc"]
    v = pooled.loc[("watch_rate", "cooc")]
    from vragent.dashboards.common import number

    assert cell == f"{number(v['value'])} [{number(v['low'])}, {number(v['high'])}]"
    assert set(against["arm"]) == {"cooc", "random"}
    pooled_c = comps[comps["seed"].isna()]
    assert against["p"].tolist() == pytest.approx(pooled_c["p_value"].tolist())
    # One rule: the verdict is called exactly when the BH-adjusted p is below 1 − confidence.
    from scipy.stats import false_discovery_control

    q = false_discovery_control(pooled_c["p_value"].to_numpy(), method="bh")
    assert against["q (BH)"].tolist() == pytest.approx(q.tolist())
    for qv, d, verdict in zip(q, pooled_c["diff"], against["verdict"], strict=True):
        want = "≈ no clear" if qv >= 0.05 else "▲ higher" if d > 0 else "▼ lower"
        assert verdict.startswith(want), (qv, d, verdict)
    assert "Benjamini–Hochberg" in texts(at)
    row = against.set_index(["metric", "arm"]).loc[("exit_rate", "cooc")]
    assert row["better is"] == "↓ lower" and row["n"] == 12
    c = pooled_c.set_index(["metric", "arm"]).loc[("exit_rate", "cooc")]
    if c["mean_baseline"]:
        assert row["lift"] == f"{100 * c['diff'] / abs(c['mean_baseline']):+.1f} %"
    assert charts(at) >= 2 + 3  # value and difference plots, three metrics over steps
    # One seed instead of the pool.
    at.radio(key="ab_scope").set_value(11).run()
    assert not at.exception
    seed_cell = frames(at)[0].set_index("metric").loc["watch_rate", "cooc"]
    v11 = values[(values["seed"] == 11) & (values["metric"] == "watch_rate")
                 & (values["arm"] == "cooc")].iloc[0]
    assert seed_cell.startswith(f"{number(v11['value'])} [")


def test_ab_page_single_run_averages_steps(env: DashboardStore) -> None:
    at = open_page("ab")
    at.radio(key="ab_mode").set_value("Single run").run()
    assert not at.exception
    assert list(frames(at)[0]["arm"]) == ["popular", "cooc", "random"]
    assert charts(at) == 4  # watch, like and exit rates and coverage
    series = data.metric_series(env.url, env.runs)
    mean = data.mean_over_runs(series)
    one = mean[(mean["arm"] == "cooc") & (mean["name"] == "watch_rate") & (mean["step"] == 1)]
    both = series[(series["arm"] == "cooc") & (series["name"] == "watch_rate")
                  & (series["step"] == 1)]["value"]
    assert len(both) == 2 and one["mean"].item() == pytest.approx(both.mean())
    assert one["low"].item() == both.min() and one["runs"].item() == 2


def test_trace_explorer_shows_the_reasoning(env: DashboardStore) -> None:
    traced = env.runs[0]
    at = open_page("traces", {"run": traced, "arm": "popular", "user": env.traced_user})
    assert "Trace explorer" in at.title[0].value
    assert at.selectbox(key="tx_user").value == env.traced_user
    assert any(s.value == f"User {env.traced_user}" for s in at.subheader)
    body = texts(at)
    assert think_snippet(env.think) in body
    assert "**think**" in body and "**answer**" in body
    labels = set(common_labels())
    slates = [f for f in frames(at) if "action" in f.columns]
    assert slates and all(set(f["action"]) <= labels for f in slates)
    assert any(f["action"].isin(["↷ skip", "▶ watch", "❤ like"]).any() for f in slates)
    # Prompt and raw completion sit in an expander per decision.
    exp = [e for e in at.expander if e.label == "Full prompt and raw completion"]
    assert exp
    s = Store(env.url, create=False)
    with s.session() as ses:
        prompt = ses.scalar(select(Decision.prompt).where(
            Decision.run_id == traced, Decision.arm == "popular",
            Decision.user_id == env.traced_user).order_by(Decision.step, Decision.position))
    assert any(c.value == prompt.replace("\x1b", "") for c in at.code)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["✎ traced"]) > 0 and metrics["slates"] != "0"


def common_labels() -> list[str]:
    from vragent.dashboards.common import ACTION_LABELS, LEAVE_LABEL

    return [*ACTION_LABELS.values(), LEAVE_LABEL]


def test_trace_explorer_search_and_filters(env: DashboardStore) -> None:
    traced = env.runs[0]
    at = open_page("traces", {"run": traced, "arm": "cooc"})
    users = frames(at)[0]
    assert len(users) == 6
    # Behaviour: users who left the cooc session match the sessions table.
    at.selectbox(key="tx_beh").set_value("left").run()
    assert not at.exception
    s = Store(env.url, create=False)
    with s.session() as ses:
        left = set(ses.scalars(select(SessionEvent.user_id).where(
            SessionEvent.run_id == traced, SessionEvent.arm == "cooc",
            SessionEvent.left.is_(True))))
    assert set(frames(at)[0]["user_id"]) == left and left
    # A user who left shows the leave in the timeline.
    at.selectbox(key="tx_user").set_value(sorted(left)[0]).run()
    assert not at.exception
    slates = [f for f in frames(at) if "action" in f.columns]
    assert any((f["action"] == "⏏ leave").any() for f in slates)
    # By id and by persona text.
    at.selectbox(key="tx_beh").set_value("any")
    at.text_input(key="tx_q").set_value(str(env.traced_user)).run()
    assert list(frames(at)[0]["user_id"]) == [env.traced_user]
    persona = frames(at)[0]["persona"].iloc[0]
    word = persona.split()[-1].strip(".()")
    at.text_input(key="tx_q").set_value(word.upper()).run()
    found = frames(at)[0]
    assert env.traced_user in set(found["user_id"])
    assert found["persona"].str.lower().str.contains(word.lower(), regex=False).all()
    # liked ≥ N against the sessions table.
    at.text_input(key="tx_q").set_value("")
    at.selectbox(key="tx_beh").set_value("liked ≥ N")
    at.number_input(key="tx_n").set_value(2).run()
    with s.session() as ses:
        likes = dict(ses.execute(select(SessionEvent.user_id, func.sum(SessionEvent.n_like))
                                 .where(SessionEvent.run_id == traced,
                                        SessionEvent.arm == "cooc")
                                 .group_by(SessionEvent.user_id)).all())
    assert set(frames(at)[0]["user_id"]) == {u for u, n in likes.items() if n >= 2}


def test_trace_explorer_disagreement_and_format_filters(env: DashboardStore) -> None:
    traced = env.runs[0]
    at = open_page("traces", {"run": traced, "arm": "popular", "user": env.traced_user})
    decisions = traces_data.user_decisions(env.url, traced, "popular", env.traced_user)
    info = traces_data.user_info(env.url, traced, env.traced_user)
    disagrees = traces_data.disagreement(decisions, traces_data.real_positives(info))
    at.radio(key="tx_view").set_value("disagree").run()
    assert not at.exception
    slates = [f for f in frames(at) if "action" in f.columns]
    shown = pd.concat(slates) if slates else pd.DataFrame(columns=["check"])
    shown = shown[shown["action"] != "⏏ leave"]
    assert len(shown) == int(disagrees.sum())
    assert shown["check"].str.contains("⚠ disagrees").all()
    at.radio(key="tx_view").set_value("malformed").run()
    slates = [f for f in frames(at) if "action" in f.columns]
    n_bad = int((~decisions["format_ok"].astype(bool)).sum())
    if n_bad:
        assert sum(len(f[f["action"] != "⏏ leave"]) for f in slates) == n_bad
        assert all(f[f["action"] != "⏏ leave"]["check"].str.contains("✘").all() for f in slates)
    else:
        assert any("No decision" in i.value for i in at.info)


def test_disagreement_definition() -> None:
    decisions = pd.DataFrame({"item_id": [1, 2, 3, 4], "action": ["skip", "skip", "watch",
                                                                   "like"]})
    # Items 1 and 3 are in the real history: skipping 1 and liking 4 disagree, the rest agree.
    assert traces_data.disagreement(decisions, {1, 3}).tolist() == [True, False, False, True]
    info = {"history": [1, 3], "profile": {"heldout": [4]}}
    assert traces_data.real_positives(info) == {1, 3, 4}


def test_feedback_page(env: DashboardStore) -> None:
    at = open_page("feedback")
    assert "Feedback loops" in at.title[0].value
    assert not at.info, [i.value for i in at.info]  # every loop metric is there
    assert charts(at) >= 4
    values = frames(at)[-1]
    assert {"ild", "exposure_gini", "coverage", "profile_entropy"} <= set(values.columns)
    assert set(values["arm"]) == {"popular", "cooc", "random"}
    # The experiment: means over both seeds.
    at.radio(key="fb_source").set_value("Experiment (mean over seeds)").run()
    assert not at.exception
    both = frames(at)[-1].set_index(["arm", "step"])
    series = data.metric_series(env.url, env.runs)
    g = series[(series["name"] == "exposure_gini") & (series["arm"] == "popular")
               & (series["step"] == 2)]["value"]
    assert both.loc[("popular", 2), "exposure_gini"] == pytest.approx(g.mean())


def test_items_page(env: DashboardStore) -> None:
    at = open_page("items")
    assert "Items" in at.title[0].value
    table = frames(at)[0]
    assert {"item_id", "title", "profile", "format"} <= set(table.columns)
    assert table["title"].str.len().gt(0).all()
    body = texts(at)
    for stage in ("kfr", "sufficiency", "cmp", "rra"):
        assert f". {stage} · " in body
    assert "skipped: text-only model" in body
    # The first item has a cover in VRAGENT_COVERS_DIR.
    assert at.selectbox(key="it_item").value is not None
    assert int(table["item_id"].iloc[0]) == env.cover_item
    assert len(at.image) == 1
    # Search by title text.
    word = table["title"].iloc[1].split()[0]
    at.text_input(key="it_q").set_value(word).run()
    assert frames(at)[0]["title"].str.lower().str.contains(word.lower(), regex=False).all()


def training_log_rows(env: DashboardStore):
    from sqlalchemy import select
    from vragent.sandbox.store import Store
    from vragent.sandbox.training_log import PolicyEval

    with Store(env.url, create=False).session() as s:
        return list(s.scalars(select(PolicyEval).where(PolicyEval.eval_id == env.eval_id)))


def test_training_page(env: DashboardStore) -> None:
    at = open_page("training")
    assert "Training" in at.title[0].value
    runs, evals = frames(at)
    assert env.training_run in list(runs["id"]) and set(runs["status"]) == {"finished"}
    assert charts(at) >= 4  # reward, format_reward, accuracy, kl, loss … as TRL logged them
    assert {"popularity", "fixture-users"} <= set(evals["model"])
    stored = {r.model for r in training_log_rows(env)}
    assert stored == set(evals["model"])


@pytest.mark.parametrize("kind", ["missing", "no-tables", "empty"])
def test_every_page_handles_an_empty_store(kind: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "store.sqlite"
    if kind == "no-tables":
        sqlite3.connect(db).close()
    elif kind == "empty":
        Store(f"sqlite:///{db}").engine.dispose()
    monkeypatch.setenv("VRAGENT_DB", f"sqlite:///{db}")
    for page in PAGES:
        at = open_page(page)
        assert at.info, f"{kind}/{page}: no message"
        assert not at.error, [e.value for e in at.error]
    assert db.exists() == (kind != "missing")  # reading never creates a store


def test_pages_never_write(env: DashboardStore) -> None:
    def digest() -> str:
        h = hashlib.sha256()
        for p in sorted(env.path.parent.glob(env.path.name + "*")):
            # The -shm index changes on read; <db>.locks/ holds the runs' owner locks.
            if p.is_file() and not p.name.endswith("-shm"):
                h.update(p.read_bytes())
        return h.hexdigest()

    before = digest()
    for page in PAGES:
        open_page(page)
    open_page("traces", {"run": env.runs[0], "arm": "random", "user": env.traced_user})
    assert digest() == before
    with data.engine(env.url).connect() as conn, pytest.raises(Exception, match="readonly"):
        conn.execute(text("DELETE FROM runs"))


def test_indexed_reads_for_a_user() -> None:
    """A user's decisions are searched by an index on run, arm and user: never an arm scan."""
    from sqlalchemy.dialects import sqlite

    s = Store("sqlite://")
    stmt = traces_data.user_decisions_stmt("r", "a", 1, [0, 1, 2])
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with s.engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert "SEARCH decisions USING" in plan and "user_id=?" in plan, plan


def test_reasoning_filters_read_the_traced_index(tmp_path: Path) -> None:
    """Users with a reasoning (or reasoning text) are found through the traced-only index."""
    from sqlalchemy.dialects import sqlite

    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    s = Store(url)
    data.schema.clear()
    for behaviour, text_ in (("has reasoning", ""), ("any", "comedy")):
        q = traces_data._users_query(url, "r", "a", "", behaviour, 1, text_)
        sql = str(select(func.count()).select_from(q.subquery()).compile(
            dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        with s.engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX ix_decisions_traced" in plan, plan


def test_db_url_and_command() -> None:
    assert data.resolve_db_url(["--db", "sqlite:///a.sqlite"], {"VRAGENT_DB": "x"}) == (
        "sqlite:///a.sqlite")
    assert data.resolve_db_url([], {"VRAGENT_DB": "postgresql://u:pw@h/db"}) == (
        "postgresql://u:pw@h/db")
    assert data.resolve_db_url([], {}) == "sqlite:///runs/vragent.sqlite"
    assert "pw" not in data.display_url("postgresql://u:pw@h/db")
    cmd = streamlit_command()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert "--db" not in cmd  # the store URL (and its password) goes by environment
    assert cmd[cmd.index("run") + 1].endswith("dashboards/app.py")


def test_cli_registers_the_dashboard_command() -> None:
    exe = Path(sys.executable).parent / "vragent"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vragent.sandbox.cli"]
    env = {k: v for k, v in os.environ.items() if k != "VRAGENT_DB"} | {"COLUMNS": "200"}
    out = subprocess.run([*cmd, "dashboard", "--help"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "--db" in out.stdout and "--host" in out.stdout and "--port" in out.stdout
    assert "127.0.0.1" in out.stdout and "8501" in out.stdout
    assert "'dashboard' failed" not in out.stderr


def test_trace_explorer_url_follows_the_selection(env: DashboardStore) -> None:
    traced, second = env.runs
    at = open_page("traces", {"run": traced, "arm": "popular", "user": env.traced_user})
    assert at.query_params["run"] == traced and at.query_params["arm"] == "popular"
    # Changing a widget wins over the URL it was opened with, and the URL follows.
    at.selectbox(key="tx_arm").set_value("random").run()
    assert at.selectbox(key="tx_arm").value == "random"
    assert at.query_params["arm"] == "random"
    at.selectbox(key="tx_run").set_value(second).run()
    assert not at.exception
    assert at.selectbox(key="tx_run").value == second and at.query_params["run"] == second


def test_an_older_store_without_the_newer_parts(env: DashboardStore, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written before A/B, training and staged profiles: every page still renders."""
    old = tmp_path / "old.sqlite"
    src, dst = sqlite3.connect(env.path), sqlite3.connect(old)
    src.backup(dst)
    src.close()
    for stmt in ("DROP TABLE ab_arm_values", "DROP TABLE ab_comparisons",
                 "DROP TABLE ab_experiments", "DROP TABLE training_runs",
                 "DROP TABLE training_curves", "DROP TABLE policy_evals",
                 "ALTER TABLE item_profiles DROP COLUMN stages",
                 "ALTER TABLE item_profiles DROP COLUMN title",
                 "ALTER TABLE impressions DROP COLUMN source",
                 "DELETE FROM metrics WHERE name IN ('ild', 'exposure_gini', 'profile_entropy')"):
        dst.execute(stmt)
    dst.commit()
    dst.close()
    monkeypatch.setenv("VRAGENT_DB", f"sqlite:///{old}")
    infos = {}
    for page in PAGES:
        at = open_page(page)
        assert not at.error, [e.value for e in at.error]
        infos[page] = " ".join(i.value for i in at.info)
    assert "No A/B experiments yet" in infos["ab"] and "vragent ab" in infos["ab"]
    assert "ild" in infos["feedback"] and "exposure_gini" in infos["feedback"]
    assert "No training runs yet" in infos["training"]
    assert "predates the staged record" in infos["items"]
    at = open_page("traces", {"run": env.runs[0], "arm": "popular", "user": env.traced_user})
    assert think_snippet(env.think) in texts(at)
    items = open_page("items")
    assert frames(items)[0]["title"].str.len().gt(0).all()  # titles from the run's catalogue


def test_outside_text_is_never_markup(store: DashboardStore, tmp_path: Path) -> None:
    """Hostile titles, personas, completions, tags, errors and names reach every page as text.

    None of them may reach a Markdown-rendered string (where ``![x](url)`` would fetch an
    image, ``:red[…]`` colour and ``$…$`` typeset); each page shows them as plain text.
    """
    from tests.dashboard_fixture import hostile_copy

    evil = hostile_copy(store, tmp_path, port=9)
    queries = {"runs": {}, "ab": {}, "feedback": {}, "training": {}, "items": {},
               "traces": {"run": evil.runs[0], "arm": "popular", "user": evil.traced_user}}
    for page, query in queries.items():
        at = open_page(page, query, url=evil.url)
        leaks = [s for s in markdown_strings(at)
                 if any(p in s for p in ("127.0.0.1", ":red[", "$x^2$", "Evil"))]
        assert not leaks, (page, leaks)
        shown = [t.value for t in at.text] + [c.value for c in at.code]
        if page in ("runs", "ab", "traces", "items"):
            assert any("![pixel](http://127.0.0.1:9/pixel.png)" in s for s in shown), page
    at = open_page("traces", queries["traces"], url=evil.url)
    # Reasoning keeps its line breaks and reads literally.
    assert any(t.value.endswith("**bold**\nsecond line") for t in at.text)
