"""Runs: every run of the store with its totals; open one to read its scenario and config."""

from __future__ import annotations

import json

import streamlit as st
from vragent.dashboards import common, data


def main() -> None:
    """Render the page."""
    # Over 80 lines on purpose: the page's widgets in render order; the reads are in data.py.
    st.title(":material/table_rows: Runs")
    url = common.require_store()
    total = data.count_runs(url)
    if total == 0:
        st.info("No runs in this store yet — run `vragent run quickstart` (or any scenario).")
        return
    st.caption(f"{total} run(s), newest first. Cost is estimated from the tokens sent to the "
               "LLM when the scenario sets `backend.prices`; cache hits cost nothing.")
    offset = common.pager(total, "runs_page")
    table = data.runs_page(url, common.PAGE_SIZE, offset)
    # The LLM call, cache and token split columns stay in the frame (and in "Open a run" below)
    # but not on screen, so the table fits the page.
    st.dataframe(
        table.assign(cost=[common.money(c) for c in table["cost"]]), hide_index=True,
        column_order=["run", "scenario", "status", "seed", "arms", "users", "steps",
                      "decisions", "tokens", "cost", "wall_s", "created"],
        column_config={
            "run": st.column_config.TextColumn("run"),
            "decisions": st.column_config.NumberColumn("decisions", format="localized"),
            "tokens": st.column_config.NumberColumn("tokens", format="localized"),
            "cost": st.column_config.TextColumn("cost"),
            "wall_s": st.column_config.NumberColumn("wall time (s)", format="%.1f"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )

    st.subheader("Open a run")
    run_id = common.pick_run(data.run_ids(url), key="runs_run")
    detail = data.run_detail(url, run_id)
    if detail is None:
        st.info(f"run {run_id} is gone from the store")
        return
    c = st.columns(5)
    c[0].metric("status", common.label_text(detail["status"]))
    c[1].metric("steps", f"{detail['steps_done'] or 0}/{detail['n_steps'] or 0}")
    c[2].metric("seed", str(detail["seed"]))
    c[3].metric("wall time", f"{float(detail['wall_s'] or 0):.1f} s")
    c[4].metric("git revision", common.label_text((detail.get("git_revision") or "—")[:7]))
    if detail.get("error"):
        st.error("This run stopped with an error (as stored):", icon=":material/error:")
        st.code(common.clean_text(str(detail["error"])), language=None, wrap_lines=True)
    st.page_link("views/traces.py", label="Open this run in the trace explorer",
                 icon=":material/manage_search:", query_params={"run": run_id})

    st.markdown("**Arms**")
    arms = detail["arms"]
    if arms:
        st.dataframe([{"arm": a["name"], "recommender": a["recommender"],
                       "params": json.dumps(a["params"] or {}, sort_keys=True)} for a in arms],
                     hide_index=True)
    overview = data.arm_overview(url, run_id)
    if overview.empty or not overview["slates"].any():
        st.info("No steps logged for this run yet.")
    else:
        st.markdown("**Per arm** (rates are averages of the per-step metrics, weighted by "
                    "impressions)")
        st.dataframe(overview, hide_index=True, column_config={
            c: st.column_config.NumberColumn(c, format="%.3f")
            for c in ("watch_rate", "like_rate", "mean_p_like", "format_ok_rate")
        } | {"wall_s": st.column_config.NumberColumn("wall time (s)", format="%.1f")})
    meter = data.metering_totals(url, run_id)
    if not meter.empty:
        st.markdown("**LLM metering** (calls sent, cache hits, tokens and latency of the calls "
                    "sent; cost when `backend.prices` is set)")
        if st.toggle("Latency percentiles (p50/p95/p99)", key="runs_pct",
                     help="Reads the latency of every LLM call of the run: slower on big runs."):
            meter = data.metering(url, run_id)
        st.dataframe(meter.assign(cost=[common.money(c) for c in meter["cost"]])
                     if "cost" in meter.columns else meter, hide_index=True,
                     column_config={c: st.column_config.NumberColumn(c, format="localized")
                                    for c in ("calls", "cache_hits", "tokens_in", "tokens_out")})

    tabs = st.tabs(["Scenario (YAML)", "Config (JSON)", "Environment"])
    with tabs[0]:
        st.code(detail.get("scenario_yaml") or "", language="yaml")
    with tabs[1]:
        st.json(detail.get("config") or {}, expanded=2)
    with tabs[2]:
        st.json({"versions": detail.get("versions") or {},
                 "scenario_path": detail.get("scenario_path"),
                 "created_at": str(detail.get("created_at")),
                 "finished_at": str(detail.get("finished_at"))}, expanded=1)


main()
