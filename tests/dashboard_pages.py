"""Running the dashboard's pages under Streamlit's AppTest, and reading what they show."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "dashboards" / "app.py"
PAGES = ("runs", "ab", "traces", "feedback", "items", "training")


def open_page(page: str, query: dict | None = None, url: str | None = None) -> AppTest:
    """Run the app, switch to ``page`` (with URL query parameters) and check it ran cleanly."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    if url is not None:
        at.session_state["db_url"] = url
    at.run()
    if page != "runs" or query:
        at.switch_page(f"views/{page}.py")
        at.query_params.update({k: str(v) for k, v in (query or {}).items()})
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning, [w.value for w in at.warning]
    return at


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart"))


def texts(at: AppTest) -> str:
    parts = ([m.value for m in at.markdown] + [c.value for c in at.caption]
             + [t.value for t in at.text])
    return "\n".join(str(p) for p in parts)


def markdown_strings(at: AppTest) -> list[str]:
    """Every string the page hands to Markdown (bodies, labels, metric values, options)."""
    out = [str(e.value) for kind in ("markdown", "caption", "title", "header", "subheader",
                                     "info", "error", "warning", "success")
           for e in getattr(at, kind)]
    out += [f"{m.label} {m.value}" for m in at.metric]
    out += [e.label for e in at.expander] + [t.label for t in at.tabs]
    out += [str(o) for r in at.radio for o in (r.label, *r.options)]
    out += [w.label for kind in ("toggle", "checkbox", "button") for w in getattr(at, kind)]
    return out
