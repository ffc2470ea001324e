"""The A/B report: a terminal table, and a folder of markdown, CSVs and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table
from vragent.sandbox.ab_analysis import (
    METRIC_HELP,
    USER_METRICS,
    AbAnalysis,
    call_differences,
    decision_rule,
)
from vragent.sandbox.ab_arm_metrics import ARM_METRICS

# Per-step curves in the report (metrics table names); the filter-bubble pair comes first.
CURVES = ("ild", "profile_entropy", "exposure_gini", "coverage", "watch_rate", "like_rate",
          "exit_rate", "novelty")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


# The one definition of every pooled figure, printed under the terminal table and in report.md.
POOLING = ("Pooled over seeds: user metrics ({user}) are means over every seed's users, each "
           "counting once, and their difference the mean paired difference; arm metrics "
           "({arm}) are computed on each seed's run and averaged over seeds, and their "
           "difference, interval and p come from the seeds' differences and resamples, "
           "averaged. Either way, a pooled difference has the sign of its seeds' when they "
           "all agree.").format(user=", ".join(USER_METRICS), arm=", ".join(ARM_METRICS))

POOLING_SHORT = ("pooled: user metrics are means over all seeds' users; arm metrics ({arm}) "
                 "are means of the seeds' values (definitions in report.md)"
                 ).format(arm=", ".join(ARM_METRICS))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _interval(v: Any, lo: Any, hi: Any) -> str:
    if v is None:
        return "–"
    if lo is None or hi is None:
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _p(p: Any) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows pooled over seeds (``seed`` None)."""
    return [r for r in rows if r.get("seed") is None]


def terminal_table(res: AbAnalysis) -> Table:
    """Per-arm values with intervals, and each arm's difference from the baseline."""
    conf = f"{round(100 * res.confidence)}%"
    t = Table(title=f"A/B: {len(res.seeds)} seed(s), baseline {res.baseline}, {conf} intervals",
              caption=" ".join([*([POOLING_SHORT] if len(res.seeds) > 1 else []),
                                "▲/▼: called by the BH-adjusted permutation test "
                                f"(q < {1 - res.confidence:.2g})."]))
    t.add_column("metric")
    for arm in res.arms:
        t.add_column(arm, justify="right")
    others = [a for a in res.arms if a != res.baseline]
    for arm in others:
        t.add_column(f"{arm} − {res.baseline}", justify="right")
        t.add_column("p (q)", justify="right")
    values = {(r["arm"], r["metric"]): r for r in pooled(res.arm_values)}
    comps = {(r["arm"], r["metric"]): r
             for r in pooled(call_differences(res.comparisons, res.confidence))}
    for metric in (*USER_METRICS, *ARM_METRICS):
        if not any((a, metric) in values for a in res.arms):
            continue
        cells = [metric]
        for arm in res.arms:
            v = values.get((arm, metric))
            cells.append(_interval(v["value"], v["low"], v["high"]) if v else "–")
        for arm in others:
            c = comps.get((arm, metric))
            mark = f" {c['verdict'][0]}" if c and c["verdict"][0] in "▲▼" else ""
            cells.append(_interval(c["diff"], c["low"], c["high"]) + mark if c else "–")
            cells.append(f"{_p(c['p_value'])} ({_p(c['q_value'])})" if c else "–")
        t.add_row(*cells)
    return t


def write_report(res: AbAnalysis, out: Path, *, title: str, experiment_id: str,
                 run_ids: list[str], command: str) -> list[Path]:
    """Write ``report.md``, the CSVs and the PNG plots into ``out``.

    Returns:
        The files written.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = []
    tables = {
        "arm_values.csv": pd.DataFrame(res.arm_values),
        "comparisons.csv": pd.DataFrame(call_differences(res.comparisons, res.confidence)),
        "power.csv": pd.DataFrame(res.power),
        "per_user.csv": res.units,
        "steps.csv": res.steps,
    }
    for name, frame in tables.items():
        frame.to_csv(out / name, index=False)
        files.append(out / name)
    curves = plot_curves(res.steps, res.arms, out / "curves.png")
    diffs = plot_differences(res, out / "differences.png")
    files += [p for p in (curves, diffs) if p]
    md = _markdown(res, title=title, experiment_id=experiment_id, run_ids=run_ids,
                   command=command, curves=curves, diffs=diffs)
    (out / "report.md").write_text(md, encoding="utf-8")
    files.append(out / "report.md")
    return files


def _markdown(res: AbAnalysis, *, title: str, experiment_id: str, run_ids: list[str],
              command: str, curves: Path | None, diffs: Path | None) -> str:
    lines = [f"# A/B report: {title}", "",
             f"- Experiment `{experiment_id}`; seeds {', '.join(map(str, res.seeds))}; runs "
             + ", ".join(f"`{r}`" for r in run_ids) + ".",
             f"- Baseline arm: **{res.baseline}**. Units: simulated users per seed, paired "
             "across arms (common random numbers).",
             f"- Intervals: {round(100 * res.confidence)}% paired bootstrap; p: sign-flip "
             "permutation test (user metrics) or arm-swap permutation test (arm metrics); "
             "q: p adjusted by Benjamini–Hochberg.",
             f"- Verdicts: {decision_rule(res.confidence)}",
             *([f"- {POOLING}"] if len(res.seeds) > 1 else []),
             f"- Reproduce: `{command}`", ""]
    values = {(r["arm"], r["metric"]): r for r in pooled(res.arm_values)}
    lines += ["## Arm values (pooled over seeds)", "",
              "| metric | " + " | ".join(res.arms) + " |",
              "|---|" + "---|" * len(res.arms)]
    for metric in (*USER_METRICS, *ARM_METRICS):
        if any((a, metric) in values for a in res.arms):
            cells = [_interval(values[(a, metric)]["value"], values[(a, metric)]["low"],
                               values[(a, metric)]["high"]) if (a, metric) in values else "–"
                     for a in res.arms]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += ["", "## Differences from the baseline", "",
              "| metric | arm | difference [CI] | p | q | verdict | units |",
              "|---|---|---|---|---|---|---|"]
    called = call_differences(res.comparisons, res.confidence)
    for c in pooled(called):
        lines.append(f"| {c['metric']} | {c['arm']} | "
                     f"{_interval(c['diff'], c['low'], c['high'])} | {_p(c['p_value'])} "
                     f"| {_p(c['q_value'])} | {c['verdict']} | {c['n_units']} |")
    per_seed = [c for c in called if c["seed"] is not None]
    if per_seed:
        lines += ["", "## Per seed", "", "| seed | metric | arm | difference [CI] | p |",
                  "|---|---|---|---|---|"]
        for c in per_seed:
            if c["metric"] in ("watch_rate", "like_rate", "exit_rate", "coverage",
                               "exposure_gini"):
                lines.append(f"| {c['seed']} | {c['metric']} | {c['arm']} | "
                             f"{_interval(c['diff'], c['low'], c['high'])} | "
                             f"{_p(c['p_value'])} |")
    if res.power:
        lines += ["", "## Power: simulated users needed (paired test, α = 0.05)", "",
                  "| arm | metric | sd of difference | effect | power 0.8 | power 0.9 |",
                  "|---|---|---|---|---|---|"]
        for r in res.power:
            eff = _fmt(r["effect"]) + (" (observed)" if r.get("observed") else "")
            lines.append(f"| {r['arm']} | {r['metric']} | {_fmt(r['sd_diff'])} | {eff} | "
                         f"{r['power 0.8']} | {r['power 0.9']} |")
    if curves:
        lines += ["", "## Over steps", "", f"![metrics over steps]({curves.name})"]
    if diffs:
        lines += ["", "## Differences at a glance", "", f"![differences]({diffs.name})"]
    lines += ["", "## Metrics", ""]
    lines += [f"- **{m}**: {METRIC_HELP[m]}" for m in (*USER_METRICS, *ARM_METRICS)]
    lines += ["", "Files: `arm_values.csv`, `comparisons.csv`, `power.csv`, `per_user.csv` "
              "(one row per seed, arm and user), `steps.csv` (per-step metrics, mean over "
              "seeds).", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(steps: pd.DataFrame, arms: list[str], path: Path) -> Path | None:
    """One panel per metric over steps, one line per arm (marker and dash differ per arm)."""
    names = [m for m in CURVES if not steps.empty and m in set(steps["name"])]
    if not names:
        return None
    plt = _pyplot()
    cols = 4 if len(names) > 4 else len(names)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        sub = steps[steps["name"] == name]
        for k, arm in enumerate(arms):
            s = sub[sub["arm"] == arm].sort_values("step")
            if not s.empty:
                ax.plot(s["step"], s["value"], marker=MARKERS[k % len(MARKERS)],
                        linestyle=LINESTYLES[k % len(LINESTYLES)], label=arm)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_differences(res: AbAnalysis, path: Path) -> Path | None:
    """Forest plot: each arm's difference from the baseline with its interval, per metric."""
    comps = [c for c in pooled(res.comparisons) if c["diff"] is not None]
    if not comps:
        return None
    plt = _pyplot()
    metrics = list(dict.fromkeys(c["metric"] for c in comps))
    others = [a for a in res.arms if a != res.baseline]
    cols = min(5, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, (0.9 + 0.45 * len(others)) * rows
                                                  + 0.5), squeeze=False)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    for k_ax, (ax, metric) in enumerate(zip(axes.ravel(), metrics, strict=False)):
        for k, arm in enumerate(others):
            c = next((c for c in comps if c["metric"] == metric and c["arm"] == arm), None)
            if c is None:
                continue
            lo = c["low"] if c["low"] is not None else c["diff"]
            hi = c["high"] if c["high"] is not None else c["diff"]
            # A percentile interval need not contain the estimate (coverage-type statistics
            # shrink under resampling), so the bars are clipped at the point.
            ax.errorbar([c["diff"]], [k], xerr=[[max(0.0, c["diff"] - lo)],
                                                [max(0.0, hi - c["diff"])]],
                        fmt=MARKERS[k % len(MARKERS)], capsize=3)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(others)))
        ax.set_yticklabels(others if k_ax % cols == 0 else [""] * len(others))
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"arm − {res.baseline}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
