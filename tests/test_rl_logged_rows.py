"""RL rows from a simulation's store: flat prompts, ratings, excluded users, logged rows."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from vragent.agents.prompts import (
    SCORE_CANDIDATE_PREFIX,
    US_SYSTEM,
    PersonaView,
    judgement_prompt,
    score_prompt,
)
from vragent.agents.selection import selection_prompt
from vragent.environments.schema import Dataset
from vragent.environments.splits import as_sequences
from vragent.rl.datasets import (
    COLUMNS,
    RLDataError,
    build_and_save,
)
from vragent.rl.logged import parse_flat_prompt, rows_from_store, to_judgement_layout

from tests.conftest import tiny_scenario
from tests.test_rl_datasets import _cfg, _frame

# ------------------------------------------------------------------------------ helpers


# ------------------------------------------------------------------------------ store rows


def test_flat_prompts_parse_back_to_the_judgement_layout() -> None:
    persona = PersonaView("A 30-year-old male.", ("Film A [Drama]", "Film B [Comedy]"),
                          ("Clip C [Pets]",))
    friends = ("Clip D [Music]",)
    think = judgement_prompt(persona, "Film E [Drama]", friends_liked=friends)
    score = score_prompt(persona, "Film E [Drama]", friends_liked=friends)
    assert parse_flat_prompt(think.flat_text()) == think
    assert parse_flat_prompt(score.flat_text()) == score
    assert to_judgement_layout(score) == (think, "Film E [Drama]")
    assert to_judgement_layout(think) == (think, "Film E [Drama]")
    # A head policy's reasoned decision: the candidate after the preference the model wrote.
    reasoned = score_prompt(persona, "Film E [Drama]", friends_liked=friends,
                            preference="likes dramas. Candidate video: not this")
    assert parse_flat_prompt(reasoned.flat_text()) == reasoned
    assert to_judgement_layout(reasoned) == (think, "Film E [Drama]")
    assert to_judgement_layout(selection_prompt(["a"], ["b"])) is None
    with pytest.raises(ValueError, match="flat chat prompt"):
        parse_flat_prompt("hello")


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory, tiny_backend):
    """A real tiny simulation (synthetic world, tiny model) in a temporary SQLite store."""
    from vragent.sandbox.config import parse_scenario
    from vragent.sandbox.runner import create_run, execute
    from vragent.sandbox.store import Store
    from vragent.sandbox.world import load_world

    sc = parse_scenario(tiny_scenario(
        population={"size": 10, "history_len": 5},
        simulation={"steps": 2, "slate_size": 5, "users_per_task": 5, "refit_every": 0},
        ip_agent={"enabled": False}))
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('rlsim')}/sim.sqlite")
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
    execute(store, run_id, backend=tiny_backend)
    return store, run_id, load_world(sc)[0]


def test_rows_from_a_real_simulation_store(sim_run) -> None:
    from sqlalchemy import select
    from vragent.sandbox.store import Decision

    store, run_id, ds = sim_run
    with store.session() as s:
        prompts = list(s.scalars(select(Decision.prompt).where(Decision.run_id == run_id)))
    # The run logged both layouts: score mode and traced chain-of-thought prompts.
    assert any(SCORE_CANDIDATE_PREFIX in p for p in prompts)
    assert any(p.endswith("<|assistant|>\n<think>") for p in prompts)
    stats: dict[str, int] = {}
    rows = rows_from_store(store.url, run_id, ds, unseen_negatives=2, stats=stats, seed=4)
    seqs = {u: set(s) for u, s in as_sequences(ds).items()}
    yes = [r for r in rows if r["label"] == "Yes"]
    no = [r for r in rows if r["label"] == "No"]
    assert yes and stats["kept"] == len(yes) and stats["decisions"] == len(prompts)
    assert stats["not_in_real_logs"] > 0
    assert all(r["item_ids"][0] in seqs[r["user_id"]] for r in yes)  # implicit data: all Yes
    assert len(no) == 2 * len({r["user_id"] for r in yes}) == stats["negatives"]
    assert all(r["item_ids"][0] not in seqs[r["user_id"]] for r in no)
    pairs = [(r["user_id"], r["item_ids"][0]) for r in rows]
    assert len(pairs) == len(set(pairs))
    for r in rows:
        assert tuple(r) == COLUMNS
        assert r["protocol"] == "logged" and r["source"] == f"run:{run_id}"
        assert r["split"] == "train" and r["m"] == 2 and r["assistant_prefix"] == "<think>"
        system, user = r["prompt"]
        assert system == {"role": "system", "content": US_SYSTEM}
        assert user["content"].endswith("\nCandidate video:\n" + r["candidates"][0])
        assert r["group_id"] == f"train:run:{run_id}:{r['user_id']}:judgement:logged:2"
        assert len(r["history_ids"]) <= 5
    # The context is the logged one: a negative shares its user's first logged context.
    first = {}
    for r in rows:
        first.setdefault(r["user_id"], r["prompt"][1]["content"].rsplit("\nCandidate", 1)[0])
        assert r["prompt"][1]["content"].startswith(first[r["user_id"]])
    assert rows_from_store(store, run_id, ds, unseen_negatives=2, seed=4) == rows


def test_store_rows_use_ratings_and_skip_excluded_users(sim_run) -> None:
    store, run_id, ds = sim_run
    inter = ds.interactions.assign(
        rating=np.where((ds.interactions["user_id"] + ds.interactions["item_id"]) % 2, 5, 2))
    rated = Dataset(ds.name, ds.users, ds.items, inter)
    rows = rows_from_store(store, run_id, rated)
    assert {r["label"] for r in rows} == {"Yes", "No"}
    for r in rows:
        odd = (r["user_id"] + r["item_ids"][0]) % 2
        assert r["label"] == ("Yes" if odd else "No")
    users = sorted({r["user_id"] for r in rows})
    stats: dict[str, int] = {}
    kept = rows_from_store(store, run_id, rated, exclude_users=users[:1], stats=stats)
    assert users[0] not in {r["user_id"] for r in kept} and stats["eval_user_dropped"] > 0
    with pytest.raises(RLDataError, match="no run"):
        rows_from_store(store, "nope", rated)


def test_build_adds_logged_rows_to_train_only(sim_run, tmp_path) -> None:
    store, run_id, ds = sim_run
    cfg = _cfg(eval_users=10, store_url=store.url, store_runs=(run_id,),
               store_unseen_negatives=1, dataset_params={"n_users": 40})
    dd, manifest = build_and_save(cfg, tmp_path / "rl", ds)
    logged = _frame(dd["train"]).query("protocol == 'logged'")
    assert len(logged) and (_frame(dd["eval"])["protocol"] != "logged").all()
    assert not set(logged["user_id"]) & set(dd["eval"]["user_id"])
    assert manifest["sources"] == ["real", f"run:{run_id}"]
    assert manifest["store"]["runs"][run_id]["rows"] == len(logged)
    assert manifest["store"]["name"] == "sim.sqlite"
    assert "logged" in manifest["sizes"]["train"]["by"]["judgement"]
