"""`vragent run` and `vragent show` end with the per-arm table and one readable trace.

The tiny random model writes no format, so the well-formed and half-formed traces are written
into the store by hand (fault injection of the completions, named so below) and the pick and
the printout are checked against them.
"""

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner
from vragent.sandbox.cli import app
from vragent.sandbox.run_trace import pick_trace
from vragent.sandbox.store import Decision, Item, Store

from tests.conftest import tiny_scenario, write_scenario

# Markup in a trace prints as written.
WELL_FORMED = ("The user rewatches [bold]comedies[/]; this is one.</think>"
               "<answer>Prediction: Yes</answer>")
THINK_ONLY = "Mostly dramas in the history.</think> no"


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    """A two-arm tiny run where every decision is traced; returns (db, run id, run output)."""
    tmp = tmp_path_factory.mktemp("trace")
    sc = tiny_scenario(population={"size": 2, "history_len": 5},
                       simulation={"steps": 2, "slate_size": 2, "users_per_task": 2,
                                   "refit_every": 0},
                       arms=[{"name": "popular", "recommender": "popular"},
                             {"name": "random", "recommender": "random"}],
                       backend={"kind": "tiny", "trace_rate": 1.0, "max_new_tokens": 4},
                       ip_agent={"enabled": False})
    db = f"sqlite:///{tmp}/s.db"
    res = CliRunner().invoke(app, ["run", str(write_scenario(tmp, sc)), "--db", db])
    assert res.exit_code == 0, res.output
    (run,) = Store(db).list_runs()
    return db, run.id, res.output


def _inject_completions(db: str, run_id: str, text: str, where=()) -> None:
    """Fault injection: overwrite stored completions (all of the run's, or those matching)."""
    store = Store(db)
    with store.session() as s:
        s.execute(update(Decision).where(Decision.run_id == run_id, *where)
                  .values(completion=text))


def _decisions(db: str, run_id: str) -> list:
    with Store(db).session() as s:
        return s.execute(select(Decision.arm, Decision.step, Decision.user_id,
                                Decision.position, Decision.item_id)
                         .where(Decision.run_id == run_id)
                         .order_by(Decision.step, Decision.user_id, Decision.position)).all()


def _show(db: str, run_id: str) -> str:
    res = CliRunner().invoke(app, ["show", run_id, "--db", db])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_run_prints_the_arm_table_then_the_trace_or_why_there_is_none(traced_run):
    db, run_id, output = traced_run
    text = " ".join(output.split())
    assert "watch rate" in text and "popular" in text and "random" in text
    n = len(_decisions(db, run_id))
    pick = pick_trace(Store(db), run_id)
    assert pick.traced == n
    assert (f"{n} traced decision(s): {pick.malformed} failed the format check, "
            f"{pick.empty} empty") in text
    if pick.arm is None:
        assert "No trace to show: none has a readable <think> block" in text
    else:
        assert f"One traced decision (arm {pick.arm}, step {pick.step}" in text


def test_a_well_formed_trace_wins_over_an_earlier_half_formed_one(traced_run, monkeypatch):
    db, run_id, _ = traced_run
    _inject_completions(db, run_id, "")
    rows = _decisions(db, run_id)
    n = len(rows)
    text = _show(db, run_id)
    assert ("No trace to show: none has a readable <think> block (small models such as the "
            "default SmolLM2-135M rarely keep the format" in text)
    assert f"{n} traced decision(s): {n} failed the format check, {n} empty." in text

    first_popular = next(r for r in rows if r.arm == "popular")
    last_random = [r for r in rows if r.arm == "random"][-1]

    def key(r):
        return (Decision.arm == r.arm, Decision.step == r.step, Decision.user_id == r.user_id,
                Decision.position == r.position)

    _inject_completions(db, run_id, THINK_ONLY, key(first_popular))
    _inject_completions(db, run_id, WELL_FORMED, key(last_random))
    pick = pick_trace(Store(db), run_id)
    assert (pick.arm, pick.step, pick.user_id, pick.position) == tuple(last_random[:4])
    assert pick.think == "The user rewatches [bold]comedies[/]; this is one." and not pick.problems
    with Store(db).session() as s:
        title = s.scalar(select(Item.title).where(Item.run_id == run_id,
                                                  Item.item_id == last_random.item_id))
    text = _show(db, run_id)
    assert (f"One traced decision (arm random, step {last_random.step}, user "
            f"{last_random.user_id}, slot {last_random.position}): {title} →") in text
    assert "think: The user rewatches [bold]comedies[/]; this is one." in text
    assert "answer: Prediction: Yes [format check passed]" in text
    assert f"{n} traced decision(s): {n - 1} failed the format check, {n - 2} empty" in text

    # Without a well-formed one, the first closed <think> is shown, its failure named.
    _inject_completions(db, run_id, "", key(last_random))
    text = _show(db, run_id)
    assert f"(arm popular, step {first_popular.step}, user {first_popular.user_id}" in text
    assert "think: Mostly dramas in the history." in text
    assert "[format check failed: <answer> occurs 0 times" in text

    # A big run: only the first traces are read, and the counts say so.
    monkeypatch.setattr("vragent.sandbox.run_trace.MAX_TRACE_TRANSCRIPTS", 3)
    text = _show(db, run_id)
    assert f"{n} traced decision(s) (of the first 3 read): 3 failed the format check" in text
    assert "think: Mostly dramas in the history." in text


def test_a_run_without_traces_says_so(tmp_path):
    sc = tiny_scenario(population={"size": 2, "history_len": 5},
                       simulation={"steps": 1, "slate_size": 2, "users_per_task": 2,
                                   "refit_every": 0},
                       backend={"kind": "tiny", "trace_rate": 0.0}, ip_agent={"enabled": False})
    db = f"sqlite:///{tmp_path}/s.db"
    res = CliRunner().invoke(app, ["run", str(write_scenario(tmp_path, sc)), "--db", db])
    assert res.exit_code == 0, res.output
    assert "No trace to show: none was traced (backend.trace_rate). 0 traced" in " ".join(
        res.output.split())
