"""Training runs, their curves, and policy evaluations in the store.

Three tables beside the simulation's, so the dashboard reads RL training from the same database:

* ``training_runs``: one SFT or GRPO run (policy, algorithm, config, data manifest, status);
* ``training_curves``: one row per (run, step, metric), e.g. reward, format-valid rate,
  accuracy, KL and step time, written while training;
* ``policy_evals``: one row per (evaluation, model, mode, task, protocol, m, metric).

The tables share the store's declarative base; :func:`ensure_tables` creates them on first use,
so a store created before this module was imported still gets them.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column
from vragent.sandbox.store import Base, Store, insert_ignore


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TrainingRun(Base):
    """One training run of a US-agent policy."""

    __tablename__ = "training_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    policy: Mapped[str] = mapped_column(String(100))
    algo: Mapped[str] = mapped_column(String(10))  # sft | grpo
    base_model: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="running")
    config: Mapped[dict] = mapped_column(JSON)
    data_manifest: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    git_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    versions: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)


class TrainingCurve(Base):
    """One logged value of a training run."""

    __tablename__ = "training_curves"
    training_run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class PolicyEval(Base):
    """One metric of one evaluated model on one slice of an evaluation set."""

    __tablename__ = "policy_evals"
    eval_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    mode: Mapped[str] = mapped_column(String(20), primary_key=True)  # score | generate | rule
    task: Mapped[str] = mapped_column(String(20), primary_key=True)
    protocol: Mapped[str] = mapped_column(String(20), primary_key=True)
    m: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    policy: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the policy evaluated
    data: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


TABLES = (TrainingRun.__table__, TrainingCurve.__table__, PolicyEval.__table__)


def ensure_tables(store: Store) -> None:
    """Create the training tables when the store lacks them."""
    Base.metadata.create_all(store.engine, tables=list(TABLES), checkfirst=True)


def new_id() -> str:
    """A fresh 32-character id."""
    return uuid.uuid4().hex


def start_training_run(store: Store, *, policy: str, algo: str, base_model: str,
                       config: Mapping[str, Any], data_manifest: Mapping[str, Any], seed: int,
                       git_revision: str | None, versions: Mapping[str, str],
                       run_id: str | None = None) -> str:
    """Insert a ``running`` training run and return its id."""
    ensure_tables(store)
    rid = run_id or new_id()
    with store.session() as s:
        s.add(TrainingRun(id=rid, policy=policy, algo=algo, base_model=base_model,
                          config=dict(config), data_manifest=dict(data_manifest), seed=seed,
                          git_revision=git_revision, versions=dict(versions)))
    return rid


def log_curve(store: Store, run_id: str, step: int, values: Mapping[str, float]) -> None:
    """Store one step's values; NaN and non-numbers are dropped, a repeated step is ignored."""
    rows = [
        {"training_run_id": run_id, "step": int(step), "name": str(k)[:100], "value": float(v)}
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    with store.session() as s:
        insert_ignore(s, TrainingCurve, rows)


def finish_training_run(store: Store, run_id: str, *, status: str, steps: int,
                        wall_s: float, error: str | None = None) -> None:
    """Close a training run (``finished`` or ``failed``)."""
    with store.session() as s:
        row = s.get(TrainingRun, run_id)
        if row is None:
            return
        row.status, row.steps, row.wall_s = status, int(steps), float(wall_s)
        row.error, row.finished_at = error, _now()


def training_runs(store: Store, policy: str | None = None) -> list[TrainingRun]:
    """Training runs, newest first (optionally of one policy)."""
    ensure_tables(store)
    q = select(TrainingRun).order_by(TrainingRun.started_at.desc())
    if policy:
        q = q.where(TrainingRun.policy == policy)
    with store.session() as s:
        return list(s.scalars(q))


def curves(store: Store, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """A training run's curves: metric -> [(step, value), ...] in step order."""
    ensure_tables(store)
    q = (select(TrainingCurve.name, TrainingCurve.step, TrainingCurve.value)
         .where(TrainingCurve.training_run_id == run_id)
         .order_by(TrainingCurve.name, TrainingCurve.step))
    out: dict[str, list[tuple[int, float]]] = {}
    with store.session() as s:
        for name, step, value in s.execute(q):
            out.setdefault(name, []).append((step, value))
    return out


def log_eval(store: Store, eval_id: str, rows: Iterable[Mapping[str, Any]], *,
             policy: str | None, data: str) -> int:
    """Store an evaluation table (one dict per model/mode/task/protocol/m row).

    Every numeric column other than the keys becomes one ``policy_evals`` row.

    Returns:
        The number of metric rows written.
    """
    ensure_tables(store)
    keys = ("model", "mode", "task", "protocol", "m")
    out = []
    for r in rows:
        for metric, value in r.items():
            if metric in keys or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            v = float(value)
            out.append({
                "eval_id": eval_id, "model": str(r["model"]), "mode": str(r["mode"]),
                "task": str(r["task"]), "protocol": str(r["protocol"]), "m": int(r["m"]),
                "metric": metric[:40], "value": v if math.isfinite(v) else None,
                "policy": policy, "data": data,
            })
    with store.session() as s:
        insert_ignore(s, PolicyEval, out)
    return len(out)


def eval_rows(store: Store, eval_id: str | None = None,
              policy: str | None = None) -> list[dict[str, Any]]:
    """Stored evaluation metrics as dicts (all, one evaluation, or one policy's)."""
    ensure_tables(store)
    q = select(PolicyEval).order_by(PolicyEval.created_at, PolicyEval.model)
    if eval_id:
        q = q.where(PolicyEval.eval_id == eval_id)
    if policy:
        q = q.where(PolicyEval.policy == policy)
    with store.session() as s:
        return [
            {c: getattr(r, c) for c in ("eval_id", "model", "mode", "task", "protocol", "m",
                                         "metric", "value", "policy", "data", "created_at")}
            for r in s.scalars(q)
        ]
