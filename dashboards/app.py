"""The vragent dashboard: ``vragent dashboard`` or ``streamlit run dashboards/app.py -- --db URL``.

A read-only view of the run store: runs, A/B experiments, reasoning traces, feedback loops,
item profiles and RL training. Pages live in ``dashboards/views/`` and are wired here with
``st.navigation``; the store URL comes from ``--db`` after ``--``, else ``VRAGENT_DB``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from vragent.dashboards import common, data

HERE = Path(__file__).resolve().parent

PAGES = [
    st.Page(HERE / "views" / "runs.py", title="Runs", icon=":material/table_rows:",
            url_path="runs"),
    st.Page(HERE / "views" / "ab.py", title="A/B", icon=":material/compare_arrows:", url_path="ab"),
    st.Page(HERE / "views" / "traces.py", title="Trace explorer", icon=":material/manage_search:",
            url_path="traces"),
    st.Page(HERE / "views" / "feedback.py", title="Feedback loops", icon=":material/autorenew:",
            url_path="feedback"),
    st.Page(HERE / "views" / "items.py", title="Items", icon=":material/movie:", url_path="items"),
    st.Page(HERE / "views" / "training.py", title="Training", icon=":material/model_training:",
            url_path="training"),
]



def _home() -> None:
    """The root URL opens the Runs page under its own address, ``/runs``."""
    st.switch_page(PAGES[0])


# Streamlit serves its default page at "/" whatever its url_path, so "/runs" would not be found
# if Runs were the default: the default is a redirect, and the menu lists the real pages.
HOME = st.Page(_home, title="Home", url_path="home", default=True)

# A local file: a Material-icon favicon would be fetched from a font CDN by every browser.
st.set_page_config(page_title="vragent dashboard", page_icon=str(HERE / "favicon.png"),
                   layout="wide")
page = st.navigation([HOME, *PAGES], position="hidden")

with st.sidebar:
    for p in PAGES:
        st.page_link(p)
    url = common.db_url()
    st.caption("Store (read-only)")
    common.plain(data.display_url(url))
    if st.button("↻ Refresh data", help=f"Cached reads refresh by themselves every "
                 f"{data.TTL_S} s; this reloads now."):
        st.cache_data.clear()

page.run()
