"""The ELBO kind's section of the report (``harness.kinds.elbo.KIND.report_section``).

The common page (``harness.report``) already shows the per-component z-tables of the
estimate rows.  This section adds, from the stored results only, into ``run_dir/report/``:

estimate mode
  ``elbo_variance_vs_n.png``   per problem point: the across-seed variance of the N-sample
                               gradient estimate, averaged over components, vs N (log-log) per
                               estimator; exact per-sample variance / N dashed where known;
  ``elbo_variance_vs_dim.png`` (with several dimensions) N x the across-seed variance at the
                               largest N, averaged over components, vs d, exact dashed;
optimize mode
  ``elbo_vs_step.png``     the ELBO (exact where known, else the recorded estimate) vs step:
                           median over seeds and the 10-90% band, per estimator; the optimum
                           ELBO* as a line where the target knows it;
  ``grad_var_vs_step.png`` the per-sample gradient variance at the current lambda (mean over
                           components; median and band over seeds) vs step;
  ``dist_vs_step.png``     distance to the known optimum vs step (where known);
  ``trace_summary.csv``    per (point, estimator, step): medians and quantiles.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..report import html_table, palette, save_figure

# the columns that identify an ELBO problem point (``point`` is its label)
POINT = ["point", "target", "distribution", "dim"]


def _label(row) -> str:
    return row["point"]


def _per_point(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean over components per (point, N, estimator)."""
    return (summary.groupby([*POINT, "n_samples", "estimator"], sort=False)
            .agg(var=("var", "mean"), exact_var_n=("exact_var_n", "mean"),
                 per_sample=("mean_sample_var", "mean"), exact_var=("exact_var", "mean"),
                 max_abs_z=("z_mean", lambda z: np.nanmax(np.abs(z)) if z.notna().any()
                            else math.nan),
                 var_ratio=("var_ratio", "mean"), components=("param", "size"))
            .reset_index())


def _figure(n_panels: int, width=4.2, height=3.4):
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _point_panels(frame: pd.DataFrame):
    """One panel per problem point: (figure, axes, [(ax, the point's row, its rows)])."""
    points = frame[POINT].drop_duplicates().sort_values(POINT).reset_index(drop=True)
    fig, axes = _figure(len(points))
    return fig, axes, [(ax, pt, frame[(frame[POINT] == pt[POINT]).all(axis=1)])
                       for ax, (_, pt) in zip(axes, points.iterrows())]


def _variance_vs_n(per: pd.DataFrame, estimators, title) -> Figure:
    fig, axes, panels = _point_panels(per)
    pal = palette(estimators)
    for ax, pt, sel in panels:
        for e in estimators:
            s = sel[sel["estimator"] == e].sort_values("n_samples")
            if s.empty:
                continue
            ax.plot(s["n_samples"], s["var"], "o-", color=pal[e], label=e, ms=4)
            if s["exact_var_n"].notna().all():
                ax.plot(s["n_samples"], s["exact_var_n"], "--", color=pal[e], lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N")
        ax.set_ylabel("var across seeds (mean over comps)")
        ax.set_title(_label(pt), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _variance_vs_dim(per: pd.DataFrame, estimators, title) -> Figure:
    largest = per[per["n_samples"] == per.groupby([*POINT])["n_samples"].transform("max")]
    groups = largest[["target", "distribution"]].drop_duplicates().sort_values(
        ["target", "distribution"])
    groups = groups.reset_index(drop=True)
    fig, axes = _figure(len(groups))
    pal = palette(estimators)
    for ax, (_, g) in zip(axes, groups.iterrows()):
        sel = largest[(largest["target"] == g["target"])
                      & (largest["distribution"] == g["distribution"])]
        for e in estimators:
            s = sel[sel["estimator"] == e].sort_values("dim")
            if s.empty:
                continue
            ax.plot(s["dim"], s["var"] * s["n_samples"], "o-", color=pal[e], label=e, ms=4)
            ok = s["exact_var"].notna()
            if ok.any():
                ax.plot(s["dim"][ok], s["exact_var"][ok], "--", color=pal[e], lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        dims = sorted(sel["dim"].unique())
        ax.set_xticks(dims, [str(int(x)) for x in dims])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("dimension d")
        ax.set_ylabel("N x var across seeds (mean comps)")
        ax.set_title(f"{g['target']}, {g['distribution']}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def trace_summary(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["elbo_shown"] = df["exact_elbo"].where(df["exact_elbo"].notna(), df["elbo"])
    q = {"median": 0.5, "q10": 0.1, "q90": 0.9}
    parts = []
    for col in ("elbo_shown", "grad_var_mean", "grad_var_max", "dist_opt"):
        g = df.groupby([*POINT, "estimator", "step"], sort=False)[col]
        for name, p in q.items():
            parts.append(g.quantile(p).rename(f"{col}_{name}"))
    out = pd.concat(parts, axis=1).reset_index()
    # ELBO* of each point (NaN where the target knows no optimum), for the ELBO figure
    best = df.groupby("point", sort=False)["optimal_elbo"].first()
    out["optimal_elbo"] = out["point"].map(best)
    return out.rename(columns=lambda c: c.replace("elbo_shown", "elbo"))


def _trace_figure(ts: pd.DataFrame, col: str, ylabel: str, estimators, title, log: bool,
                  optimum: bool = False):
    """``optimum``: draw each point's ELBO* (the ``optimal_elbo`` column) as a dashed line
    and zoom the y axis onto the approach to it."""
    fig, axes, panels = _point_panels(ts)
    pal = palette(estimators)
    for ax, pt, sel in panels:
        for e in estimators:
            s = sel[sel["estimator"] == e].sort_values("step")
            if s.empty or s[f"{col}_median"].isna().all():
                continue
            ax.plot(s["step"], s[f"{col}_median"], color=pal[e], label=e, lw=1.4)
            ax.fill_between(s["step"], s[f"{col}_q10"], s[f"{col}_q90"], color=pal[e],
                            alpha=0.2, lw=0)
        best = float(sel["optimal_elbo"].iloc[0]) if optimum else math.nan
        if math.isfinite(best):
            ax.axhline(best, color="black", ls="--", lw=1, label=f"ELBO* = {best:.6g}")
            final = sel[sel["step"] == sel["step"].max()][f"{col}_q10"]
            gap = float(np.nanmax(best - final)) if final.notna().any() else 0.0
            span = max(5.0 * gap, 1.0)
            ax.set_ylim(best - span, best + 0.15 * span)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(_label(pt), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def section(df: pd.DataFrame, summary: pd.DataFrame, out: Path):
    """The ELBO figures and tables: ([(png name, caption)], html)."""
    estimators = list(dict.fromkeys(df["estimator"]))
    experiment = ", ".join(dict.fromkeys(df["experiment"]))
    figures, tables = [], []
    opt_rows = df[df["mode"] == "optimize"]
    points = df[POINT].drop_duplicates("point")
    est_summary = summary.merge(points, on=["point"], suffixes=("", "_point")) \
        if not summary.empty else summary
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        if not est_summary.empty:
            if "dim_point" in est_summary:
                est_summary = est_summary.drop(columns="dim").rename(columns={"dim_point": "dim"})
            per = _per_point(est_summary)
            seeds = int(est_summary["seeds"].max())
            figures.append(("elbo_variance_vs_n.png", _variance_vs_n(
                per, estimators, f"{experiment}: gradient variance across {seeds} seeds"),
                "Variance across seeds of the N-sample ELBO gradient estimate, averaged over "
                "gradient components (markers); exact per-sample variance / N dashed where an "
                "independent reference exists (for the mean and optimal baselines their "
                "N -> infinity limits).  reparam_sampled_entropy equals reparam up to "
                "rounding (its line lies under reparam's)."))
            if per["dim"].nunique() > 1:
                figures.append(("elbo_variance_vs_dim.png", _variance_vs_dim(
                    per, estimators, f"{experiment}: per-sample variance vs dimension"),
                    "N x variance across seeds at the largest N (an estimate of the per-sample "
                    "variance), averaged over components, against the dimension d; exact "
                    "dashed."))
            cols = [("point", "problem point", "{}"), ("n_samples", "N", "{:d}"),
                    ("estimator", "estimator", "{}"), ("components", "components", "{:d}"),
                    ("var", "var across seeds (mean)", "{:.4g}"),
                    ("exact_var_n", "exact var / N (mean)", "{:.4g}"),
                    ("var_ratio", "var ratio (mean)", "{:.3f}"),
                    ("per_sample", "within-seed var (mean)", "{:.4g}"),
                    ("exact_var", "exact var per sample (mean)", "{:.4g}"),
                    ("max_abs_z", "max |z mean|", "{:.2f}")]
            tables.append(("ELBO gradient estimates vs exact values (averaged over components)",
                           html_table(per, cols)))
        if not opt_rows.empty:
            ts = trace_summary(opt_rows)
            ts.to_csv(out / "trace_summary.csv", index=False)
            figures.append(("elbo_vs_step.png", _trace_figure(
                ts, "elbo", "ELBO (exact where known)", estimators,
                f"{experiment}: ELBO during optimisation", False, optimum=True),
                "ELBO at the recorded steps: median over seeds (line) and 10-90% band; the "
                "exact ELBO of the current q where the target has a closed form, otherwise "
                "the estimate from the recorded fresh samples.  Where the target's exact "
                "optimum is known, its ELBO* is the dashed line (the optimal_elbo column) "
                "and the y axis is zoomed onto the approach to it."))
            figures.append(("grad_var_vs_step.png", _trace_figure(
                ts, "grad_var_mean", "grad variance per sample (mean comps)",
                estimators, f"{experiment}: gradient variance during optimisation", True),
                "Per-sample variance of each estimator's gradient at the current lambda "
                "(from fresh samples), averaged over components; median and 10-90% band over "
                "seeds."))
            if ts["dist_opt_median"].notna().any():
                figures.append(("dist_vs_step.png", _trace_figure(
                    ts, "dist_opt", "distance to the optimum", estimators,
                    f"{experiment}: distance to the known optimum", True),
                    "Euclidean distance in parameter space to the known optimum."))
            last = ts[ts["step"] == ts.groupby([*POINT, "estimator"])["step"].transform("max")]
            cols = [("point", "problem point", "{}"), ("estimator", "estimator", "{}"),
                    ("step", "final step", "{:d}"),
                    ("elbo_median", "ELBO median", "{:.5g}"), ("elbo_q10", "q10", "{:.5g}"),
                    ("elbo_q90", "q90", "{:.5g}"),
                    ("grad_var_mean_median", "grad var (mean comps)", "{:.4g}"),
                    ("grad_var_max_median", "grad var (max comps)", "{:.4g}"),
                    ("dist_opt_median", "dist to optimum", "{:.3g}")]
            tables.append(("End of optimisation (medians over seeds)", html_table(last, cols)))
        for name, fig, _ in figures:
            save_figure(fig, out / name)
    parts = "".join(f"<h2>{html.escape(title)}</h2>{table}" for title, table in tables)
    return [(name, caption) for name, _, caption in figures], parts
