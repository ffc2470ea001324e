"""Training: RL curves (reward, format rate, accuracy, KL) and policy evaluations."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from vragent.dashboards import common, training_data

CURVES = ("reward", "format_reward", "format_valid_rate", "accuracy_reward", "accuracy", "kl",
          "loss")


def main() -> None:
    """Render the page."""
    st.title(":material/model_training: Training")
    url = common.require_store()
    runs = training_data.training_runs(url)
    st.subheader("Training runs")
    if runs.empty:
        st.info("No training runs yet — run `vragent rl train --algo grpo …` (docs/rl.md).")
    else:
        st.dataframe(runs, hide_index=True, column_config={
            "wall_s": st.column_config.NumberColumn("wall time (s)", format="%.1f")})
        ids = list(runs["id"])
        label = {r.id: f"{r.id[:8]} · {r.policy} · {r.algo} · {r.status}"
                 for r in runs.itertuples()}
        run_id = st.selectbox("Training run", ids, key="tr_run", format_func=label.get)
        others = st.multiselect("Overlay other runs", [i for i in ids if i != run_id],
                                key="tr_overlay", format_func=label.get,
                                help="Their curves share the charts, one line per run.")
        curves = pd.concat([training_data.training_curves(url, r).assign(run=label[r])
                            for r in (run_id, *others)], ignore_index=True)
        if curves.empty:
            st.info("This run has logged no curve yet.")
        else:
            names = sorted(curves["name"].unique())
            default = [n for n in CURVES if n in names] or names[:4]
            chosen = st.multiselect("Curves", names, default=default, key="tr_curves")
            options = common.chart_options("tr")
            cols = st.columns(2)
            for i, name in enumerate(chosen):
                with cols[i % 2]:
                    common.show_chart(common.line_chart(
                        curves[curves["name"] == name], x="step", y="value", series="run",
                        title=name, height=220, options=options))
        with st.expander("Config and data manifest"):
            st.json(training_data.training_config(url, run_id), expanded=1)

    st.subheader("Policy evaluations")
    evals = training_data.evaluations(url)
    if evals.empty:
        st.info("No policy evaluations yet — run `vragent rl eval --data … --policy …`.")
        return
    label = {r.eval_id: f"{r.eval_id[:8]} · {r.data} · {r.rows} values"
             for r in evals.itertuples()}
    eval_id = st.selectbox("Evaluation", list(evals["eval_id"]), key="tr_eval",
                           format_func=label.get)
    table = training_data.evaluation_table(url, eval_id)
    st.caption("One row per model, mode, task, protocol and m (candidates per judgement); "
               "one column per metric.")
    st.dataframe(table, hide_index=True)


main()
