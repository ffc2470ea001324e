"""Trace explorer: one simulated user's slates, actions and reasoning, step by step.

URL parameters ``?run=ID&arm=NAME&user=ID`` open a trace directly.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from vragent.dashboards import common, data, explain, traces_data

STEPS_PER_PAGE = 5
VIEWS = {
    "all": "All decisions",
    "disagree": "⚠ Disagrees with the real log",
    "malformed": "✘ Malformed answer (format_ok false)",
    "either": "⚠ or ✘",
}
ACTIONS = ("skip", "watch", "like", "leave")
LEGEND = ("↷ skip · ▶ watch · ❤ like · ⏏ leave (left the session after that slate) · "
          "★ real positive (in the user's real history) · ⚠ disagrees with the real log · "
          "✘ malformed answer · ☺ put in the slate by a friend's like. \"why\" is the rule "
          "that decided: u is the user's seeded uniform draw, shared by every arm.")


def behaviour_label(b: str) -> str:
    """Words for a behaviour filter."""
    return {"any": "any behaviour", "left": "⏏ left the session", "stayed": "stayed to the end",
            "liked ≥ N": "❤ liked ≥ N", "watched ≥ N": "▶ watched ≥ N",
            "watched nothing": "↷ watched nothing",
            "has reasoning": "✎ has a stored reasoning"}.get(b, b)


def find_user(url: str, run_id: str, arm: str) -> int | None:
    """The user search (id, persona text, behaviour) and picker; returns the chosen user."""
    st.subheader("Find a user")
    c = st.columns([3, 2, 1, 3])
    text = c[0].text_input("User id or persona text", key="tx_q",
                           placeholder="e.g. 42, engineer, comedy",
                           help="Digits find that user id; other text searches the personas.")
    behaviour = c[1].selectbox("Behaviour in this arm", traces_data.BEHAVIOURS, key="tx_beh",
                               format_func=behaviour_label)
    n = int(c[2].number_input("N", min_value=0, max_value=100_000, value=1, step=1,
                              key="tx_n"))
    reasoning = c[3].text_input("Text in a reasoning", key="tx_rq",
                                placeholder="e.g. comedy, No",
                                help="Users with a stored reasoning (think or answer) in this "
                                     "arm that contains this text (case-insensitive).")
    page = int(st.session_state.get("tx_users_page", 1))
    users, total = traces_data.users_page(url, run_id, arm, text, behaviour, n, common.PAGE_SIZE,
                                          (page - 1) * common.PAGE_SIZE, reasoning)
    if users.empty and page > 1:
        st.session_state["tx_users_page"] = 1
        users, total = traces_data.users_page(url, run_id, arm, text, behaviour, n,
                                              common.PAGE_SIZE, 0, reasoning)
    st.caption(f"{total} user(s) match.")
    common.pager(total, "tx_users_page")
    shown = users.assign(
        left=["⏏ at step " + str(int(s)) if pd.notna(s) else "" for s in users["left_at"]],
    ).drop(columns=["left_at"])
    event = st.dataframe(
        shown, hide_index=True, height=min(35 * (len(shown) + 1) + 3, 300),
        column_config={"persona": st.column_config.TextColumn("persona", width="large")},
        on_select="rerun", selection_mode="single-row", key="tx_users_table")
    options = [int(u) for u in users["user_id"]]
    rows = list(event.selection.rows) if event is not None else []
    picked = int(shown.iloc[rows[0]]["user_id"]) if rows and rows[0] < len(shown) else None
    if picked is not None and st.session_state.get("_tx_picked") != picked:
        # A click on a row picks that user; the picker stays free until another click.
        st.session_state["_tx_picked"] = picked
        st.session_state["tx_user"] = picked
    wanted = st.query_params.get("user")
    if (wanted is not None and wanted.lstrip("-").isdigit() and int(wanted) not in options
            and st.session_state.get("_seeded_tx_user") != wanted
            and traces_data.user_info(url, run_id, int(wanted)) is not None):
        options.insert(0, int(wanted))
    if not options:
        st.info("No user matches. Clear the search or pick another behaviour.")
        return None
    common.seed_from_query("tx_user", "user", options, int)
    if st.session_state.get("tx_user") not in options:
        st.session_state.pop("tx_user", None)
    personas = dict(zip(users["user_id"].astype(int), users["persona"], strict=True))
    return int(st.selectbox(
        "User", options, key="tx_user",
        format_func=lambda u: f"{u} · {common.clean_text(personas.get(u, ''))[:90]}"))


def slate_table(rows: pd.DataFrame, left: bool) -> pd.DataFrame:
    """A step's slate as a table: what the user did with each item, then leaving."""
    out = pd.DataFrame({
        "pos": rows["position"].astype(int).astype(str),
        "item": rows["item_id"].astype(int).astype(str),
        "title": [common.clean_text(t) for t in rows["title"]],
        "action": [common.ACTION_LABELS.get(a, a) for a in rows["action"]],
        "why": [explain.decision_sentence(r) for r in rows.to_dict("records")],
        "p(Yes)": [common.fmt(p) for p in rows["p_like"]],
        "real log": ["★ real positive" if r else "" for r in rows["real"]],
        "check": [" ".join(x for x in ("⚠ disagrees" if d else "",
                                       "✘ malformed" if not f else "") if x)
                  for d, f in zip(rows["disagrees"], rows["format_ok"], strict=True)],
        "source": ["☺ friend" if s == "social" else "" for s in rows["source"]],
    })
    if not any(out["source"]):
        out = out.drop(columns=["source"])
    if left:
        out = pd.concat([out, pd.DataFrame([{
            "pos": "", "item": "", "title": "(left the session after this slate)",
            "action": common.LEAVE_LABEL, "why": "", "p(Yes)": "", "real log": "", "check": "",
            **({"source": ""} if "source" in out.columns else {})}])], ignore_index=True)
    return out


def decision_heading(row: pd.Series) -> str:
    """``#pos · title — action`` for a decision, as plain text (the title is outside text)."""
    label = common.ACTION_LABELS.get(row["action"], row["action"])
    title = common.clean_text(row["title"]) or f"item {int(row['item_id'])}"
    # The stored p is p(Yes): p(watch) in score mode (a like is p(watch) × like share).
    extra = f" · p(Yes) {common.fmt(row['p_like'])}" if data.finite(row["p_like"]) else ""
    return f"#{int(row['position'])} · {title} — {label}{extra}"


def show_texts(prompt: str, completion: str | None) -> None:
    """A decision's full prompt and raw completion."""
    st.caption("prompt")
    st.code(common.clean_text(prompt) or "(none: a response model decided, no LLM read a "
            "prompt)", language=None, wrap_lines=True)
    st.caption("raw completion")
    st.code(common.clean_text(completion) if completion is not None
            else "(none: this decision was scored, not generated)", language=None,
            wrap_lines=True)


def show_step(step: int, rows: pd.DataFrame, left: bool, slate_end: str,
              texts: dict[tuple[int, int], tuple[str, str | None]]) -> None:
    """One step of the timeline: the slate, why each action, the reasoning, the prompts."""
    st.markdown(f"#### Step {step}" + (f" · {common.LEAVE_LABEL}: left the session after this "
                                       "slate" if left else ""))
    st.dataframe(slate_table(rows, left), hide_index=True,
                 column_config={"why": st.column_config.TextColumn("why", width="large")})
    st.caption(f"End of the slate — {slate_end}")
    reasoned = rows[rows["think"].fillna("").str.strip().ne("")
                    | rows["answer"].fillna("").str.strip().ne("")]
    for _, row in reasoned.iterrows():
        with st.container(border=True):
            common.plain(decision_heading(row))
            st.caption(f"why: {explain.decision_sentence(row)} · decided by the policy "
                       f"{common.label_text(row['model_id'])}")
            st.markdown(f"**{explain.trace_label(row)}** · {explain.trace_format(row)}")
            st.markdown(":material/psychology: **think**")
            common.plain(row["think"])
            st.markdown(":material/chat: **answer**")
            common.plain(row["answer"])
            prompt, completion = texts.get((step, int(row["position"])), ("", None))
            with st.expander("Full prompt and raw completion", icon=":material/description:"):
                show_texts(prompt, completion)
    rest = rows.drop(index=reasoned.index)
    if not rest.empty:
        with st.expander(f"Prompts of the {len(rest)} decision(s) without a traced reasoning",
                         icon=":material/description:"):
            for _, row in rest.iterrows():
                common.plain(decision_heading(row))
                prompt, completion = texts.get((step, int(row["position"])), ("", None))
                show_texts(prompt, completion)


def arms_side_by_side(url: str, run_id: str, arms: list[str], user_id: int,
                      positives: set[int]) -> None:
    """One user's slates in every arm, step by step, in columns.

    Arms share the user's random draws (common random numbers): at the same step and position
    every arm compares the same u, so a different action comes from a different slate or p.
    """
    per_arm = {a: traces_data.user_decisions(url, run_id, a, user_id) for a in arms}
    steps = sorted({int(s) for d in per_arm.values() for s in d["step"]})
    if not steps:
        st.info(f"User {user_id} got no slate in any arm.")
        return
    st.caption("Every arm uses this user's same random draws: at a given step and position "
               "the u is the same in each column, so different actions come from different "
               "items or probabilities, not from luck.")
    for step in steps[:STEPS_PER_PAGE * 2]:
        st.markdown(f"#### Step {step}")
        cols = st.columns(len(arms))
        for col, arm in zip(cols, arms, strict=True):
            d = per_arm[arm]
            rows = d[d["step"] == step]
            with col:
                st.caption(f"arm {common.label_text(arm)}")
                if rows.empty:
                    common.plain("(no slate: the user had left, or was not active)")
                    continue
                left = bool(rows["left"].iloc[0])
                st.dataframe(slate_table(rows.assign(
                    real=rows["item_id"].astype(int).isin(positives),
                    disagrees=traces_data.disagreement(rows, positives).to_numpy()), left)[
                        ["pos", "action", "title", "why"]], hide_index=True)


def main() -> None:
    """Render the page."""
    # Over 80 lines on purpose: the page's widgets in the order Streamlit renders them (run,
    # arm, filters, table, detail); the reads live in dashboards/traces_data.py.
    st.title(":material/manage_search: Trace explorer")
    url = common.require_store()
    runs = common.require_runs(url)
    c = st.columns([3, 2])
    with c[0]:
        run_id = common.pick_run(runs, key="tx_run")
    arms = data.arm_names(url, run_id)
    if not arms:
        st.info("This run has no arms logged yet.")
        return
    common.seed_from_query("tx_arm", "arm", arms)
    if st.session_state.get("tx_arm") not in arms:
        st.session_state.pop("tx_arm", None)
    arm = c[1].selectbox("Arm", arms, key="tx_arm")
    user_id = find_user(url, run_id, arm)
    if user_id is None:
        return
    common.sync_query({"tx_run": ("run", run_id), "tx_arm": ("arm", arm),
                       "tx_user": ("user", user_id)})

    info = traces_data.user_info(url, run_id, user_id) or {}
    st.subheader(f"User {user_id}")
    common.plain(info.get("persona"))
    c = st.columns(3)
    with c[0]:
        st.caption("profile")
        profile = info.get("profile") or {}
        common.plain(" · ".join(f"{k}: {v}" for k, v in profile.items()), empty="—")
    with c[1]:
        st.caption("friends")
        common.plain(", ".join(str(f) for f in info.get("friends") or []), empty="—")
    with c[2]:
        hist = info.get("history_titles") or []
        with st.expander(f"★ Real history ({len(hist)} items)"):
            st.dataframe(pd.DataFrame(hist, columns=["item", "title"]), hide_index=True)

    if len(arms) > 1 and st.toggle("⇆ This user in every arm, side by side", key="tx_compare"):
        arms_side_by_side(url, run_id, arms, user_id, traces_data.real_positives(info))
        return
    decisions = traces_data.user_decisions(url, run_id, arm, user_id)
    if decisions.empty:
        st.info(f"User {user_id} got no slate in arm {arm}.")
        return
    positives = traces_data.real_positives(info)
    disagrees = traces_data.disagreement(decisions, positives).to_numpy()
    decisions = decisions.assign(real=decisions["item_id"].astype(int).isin(positives),
                                 disagrees=disagrees)
    left_steps = sorted({int(s) for s in decisions.loc[decisions["left"], "step"]})
    m = st.columns(7)
    m[0].metric("slates", decisions["step"].nunique())
    m[1].metric("▶ watched", int((decisions["action"] != "skip").sum()))
    m[2].metric("❤ liked", int((decisions["action"] == "like").sum()))
    m[3].metric("⏏ left at step", str(left_steps[0]) if left_steps else "—")
    m[4].metric("⚠ disagreements", int(decisions["disagrees"].sum()))
    m[5].metric("✘ malformed", int((~decisions["format_ok"].astype(bool)).sum()))
    m[6].metric("✎ traced", int(decisions["traced"].astype(bool).sum()))

    st.subheader("Timeline")
    view = st.radio("Show", list(VIEWS), format_func=VIEWS.get, horizontal=True, key="tx_view",
                    help="A decision disagrees with the real log when it skips an item of the "
                         "user's real history, or watches or likes an item outside it.")
    c = st.columns([3, 2])
    actions = c[0].multiselect(
        "Actions", ACTIONS, default=list(ACTIONS), key="tx_actions",
        format_func=lambda a: common.ACTION_LABELS.get(a, common.LEAVE_LABEL))
    reasoned_only = c[1].checkbox("✎ Only decisions with a stored reasoning", key="tx_reasoned")
    st.caption(LEGEND)
    malformed = ~decisions["format_ok"].astype(bool)
    keep = {"all": pd.Series(True, index=decisions.index), "disagree": decisions["disagrees"],
            "malformed": malformed, "either": decisions["disagrees"] | malformed}[view]
    # "leave" keeps every decision of a slate the user left after.
    keep &= decisions["action"].isin(actions) | (decisions["left"] & ("leave" in actions))
    reasoning = (decisions["think"].fillna("") + "\n" + decisions["answer"].fillna(""))
    if reasoned_only:
        keep &= reasoning.str.strip().ne("")
    needle = str(st.session_state.get("tx_rq") or "").strip()
    if needle:
        st.caption(f"Only decisions whose reasoning contains the search text ({len(needle)} "
                   "characters, from “Text in a reasoning” above).")
        keep &= reasoning.str.contains(needle, case=False, regex=False)
    shown = decisions[keep]
    if shown.empty:
        st.info("No decision of this user matches the filter.")
        return
    steps = sorted({int(s) for s in shown["step"]})
    pages = max(1, (len(steps) + STEPS_PER_PAGE - 1) // STEPS_PER_PAGE)
    page = 1
    if pages > 1:
        if int(st.session_state.get("tx_steps_page", 1)) > pages:
            st.session_state["tx_steps_page"] = 1
        page = int(st.number_input(f"Steps page (of {pages}, {STEPS_PER_PAGE} steps each)",
                                   min_value=1, max_value=pages, key="tx_steps_page"))
    page_steps = steps[(page - 1) * STEPS_PER_PAGE : page * STEPS_PER_PAGE]
    texts = traces_data.decision_texts(url, run_id, arm, user_id, tuple(page_steps))
    for step in page_steps:
        slate = decisions[decisions["step"] == step]
        end = explain.leave_sentence(step in left_steps, slate["leave_prob"].iloc[0],
                                     slate["leave_draw"].iloc[0],
                                     int((slate["action"] != "skip").sum()))
        show_step(step, shown[shown["step"] == step], step in left_steps, end, texts)


main()
