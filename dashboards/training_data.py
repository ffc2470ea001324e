"""The Training page's reads: training runs, their curves and configs, policy evaluations.

Cached, read-only queries in the manner of :mod:`dashboards.data` (its engine and helpers).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import func, select
from vragent.dashboards.data import TTL_S, _frame, engine, has
from vragent.sandbox.training_log import PolicyEval, TrainingCurve, TrainingRun


@st.cache_data(ttl=TTL_S, show_spinner=False)
def training_runs(url: str) -> pd.DataFrame:
    """RL training runs, newest first."""
    cols = ["id", "policy", "algo", "base_model", "status", "steps", "wall_s", "seed",
            "started_at", "finished_at", "error"]
    if not has(url, "training_runs"):
        return pd.DataFrame(columns=cols)
    t = TrainingRun.__table__
    return _frame(url, select(*[t.c[c] for c in cols]).order_by(t.c.started_at.desc(), t.c.id))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def training_config(url: str, run_id: str) -> dict[str, Any]:
    """A training run's config and data manifest."""
    if not has(url, "training_runs"):
        return {}
    t = TrainingRun.__table__
    with engine(url).connect() as conn:
        row = conn.execute(select(t.c.config, t.c.data_manifest, t.c.git_revision,
                                  t.c.versions).where(t.c.id == run_id)).mappings().first()
    return dict(row) if row else {}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def training_curves(url: str, run_id: str) -> pd.DataFrame:
    """A training run's curves: columns ``step, name, value``."""
    if not has(url, "training_curves"):
        return pd.DataFrame(columns=["step", "name", "value"])
    c = TrainingCurve.__table__
    return _frame(url, select(c.c.step, c.c.name, c.c.value)
                  .where(c.c.training_run_id == run_id).order_by(c.c.name, c.c.step))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluations(url: str) -> pd.DataFrame:
    """Stored evaluations: ``eval_id, data, policy, created, rows``, newest first."""
    cols = ["eval_id", "data", "policy", "created", "rows"]
    if not has(url, "policy_evals"):
        return pd.DataFrame(columns=cols)
    p = PolicyEval.__table__
    df = _frame(url, select(p.c.eval_id, func.max(p.c.data), func.max(p.c.policy),
                            func.min(p.c.created_at), func.count())
                .group_by(p.c.eval_id).order_by(func.min(p.c.created_at).desc()))
    df.columns = cols
    return df


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_table(url: str, eval_id: str) -> pd.DataFrame:
    """One evaluation, wide: a row per model, mode, task, protocol and m; a column per metric."""
    if not has(url, "policy_evals"):
        return pd.DataFrame()
    p = PolicyEval.__table__
    long = _frame(url, select(p.c.model, p.c.mode, p.c.task, p.c.protocol, p.c.m, p.c.metric,
                              p.c.value).where(p.c.eval_id == eval_id))
    if long.empty:
        return long
    # dropna=False would also build every model × mode × … combination that never ran.
    wide = long.pivot_table(index=["model", "mode", "task", "protocol", "m"], columns="metric",
                            values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    return wide
