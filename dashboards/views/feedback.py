"""Feedback loops: diversity, exposure concentration, coverage and taste drift over steps."""

from __future__ import annotations

import streamlit as st

from dashboards import common, data

SUBTITLES = {
    "ild": "intra-list diversity: higher = more diverse slates",
    "exposure_gini": "higher = exposure concentrated on fewer items",
    "coverage": "share of the catalogue shown so far",
    "profile_entropy": "falling = narrowing tastes (filter bubble)",
    "novelty": "higher = less popular items shown",
    "social_share": "share of slate items put there by friends' likes",
}


def main() -> None:
    """Render the page."""
    st.title(":material/autorenew: Feedback loops")
    st.caption("When arms refit on what the simulated users did, filter bubbles and popularity "
               "bias show up here over steps, per arm.")
    url = common.require_store()
    exps = data.experiments(url)
    sources = ["Run", "Experiment (mean over seeds)"] if exps else ["Run"]
    source = st.radio("Source", sources, horizontal=True, key="fb_source")
    if source == "Run":
        runs = common.require_runs(url)
        run_ids = [common.pick_run(runs, key="fb_run")]
    else:
        by_id = {e["id"]: e for e in exps}
        exp_id = st.selectbox("Experiment", list(by_id), key="fb_exp",
                              format_func=lambda i: f"{i} · {by_id[i]['scenario_name']}")
        run_ids = [r for r in by_id[exp_id]["run_ids"] or [] if r]
    series = data.metric_series(url, tuple(run_ids))
    if series.empty:
        st.info("No per-step metrics logged yet for this selection.")
        return
    names = set(series["name"])
    wanted = [n for n in (*data.FEEDBACK_METRICS, *data.FEEDBACK_EXTRA) if n in names]
    missing = [n for n in data.FEEDBACK_METRICS if n not in names]
    if missing:
        st.info("Not logged by this run yet: " + ", ".join(f"`{n}`" for n in missing)
                + " (runs of newer versions log them).")
    if not wanted:
        return
    stats = data.mean_over_runs(series[series["name"].isin(wanted)])
    n_runs = series["run_id"].nunique()
    if n_runs > 1:
        st.caption(f"Mean over {n_runs} runs; the band spans the lowest and highest run.")
    cols = st.columns(2)
    for i, name in enumerate(wanted):
        with cols[i % 2]:
            common.show_chart(common.line_chart(
                stats[stats["name"] == name], x="step", y="mean", series="arm",
                title=name, subtitle=SUBTITLES.get(name, ""),
                band=("low", "high") if n_runs > 1 else None))
    with st.expander("Values"):
        wide = stats.pivot_table(index=["arm", "step"], columns="name", values="mean")
        st.dataframe(wide.reset_index(), hide_index=True)


main()
