"""``vragent loop SCENARIO``: simulate, build data, train, simulate again; fidelity before/after.

The four stages, in order:

1. **simulate** the scenario with its own backend (the "before" policy);
2. **build data** from that run's trajectories (logged prompts of decisions whose item is in
   the user's real log, labelled from it) plus real logs (``rl.datasets``); held-out users
   are disjoint from every trained-on user;
3. **train** a policy on it (GRPO by default, or SFT) and register it;
4. **simulate again** with ``policy: <trained>``.

Fidelity is then reported side by side for both policies:

* on the held-out users (``rl.policy_eval``): judgement accuracy and AUC against random and
  hard negatives, and selection accuracy, in score mode;
* in the simulation itself: among impressions of items the real user actually watched, the
  share the simulated user watched or liked, the same share for the other impressions, and the
  AUC of the simulated p(like) separating the two (``decision_fidelity``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field
from sqlalchemy import select
from vragent.rl.configs import GRPORunConfig, SFTRunConfig
from vragent.rl.metrics import pairwise_auc
from vragent.sandbox.config import ConfigModel, Scenario, load_scenario
from vragent.sandbox.progress import RunProgress, Tracker
from vragent.sandbox.runner import create_run, execute
from vragent.sandbox.store import Decision, Store

Log = Callable[[str], None]


class LoopConfig(ConfigModel):
    """What ``vragent loop`` runs.

    Attributes:
        scenario: a scenario name or path.
        policy: the trained policy's name (default ``<scenario name>-loop``).
        algo: ``grpo`` or ``sft``.
        base_model: what training starts from (default: the scenario's model; ``tiny-random``
            for a ``tiny`` backend).
        steps: training steps.
        data_out: where the RL data folder goes (default ``runs/rl/<policy>-data``).
        eval_users: held-out users of the RL data.
        train_users: most real train users.
        eval_groups: held-out users per cell in the before/after evaluation.
        unseen_negatives: unseen-item "No" rows per simulated user (implicit data has only
            positives in the logs).
        train: extra training-config fields (``lr``, ``max_samples``, ``num_generations`` ...).
        seed: the seed of data, training and evaluation.
    """

    scenario: str = Field(min_length=1)
    policy: str | None = None
    algo: Literal["grpo", "sft"] = "grpo"
    base_model: str | None = None
    steps: int = Field(50, ge=1)
    data_out: str | None = None
    eval_users: int | float = Field(50, ge=0)
    train_users: int | None = Field(500, ge=0)
    eval_groups: int = Field(10, ge=1)
    unseen_negatives: int = Field(1, ge=0)
    train: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


@dataclass
class LoopResult:
    """Run ids, the policy and the before/after table."""

    run_before: str
    run_after: str
    policy: str
    data: str
    training_run_id: str
    table: list[dict[str, Any]]
    wall_s: dict[str, float]


def _base_model(sc: Scenario) -> str:
    if sc.backend.kind == "tiny":
        return "tiny-random"
    if sc.backend.kind == "hf":
        return sc.backend.model
    raise ValueError(f"vragent loop trains in process: backend.kind {sc.backend.kind!r} is not "
                     "supported (use hf or tiny; serve the trained policy with vLLM afterwards)")


def _simulate(store: Store, sc: Scenario, source: str | None, tracker: Tracker | None,
              stage: str) -> str:
    text = yaml.safe_dump(sc.model_dump(mode="json"), sort_keys=False)
    run_id = create_run(store, sc, text, source)
    execute(store, run_id, progress=RunProgress(tracker, f"{stage} run {run_id}")
            if tracker else None)
    return run_id


def _data_config(sc: Scenario, cfg: LoopConfig, db: str, run_id: str):
    from vragent.rl.datasets import RLDataConfig
    from vragent.sandbox.world import dataset_path

    params: dict[str, Any] = sc.dataset.loader_options()
    path = dataset_path(sc)
    if sc.dataset.kind == "synthetic":
        params = {"seed": sc.seed, **sc.dataset.synthetic}
    return RLDataConfig(
        dataset=sc.dataset.kind, dataset_path=None if path is None else str(path),
        dataset_params=params, seed=cfg.seed, min_len=sc.dataset.min_len,
        max_len=sc.dataset.max_len, history_len=sc.population.history_len,
        eval_users=cfg.eval_users, train_users=cfg.train_users, store_url=db,
        store_runs=(run_id,), store_unseen_negatives=cfg.unseen_negatives)


def decision_fidelity(store: Store, run_id: str, sequences: dict[int, list[int]]) -> dict[
        str, float | None]:
    """How a run's simulated decisions line up with what the real users watched.

    Args:
        store: the run store.
        run_id: the run.
        sequences: each real user's full item sequence.

    Returns:
        ``decisions``, ``on_real_items`` (impressions of items in the user's real log),
        ``positive_rate_real`` and ``positive_rate_other`` (watch or like), and ``auc`` of the
        simulated p(like) (or the action, when p(like) is missing) for real against other.
    """
    with store.session() as s:
        rows = s.execute(select(Decision.user_id, Decision.item_id, Decision.action,
                                Decision.p_like).where(Decision.run_id == run_id)).all()
    seen = {u: set(items) for u, items in sequences.items()}
    real = np.array([int(i) in seen.get(int(u), ()) for u, i, _, _ in rows], dtype=bool)
    positive = np.array([a in ("watch", "like") for _, _, a, _ in rows], dtype=float)
    has_p = all(p is not None for *_, p in rows)
    score = np.array([p for *_, p in rows], dtype=float) if has_p and rows else positive

    def rate(mask: np.ndarray) -> float | None:
        return float(positive[mask].mean()) if mask.any() else None

    return {
        "decisions": float(len(rows)), "on_real_items": float(real.sum()),
        "positive_rate_real": rate(real), "positive_rate_other": rate(~real),
        "auc": pairwise_auc(real, score) if len(rows) else None,
    }


def _held_out(data: str, before: Any, after: Any, groups: int, seed: int, store: Store,
              log: Log, tracker: Tracker | None) -> dict[str, dict[str, float | None]]:
    from vragent.rl.policy_eval import EvalConfig, headline, run_eval

    cfg = EvalConfig(data=data, base_model=None, baselines=False, max_groups=groups,
                     generate_groups=0, seed=seed,
                     extra_models={"before": before, "after": after})
    table, _ = run_eval(cfg, store, log=log, tracker=tracker)
    return {name: headline(table, name) for name in ("before", "after")}


def run_loop(cfg: LoopConfig, db: str, registry: str | None = None,
             log: Log = print, tracker: Tracker | None = None) -> LoopResult:
    """Run the four stages and measure fidelity before and after.

    Args:
        cfg: the loop's settings.
        db: the store's SQLAlchemy URL (both runs, the data's trajectories, the curves).
        registry: the policy registry (default ``$VRAGENT_POLICIES`` or ``runs/policies``).
        log: a print-like function.
        tracker: shows the stages, both simulations' steps, the data's users and the
            evaluation's cells.

    Returns:
        The runs, the policy and the fidelity table.
    """
    from vragent.rl.datasets import build_and_save, load_rl_data
    from vragent.rl.trainers import train_policy
    from vragent.sandbox.backend_factory import make_backend, policy_backend
    from vragent.sandbox.world import load_world

    if registry:
        # The second simulation resolves `policy:` through the registry in the environment.
        os.environ["VRAGENT_POLICIES"] = str(registry)
    sc, _, path = load_scenario(cfg.scenario)
    policy = cfg.policy or f"{sc.name}-loop"
    data_out = cfg.data_out or f"runs/rl/{policy}-data"
    store = Store(db)
    wall: dict[str, float] = {}

    stages = tracker.task("loop", 4, unit="stages") if tracker else None
    t0 = time.perf_counter()
    log(f"[1/4] simulate {sc.name} with {sc.backend.kind}:{sc.backend.model}")
    run_before = _simulate(store, sc, str(path), tracker, "[1/4]")
    wall["simulate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if stages:
        stages.update(1)
    log(f"[2/4] build data from run {run_before} + real logs → {data_out}")
    build_and_save(_data_config(sc, cfg, db, run_before), data_out,
                   progress=tracker.task("[2/4] users", unit="users", every=5.0)
                   if tracker else None)
    dd, _ = load_rl_data(data_out)
    logged = sum(1 for r in dd["train"] if r["protocol"] == "logged")
    log(f"      {len(dd['train'])} train rows ({logged} from the run), "
        f"{len(dd['eval'])} held-out rows")
    wall["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if stages:
        stages.update(2)
    log(f"[3/4] train {cfg.algo} policy {policy!r}")
    cls = GRPORunConfig if cfg.algo == "grpo" else SFTRunConfig
    train_cfg = cls(policy=policy, data=data_out, base_model=cfg.base_model or _base_model(sc),
                    max_steps=cfg.steps, seed=cfg.seed, **cfg.train)
    trained = train_policy(train_cfg, store, registry=registry, log=log)
    wall["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if stages:
        stages.update(3)
    after_sc = sc.model_copy(update={"policy": policy})
    log(f"[4/4] simulate {sc.name} again with policy {policy!r}")
    run_after = _simulate(store, after_sc, str(path), tracker, "[4/4]")
    wall["simulate_again"] = time.perf_counter() - t0
    if stages:
        stages.update(4)
    log("fidelity before and after: the runs' decisions and the held-out users")

    t0 = time.perf_counter()
    dataset, _ = load_world(sc)
    seqs = dataset.sequences()
    sim = {"before": decision_fidelity(store, run_before, seqs),
           "after": decision_fidelity(store, run_after, seqs)}
    held = _held_out(data_out, make_backend(sc.backend, seed=sc.seed), policy_backend(after_sc),
                     cfg.eval_groups, cfg.seed, store, log, tracker)
    wall["evaluate"] = time.perf_counter() - t0
    table = [{"metric": f"held-out {k}", "before": v, "after": held["after"].get(k)}
             for k, v in held["before"].items()]
    table += [{"metric": f"simulation {k}", "before": v, "after": sim["after"][k]}
              for k, v in sim["before"].items()]
    return LoopResult(run_before, run_after, policy, data_out, trained.training_run_id, table,
                      wall)


def loop_markdown(res: LoopResult, command: str) -> str:
    """The before/after fidelity table as markdown."""

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"Command: `{command}`", "",
             f"Runs: before `{res.run_before}`, after `{res.run_after}`; policy `{res.policy}` "
             f"(training run `{res.training_run_id}`); data `{res.data}`.", "",
             "| metric | before | after |", "|---|--:|--:|"]
    lines += [f"| {r['metric']} | {fmt(r['before'])} | {fmt(r['after'])} |" for r in res.table]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.wall_s.items())]
    return "\n".join(lines) + "\n"


def write_loop_report(res: LoopResult, path: str | Path, command: str) -> Path:
    """Write :func:`loop_markdown` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(loop_markdown(res, command), encoding="utf-8")
    return path
