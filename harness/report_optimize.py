"""The optimisation section of the report, for the expectation kind's ``mode: optimize``
(``harness.kinds.expectation_optimize``): trajectories as in Grathwohl et al. 2018, Figure 1.

Built only from the stored trace rows (``step`` not null), one row of panels per
(problem point, gradient component), at most ``MAX_POINTS`` of them:

``optimize_traces.png``  left: the parameter against the step, one colour per estimator (the
    median over seeds as a line, the 10-90% band over seeds shaded); middle: the exact
    objective E_q[f] at the recorded parameters (median over seeds); right: the estimator's
    exact per-sample gradient variance at the recorded parameters (median over seeds, log
    scale; missing where the estimator has no exact variance).
``optimize.csv`` and an HTML table: per (point, component, estimator) the parameter and the
    exact objective at the first and last record (median and 10-90% over seeds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

MAX_POINTS = 4
DPI = 110


def _quantiles(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    g = rows.groupby("step")[column]
    return pd.DataFrame({"median": g.median(), "lo": g.quantile(0.1), "hi": g.quantile(0.9)})


def _figure(rows: pd.DataFrame, panels: list[tuple[str, str]]) -> Figure:
    estimators = list(dict.fromkeys(rows["estimator"]))
    colours = dict(zip(estimators, sns.color_palette("tab10", len(estimators))))
    fig = Figure(figsize=(13.5, 3.6 * len(panels)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(panels), 3, squeeze=False)
    for (point, param), (ax_theta, ax_obj, ax_var) in zip(panels, axes):
        sub = rows[(rows["point"] == point) & (rows["param"] == param)]
        for est in estimators:
            s = sub[sub["estimator"] == est]
            if s.empty:
                continue
            q = _quantiles(s, "theta")
            ax_theta.plot(q.index, q["median"], color=colours[est], lw=1.3, label=est)
            ax_theta.fill_between(q.index, q["lo"], q["hi"], color=colours[est], alpha=0.15,
                                  lw=0)
            ax_obj.plot(q.index, _quantiles(s, "objective")["median"], color=colours[est],
                        lw=1.3)
            var = _quantiles(s, "exact_var")["median"]
            if np.isfinite(var).any():
                ax_var.plot(var.index, var, color=colours[est], lw=1.3)
        ax_theta.set_ylabel(param)
        ax_theta.set_title(point, fontsize=9)
        ax_obj.set_ylabel("exact E_q[f]")
        ax_var.set_ylabel(f"exact per-sample variance (d/d{param})")
        if ax_var.lines:
            ax_var.set_yscale("log")
        for ax in (ax_theta, ax_obj, ax_var):
            ax.set_xlabel("step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(max(len(labels), 1), 6),
               fontsize=8, frameon=False)
    fig.suptitle("stochastic optimisation with each estimator (median over seeds, 10-90% band)",
                 fontsize=10)
    return fig


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (point, component, estimator): first and last record, median and 10-90% over
    seeds of the parameter and of the exact objective."""
    out = []
    for (point, param, est), s in rows.groupby(["point", "param", "estimator"], sort=False):
        first, last = s["step"].min(), s["step"].max()
        a, b = s[s["step"] == first], s[s["step"] == last]
        out.append({"point": point, "param": param, "estimator": est,
                    "seeds": b["seed"].nunique(), "steps": int(last),
                    "start": a["theta"].median(),
                    "end (median)": b["theta"].median(),
                    "end (10%)": b["theta"].quantile(0.1),
                    "end (90%)": b["theta"].quantile(0.9),
                    "objective start": a["objective"].median(),
                    "objective end (median)": b["objective"].median()})
    return pd.DataFrame(out)


def optimize_section(rows: pd.DataFrame, out) -> tuple[list[tuple[str, str]], str]:
    """Write the figure and table into ``out``; return ([(png name, caption)], html).
    Empty if there are no trace rows."""
    if rows.empty:
        return [], ""
    keys = rows[["point", "param"]].drop_duplicates()
    panels = list(keys.itertuples(index=False, name=None))[:MAX_POINTS]
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = _figure(rows, panels)
        fig.savefig(out / "optimize_traces.png")
    table = summary_table(rows)
    table.to_csv(out / "optimize.csv", index=False)
    more = len(keys) - len(panels)
    caption = ("the parameter, the exact objective and the exact per-sample gradient variance "
               "along the optimisation with each estimator (median over seeds, 10-90% band)"
               + (f"; {more} more (point, component) pairs in optimize.csv" if more > 0 else ""))
    parts = ["<h2>Optimisation</h2>",
             '<p class="note">Stochastic gradient descent on E_q[f] from each problem point with '
             "each estimator's gradient; the objective and the variance are exact at the "
             "recorded parameters. Full table in optimize.csv.</p>",
             table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)]
    return [("optimize_traces.png", caption)], "".join(parts)
