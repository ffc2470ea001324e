"""A/B: per-arm metrics with confidence intervals, and metrics over steps (one run or seeds)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from vragent.dashboards import common, data
from vragent.sandbox.ab_analysis import BETTER, call_differences, decision_rule

KNOWN_ORDER = ("watch_rate", "like_rate", "exit_rate", "session_length", "active_users",
               "impressions",
               "coverage", "mean_p_like", "format_ok_rate", "ild", "novelty", "exposure_gini",
               "profile_entropy", "social_share")
DEFAULT_STEP_METRICS = ("watch_rate", "like_rate", "exit_rate", "coverage")


def ordered(names: list[str]) -> list[str]:
    """Metric names: the known ones in a fixed order, then the rest alphabetically."""
    known = [n for n in KNOWN_ORDER if n in names]
    return known + sorted(n for n in names if n not in KNOWN_ORDER)


def interval(value: object, low: object, high: object) -> str:
    """``value [low, high]`` for a table cell."""
    if data.finite(low) is None or data.finite(high) is None:
        return common.number(value)
    return f"{common.number(value)} [{common.number(low)}, {common.number(high)}]"


def lift(diff: object, base: object) -> str:
    """The difference relative to the baseline's mean, in per cent."""
    d, b = data.finite(diff), data.finite(base)
    if d is None or not b:
        return "—"
    return f"{100 * d / abs(b):+.1f} %"


def judged(verdict: str, better: bool | None) -> str:
    """A verdict with whether the called direction is better for the platform."""
    if better not in (True, False):  # None, or NaN once in a frame: nothing was called
        return verdict
    return f"{verdict} · {'better' if better else 'worse'}"


def comparison_chart(cc: pd.DataFrame, metric: str) -> alt.Chart:
    """Each arm's difference from the baseline with its interval, around a zero line."""
    m = cc[cc["metric"] == metric]
    base = alt.Chart(m).encode(y=alt.Y("arm:N", title=None,
                                       scale=alt.Scale(paddingInner=0.5, paddingOuter=0.4)))
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(
        strokeDash=[4, 3], color="#555").encode(x="zero:Q")
    return alt.layer(
        zero,
        base.mark_rule(strokeWidth=3).encode(
            x=alt.X("low:Q", title=f"{metric}: arm − baseline"), x2="high:Q",
            color=alt.Color("arm:N", scale=alt.Scale(scheme="dark2"), legend=None)),
        base.mark_point(filled=True, size=110).encode(
            x="diff:Q", shape=alt.Shape("arm:N", legend=None),
            color=alt.Color("arm:N", scale=alt.Scale(scheme="dark2"), legend=None),
            tooltip=["arm", alt.Tooltip("diff:Q", format=".4f"),
                     alt.Tooltip("low:Q", format=".4f"), alt.Tooltip("high:Q", format=".4f"),
                     alt.Tooltip("q_value:Q", format=".4f"), "verdict", "n_units"]),
    ).properties(height=50 + 55 * len(m), title=f"{metric}: difference from the baseline")


def steps_section(run_ids: list[str], key: str, labels: dict[str, str] | None = None) -> None:
    """Metrics over steps per arm, averaged over runs (with the min–max band across runs).

    With several runs, "one line per run" overlays them instead (``labels`` names each run).
    """
    series = data.metric_series(common.db_url(), tuple(run_ids))
    if series.empty:
        st.info("No per-step metrics logged yet for these runs.")
        return
    names = ordered(sorted(series["name"].unique()))
    chosen = st.multiselect("Metrics over steps", names, key=key,
                            default=[n for n in DEFAULT_STEP_METRICS if n in names] or names[:3])
    n_runs = series["run_id"].nunique()
    overlay = n_runs > 1 and st.toggle("One line per run (overlay) instead of the mean",
                                       key=f"{key}_overlay")
    options = common.chart_options(key)
    if overlay:
        label = labels or {}
        stats = series.assign(
            arm=[f"{a} · {label.get(r, r[:8])}" for a, r in zip(series["arm"], series["run_id"],
                                                                 strict=True)],
        ).rename(columns={"value": "mean"})
    else:
        stats = data.mean_over_runs(series)
        if n_runs > 1:
            st.caption(f"Mean over {n_runs} runs (one per seed); the band spans the lowest and "
                       "highest run.")
    cols = st.columns(2)
    for i, name in enumerate(chosen):
        df = stats[stats["name"] == name]
        with cols[i % 2]:
            common.show_chart(common.line_chart(
                df, x="step", y="mean", series="arm", title=name, options=options,
                band=("low", "high") if n_runs > 1 and not overlay else None))


def experiment_section(url: str, exps: list[dict]) -> None:
    """One experiment: arm values with intervals, comparisons, and curves over steps."""
    # Over 80 lines on purpose: one experiment's sections in render order (command, per-arm
    # metrics, arms against the baseline, over steps); the numbers come from the store's queries.
    ids = [e["id"] for e in exps]
    by_id = {e["id"]: e for e in exps}
    common.seed_from_query("ab_exp", "experiment", ids)
    exp_id = st.selectbox(
        "Experiment", ids, key="ab_exp",
        format_func=lambda i: (f"{i[:8]} · {by_id[i]['scenario_name']} · {by_id[i]['status']} · "
                               f"{len(by_id[i]['seeds'] or [])} seed(s)"))
    exp = by_id[exp_id]
    c = st.columns(4)
    c[0].metric("baseline", common.label_text(exp["baseline"]))
    c[1].metric("arms", len(exp["arms"] or []))
    c[2].metric("seeds", len(exp["seeds"] or []))
    c[3].metric("status", common.label_text(exp["status"]))
    settings = exp.get("settings") or {}
    shown = {k: settings[k] for k in ("confidence", "n_resamples", "resamples", "overrides")
             if settings.get(k) not in (None, [], "")}
    if shown:
        common.plain("settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if settings.get("command"):
        st.caption("command")
        st.code(common.clean_text(str(settings["command"])), language="bash", wrap_lines=True)
    values, comps = data.ab_results(url, exp_id)
    if values.empty:
        st.info("This experiment has no analysed results yet (they are written when its runs "
                "finish).")
    else:
        seeds = sorted({int(s) for s in values["seed"].dropna()})
        scope = st.radio("Scope", ["pooled", *seeds], horizontal=True, key="ab_scope",
                         format_func=lambda s: "pooled over seeds" if s == "pooled"
                         else f"seed {s}")
        sel = values["seed"].isna() if scope == "pooled" else values["seed"] == scope
        v = values[sel]
        st.subheader("Per-arm metrics")
        st.caption("value [low, high]: the bootstrap confidence interval"
                   + (f" ({settings['confidence']:.0%})" if isinstance(
                       settings.get("confidence"), float) else "") + "; n = units (users).")
        table = v.assign(cell=[interval(a, b, c) for a, b, c in
                               zip(v["value"], v["low"], v["high"], strict=True)])
        wide = table.pivot_table(index="metric", columns="arm", values="cell", aggfunc="first")
        arm_order = [a for a in (exp["arms"] or []) if a in wide.columns] + [
            a for a in wide.columns if a not in (exp["arms"] or [])]
        wide = wide.reindex(index=ordered(list(wide.index)), columns=arm_order)
        st.dataframe(wide.reset_index(), hide_index=True)
        metric = st.selectbox("Interval plot of", ordered(sorted(v["metric"].unique())),
                              key="ab_metric")
        m = v[v["metric"] == metric]
        base = alt.Chart(m).encode(y=alt.Y("arm:N", title="arm", sort=arm_order,
                                           scale=alt.Scale(paddingInner=0.5, paddingOuter=0.4)))
        colour = alt.Color("arm:N", scale=alt.Scale(scheme="dark2"), sort=arm_order)
        chart = alt.layer(
            base.mark_rule(strokeWidth=3).encode(
                x=alt.X("low:Q", title=metric, scale=alt.Scale(zero=False)), x2="high:Q",
                color=colour),
            base.mark_point(filled=True, size=110).encode(
                x="value:Q", shape=alt.Shape("arm:N"), color=colour,
                tooltip=["arm", alt.Tooltip("value:Q", format=".4f"),
                         alt.Tooltip("low:Q", format=".4f"),
                         alt.Tooltip("high:Q", format=".4f"), "n_units"]),
        ).properties(height=60 + 55 * len(m), title=f"{metric}: value and interval per arm")
        if not comps.empty:
            confidence = float(settings.get("confidence") or 0.95)
            called = pd.DataFrame(call_differences(comps.to_dict("records"), confidence))
            cc = called[called["seed"].isna() if scope == "pooled" else called["seed"] == scope]
            cols = st.columns(2)
            with cols[0]:
                common.show_chart(chart)
            with cols[1]:
                common.show_chart(comparison_chart(cc, metric))
            st.subheader("Arms against the baseline")
            st.caption(decision_rule(confidence) + " “better is” says which way is better for "
                       "the platform; n = units (users) per arm, paired.")
            st.dataframe(pd.DataFrame({
                "metric": cc["metric"], "arm": cc["arm"], "n": cc["n_units"],
                "better is": [{1: "↑ higher", -1: "↓ lower"}.get(BETTER.get(m), "—")
                              for m in cc["metric"]],
                "mean arm": cc["mean_arm"], "mean baseline": cc["mean_baseline"],
                "difference [low, high]": [interval(a, b, c) for a, b, c in zip(
                    cc["diff"], cc["low"], cc["high"], strict=True)],
                "lift": [lift(d, b) for d, b in zip(cc["diff"], cc["mean_baseline"],
                                                    strict=True)],
                "p": cc["p_value"], "q (BH)": cc["q_value"],
                "verdict": [judged(v, b) for v, b in zip(cc["verdict"], cc["better"],
                                                         strict=True)],
            }), hide_index=True, column_config={
                c: st.column_config.NumberColumn(c, format="%.4f")
                for c in ("mean arm", "mean baseline", "p", "q (BH)")})
        else:
            common.show_chart(chart)
    st.subheader("Over steps")
    runs = [r for r in (exp["run_ids"] or []) if r]
    if not runs:
        st.info("No run of this experiment has started yet.")
        return
    seeds = dict(zip(exp["run_ids"] or [], exp["seeds"] or [], strict=False))
    steps_section(runs, key="ab_steps_exp",
                  labels={r: f"seed {seeds[r]}" for r in runs if r in seeds})


def main() -> None:
    """Render the page."""
    st.title(":material/compare_arrows: A/B")
    url = common.require_store()
    exps = data.experiments(url)
    modes = ["Experiment (seeds)", "Single run"]
    if not exps:
        st.info("No A/B experiments yet — run `vragent ab …` to compare arms over several "
                "seeds. A single run's arms are shown below.")
    mode = st.radio("Show", modes, horizontal=True, key="ab_mode", index=0 if exps else 1,
                    disabled=not exps)
    if mode == modes[0] and exps:
        experiment_section(url, exps)
        return
    runs = common.require_runs(url)
    run_id = common.pick_run(runs, key="ab_run")
    overview = data.arm_overview(url, run_id)
    if not overview.empty and overview["slates"].any():
        st.subheader("Per arm")
        st.dataframe(overview, hide_index=True, column_config={
            c: st.column_config.NumberColumn(c, format="%.3f")
            for c in ("watch_rate", "like_rate", "mean_p_like", "format_ok_rate")})
    st.subheader("Over steps")
    steps_section([run_id], key="ab_steps_run")


main()
