"""The evaluation table as markdown and from the store.

:func:`results_markdown` renders every ``(task, protocol, m)`` cell of an
:func:`rl.evaluation.evaluate` table (with the 95 % intervals and the paired difference to the
cell's best baseline, :mod:`rl.eval_stats`); :func:`headline_markdown` the key figures, one row
per model; :func:`table_from_store` rebuilds a stored evaluation's table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from vragent.rl.eval_stats import best_baselines
from vragent.sandbox.store import Store


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _ci(rec: Any, metric: str, digits: int = 3) -> str:
    """``value [lo, hi]`` (the value alone without an interval)."""
    value = rec.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    prefix = "diff_" if metric.startswith("diff_") else ""
    base = metric.removeprefix("diff_")
    lo, hi = rec.get(f"{prefix}{base}_lo"), rec.get(f"{prefix}{base}_hi")
    sign = "+" if prefix else ""
    text = f"{float(value):{sign}.{digits}f}"
    if lo is None or hi is None or math.isnan(float(lo)) or math.isnan(float(hi)):
        return text
    return f"{text} [{float(lo):{sign}.{digits}f}, {float(hi):{sign}.{digits}f}]"


def results_markdown(df: pd.DataFrame, title: str, command: str) -> str:
    """The :func:`evaluate` table as markdown, one table per ``(task, protocol, m)``.

    Accuracy and AUC carry their 95 % bootstrap interval over groups; ``Δ … vs best`` is the
    paired difference to the cell's best baseline (named above the table), with its interval.

    Args:
        df: :func:`evaluate`'s output.
        title: the document's heading.
        command: the shell command that regenerates the table (shown in a code block).

    Returns:
        Markdown text ending with a newline.
    """
    out = [f"# {title}", "", "Regenerate with:", "", "```", command, "```", ""]
    if df.empty:
        return "\n".join([*out, "(no rows)", ""])
    judgement_cols = [("accuracy", "acc [95% CI]"), ("precision", "P"), ("recall", "R"),
                      ("f1", "F1"), ("auc", "AUC [95% CI]"), ("diff_auc", "Δ AUC vs best"),
                      ("diff_accuracy", "Δ acc vs best")]
    common = [("format_rate", "format ok"), ("answer_words", "words"),
              ("none_rate", "no answer"), ("seconds", "s")]
    for (task, protocol, m), part in df.groupby(["task", "protocol", "m"], sort=True):
        shape = (f"1:{m}" if task == "judgement" else "open" if task == "preference"
                 else f"1 of {int(m) + 1}")
        cols = (judgement_cols if task == "judgement"
                else [("similarity", "sim"), ("accuracy", "sim > 0.5")] if task == "preference"
                else [("accuracy", "acc [95% CI]"), ("diff_accuracy", "Δ acc vs best")]) + common
        out += [f"## {task} · {protocol} · {shape}", ""]
        best = [v for v in part.get("vs", pd.Series(dtype=object)).dropna().unique()]
        if best:
            out += [f"Best baseline (Δ columns): {', '.join(map(str, best))}.", ""]
        out.append("| model | mode | n | " + " | ".join(h for _, h in cols) + " |")
        out.append("|---|---|--:|" + "--:|" * len(cols))
        for rec in part.to_dict("records"):
            cells = [_ci(rec, c) if c in ("accuracy", "auc") or c.startswith("diff_")
                     else _fmt(rec[c], 1 if c in ("answer_words", "seconds") else 3)
                     for c, _ in cols]
            out.append(f"| {rec['model']} | {rec['mode']} | {int(rec['n'])} | "
                       + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(df: pd.DataFrame, model: str, mode: str, task: str, protocol: str, m: int,
          metric: str) -> float | None:
    hit = df[(df.model == model) & (df["mode"] == mode) & (df.task == task)
             & (df.protocol == protocol) & (df.m == m)]
    if hit.empty or pd.isna(hit.iloc[0][metric]):
        return None
    return float(hit.iloc[0][metric])


HEADLINE = (
    # (column, mode for LLMs, task, protocol, m, metric)
    ("judge acc 1:1 random", "score", "judgement", "random", 1, "accuracy"),
    ("judge acc 1:1 popular", "score", "judgement", "popular", 1, "accuracy"),
    ("judge acc 1:1 hard", "score", "judgement", "hard", 1, "accuracy"),
    ("judge AUC 1:9 random", "score", "judgement", "random", 9, "auc"),
    ("select acc random", "score", "selection", "random", 3, "accuracy"),
    ("select acc hard", "score", "selection", "hard", 3, "accuracy"),
    ("gen judge acc 1:1 random", "generate", "judgement", "random", 1, "accuracy"),
    ("gen select acc hard", "generate", "selection", "hard", 3, "accuracy"),
    ("gen format ok", "generate", "judgement", "random", 1, "format_rate"),
    ("gen words", "generate", "judgement", "random", 1, "answer_words"),
    ("gen preference sim", "generate", "preference", "open", 0, "similarity"),
)


def _record(df: pd.DataFrame, model: str, mode: str, task: str, protocol: str,
            m: int) -> dict[str, Any] | None:
    hit = df[(df.model == model) & (df["mode"] == mode) & (df.task == task)
             & (df.protocol == protocol) & (df.m == m)]
    return None if hit.empty else hit.iloc[0].to_dict()


def headline(df: pd.DataFrame, model: str) -> dict[str, float | None]:
    """One model's key figures (the before/after table's row)."""
    is_llm = set(df[df.model == model]["mode"]) != {"scorer"}
    out = {}
    for col, mode, task, proto, m, metric in HEADLINE:
        if mode == "generate" and not is_llm:
            continue
        out[col] = _cell(df, model, mode if is_llm else "scorer", task, proto, m, metric)
    return out


def headline_markdown(df: pd.DataFrame) -> str:
    """The before/after table: one row per model, the key cells as columns."""
    cols = [c for c, *_ in HEADLINE]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for model in dict.fromkeys(df.model):
        is_llm = set(df[df.model == model]["mode"]) != {"scorer"}
        cells = []
        for _col, mode, task, proto, m, metric in HEADLINE:
            rec = _record(df, model, mode if is_llm else "scorer", task, proto, m)
            if (mode == "generate" and not is_llm) or rec is None:
                cells.append("–")
            elif metric == "answer_words":
                cells.append(_fmt(rec[metric], 0))
            else:
                cells.append(_ci(rec, metric, 3) if metric in ("accuracy", "auc")
                             else _fmt(rec[metric]))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_markdown(df: pd.DataFrame, mode: str = "score") -> str:
    """Each LLM against each cell's best baseline on the same rows, paired, with intervals.

    One line per (cell, LLM) of ``mode``: the cell's primary metric (AUC for judgement,
    accuracy for selection) for the best baseline and for the LLM, and the paired difference.
    """
    lines = ["| cell | rows | best baseline | its value [95% CI] | model | value [95% CI] | "
             "Δ vs best [95% CI] |", "|---|--:|---|---|---|---|---|"]
    for (task, protocol, m), part in df.groupby(["task", "protocol", "m"], sort=True):
        metric = "auc" if task == "judgement" else "accuracy"
        shape = f"1:{m}" if task == "judgement" else f"1 of {int(m) + 1}"
        cell = f"{task} {protocol} {shape} ({metric.upper() if metric == 'auc' else 'acc'})"
        for rec in part[part["mode"] == mode].to_dict("records"):
            best = part[(part["model"] == rec.get("vs")) & (part["mode"] == "scorer")]
            best_rec = best.iloc[0].to_dict() if not best.empty else {}
            lines.append(f"| {cell} | {int(rec['n'])} | {rec.get('vs') or '–'} | "
                         f"{_ci(best_rec, metric) if best_rec else '–'} | {rec['model']} | "
                         f"{_ci(rec, metric)} | {_ci(rec, 'diff_' + metric)} |")
    return "\n".join(lines) + "\n"


def report_markdown(df: pd.DataFrame, title: str, command: str) -> str:
    """The key figures, each LLM against each cell's best baseline, then every cell.

    The cells are :func:`results_markdown`'s tables.
    """
    full = results_markdown(df, title, command)
    head, _, rest = full.partition("\n## ")
    paired = ""
    if (df["mode"] != "scorer").any():
        paired = (f"### Against the best baseline, paired on the same rows\n\n"
                  f"{paired_markdown(df)}\n")
    return (f"{head}\n### Key figures\n\n{headline_markdown(df)}\n"
            f"Score mode for LLMs unless marked gen (sampled at temperature 0.8, top-p 0.95, "
            f"parsed as in the simulator). Brackets: 95 % bootstrap intervals over users "
            f"(whole groups resampled).\n\n{paired}## {rest}")


def table_from_store(store: Store, eval_id: str) -> pd.DataFrame:
    """An evaluation's table rebuilt from ``policy_evals`` (the :func:`run_eval` layout).

    Raises:
        KeyError: no evaluation with this id in the store.
    """
    from vragent.rl.evaluation import COLUMNS
    from vragent.sandbox.training_log import eval_rows

    rows = eval_rows(store, eval_id)
    if not rows:
        raise KeyError(f"no evaluation {eval_id!r} in {store.url}")
    keys = ["model", "mode", "task", "protocol", "m"]
    long = pd.DataFrame(rows)
    order = list(dict.fromkeys(long["model"]))
    # Only the (model, mode, cell) combinations that exist; NaN metrics stay NaN.
    wide = long.groupby([*keys, "metric"], sort=False)["value"].first().unstack(
        "metric").reset_index()
    for col in COLUMNS:
        if col not in wide.columns:
            wide[col] = float("nan")
    wide["model"] = pd.Categorical(wide["model"], categories=order, ordered=True)
    wide = wide.sort_values(keys).reset_index(drop=True)
    wide["model"] = wide["model"].astype(str)
    wide["vs"] = best_baselines(wide)  # names are not stored: the same rule finds them again
    return wide[list(COLUMNS)].astype({"m": "int64", "n": "int64"})


def results_section(df: pd.DataFrame, title: str, command: str, data_manifest: dict) -> str:
    """The key figures of an evaluation as a section of docs/results.md."""
    users = (data_manifest.get("users") or {}).get("eval")
    return (f"### {title}\n\n```\n{command}\n```\n\n"
            f"Held-out users in the data: {users}; per cell at most the users given by the "
            f"command's caps. LLMs in score mode unless marked gen. Brackets: 95 % bootstrap "
            f"intervals over users (1,000 resamples of whole groups).\n\n"
            f"{headline_markdown(df)}"
            + (f"\nEach LLM against the best baseline of each cell, paired on the same "
               f"rows:\n\n{paired_markdown(df)}" if (df["mode"] != "scorer").any() else ""))
