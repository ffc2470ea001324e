"""`vragent perceive`, `vragent show-item` and the IP agent inside the simulation."""

from __future__ import annotations

import yaml
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner
from vragent.sandbox.cli import app
from vragent.sandbox.store import ItemProfileRow, Store

SYNTH = ["--dataset", "synthetic", "--backend", "tiny", "--batch-size", "4",
         "--max-new-tokens", "6", "--cmp-max-new-tokens", "6"]


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_perceive_profiles_then_resumes_from_the_cache(tmp_path):
    db = f"sqlite:///{tmp_path}/p.sqlite"
    first = _invoke("perceive", *SYNTH, "--items", 6, "--db", db)
    assert first.exit_code == 0, first.output
    assert "0 cached, 6 new" in first.output
    # A longer second pass makes only the new items: profiles are cached per item and agent.
    second = _invoke("perceive", *SYNTH, "--items", 9, "--db", db)
    assert second.exit_code == 0 and "6 cached, 3 new" in second.output
    with Store(db).session() as s:
        rows = list(s.scalars(select(ItemProfileRow)))
    assert len(rows) == 9 and len({r.item_id for r in rows}) == 9
    assert all([st["stage"] for st in r.stages] == ["kfr", "sufficiency", "cmp", "rra"]
               for r in rows)
    assert all(len(r.profile.split()) <= 35 and r.format_ok == (not r.problems) for r in rows)

    shown = _invoke("show-item", rows[0].item_id, "--db", db, "--full")
    assert shown.exit_code == 0
    for text in ("profile", "cmp", "rra", "skipped: text-only model", "prompt:", rows[0].title):
        assert text in shown.output


def test_show_item_without_a_profile_fails_cleanly(tmp_path):
    Store(f"sqlite:///{tmp_path}/e.sqlite")  # an empty store
    result = _invoke("show-item", 123456, "--db", f"sqlite:///{tmp_path}/e.sqlite")
    assert result.exit_code == 2 and "no profile of item 123456" in result.output


def test_bad_backend_is_a_one_line_error(tmp_path):
    result = _invoke("perceive", "--dataset", "synthetic", "--backend", "nope", "--db",
                     f"sqlite:///{tmp_path}/b.sqlite")
    assert result.exit_code == 2 and "backend.kind" in result.output


def test_perceive_with_frames_and_tiny_vision_models(tmp_path):
    from vragent.environments.datasets import load_dataset
    from vragent.sandbox.perception import most_popular_first

    ds = load_dataset("synthetic", None, seed=0)
    top = most_popular_first(ds.interactions, ds.items["item_id"])[:3]
    frames = tmp_path / "frames"
    for item in top:
        (frames / str(item)).mkdir(parents=True)
        for k in range(4):
            colour = (60 * k, 40 * (item % 6), 90)
            Image.new("RGB", (32, 32), colour).save(frames / str(item) / f"{k}.png")
    db = f"sqlite:///{tmp_path}/v.sqlite"
    result = _invoke("perceive", "--dataset", "synthetic", "--backend", "tiny-vision",
                     "--model", "tiny", "--vision", "--clip-model", "tiny-random",
                     "--frames-dir", frames, "--items", 6, "--batch-size", 8,
                     "--max-new-tokens", 4, "--cmp-max-new-tokens", 4, "--db", db)
    assert result.exit_code == 0, result.output
    with Store(db).session() as s:
        rows = {r.item_id: r for r in s.scalars(select(ItemProfileRow))}
    with_frames = [r for i, r in rows.items() if i in top]
    assert len(with_frames) == 3
    for r in with_frames:
        kfr = r.stages[0]
        assert kfr["output"]["method"] == "clip" and len(kfr["output"]["kept"]) == 3
        scores = [k["score"] for k in kfr["output"]["kept"]]
        assert scores == sorted(scores, reverse=True)
    # Frames are image tokens: perception with three key frames reads more than without.
    others_in = max(r.stages[2]["tokens_in"] for i, r in rows.items() if i not in top)
    assert min(r.stages[2]["tokens_in"] for r in with_frames) > others_in
    others = [r for i, r in rows.items() if i not in top]
    assert others and all(r.stages[0]["skipped"] == "no visual input" for r in others)


def test_simulation_profiles_through_the_shared_cache(tmp_path):
    """The graph's perceive node stores staged profiles; a second run reuses them (0 IP calls)."""
    from vragent.sandbox.config import parse_scenario
    from vragent.sandbox.runner import create_run, execute

    from tests.conftest import tiny_scenario

    db = f"sqlite:///{tmp_path}/sim.sqlite"
    sc_dict = tiny_scenario(ip_agent={"enabled": True, "items_per_step": 2, "max_new_tokens": 6,
                                      "cmp_max_new_tokens": 6, "in_prompt": True},
                            simulation={"steps": 2})
    store = Store(db)
    sc = parse_scenario(sc_dict)
    text = yaml.safe_dump(sc_dict)
    execute(store, create_run(store, sc, text, "inline"))
    with store.session() as s:
        rows = list(s.scalars(select(ItemProfileRow)))
    assert len(rows) == 4  # 2 items per step × 2 steps
    assert all([st["stage"] for st in r.stages] == ["kfr", "sufficiency", "cmp", "rra"]
               for r in rows)
    run2 = create_run(store, sc, text, "inline")
    execute(store, run2)
    meter = {r["arm"]: r for r in store.metering(run2)}
    assert meter.get("ip-agent", {"calls": 0})["calls"] == 0
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(ItemProfileRow)) == 4
