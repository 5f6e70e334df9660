"""Figures and one self-contained HTML page, built only from the stored results.

``build_report(run_dir)`` reads ``read_results(run_dir)`` (plus ``run_dir/grid.yaml``, shown
verbatim in the header) and writes into ``run_dir/report/``:

``variance_vs_n.png``  variance across seeds of the N-sample estimate vs N (log-log), per
                       estimator (colour) and component (column), exact Var[g]/N dashed,
                       fitted log-log slope in the legend;
``mean_vs_n.png``      mean estimate vs N with ±1.96 SE bars, exact gradient as a line;
``summary.csv``        the table below for every (point, component, N, estimator);
``index.html``         header, the PNGs embedded as base64 data URIs (the file can be mailed
                       on its own) and the "seed-000 table".

With more than ``MAX_FACET_POINTS`` problem points (e.g. a long ``k`` sweep) the figures show
the variance and the mean at the largest N against the swept parameter instead
(``variance_vs_<param>.png``, ``mean_vs_<param>.png``) and the HTML table is restricted to
the largest N (``summary.csv`` keeps everything).

Statistics (R seeds per cell, one N-sample estimate per seed):
``mean``, ``var``  mean and unbiased variance across seeds;
``se_mean``        sd / sqrt(R);  ``z_mean`` = (mean - exact_grad) / se_mean;
``se_var``         sqrt((m4 - var^2 (R-3)/(R-1)) / R) with m4 the sample fourth central
                   moment (no normality assumed: for heavy-tailed small-N estimates the
                   normal approximation var * sqrt(2/(R-1)) is too small);
``z_var``          (var - exact_var/N) / se_var.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

# Figures are created with the object-oriented API (no pyplot state): this renders with Agg
# on a headless machine and does not switch the backend of a user's interactive session.
from matplotlib.figure import Figure

from . import __version__
from .errors import ResultsError
from .kinds import KINDS
from .results import atomic_write_bytes, read_results

# Columns that identify a problem point (everything but N, estimator and component): the
# kind and its ``point`` label, written by the kind at compute time.
POINT_COLUMNS = ["problem", "point"]
MAX_FACET_POINTS = 6
MAX_FACET_COMPONENTS = 8   # more components (a high-dimensional ELBO): tables, no panels
Z_FLAG = 4.0   # |z| above this is highlighted in the table
DPI = 110


# ------------------------------------------------------------------------------ statistics

def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (problem point, component, N, estimator) with the statistics above.

    ``df`` is ``read_results(...)``: one row per (cell, seed, estimator, component).
    Rows are ordered by point, component, N and estimator (components and estimators in
    the order they were run).  Raises ``ResultsError`` if two cells describe the same
    point and N (files from another grid in the same directory).
    """
    keys = [*POINT_COLUMNS, "param", "n_samples", "estimator"]
    df = df[df["step"].isna()].copy()          # estimate rows (not optimisation traces)
    groups = df.groupby(keys, dropna=False, sort=False)
    df["_dev4"] = (df["estimate"] - groups["estimate"].transform("mean")) ** 4
    carried = {c: (c, "first") for c in sweep_columns(df)}
    out = df.groupby(keys, dropna=False, sort=False).agg(
        **carried,
        seeds=("estimate", "size"),
        cells=("cell", "nunique"),
        cell=("cell", "first"),
        mean=("estimate", "mean"),
        var=("estimate", "var"),
        m4=("_dev4", "mean"),
        mean_sample_var=("sample_var", "mean"),
        exact_grad=("exact_grad", "first"),
        exact_var=("exact_var", "first"),
        exact_source=("exact_source", "first"),
        evals_per_sample=("evals_per_sample", "first"),
    ).reset_index()
    if (out["cells"] > 1).any():
        bad = out.loc[out["cells"] > 1].iloc[0]
        raise ResultsError(
            f"results hold {bad['cells']} cells for one problem point and N = "
            f"{bad['n_samples']} (files from different grids in one directory?) "
            f"(fix: delete the stale files or run each grid into its own --out directory)")
    out = out.drop(columns="cells")
    r = out["seeds"].astype(float)
    out["se_mean"] = np.sqrt(out["var"] / r)
    out["exact_var_n"] = out["exact_var"] / out["n_samples"]
    with np.errstate(invalid="ignore", divide="ignore"):
        se2 = (out["m4"] - out["var"] ** 2 * (r - 3) / (r - 1)) / r
        out["se_var"] = np.sqrt(se2.where(se2 > 0))
        out["z_mean"] = (out["mean"] - out["exact_grad"]) / out["se_mean"]
        out["z_var"] = (out["var"] - out["exact_var_n"]) / out["se_var"]
        out["var_ratio"] = out["var"] / out["exact_var_n"]
    out = out.drop(columns="m4")

    # Order of first appearance = the grid's order (rows within a cell are seed, estimator,
    # component), which reads better than alphabetical.
    est_rank = {e: i for i, e in enumerate(dict.fromkeys(df["estimator"]))}
    comp_rank = {c: i for i, c in enumerate(dict.fromkeys(df["param"]))}
    out["_e"] = out["estimator"].map(est_rank)
    out["_c"] = out["param"].map(comp_rank)
    out = out.sort_values([*POINT_COLUMNS, "_c", "n_samples", "_e"], kind="stable")
    return out.drop(columns=["_e", "_c"]).reset_index(drop=True)


def sweep_columns(df: pd.DataFrame) -> list[str]:
    """The numeric point columns the kinds present in ``df`` declare sweepable."""
    names = dict.fromkeys(c for k in dict.fromkeys(df["problem"]) if k in KINDS
                          for c in KINDS[k].sweep_columns)
    return [c for c in names if c in df.columns and df[c].notna().any()]


def fitted_slope(n, var) -> float:
    """Least-squares slope of log10(var) vs log10(n) over positive finite values (NaN if < 2)."""
    n, var = np.asarray(n, dtype=float), np.asarray(var, dtype=float)
    ok = np.isfinite(var) & (var > 0) & (n > 0)
    if len(np.unique(n[ok])) < 2:
        return math.nan
    return float(np.polyfit(np.log10(n[ok]), np.log10(var[ok]), 1)[0])


def _points(summary: pd.DataFrame) -> pd.DataFrame:
    """The distinct problem points, in summary order, with a short ``label``."""
    sweep = sweep_columns(summary)
    points = summary[POINT_COLUMNS + sweep].drop_duplicates(POINT_COLUMNS).reset_index(drop=True)
    varying = [c for c in sweep if points[c].nunique(dropna=False) > 1]

    # Short labels (and figures against a swept value) only where the swept values tell the
    # points apart (a grid may also sweep values that are not columns, e.g. an ELBO's family
    # or target seed).
    identified = (bool(varying) and points["problem"].nunique() == 1
                  and not points.duplicated(varying).any())

    def label(row) -> str:
        if identified:
            return ", ".join(_fmt_param(c, row[c]) for c in varying)
        return row["point"]

    points["label"] = [label(row) for _, row in points.iterrows()]
    points.attrs["varying"] = varying
    points.attrs["identified"] = identified
    return points


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _fmt_param(name, value) -> str:
    return f"{name} = {value:g}" if isinstance(value, float) else f"{name} = {value}"


def _select(summary: pd.DataFrame, point: pd.Series) -> pd.Series:
    """Boolean mask of the summary rows at one point (NaN equals NaN here)."""
    mask = pd.Series(True, index=summary.index)
    for c in POINT_COLUMNS:
        v = point[c]
        mask &= summary[c].isna() if _isnan(v) else (summary[c] == v)
    return mask


# ---------------------------------------------------------------------------------- figures

def palette(estimators) -> dict:
    return dict(zip(estimators, sns.color_palette("colorblind", len(estimators))))


def _new_figure(nrows: int, ncols: int):
    # At least 7.5 in wide: a single column must still fit the figure title.
    fig = Figure(figsize=(max(5.2 * ncols, 7.5), 3.7 * nrows + 0.6), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _log_if_positive(ax, axis: str, values) -> None:
    # A log axis without positive data makes matplotlib warn (and tests turn warnings into
    # errors), so fall back to a linear axis.
    v = np.asarray(values, dtype=float)
    if np.any(np.isfinite(v) & (v > 0)):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _variance_vs_n(summary, points, components, estimators, title) -> Figure:
    colours = palette(estimators)
    fig, axes = _new_figure(len(points), len(components))
    for i, point in points.iterrows():
        at_point = summary[_select(summary, point)]
        for j, comp in enumerate(components):
            ax = axes[i, j]
            plotted = []
            for est in estimators:
                s = at_point[(at_point["param"] == comp) & (at_point["estimator"] == est)]
                if s.empty:
                    continue
                slope = fitted_slope(s["n_samples"], s["var"])
                ax.plot(s["n_samples"], s["var"], "o-", color=colours[est], lw=1.3, ms=5,
                        zorder=3, label=f"{est} (slope {slope:.2f})")
                if s["exact_var_n"].notna().any():
                    # Wide and pale, underneath: the data must stay visible where they agree.
                    ax.plot(s["n_samples"], s["exact_var_n"], "--", color=colours[est],
                            lw=2.4, alpha=0.5, zorder=2, label=f"{est}: exact Var[g] / N")
                plotted += [*s["var"], *s["exact_var_n"]]
            _log_if_positive(ax, "x", at_point["n_samples"])
            _log_if_positive(ax, "y", plotted)
            ax.set_title(_panel_title(comp, point, len(points)), fontsize=10)
            ax.set_xlabel("N (samples per estimate)")
            ax.set_ylabel("variance across seeds")
            if ax.lines:
                ax.legend(fontsize=8, loc="best")  # explicit: no slow-"best" warning
    fig.suptitle(title, fontsize=12)
    return fig


def _mean_vs_n(summary, points, components, estimators, title) -> Figure:
    colours = palette(estimators)
    fig, axes = _new_figure(len(points), len(components))
    for i, point in points.iterrows():
        at_point = summary[_select(summary, point)]
        for j, comp in enumerate(components):
            ax = axes[i, j]
            for e, est in enumerate(estimators):
                s = at_point[(at_point["param"] == comp) & (at_point["estimator"] == est)]
                if s.empty:
                    continue
                # Spread estimators a little along the log-N axis so their bars do not overlap.
                shift = 10 ** (0.04 * (e - (len(estimators) - 1) / 2))
                ax.errorbar(s["n_samples"] * shift, s["mean"], yerr=1.96 * s["se_mean"],
                            fmt="o-", capsize=3, color=colours[est], label=est)
            exact = at_point.loc[at_point["param"] == comp, "exact_grad"].dropna()
            if not exact.empty:
                ax.axhline(exact.iloc[0], color="black", ls="--", lw=1, label="exact gradient")
            _log_if_positive(ax, "x", at_point["n_samples"])
            ax.set_title(_panel_title(comp, point, len(points)), fontsize=10)
            ax.set_xlabel("N (samples per estimate)")
            ax.set_ylabel("mean estimate (±1.96 SE)")
            if ax.lines:
                ax.legend(fontsize=8, loc="best")  # explicit: no slow-"best" warning
    fig.suptitle(title, fontsize=12)
    return fig


def _panel_title(comp, point, n_points) -> str:
    head = f"gradient wrt {comp}"
    return f"{head}; {point['label']}" if n_points > 1 else head


def _sweep_axes(points) -> tuple[str, list[str]]:
    """The swept parameter for the x axis (most distinct values) and the other varying ones."""
    varying = points.attrs["varying"]
    if not varying:  # only distribution/cost vary: nothing numeric to put on x
        raise ResultsError("results mix distributions or costs in one directory "
                           "(fix: run each grid into its own --out directory)")
    x = max(varying, key=lambda c: points[c].nunique())
    return x, [c for c in varying if c != x]


def _at_largest_n(summary) -> pd.DataFrame:
    largest = summary.groupby(POINT_COLUMNS, dropna=False)["n_samples"].transform("max")
    return summary[summary["n_samples"] == largest]


def _vs_parameter(summary, points, components, estimators, what, title) -> Figure:
    """``what`` = "var" or "mean" at the largest N against the swept parameter."""
    x, others = _sweep_axes(points)
    colours = palette(estimators)
    top = _at_largest_n(summary)
    rows = [()] if not others else list(dict.fromkeys(
        tuple(r) for r in points[others].itertuples(index=False)))
    fig, axes = _new_figure(len(rows), len(components))
    for i, combo in enumerate(rows):
        sub = top
        for c, v in zip(others, combo):
            sub = sub[sub[c] == v]
        for j, comp in enumerate(components):
            ax = axes[i, j]
            plotted = []
            for e, est in enumerate(estimators):
                s = sub[(sub["param"] == comp) & (sub["estimator"] == est)].sort_values(x)
                if s.empty:
                    continue
                if what == "var":
                    ax.plot(s[x], s["var"], "o-", color=colours[est], lw=1.3, ms=5, zorder=3,
                            label=est)
                    ax.plot(s[x], s["exact_var_n"], "--", color=colours[est], lw=2.4,
                            alpha=0.5, zorder=2, label=f"{est}: exact Var[g] / N")
                    plotted += [*s["var"], *s["exact_var_n"]]
                else:
                    # The exact gradient changes along x: show the error, so the SE bars
                    # are visible at any gradient scale.
                    shift = 0.01 * (e - (len(estimators) - 1) / 2) * _span(sub[x])
                    ax.errorbar(s[x] + shift, s["mean"] - s["exact_grad"],
                                yerr=1.96 * s["se_mean"], fmt="o", capsize=3,
                                color=colours[est], label=est)
            if what == "var":
                _log_if_positive(ax, "y", plotted)
                ax.set_ylabel("variance across seeds at largest N")
            else:
                ax.axhline(0.0, color="black", ls="--", lw=1, label="exact gradient (error 0)")
                ax.set_ylabel("mean - exact gradient (±1.96 SE)")
            where = ", ".join(_fmt_param(c, v) for c, v in zip(others, combo))
            ax.set_title(f"gradient wrt {comp}" + (f"; {where}" if where else ""), fontsize=10)
            ax.set_xlabel(x)
            if ax.lines:
                ax.legend(fontsize=8, loc="best")  # explicit: no slow-"best" warning
    fig.suptitle(title, fontsize=12)
    return fig


def _span(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.ptp(values)) if values.size else 0.0


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))


# ------------------------------------------------------------------------------------- HTML

TABLE_COLUMNS = [
    # (summary column, header, format)
    ("n_samples", "N", "{:d}"),
    ("estimator", "estimator", "{}"),
    ("seeds", "seeds", "{:d}"),
    ("mean", "mean", "{:.5g}"),
    ("se_mean", "SE mean", "{:.3g}"),
    ("exact_grad", "exact grad", "{:.5g}"),
    ("z_mean", "z mean", "{:+.2f}"),
    ("var", "var across seeds", "{:.4g}"),
    ("exact_var_n", "exact var / N", "{:.4g}"),
    ("var_ratio", "var ratio", "{:.3f}"),
    ("se_var", "SE var", "{:.3g}"),
    ("z_var", "z var", "{:+.2f}"),
    ("mean_sample_var", "within-seed var (mean)", "{:.5g}"),
    ("exact_var", "exact var per sample", "{:.5g}"),
]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; font-size: 1.25em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #eee; } td.text { text-align: left; }
td.flag { background: #fdd; font-weight: 600; }
tr.first td { border-top: 2px solid #888; }
.note { font-size: 0.9em; color: #444; max-width: 60em; }
"""


def _cell_html(value, fmt: str, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<td>&ndash;</td>"
    if fmt == "{:d}":
        value = int(value)
    text = html.escape(fmt.format(value))
    cls = ""
    if column in ("z_mean", "z_var") and abs(value) > Z_FLAG:
        cls = ' class="flag"'
    elif fmt == "{}":
        cls = ' class="text"'
    return f"<td{cls}>{text}</td>"


def _table_html(rows: pd.DataFrame, extra: list[str]) -> str:
    """An HTML table of summary rows; ``extra`` point columns are shown first."""
    cols = [(c, c, "{:g}" if pd.api.types.is_numeric_dtype(rows[c]) else "{}")
            for c in extra] + TABLE_COLUMNS
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
    body, previous_n = [], None
    for _, row in rows.iterrows():
        # A heavier rule where a new N (or point) starts.
        key = tuple(row[c] for c in extra) + (row["n_samples"],)
        first = ' class="first"' if previous_n is not None and key != previous_n else ""
        previous_n = key
        body.append(f"<tr{first}>" + "".join(_cell_html(row[c], f, c) for c, _, f in cols)
                    + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_table(rows: pd.DataFrame, cols) -> str:
    """An HTML table of ``rows``; ``cols`` = [(column, header, format)], "{}" for text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
    body = []
    for _, row in rows.iterrows():
        body.append("<tr>" + "".join(_cell_html(row[c], fmt, c) for c, _, fmt in cols)
                    + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def img_html(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            f'data-file="{html.escape(path.name)}"></figure>')


def _header_html(df, summary, run_dir: Path, created: str) -> str:
    experiments = ", ".join(dict.fromkeys(df["experiment"]))
    seeds = sorted(df.groupby("cell")["seed"].nunique().unique())
    seeds_text = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}"
    per_cell = df.groupby("cell")["seconds"].first()
    sources = [f"{e}/{c}: {s}" for e, c, s in summary[["estimator", "param", "exact_source"]]
               .drop_duplicates().itertuples(index=False)][:40]
    writers = ", ".join(df.attrs.get("harness_versions", [])) or "?"
    items = [
        ("experiment", experiments),
        ("run directory", str(run_dir)),
        ("problem", ", ".join(f"{k}: {KINDS[k].description}" if k in KINDS else k
                              for k in dict.fromkeys(df["problem"]))),
        ("cells", f"{df['cell'].nunique()} ({_plural(df['point'].nunique(), 'problem point')} "
                  f"x {_plural(df['n_samples'].nunique(), 'value')} of N)"),
        ("seeds per cell", seeds_text),
        ("N", ", ".join(str(n) for n in sorted(df["n_samples"].unique()))),
        ("estimators", ", ".join(dict.fromkeys(df["estimator"]))),
        ("backend", ", ".join(dict.fromkeys(df["backend"]))),
        ("compute time", f"{per_cell.sum():.1f} s (sum over cells)"),
        ("exact references", "; ".join(dict.fromkeys(sources))),
        ("harness version", f"{__version__} (report); data written by {writers}"),
        ("created", created),
    ]
    meta = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    grid_path = run_dir / "grid.yaml"
    grid = grid_path.read_text() if grid_path.is_file() else "(grid.yaml not found)"
    return (f"<h1>{html.escape(experiments)}</h1><dl class=\"meta\">{meta}</dl>"
            f"<h2>Grid</h2><pre>{html.escape(grid)}</pre>")


NOTES = f"""<p class="note">Each seed gives one N-sample estimate; <em>mean</em> and
<em>var across seeds</em> are taken over the R seeds of a cell. SE mean = sd / &radic;R and
z mean = (mean &minus; exact grad) / SE mean. The SE of the variance across seeds uses the
sample fourth central moment m<sub>4</sub>: SE var = &radic;((m<sub>4</sub> &minus;
var<sup>2</sup>(R&minus;3)/(R&minus;1)) / R) (no normality assumed; the normal approximation
var&middot;&radic;(2/(R&minus;1)) is too small for heavy-tailed estimates at small N), and
z var = (var &minus; exact var/N) / SE var. |z| &gt; {Z_FLAG:g} is highlighted. The expected
variance across seeds is the exact per-sample variance / N; <em>within-seed var</em> is the mean
over seeds of each seed's per-sample sample variance, an estimate of the exact per-sample
variance. Slopes are least-squares fits of log<sub>10</sub> var against log<sub>10</sub> N
(&minus;1 expected).</p>"""


def build_report(run_dir) -> Path:
    """Write ``run_dir/report/`` (PNGs, summary.csv, index.html); returns the index.html path.

    One page for every kind: the header, the variance and mean figures and the seed-000
    tables of the estimate rows, then each problem kind's own section (``report_section``).
    Raises ``ResultsError`` (via ``read_results``) if the run has no readable results.
    """
    run_dir = Path(run_dir)
    df = read_results(run_dir)
    summary = summarise(df)
    experiment = ", ".join(dict.fromkeys(df["experiment"]))

    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    # of an earlier report (a set: study_*.png matches both patterns)
    for stale in {*out.glob("*.png"), *out.glob("study_*")}:
        stale.unlink()

    figures, tables = [], []
    if not summary.empty:
        figures, tables = _estimate_figures(summary, experiment, out)
        summary.to_csv(out / "summary.csv", index=False)
    sections = []
    for name in dict.fromkeys(df["problem"]):
        if name in KINDS:
            kind_figures, kind_html = KINDS[name].report_section(df, summary, out)
            sections.append((kind_figures, kind_html))

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [_header_html(df, summary, run_dir, created)]
    if figures:
        parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        parts.append(img_html(out / name, caption))
        parts.append(f'<p class="note">{html.escape(caption)}</p>')
    for kind_figures, kind_html in sections:
        for name, caption in kind_figures:
            parts.append(img_html(out / name, caption))
            parts.append(f'<p class="note">{html.escape(caption)}</p>')
        parts.append(kind_html)
    parts += tables

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(experiment)}: harness report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}"
            f"<p class=\"note\">Generated by harness {__version__} from {run_dir / 'results'} "
            f"on {created}.</p></body></html>\n")
    index = out / "index.html"
    atomic_write_bytes(index, lambda fh: fh.write(page.encode("utf-8")))
    return index


def _estimate_figures(summary, experiment: str, out: Path):
    """The variance and mean figures of the estimate rows and the seed-000 tables:
    ([(png name, caption)], [html parts])."""
    points = _points(summary)
    components = list(dict.fromkeys(summary["param"]))
    estimators = list(dict.fromkeys(summary["estimator"]))
    seeds = int(summary["seeds"].max())
    # Many points against their swept value, if the swept values tell them apart; else
    # one row of panels per point.
    sweep = len(points) > MAX_FACET_POINTS and points.attrs["identified"]
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        if len(components) > MAX_FACET_COMPONENTS:
            figures = []
        elif sweep:
            x, _ = _sweep_axes(points)
            figures = [
                (f"variance_vs_{x}.png",
                 _vs_parameter(summary, points, components, estimators, "var",
                               f"{experiment}: variance across {seeds} seeds at the largest N"),
                 f"Variance across seeds of the estimate at the largest N against {x} "
                 f"(markers), exact per-sample variance / N dashed."),
                (f"mean_vs_{x}.png",
                 _vs_parameter(summary, points, components, estimators, "mean",
                               f"{experiment}: error of the mean estimate at the largest N"),
                 f"Mean estimate minus the exact gradient at the largest N against {x}, "
                 f"±1.96 SE."),
            ]
        else:
            figures = [
                ("variance_vs_n.png",
                 _variance_vs_n(summary, points, components, estimators,
                                f"{experiment}: variance of the N-sample estimate across "
                                f"{seeds} seeds"),
                 "Variance across seeds of the N-sample estimate (markers, fitted log-log "
                 "slope in the legend) and the exact per-sample variance / N (dashed)."),
                ("mean_vs_n.png",
                 _mean_vs_n(summary, points, components, estimators,
                            f"{experiment}: mean estimate vs N"),
                 "Mean over seeds of the N-sample estimate with ±1.96 SE bars; exact "
                 "gradient dashed."),
            ]
        for name, fig, _ in figures:
            save_figure(fig, out / name)

    parts = ["<h2>Seed-000 table: estimates across seeds vs exact values</h2>", NOTES]
    if sweep:
        parts.append(f'<p class="note">{len(points)} problem points: the table shows the '
                     f"largest N only; summary.csv has every N.</p>")
        top = _at_largest_n(summary)
        for comp in components:
            parts.append(f"<h3>gradient wrt {html.escape(comp)}</h3>")
            parts.append(_table_html(top[top["param"] == comp], points.attrs["varying"]))
    elif len(components) > 8:       # many components (an ELBO in high dimension): one table
        for _, point in points.iterrows():
            at_point = summary[_select(summary, point)]
            parts.append(f"<h3>{html.escape(point['label'])}</h3>")
            parts.append(_table_html(at_point, ["param"]))
    else:
        for _, point in points.iterrows():
            at_point = summary[_select(summary, point)]
            for comp in components:
                rows = at_point[at_point["param"] == comp]
                if rows.empty:      # not a component of this point (an ELBO of lower dim)
                    continue
                title = f"gradient wrt {comp}"
                if len(points) > 1:
                    title += f"; {point['label']}"
                parts.append(f"<h3>{html.escape(title)}</h3>")
                parts.append(_table_html(rows, []))
    return [(name, caption) for name, _, caption in figures], parts
