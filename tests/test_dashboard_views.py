"""The trace explorer's explanations and arms, the feedback page's overlays, training overlays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest
from vragent.dashboards import training_data
from vragent.sandbox.store import Decision, SessionEvent, Store

from tests.dashboard_fixture import DashboardStore, think_snippet
from tests.dashboard_pages import APP, frames, open_page, texts


@pytest.fixture
def env(dashboard_env: DashboardStore) -> DashboardStore:
    return dashboard_env


def test_every_stored_explanation_reproduces_its_action(env: DashboardStore) -> None:
    """The stored rule, draw and thresholds give back each action and each leave."""

    s = Store(env.url, create=False)
    with s.session() as ses:
        rows = ses.execute(select(Decision.action, Decision.rule, Decision.draw,
                                  Decision.like_cut, Decision.p_like, Decision.trace_role,
                                  Decision.traced)).all()
        ends = ses.execute(select(SessionEvent.left, SessionEvent.leave_prob,
                                  SessionEvent.leave_draw)).all()
    assert rows and ends
    shares = set()
    for action, rule, u, cut, p, role, traced in rows:
        assert rule == "draw"  # the fixture runs score mode
        assert action == ("like" if u < cut else "watch" if u < p else "skip")
        assert role == ("separate" if traced else None)
        shares.add(round(cut / p, 9))
    assert len(shares) == 1 and 0 < shares.pop() < 1  # like_cut = p × the run's like share
    assert all(left == (u < p) for left, p, u in ends)


def test_explanation_sentences() -> None:
    from vragent.dashboards import explain

    row = {"action": "skip", "rule": "draw", "draw": 0.95, "like_cut": 0.36, "p_like": 0.91}
    assert explain.decision_sentence(row) == "skip: u = 0.95 ≥ p(watch) = 0.91"
    row |= {"action": "watch", "draw": 0.5}
    assert explain.decision_sentence(row) == ("watch: p(watch) × like share = 0.36 ≤ u = 0.50 "
                                              "< p(watch) = 0.91")
    row |= {"action": "like", "draw": 0.1}
    assert explain.decision_sentence(row) == "like: u = 0.10 < p(watch) × like share = 0.36"
    gen = {"action": "watch", "rule": "answer", "draw": 0.7, "like_cut": 0.4, "p_like": None}
    assert explain.decision_sentence(gen) == ("watch: the answer was Yes; like draw u = 0.70 ≥ "
                                              "like share 0.40")
    assert explain.decision_sentence({"action": "skip", "rule": "answer"}) == (
        "skip: the answer was No")
    assert "older store" in explain.decision_sentence({"action": "skip", "rule": None})
    assert explain.leave_sentence(True, 0.35, 0.03, 0) == (
        "⏏ left: u = 0.03 < p(leave) = 0.35 (nothing on the slate was watched)")
    assert explain.leave_sentence(False, 0.05, 0.4, 2) == "stayed: u = 0.40 ≥ p(leave) = 0.05"
    assert explain.trace_label({"trace_role": "separate"}).startswith("✎ a separate generation")
    assert explain.trace_format({"trace_ok": False, "format_ok": True}) == "✘ malformed trace"


def test_trace_explorer_explains_and_filters(env: DashboardStore) -> None:
    traced = env.runs[0]
    at = open_page("traces", {"run": traced, "arm": "popular", "user": env.traced_user})
    slates = [f for f in frames(at) if "why" in f.columns]
    assert slates
    for f in slates:
        for action, why in zip(f["action"], f["why"], strict=True):
            if action != "⏏ leave":
                assert why.split(":")[0] in action, (action, why)
    body = texts(at)
    assert "End of the slate — " in body and "u = " in body
    # A score-mode trace is labelled as the separate generation it is.
    assert "a separate generation, stored for inspection" in body
    # Only likes.
    at.multiselect(key="tx_actions").set_value(["like"]).run()
    kept = pd.concat([f for f in frames(at) if "why" in f.columns])
    assert set(kept["action"]) == {"❤ like"}
    at.multiselect(key="tx_actions").set_value(list(("skip", "watch", "like", "leave"))).run()
    # Users with a reasoning that contains a word of this user's think text.
    word = think_snippet(env.think)
    at.text_input(key="tx_rq").set_value(word).run()
    users = frames(at)[0]
    assert env.traced_user in set(users["user_id"])
    s = Store(env.url, create=False)
    with s.session() as ses:
        having = set(ses.scalars(select(Decision.user_id).where(
            Decision.run_id == traced, Decision.arm == "popular",
            (Decision.think.ilike(f"%{word}%")) | (Decision.answer.ilike(f"%{word}%")))))
    assert set(users["user_id"]) == having
    assert "Only decisions whose reasoning contains" in texts(at)


def test_a_link_to_something_missing_says_so(env: DashboardStore) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page("views/traces.py")
    at.query_params.update({"run": "no-such-run", "arm": "popular", "user": "999999"})
    at.run()
    assert not at.exception
    warned = " ".join(w.value for w in at.warning)
    assert "run no-such-run," in warned and "user 999999," in warned
    at.query_params.update({"run": env.runs[0], "arm": "nope", "user": str(env.traced_user)})
    at.run()
    warned = " ".join(w.value for w in at.warning)
    assert "arm nope," in warned and "user" not in warned and "run " not in warned


def test_trace_explorer_arms_side_by_side(env: DashboardStore) -> None:
    traced = env.runs[0]
    at = open_page("traces", {"run": traced, "arm": "popular", "user": env.traced_user})
    at.toggle(key="tx_compare").set_value(True).run()
    assert not at.exception
    tables = [f for f in frames(at) if list(f.columns) == ["pos", "action", "title", "why"]]
    assert len(tables) == 3 * 3  # three steps × three arms (the user never left)
    # Column k of each step is arm k; its actions are the stored ones.
    s = Store(env.url, create=False)
    with s.session() as ses:
        stored = ses.execute(select(Decision.step, Decision.arm, Decision.action).where(
            Decision.run_id == traced, Decision.user_id == env.traced_user)
            .order_by(Decision.step, Decision.position)).all()
    from vragent.dashboards.common import ACTION_LABELS

    for i, table in enumerate(tables):
        step, arm = i // 3, ("popular", "cooc", "random")[i % 3]
        want = [ACTION_LABELS[a] for st_, ar, a in stored if st_ == step and ar == arm]
        assert list(table["action"]) == want


def chart_data(chart) -> pd.DataFrame:
    """The data of a rendered Altair chart (Streamlit sends it as Arrow)."""
    import pyarrow as pa

    return pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pandas()


def test_feedback_overlay_and_lorenz(env: DashboardStore) -> None:
    from vragent.environments.metrics import gini_rows
    from vragent.sandbox.store import Impression, Item

    at = open_page("feedback")
    at.radio(key="fb_source").set_value("Runs side by side").run()
    assert not at.exception
    lines = set(chart_data(at.get("vega_lite_chart")[0])["arm"])
    assert lines == {f"{a} · {r[:8]}" for a in ("popular", "cooc", "random") for r in env.runs}
    at.toggle(key="fb_log").set_value(True).run()
    assert "symlog" in at.get("vega_lite_chart")[0].proto.spec
    # The Lorenz curve's Gini per arm, from every impression of the run.
    at.selectbox(key="fb_lorenz_run").set_value(env.runs[0])
    at.toggle(key="fb_lorenz").set_value(True).run()
    assert not at.exception
    table = frames(at)[-1].set_index("arm")
    s = Store(env.url, create=False)
    with s.session() as ses:
        n_items = ses.scalar(select(func.count()).select_from(Item)
                             .where(Item.run_id == env.runs[0]))
        for arm in ("popular", "cooc", "random"):
            counts = [n for (n,) in ses.execute(
                select(func.count()).where(Impression.run_id == env.runs[0],
                                           Impression.arm == arm).group_by(Impression.item_id))]
            want = gini_rows(np.asarray(counts, dtype=float)[None, :], n_items)[0]
            assert table.loc[arm, "Gini"] == pytest.approx(want)
            assert table.loc[arm, "catalogue"] == n_items


def test_smoothing_is_an_exponential_moving_average_per_series() -> None:
    from vragent.dashboards.common import smooth

    df = pd.DataFrame({"step": [0, 1, 2, 0, 1, 2], "value": [0.0, 1.0, 1.0, 5.0, 5.0, 5.0],
                       "run": ["a", "a", "a", "b", "b", "b"]})
    out = smooth(df, x="step", y="value", series="run", weight=0.5).set_index(["run", "step"])
    # Bias-corrected EMA with alpha 0.5: (1·0.5 + 0·0.25) / 0.75 at step 1.
    assert out.loc[("a", 1), "value"] == pytest.approx(0.5 / 0.75)
    assert out.loc[("b", 2), "value"] == pytest.approx(5.0)  # a constant stays put
    assert smooth(df, x="step", y="value", series="run", weight=0.0) is df


def test_training_runs_overlay(env: DashboardStore) -> None:
    at = open_page("training")
    shown = at.selectbox(key="tr_run").value
    others = [r for r in training_data.training_runs(env.url)["id"] if r != shown]
    assert others  # the fixture trained SFT, then GRPO on top
    at.multiselect(key="tr_overlay").set_value(others).run()
    assert not at.exception
    runs = {r for c in at.get("vega_lite_chart") for r in chart_data(c)["run"]}
    assert len(runs) == 2 and all(" · " in r for r in runs)
