"""The variance-vs-parameter study section of the report (Mohamed et al. 2020, Section 3).

Called by ``report.build_report`` when a run sweeps a problem parameter over many points.
Built only from the stored per-seed rows (``read_results``), at the largest N of each point:

``study_variance_<cost>.png``  per-sample variance against the swept parameter, one panel
    per gradient component, one colour per estimator: the exact per-sample variance as a
    line, the estimate (mean over seeds of the within-seed sample variance) as markers with
    its 95% confidence interval over seeds (mean +- 1.96 sd / sqrt(R)); log y-axis as in the
    paper (log x too when the sweep is positive and spans more than a decade).
``study_work_<cost>.png``      the same, multiplied by ``evals_per_sample`` (work-normalised
    variance: variance per cost evaluation budget).
``study_best.csv``             and an HTML table: per (cost, component, range of the swept
    parameter) the estimator with the lowest per-sample variance and the one with the lowest
    work-normalised variance, averaged (geometric mean) over the points of the range.

Zero exact variances (e.g. ``delta_cv`` on a quadratic cost, whose control variate is f
itself, or the coupled measure-valued mu-term of a quadratic at k = mu) cannot be drawn on a
log axis: exact values below ``ZERO_FLOOR`` x the panel's largest are left out of the figures
and listed under the best-estimator table instead.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

N_RANGES = 4         # ranges of the swept parameter in the best-estimator table
ZERO_FLOOR = 1e-12   # exact variances below this x the panel's largest count as zero
DPI = 110
LEGEND_BELOW = 8     # more estimators than this: the legend goes right of the panels


def palette(n: int) -> list:
    """n distinguishable colours: tab10, tab20 beyond 10 (the REBAR toy draws 16)."""
    return sns.color_palette("tab10" if n <= 10 else "tab20" if n <= 20 else "husl", n)


def swept_parameter(df: pd.DataFrame):
    """The problem parameter with the most distinct values (None if none varies)."""
    from .kinds.expectation import parameter_columns

    counts = {p: df[p].nunique() for p in parameter_columns() if p in df and df[p].notna().any()}
    best = max(counts, key=counts.get, default=None)
    return best if best is not None and counts[best] > 1 else None


def per_point(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per (cost, x, component, estimator) at the largest N of each point: pooled
    per-sample variance with its 95% CI over seeds, exact value, evals per sample."""
    largest = df.groupby(["cost", x])["n_samples"].transform("max")
    top = df[df["n_samples"] == largest]
    g = top.groupby(["cost", x, "param", "estimator"], sort=False)
    out = g.agg(var=("sample_var", "mean"), sd=("sample_var", "std"), seeds=("seed", "size"),
                exact=("exact_var", "first"), source=("exact_source", "first"),
                evals=("evals_per_sample", "first"), n_samples=("n_samples", "first")).reset_index()
    half = 1.96 * out["sd"] / np.sqrt(out["seeds"])
    out["lo"], out["hi"] = out["var"] - half, out["var"] + half
    # exactly zero up to rounding (relative to the panel's largest exact variance): not drawn
    panel_max = out.groupby(["cost", "param"])["exact"].transform("max")
    out["zero"] = out["exact"] <= ZERO_FLOOR * panel_max
    return out


def _figure(points: pd.DataFrame, x: str, cost: str, work: bool) -> Figure:
    components = list(dict.fromkeys(points["param"]))
    estimators = list(dict.fromkeys(points["estimator"]))
    colours = dict(zip(estimators, palette(len(estimators))))
    many = len(estimators) > LEGEND_BELOW   # a long legend goes to the right, one column
    fig = Figure(figsize=(6.2 * len(components) + (3.4 if many else 0.0), 5.2), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(1, len(components), squeeze=False)[0]
    scale_name = " x evals per sample" if work else ""
    xs = points[x]
    log_x = bool((xs > 0).all() and xs.max() / xs.min() > 10)
    for ax, comp in zip(axes, components):
        for est in estimators:
            s = points[(points["param"] == comp) & (points["estimator"] == est)
                       & ~points["zero"]].sort_values(x)
            if s.empty:
                continue
            w = s["evals"] if work else 1
            exact, var = s["exact"] * w, s["var"] * w
            lo, hi = s["lo"] * w, s["hi"] * w
            positive = exact > 0
            ax.plot(s[x][positive], exact[positive], color=colours[est], lw=1.3, label=est)
            ok = var > 0
            ax.errorbar(s[x][ok], var[ok],
                        yerr=[(var - lo.clip(lower=var * 1e-3))[ok], (hi - var)[ok]],
                        fmt="o", ms=2.5, color=colours[est], elinewidth=0.8, alpha=0.8)
        ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(f"per-sample variance{scale_name}")
        ax.set_title(f"{cost}: gradient wrt {comp}")
    handles, labels = axes[0].get_legend_handles_labels()
    if many:
        fig.legend(handles, labels, loc="outside right center", ncol=1, fontsize=7,
                   frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4),
                   fontsize=7, frameon=False)
    fig.suptitle(f"{cost}: {'work-normalised ' if work else ''}per-sample variance vs {x} "
                 f"(lines exact, markers estimate with 95% CI over seeds)", fontsize=10)
    return fig


def best_table(points: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per (cost, component, range of x): the estimators with the lowest (geometric mean over
    the range) per-sample variance and work-normalised variance, estimated and exact."""
    rows = []
    for (cost, comp), sub in points.groupby(["cost", "param"], sort=False):
        values = np.sort(sub[x].unique())
        for chunk in np.array_split(values, min(N_RANGES, len(values))):
            r = sub[sub[x].isin(chunk)]

            def geo(col, frame=r):
                return frame.groupby("estimator", sort=False)[col].apply(
                    lambda v: float(np.exp(np.log(np.maximum(v, 1e-300)).mean())))

            var, exact = geo("var"), geo("exact")
            r2 = r.assign(wvar=r["var"] * r["evals"], wexact=r["exact"] * r["evals"])
            wvar, wexact = geo("wvar", r2), geo("wexact", r2)
            rows.append({
                "cost": cost, "component": comp, f"{x} from": chunk[0], f"{x} to": chunk[-1],
                "lowest variance": var.idxmin(), "its variance": var.min(),
                "lowest (exact)": exact.idxmin(),
                "lowest work-normalised": wvar.idxmin(), "its work x variance": wvar.min(),
                "lowest work-normalised (exact)": wexact.idxmin(),
            })
    return pd.DataFrame(rows)


def study_section(df: pd.DataFrame, out) -> tuple[list[tuple[str, str]], str]:
    """Write the study figures and table into ``out``; return ([(png name, caption)], html
    of the best-estimator table and notes). Empty if no parameter is swept."""
    x = swept_parameter(df)
    if x is None:
        return [], ""
    points = per_point(df, x)
    figures = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        for cost, sub in points.groupby("cost", sort=False):
            for work in (False, True):
                name = f"study_{'work' if work else 'variance'}_{cost}.png"
                fig = _figure(sub, x, cost, work)
                fig.savefig(out / name)
                what = "work-normalised per-sample variance (x evals per sample)" if work \
                    else "per-sample variance"
                figures.append((name, f"{cost}: {what} against {x} at the largest N; lines: "
                                      "exact; markers: mean over seeds of the within-seed "
                                      "sample variance with its 95% CI over seeds."))
    table = best_table(points, x)
    table.to_csv(out / "study_best.csv", index=False)
    zero = points[points["zero"]].groupby(["cost", "param", "estimator"], sort=False)[x].agg(
        lambda v: f"{len(v)} of {len(points[x].unique())} points"
        if len(v) < len(points[x].unique()) else "all points").reset_index()
    parts = ["<h2>Best estimator per range of " + html.escape(x) + "</h2>",
             table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)]
    if not zero.empty:
        listed = ", ".join(f"{r.estimator} ({r.cost}, {r.param}: {getattr(r, x)})"
                           for r in zero.itertuples())
        parts.append(f'<p class="note">Zero exact variance (not drawn on the log axis): '
                     f"{html.escape(listed)}.</p>")
    sources = points.groupby(["estimator", "param"], sort=False)["source"].first()
    parts.append('<p class="note">exact_var sources: ' + html.escape("; ".join(
        f"{e}/{p}: {s}" for (e, p), s in sources.items())) + "</p>")
    return figures, "".join(parts)
