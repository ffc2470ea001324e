"""Feedback loops: diversity, exposure concentration, coverage and taste drift over steps."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from vragent.dashboards import common, data
from vragent.environments.metrics import gini_rows, lorenz

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
    sources = ["Run", "Runs side by side", *(["Experiment (mean over seeds)"] if exps else [])]
    source = st.radio("Source", sources, horizontal=True, key="fb_source")
    overlay = source == "Runs side by side"
    if source == "Run":
        runs = common.require_runs(url)
        run_ids = [common.pick_run(runs, key="fb_run")]
    elif overlay:
        runs = common.require_runs(url)
        names = {r[0]: f"{r[0][:8]} · {r[1]}" for r in runs}
        run_ids = st.multiselect("Runs", list(names), default=list(names)[:2], key="fb_runs",
                                 format_func=names.get)
    else:
        by_id = {e["id"]: e for e in exps}
        exp_id = st.selectbox("Experiment", list(by_id), key="fb_exp",
                              format_func=lambda i: f"{i[:8]} · {by_id[i]['scenario_name']}")
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
    options = common.chart_options("fb")
    chosen = series[series["name"].isin(wanted)]
    n_runs = series["run_id"].nunique()
    if overlay:
        # Each run's arms are their own lines: "arm · run".
        stats = chosen.assign(arm=[f"{a} · {r[:8]}" for a, r in zip(
            chosen["arm"], chosen["run_id"], strict=True)]).rename(columns={"value": "mean"})
    else:
        stats = data.mean_over_runs(chosen)
        if n_runs > 1:
            st.caption(f"Mean over {n_runs} runs; the band spans the lowest and highest run.")
    band = ("low", "high") if n_runs > 1 and not overlay else None
    cols = st.columns(2)
    for i, name in enumerate(wanted):
        with cols[i % 2]:
            common.show_chart(common.line_chart(
                stats[stats["name"] == name], x="step", y="mean", series="arm",
                title=name, subtitle=SUBTITLES.get(name, ""), band=band, options=options))
    with st.expander("Values"):
        wide = stats.pivot_table(index=["arm", "step"], columns="name", values="mean")
        st.dataframe(wide.reset_index(), hide_index=True)
    exposure_section(url, run_ids)


def exposure_section(url: str, run_ids: list[str]) -> None:
    """The Lorenz curve of exposure per arm over a whole run, beside its Gini."""
    st.subheader("Exposure: Lorenz curve")
    st.caption("Share of the catalogue (least shown first) against its share of all "
               "impressions, per arm, over the whole run. The diagonal is equal exposure; the "
               "further below it, the higher the Gini.")
    if not run_ids:
        return
    run_id = run_ids[0]
    if len(run_ids) > 1:
        run_id = st.selectbox("Run", run_ids, key="fb_lorenz_run", format_func=lambda r: r[:8])
    if not st.toggle("Read every impression of the run (a few seconds on a big run)",
                     key="fb_lorenz"):
        return
    counts, n_items = data.exposure_by_arm(url, run_id)
    if not counts:
        st.info("This run has no impressions logged.")
        return
    frames, ginis = [], {}
    for arm, c in counts.items():
        n = max(n_items, c.size)
        x, y = lorenz(c, n_total=n)
        frames.append(pd.DataFrame({"items": x, "exposure": y, "arm": arm}))
        ginis[arm] = float(gini_rows(c[None, :], n)[0])
    curves = pd.concat(frames, ignore_index=True)
    diagonal = alt.Chart(pd.DataFrame({"items": [0.0, 1.0], "exposure": [0.0, 1.0]})).mark_line(
        strokeDash=[4, 3], color="#777").encode(x="items:Q", y="exposure:Q")
    lines = alt.Chart(curves).mark_line(strokeWidth=2).encode(
        x=alt.X("items:Q", title="share of the catalogue (least shown first)",
                axis=alt.Axis(format="%")),
        y=alt.Y("exposure:Q", title="share of impressions", axis=alt.Axis(format="%")),
        color=alt.Color("arm:N", scale=alt.Scale(scheme="dark2")),
        strokeDash=alt.StrokeDash("arm:N"))
    c = st.columns([2, 1])
    with c[0]:
        common.show_chart(alt.layer(diagonal, lines).properties(height=320))
    with c[1]:
        st.dataframe(pd.DataFrame({"arm": list(ginis), "Gini": list(ginis.values()),
                                   "items shown": [int(counts[a].size) for a in ginis],
                                   "catalogue": n_items}), hide_index=True,
                     column_config={"Gini": st.column_config.NumberColumn("Gini",
                                                                          format="%.3f")})


main()
