"""A generated interactions log through every place a dataset kind is chosen.

Scenarios (``dataset.kind: interactions``), ``vragent run`` with the tiny backend,
``vragent rl build-data``, ``vragent fidelity``'s offline half and the ``--help`` texts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner
from vragent.environments.datasets import make_synthetic_world
from vragent.environments.sources import DATASET_KINDS
from vragent.sandbox.cli import app
from vragent.sandbox.config import ScenarioError, parse_scenario

from tests.conftest import tiny_scenario, write_scenario

COLUMNS = {"user": "viewer", "item": "video", "timestamp": "ts", "title": "name"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic world written as a viewing log (string ids, renamed columns) + titles."""
    world = make_synthetic_world(n_users=40, n_items=60, mean_history=10, seed=3).dataset
    folder = tmp_path_factory.mktemp("logs")
    inter = world.interactions.sample(frac=1.0, random_state=0)  # file order is not time order
    log = pd.DataFrame({"viewer": "viewer-" + inter["user_id"].astype(str),
                        "video": "vid-" + inter["item_id"].astype(str),
                        "ts": 1_700_000_000 + 60 * inter["order"]})
    log.to_csv(folder / "views.csv", index=False)
    items = pd.DataFrame({"video": "vid-" + world.items["item_id"].astype(str),
                          "name": world.items["title"], "category": world.items["category"]})
    items.to_parquet(folder / "videos.parquet", index=False)
    return folder / "views.csv", folder / "videos.parquet"


def _dataset_section(logs: tuple[Path, Path]) -> dict:
    return {"kind": "interactions", "path": str(logs[0]), "items_path": str(logs[1]),
            "columns": COLUMNS, "min_len": 3}


def _one_line_error(result) -> str:
    assert isinstance(result.exception, SystemExit), result.output  # no traceback
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# --------------------------------------------------------------------------- scenarios


def test_scenario_validates_interactions_options(logs) -> None:
    sc = parse_scenario(tiny_scenario(dataset=_dataset_section(logs)))
    assert sc.dataset.columns.user == "viewer"
    assert sc.dataset.loader_options()["items_path"] == str(logs[1])
    bad = {"name": "x", "arms": [{"name": "p", "recommender": "popular"}]}
    for dataset, message in [
        ({**_dataset_section(logs), "columns": {"usr": "a"}},
         "x: dataset.columns.usr: unknown key"),
        ({"kind": "interactions"}, "needs a path"),
        ({"kind": "movielens-100k", "items_path": "t.csv"},
         "items_path is only for kind 'interactions'"),
        ({"kind": "movielens-100k", "columns": {"user": "u"}},
         "columns is only for kind 'interactions'"),
    ]:
        with pytest.raises(ScenarioError, match=re.escape(message)) as err:
            parse_scenario({**bad, "dataset": dataset}, "x")
        assert "\n" not in str(err.value)
    # A scenario dumped and read back (as runs and A/B experiments store it) stays valid.
    parse_scenario(json.loads(json.dumps(sc.model_dump(mode="json"))))
    parse_scenario({**bad, **{"dataset": parse_scenario(bad).dataset.model_dump()}})


def test_scenario_runs_one_step_with_the_tiny_backend(logs, tmp_path) -> None:
    from vragent.sandbox.store import Store

    sc = tiny_scenario(dataset=_dataset_section(logs), simulation={"steps": 1},
                       ip_agent={"enabled": False}, backend={"kind": "tiny", "trace_rate": 0.0},
                       metrics={"embeddings": "category"})
    path = write_scenario(tmp_path, sc)
    db = f"sqlite:///{tmp_path}/s.db"
    result = CliRunner().invoke(app, ["run", str(path), "--db", db])
    assert result.exit_code == 0, result.output
    (run,) = Store(db).list_runs()
    assert run.n_steps == 1 and run.status == "finished"


def test_fidelity_offline_half_reads_interactions(logs) -> None:
    from vragent.sandbox.fidelity import offline_scores

    sc = parse_scenario(tiny_scenario(dataset=_dataset_section(logs)))
    scores, n_users = offline_scores(sc)
    assert set(scores) == {"popular", "cooc", "random"} and n_users > 0
    assert all(0 <= s["HR@10"] <= 1 for s in scores.values())


def test_missing_log_is_one_line_for_run_and_fidelity(logs, tmp_path) -> None:
    dataset = {**_dataset_section(logs), "path": str(tmp_path / "gone.csv")}
    path = write_scenario(tmp_path, tiny_scenario(dataset=dataset))
    db = f"sqlite:///{tmp_path}/s.db"
    for args in (["run", str(path)], ["fidelity", str(path), "--resamples", "5"]):
        result = CliRunner().invoke(app, [*args, "--db", db])
        assert result.exit_code != 0
        assert "gone.csv does not exist" in _one_line_error(result)


# --------------------------------------------------------------------------- build-data


def test_build_data_end_to_end_on_an_interactions_csv(logs, tmp_path) -> None:
    from vragent.rl.datasets import load_rl_data

    out = tmp_path / "rl"
    args = ["rl", "build-data", "--dataset", "interactions", "--path", str(logs[0]),
            "--items-path", str(logs[1]), "--out", str(out), "--eval-users", "6",
            "--train-users", "20", "--history-len", "4"]
    for role, name in COLUMNS.items():
        args += ["--column", f"{role}={name}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    dd, manifest = load_rl_data(out)
    assert manifest["dataset"]["kind"] == "interactions"
    assert manifest["dataset"]["params"]["columns"] == COLUMNS
    assert manifest["dataset"]["params"]["items_path"] == "videos.parquet"  # no local folders
    rows = dd["eval"].to_pandas()
    assert len(rows) > 0 and set(rows["task"]) == {"judgement", "selection"}
    titles = set(pd.read_parquet(logs[1])["name"])
    assert any(t in rows["prompt"].iloc[0][-1]["content"] for t in titles)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "interactions"], "needs a path"),
    (["--dataset", "interactions", "--path", "/nonexistent/views.csv"],
     "/nonexistent/views.csv: no such file or folder"),
    (["--dataset", "movielens-1m"], "needs a path"),
    (["--dataset", "netflix"], "unknown dataset 'netflix'"),
    (["--dataset", "synthetic", "--column", "user=u"], "only for --dataset interactions"),
    (["--dataset", "interactions", "--column", "user"], "expected ROLE=NAME"),
    (["--dataset", "interactions", "--column", "usr=u"], "columns.usr: unknown option"),
])
def test_build_data_bad_source_is_one_line(tmp_path, args, message) -> None:
    result = CliRunner().invoke(app, ["rl", "build-data", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in _one_line_error(result)


@pytest.mark.parametrize("command", [["rl", "build-data"], ["perceive"]])
def test_help_lists_every_dataset_kind(command) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Dataset kind: " + ", ".join(DATASET_KINDS) + "." in text
    assert "--items-path" in text and "--column" in text
