"""Items: IP-agent profiles beside the original titles, stage by stage, with covers."""

from __future__ import annotations

import json

import streamlit as st
from vragent.dashboards import common, items_data

STAGE_NAMES = {"kfr": "key-frame retrieval", "sufficiency": "cover sufficiency",
               "cmp": "perception", "rra": "profile"}


def show_stage(i: int, stage: dict) -> None:
    """One stage of the perception record."""
    name = str(stage.get("stage", "?"))
    with st.container(border=True):
        # The stage record is stored JSON: its name and skip reason are shown as plain text.
        head = f"{i}. {name} · {STAGE_NAMES.get(name, name)}"
        if stage.get("skipped"):
            common.plain(f"{head} — ↷ skipped: {stage['skipped']}")
        else:
            common.plain(f"{head} — ✔ ran · {int(stage.get('tokens_in') or 0)} tokens in, "
                         f"{int(stage.get('tokens_out') or 0)} out, "
                         f"{float(stage.get('latency_ms') or 0):.0f} ms")
        output = stage.get("output")
        if output not in (None, "", [], {}):
            st.caption("output")
            if isinstance(output, dict | list):
                st.json(output, expanded=True)
            else:
                common.plain(output)
        if stage.get("prompt") or stage.get("completion"):
            with st.expander("Prompt and raw completion", icon=":material/description:"):
                st.code(common.clean_text(stage.get("prompt")), language=None, wrap_lines=True)
                st.code(common.clean_text(stage.get("completion")), language=None,
                        wrap_lines=True)


def main() -> None:
    """Render the page."""
    # Over 80 lines on purpose: the page's widgets in render order; the reads are in data.py.
    st.title(":material/movie: Items")
    url = common.require_store()
    sets = items_data.profile_sets(url)
    if sets.empty:
        st.info("No IP-agent profiles yet — enable `ip_agent` in a scenario or run "
                "`vragent perceive --dataset …`.")
        return
    keys = [f"{d}\x1f{m}" for d, m in zip(sets["dataset"], sets["model_id"], strict=True)]
    counts = dict(zip(keys, sets["profiles"], strict=True))
    key = st.selectbox("Profile set (dataset · IP-agent model)", keys, key="it_set",
                       format_func=lambda k: " · ".join(k.split("\x1f"))
                       + f" ({counts[k]} profiles)")
    dataset, model_id = key.split("\x1f")
    c = st.columns([3, 1])
    text = c[0].text_input("Search titles and profiles (or an item id)", key="it_q")
    only_problems = c[1].checkbox("✘ Only repaired profiles", key="it_bad",
                                  help="Profiles that broke the contract and were repaired "
                                       "(format_ok false).")
    page = int(st.session_state.get("it_page", 1))
    rows, total = items_data.profiles_page(url, dataset, model_id, text, only_problems,
                                     common.PAGE_SIZE, (page - 1) * common.PAGE_SIZE)
    if rows.empty and page > 1:
        st.session_state["it_page"] = 1
        rows, total = items_data.profiles_page(url, dataset, model_id, text, only_problems,
                                         common.PAGE_SIZE, 0)
    st.caption(f"{total} profile(s) match.")
    common.pager(total, "it_page")
    if rows.empty:
        st.info("No profile matches.")
        return
    table = rows.assign(
        format=["✔ ok" if ok else "✘ repaired" for ok in rows["format_ok"]],
        title=[common.clean_text(t) for t in rows["title"]],
        profile=[common.clean_text(p) for p in rows["profile"]],
    )[["item_id", "title", "profile", "tags", "format", "problems"]]
    st.dataframe(table, hide_index=True, column_config={
        "title": st.column_config.TextColumn("original title", width="medium"),
        "profile": st.column_config.TextColumn("IP-agent profile", width="large")})

    ids = [int(i) for i in rows["id"]]
    item_of = dict(zip(ids, rows["item_id"].astype(int), strict=True))
    title_of = dict(zip(ids, rows["title"], strict=True))
    pid = st.selectbox("Item", ids, key="it_item",
                       format_func=lambda i: f"{item_of[i]} · {common.clean_text(title_of[i])}")
    detail = items_data.profile_detail(url, pid)
    if detail is None:
        st.info("This profile is gone from the store.")
        return
    st.subheader(f"Item {detail['item_id']}")
    cover = items_data.find_cover(items_data.cover_dirs(url, dataset), int(detail["item_id"]))
    c = st.columns([1, 2, 2] if cover else [1, 1])
    if cover:
        c[0].image(cover, caption="cover", width="stretch")
        c = c[1:]
    with c[0]:
        st.caption("original title")
        common.plain(detail.get("title"))
    with c[1]:
        st.caption("IP-agent profile" + ("" if detail["format_ok"] else
                                         " · ✘ repaired: shown after the IP agent's repair"))
        common.plain(detail.get("profile"))
        if not detail["format_ok"]:
            # The problems are the model's own answer's (the raw completion below); the text
            # above is the repaired profile, which may well show the #tags the answer lacked.
            st.caption("what the model's own answer broke")
            common.plain(", ".join(detail.get("problems") or []), empty="—")
        st.caption("tags · IP-agent model · made by run")
        common.plain(f"{detail.get('tags') or '—'} · {detail['model_id']} · "
                     f"{detail.get('run_id') or '—'}")
    st.markdown("**Stage by stage**")
    stages = detail.get("stages") or []
    if isinstance(stages, str):
        stages = json.loads(stages)
    if not stages:
        st.info("This profile predates the staged record; only its final prompt is stored.")
        with st.expander("Prompt and raw completion", icon=":material/description:"):
            st.code(common.clean_text(detail.get("prompt")), language=None, wrap_lines=True)
            st.code(common.clean_text(detail.get("completion")), language=None,
                    wrap_lines=True)
    for i, stage in enumerate(stages, 1):
        show_stage(i, stage)


main()
