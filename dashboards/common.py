"""Shared pieces of the dashboard's pages: the store URL, pickers, labels, charts."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from vragent.dashboards import data

# Actions are told apart by an icon and a word, never by colour alone.
ACTION_LABELS = {"skip": "↷ skip", "watch": "▶ watch", "like": "❤ like"}
LEAVE_LABEL = "⏏ leave"
PAGE_SIZE = 50

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9-]{1,64}|—")


def db_url() -> str:
    """The store URL: ``session_state['db_url']``, then ``--db`` after ``--``, then env.

    Under ``AppTest`` the process's arguments belong to the test runner, not to the app, so
    only the environment (``VRAGENT_DB``) and the session state count.
    """
    url = st.session_state.get("db_url")
    if url:
        return str(url)
    argv = [] if st.config.get_option("global.appTest") else sys.argv[1:]
    return data.resolve_db_url(argv)


def require_store() -> str:
    """The store URL, or stop the page with a message when the store cannot be read."""
    url = db_url()
    try:
        data.schema(url)
    except data.StoreUnavailableError as exc:
        st.info("Run a scenario first (`vragent run quickstart`), or point the dashboard at "
                "a store with `vragent dashboard --db URL`.")
        plain(exc)
        st.stop()
    except Exception as exc:  # a server that is down, a file that is not a database
        # The server's message is outside text: shown as stored, never as Markdown.
        st.error("Cannot read the store.", icon=":material/error:")
        st.code(clean_text(f"{data.display_url(url)}: {exc}"), language=None, wrap_lines=True)
        st.stop()
    return url


def require_runs(url: str) -> list[tuple[str, str, str]]:
    """The store's runs, or stop the page with a hint to make one."""
    runs = data.run_ids(url)
    if not runs:
        st.info("No runs in this store yet — run `vragent run quickstart` (or any scenario).")
        st.stop()
    return runs


def seed_from_query(key: str, param: str, options: Sequence[Any],
                    cast: type = str) -> None:
    """Preselect a widget from a URL query parameter (when the parameter is new or changed).

    A link such as ``/traces?run=ID&arm=A&user=U`` opens that selection; a parameter already
    applied is not applied again, so the widgets stay free to change. A link to something the
    store does not hold says so, rather than silently showing another one.
    """
    flag = f"_seeded_{key}"
    raw = st.query_params.get(param)
    if raw is None or st.session_state.get(flag) == raw:
        return
    st.session_state[flag] = raw
    try:
        value = cast(raw)
    except (TypeError, ValueError):
        value = None
    if value is not None and value in options:
        st.session_state[key] = value
    else:
        st.warning(f"The link asks for {param} {label_text(raw)}, which this store does not "
                   "hold here; showing another.", icon=":material/link_off:")


def sync_query(widgets: dict[str, tuple[str, object]]) -> None:
    """Write the current selection to the URL (``{widget key: (param, value)}``).

    The values written count as applied, so :func:`seed_from_query` leaves the widgets alone
    on the next run; the URL can be copied to share the view.
    """
    for key, (param, value) in widgets.items():
        st.query_params[param] = str(value)
        st.session_state[f"_seeded_{key}"] = str(value)


def pick_run(runs: Sequence[tuple[str, str, str]], key: str, label: str = "Run") -> str:
    """A run selectbox (``?run=ID`` preselects); returns the run id."""
    ids = [r[0] for r in runs]
    names = {r[0]: f"{r[0]} · {r[1]} · {r[2]}" for r in runs}
    seed_from_query(key, "run", ids)
    if st.session_state.get(key) not in ids:
        st.session_state.pop(key, None)
    return st.selectbox(label, ids, format_func=lambda r: names.get(r, r), key=key)


def pager(total: int, key: str, page_size: int = PAGE_SIZE) -> int:
    """A page picker for ``total`` rows; returns the offset of the chosen page."""
    pages = max(1, (total + page_size - 1) // page_size)
    if pages == 1:
        return 0
    if st.session_state.get(key, 1) > pages:
        st.session_state[key] = 1
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages,
                           step=1, key=key)
    return (int(page) - 1) * page_size


def clean_text(text: str | None) -> str:
    """Text as stored, minus control characters a model may have produced."""
    return _CONTROL.sub("", text or "")


def plain(text: object, empty: str = "(empty)") -> None:
    """Show an outside string (a title, persona, completion, tag, error) as plain text.

    Titles come from datasets, completions and tags from models, errors from servers: none of
    it is ours, so none of it goes through Markdown (where ``![x](http://…)`` fetches an image
    and ``:red[…]`` or ``$…$`` render). ``st.text`` parses nothing and keeps line breaks.
    """
    st.text(clean_text(None if text is None else str(text)).strip() or empty)


def label_text(text: object) -> str:
    """An outside identifier (an arm, a status) safe inside a Markdown label or metric.

    Letters, digits and hyphens pass as they are; anything else goes in a code span, which
    Markdown shows literally (no links, images, colours or maths).
    """
    value = clean_text(str(text)).replace("\n", " ")
    if _PLAIN_WORD.fullmatch(value):
        return value
    return "`" + value.replace("`", "'") + "`"


def money(value: Any) -> str:
    """A cost in dollars for a table cell (``—`` when the scenario set no prices)."""
    v = data.finite(value)
    return "—" if v is None else f"${v:,.4f}"


def number(value: Any) -> str:
    """A metric value at a precision that reads: 4 significant digits, thousands separated."""
    v = data.finite(value)
    if v is None:
        return "—"
    return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell (``—`` when missing)."""
    v = data.finite(value)
    return "—" if v is None else f"{v:.{digits}f}"


@dataclass(frozen=True)
class ChartOptions:
    """How the step charts of a page are drawn (TensorBoard-style controls)."""

    smoothing: float = 0.0  # exponential moving average weight, 0 = raw
    log: bool = False


def chart_options(key: str) -> ChartOptions:
    """The smoothing slider and the log-scale toggle of a page's step charts."""
    c = st.columns([3, 1])
    smoothing = c[0].slider(
        "Smoothing", min_value=0.0, max_value=0.95, value=0.0, step=0.05, key=f"{key}_smooth",
        help="Exponential moving average per line, as TensorBoard's: each point is weight × "
             "the smoothed previous one + (1 − weight) × its value (bias-corrected).")
    log = c[1].toggle("Log scale", key=f"{key}_log",
                      help="A symmetric log scale: zeros and negatives stay on the chart.")
    return ChartOptions(float(smoothing), bool(log))


def smooth(df: pd.DataFrame, *, x: str, y: str, series: str, weight: float) -> pd.DataFrame:
    """``df`` with ``y`` replaced by its exponential moving average along ``x`` per series."""
    if weight <= 0 or df.empty:
        return df
    out = df.sort_values([series, x]).copy()
    out[y] = out.groupby(series, sort=False)[y].transform(
        lambda v: v.ewm(alpha=1.0 - weight, adjust=True).mean())
    return out


def line_chart(df: pd.DataFrame, *, x: str, y: str, series: str, title: str,
               band: tuple[str, str] | None = None, height: int = 240,
               subtitle: str = "", options: ChartOptions = ChartOptions()) -> alt.Chart:
    """Lines per series, told apart by colour, dash and point shape (not by colour alone).

    Series are nudged apart along ``x`` by a few hundredths of a step, so identical series
    (two arms that showed the same thing) stay visible side by side instead of one hiding the
    other; tooltips give the true ``x``.
    """
    df = smooth(df, x=x, y=y, series=series, weight=options.smoothing)
    names = sorted(df[series].astype(str).unique()) if not df.empty else []
    nudge = {n: 0.08 * (i - (len(names) - 1) / 2) for i, n in enumerate(names)}
    df = df.assign(_x=df[x].astype(float) + df[series].astype(str).map(nudge).fillna(0.0))
    base = alt.Chart(df).encode(
        x=alt.X("_x:Q", title=x, axis=alt.Axis(tickMinStep=1)),
        color=alt.Color(f"{series}:N", title=series, scale=alt.Scale(scheme="dark2")),
    )
    tooltip = [alt.Tooltip(f"{series}:N"), alt.Tooltip(f"{x}:Q"),
               alt.Tooltip(f"{y}:Q", format=".4f")]
    scale = alt.Scale(type="symlog") if options.log else alt.Scale(zero=False)
    line = base.mark_line().encode(y=alt.Y(f"{y}:Q", title=title, axis=alt.Axis(format="~g"),
                                           scale=scale),
                                   strokeDash=alt.StrokeDash(f"{series}:N", title=series))
    points = base.mark_point(filled=True, size=60).encode(
        y=f"{y}:Q", shape=alt.Shape(f"{series}:N", title=series), tooltip=tooltip)
    layers = [line, points]
    if band is not None:
        layers.insert(0, base.mark_area(opacity=0.15).encode(
            y=f"{band[0]}:Q", y2=f"{band[1]}:Q"))
    heading = alt.TitleParams(title, subtitle=subtitle) if subtitle else title
    return alt.layer(*layers).properties(title=heading, height=height)


def show_chart(chart: alt.Chart) -> None:
    """Render an Altair chart at the container's width."""
    st.altair_chart(chart, width="stretch")

