"""A small store for the dashboard tests, written by the real simulator.

An A/B experiment of the tiny synthetic scenario over seeds 11 and 12, run and analysed by
``sandbox.ab`` (every decision traced, so each has a ``<think>`` text), a real tiny GRPO run
with its curves and a held-out evaluation (``rl``), and a cover image for one profiled item.
Built once per directory; a second call reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from vragent.sandbox.ab import AbSettings, analyse_experiment, create_experiment, run_experiment
from vragent.sandbox.store import Decision, ItemProfileRow, Store

from tests.conftest import tiny_scenario, write_scenario

SEEDS = (11, 12)
POLICY = "fixture-users"
DONE = "complete.txt"


@dataclass(frozen=True)
class DashboardStore:
    """What the fixture built."""

    url: str
    path: Path
    runs: tuple[str, ...]  # the experiment's runs, in seed order (the last is the newest)
    experiment: str
    training_run: str
    eval_id: str
    covers: Path
    cover_item: int
    traced_user: int  # a user of the first run with a traced decision in arm "popular"
    think: str  # that decision's <think> text


def _training(store: Store, folder: Path) -> tuple[str, str]:
    """A real (tiny) GRPO run and a real held-out evaluation, written to the store.

    The data is a small judgement set built like ``tests/test_rl_training.py``'s; the trainer
    is TRL's GRPO on the tiny random model, and the evaluation runs the popularity prior and the
    trained policy through ``rl.policy_eval.run_eval``.
    """
    import random

    from datasets import Dataset, DatasetDict
    from vragent.agents.prompts import PersonaView, judgement_prompt
    from vragent.rl.configs import GRPORunConfig, LoraSettings, SFTRunConfig
    from vragent.rl.datasets import save_rl_data
    from vragent.rl.policy_eval import EvalConfig, run_eval
    from vragent.rl.trainers import train_policy

    rng = random.Random(0)
    titles = ["Quick pasta #cooking", "Street food tour #travel", "Gaming highlights #gaming",
              "Funny cat compilation #pets #comedy"]
    rows = []
    for i in range(32):
        cand = rng.choice(titles)
        chat = judgement_prompt(PersonaView("A platform user.", ("Quick pasta [cooking]",)), cand)
        rows.append({
            "task": "judgement", "protocol": "random", "m": 1, "group_id": f"g{i}",
            "user_id": i, "item_ids": [i % 4 + 1], "history_ids": [1],
            "history_titles": ["Quick pasta [cooking]"],
            "prompt": chat.as_dicts(), "assistant_prefix": chat.assistant_prefix,
            "candidates": [cand], "label": "Yes" if "cooking" in cand or "travel" in cand
            else "No", "correct_index": -1, "source": "real", "split": "train",
        })
    data = save_rl_data(DatasetDict({"train": Dataset.from_list(rows),
                                     "eval": Dataset.from_list(rows[:12])}),
                        folder / "rl-data", {"seed": 0, "sizes": {"train": len(rows)}})
    registry = folder / "policies"
    common = {"lora": LoraSettings(r=0), "threads": 1, "output_dir": str(folder / "scratch"),
              "thinking": False}
    # SFT first, so the GRPO rollouts sometimes parse and its curves move.
    train_policy(SFTRunConfig(policy=f"{POLICY}-sft", data=str(data), base_model="tiny-random",
                              lr=3e-3, max_steps=30, batch_size=8, **common),
                 store, registry=registry, log=lambda *a: None)
    res = train_policy(GRPORunConfig(policy=POLICY, data=str(data),
                                     base_model=f"policy:{POLICY}-sft",
                                     lr=5e-4, max_steps=6, num_generations=4, prompts_per_step=1,
                                     max_completion_length=16, **common),
                       store, registry=registry, log=lambda *a: None)
    _, eval_id = run_eval(EvalConfig(data=str(data), policies=(POLICY,), base_model=None,
                                     recommenders=("popular",), max_groups=12, generate_groups=0,
                                     registry=str(registry), threads=1),
                          store, log=lambda *a: None)
    return res.training_run_id, eval_id


def _cover(store: Store, folder: Path) -> int:
    from PIL import Image, ImageDraw

    with store.session() as s:
        item = s.scalar(select(ItemProfileRow.item_id).order_by(ItemProfileRow.item_id).limit(1))
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (160, 90), (40, 90, 160))
    ImageDraw.Draw(img).text((10, 35), f"cover {item}", fill=(255, 255, 255))
    img.save(folder / f"{item}.png")
    return int(item)


def build(folder: Path) -> DashboardStore:
    """Build the store in ``folder`` (or reuse the one a previous call built there)."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "dashboard.sqlite"
    url = f"sqlite:///{db}"
    done = folder / DONE
    if not done.exists():
        for p in folder.glob("dashboard.sqlite*"):
            p.unlink()
        path = write_scenario(folder, tiny_scenario(backend={"trace_rate": 1.0}))
        store = Store(url)
        experiment = create_experiment(store, str(path), SEEDS,
                                       settings=AbSettings(n_resamples=500))
        runs = run_experiment(store, experiment)
        analyse_experiment(store, experiment)
        training_run, eval_id = _training(store, folder)
        cover_item = _cover(store, folder / "covers")
        store.engine.dispose()
        done.write_text("\n".join([training_run, eval_id, str(cover_item), experiment, *runs]))
    training_run, eval_id, cover_item, experiment, *runs = done.read_text().split("\n")
    store = Store(url, create=False)
    with store.session() as s:
        user, think = s.execute(
            select(Decision.user_id, Decision.think).where(
                Decision.run_id == runs[0], Decision.arm == "popular",
                Decision.traced.is_(True), Decision.think.is_not(None))
            .order_by(Decision.user_id, Decision.step, Decision.position).limit(1)).one()
    store.engine.dispose()
    return DashboardStore(url=url, path=db, runs=tuple(runs), experiment=experiment,
                          training_run=training_run, eval_id=eval_id, covers=folder / "covers",
                          cover_item=int(cover_item), traced_user=int(user), think=think or "")


def think_snippet(think: str) -> str:
    """A run of plain letters from a (garbage) think text that a page shows verbatim."""
    words = [w for w in "".join(c if c.isascii() and c.isalpha() else " " for c in think).split()
             if len(w) >= 3]
    return max(words, key=len) if words else ""



def hostile_text(port: int) -> str:
    """Outside text that would fetch, link, colour or typeset if a page read it as Markdown.

    Every payload points at ``127.0.0.1:port``, so a browser test can count the fetches.
    """
    base = f"http://127.0.0.1:{port}"
    return (f"Evil ![pixel]({base}/pixel.png) [link]({base}/link) :red[RED] $x^2$ "
            f"<img src='{base}/html.png'> {base}/auto :material/warning: **bold**\n"
            "second line")


def hostile_copy(source: DashboardStore, folder: Path, port: int) -> DashboardStore:
    """A copy of the fixture store whose outside strings are all :func:`hostile_text`.

    Item titles, personas and profile values, the reasoning and completions of decisions, IP
    profiles (title, text, tags, problems, stage records), run errors and scenario names, and
    the A/B experiment's command: what datasets, models and servers put in a store.
    """
    import json
    import shutil
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "hostile.sqlite"
    shutil.copyfile(source.path, db)
    evil = hostile_text(port)
    stage = {"stage": "kfr", "prompt": evil, "completion": evil, "output": evil,
             "skipped": "", "tokens_in": 1, "tokens_out": 1, "latency_ms": 1.0}
    skipped = {**stage, "stage": evil, "skipped": evil, "output": None}
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE items SET title = ? || ' #' || item_id, tags = ?", (evil, evil))
        conn.execute("UPDATE users SET persona = ?, profile = ?",
                     (evil, json.dumps({"occupation": evil})))
        conn.execute("UPDATE decisions SET think = ?, answer = ?, completion = ?, prompt = ?",
                     (evil, evil, evil, evil))
        conn.execute("UPDATE item_profiles SET title = ?, profile = ?, tags = ?, problems = ?, "
                     "stages = ?, format_ok = 0",
                     (evil, evil, evil, json.dumps([evil]), json.dumps([stage, skipped])))
        conn.execute("UPDATE runs SET error = ?, scenario_name = ?", (evil, evil))
        conn.execute("UPDATE ab_experiments SET scenario_name = ?, settings = ?",
                     (evil, json.dumps({"confidence": 0.95, "command": evil})))
    return DashboardStore(url=f"sqlite:///{db}", path=db, runs=source.runs,
                          experiment=source.experiment, training_run=source.training_run,
                          eval_id=source.eval_id, covers=source.covers,
                          cover_item=source.cover_item, traced_user=source.traced_user,
                          think=evil)
