"""A small store for the dashboard tests, written by the real simulator.

An A/B experiment of the tiny synthetic scenario over seeds 11 and 12, run and analysed by
``sandbox.ab`` (every decision traced, so each has a ``<think>`` text), a training run with
curves and a policy evaluation (``sandbox.training_log``), and a cover image for one profiled
item. Built once per directory; a second call reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from sandbox import training_log
from sandbox.ab import AbSettings, analyse_experiment, create_experiment, run_experiment
from sandbox.store import Decision, ItemProfileRow, Store
from tests.conftest import tiny_scenario, write_scenario

SEEDS = (11, 12)
TRAINING_RUN = "train0000000000000000000000000001"
EVAL_ID = "eval00000000000000000000000000001"
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


def _training(store: Store) -> None:
    rid = training_log.start_training_run(
        store, policy="fixture-users", algo="grpo", base_model="tiny-random", config={"lr": 1e-4},
        data_manifest={"rows": 64}, seed=0, git_revision=None, versions={}, run_id=TRAINING_RUN)
    for step in range(1, 11):
        training_log.log_curve(store, rid, step, {
            "reward": 0.2 + 0.05 * step, "format_reward": min(1.0, 0.1 * step),
            "format_valid_rate": min(1.0, 0.1 * step), "accuracy": 0.5 + 0.02 * step,
            "kl": 0.01 * step, "loss": 1.0 / step})
    training_log.finish_training_run(store, rid, status="finished", steps=10, wall_s=12.5)
    rows = [
        {"model": model, "mode": "score", "task": "judgement", "protocol": "random", "m": 4,
         "auc": auc, "accuracy": acc}
        for model, auc, acc in (("popularity", 0.61, 0.55), ("fixture-users", 0.66, 0.58))
    ]
    training_log.log_eval(store, EVAL_ID, rows, policy="fixture-users", data="runs/rl/fixture")


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
        _training(store)
        cover_item = _cover(store, folder / "covers")
        store.engine.dispose()
        done.write_text("\n".join([experiment, *runs, str(cover_item)]))
    experiment, *runs, cover_item = done.read_text().split("\n")
    store = Store(url, create=False)
    with store.session() as s:
        user, think = s.execute(
            select(Decision.user_id, Decision.think).where(
                Decision.run_id == runs[0], Decision.arm == "popular",
                Decision.traced.is_(True), Decision.think.is_not(None))
            .order_by(Decision.user_id, Decision.step, Decision.position).limit(1)).one()
    store.engine.dispose()
    return DashboardStore(url=url, path=db, runs=tuple(runs), experiment=experiment,
                          training_run=TRAINING_RUN, eval_id=EVAL_ID, covers=folder / "covers",
                          cover_item=int(cover_item), traced_user=int(user), think=think or "")


def think_snippet(think: str) -> str:
    """A run of plain letters from a (garbage) think text that a page shows verbatim."""
    words = [w for w in "".join(c if c.isascii() and c.isalpha() else " " for c in think).split()
             if len(w) >= 3]
    return max(words, key=len) if words else ""

