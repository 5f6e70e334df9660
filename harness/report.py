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
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import seaborn as sns

# Figures are created with the object-oriented API (no pyplot state): this renders with Agg
# on a headless machine and does not switch the backend of a user's interactive session.
from matplotlib.figure import Figure

from . import __version__
from .errors import ResultsError, filesystem_error
from .kinds import KINDS
from .results import atomic_write_bytes, read_results, scan

# Columns that identify a problem point (everything but N, estimator and component): the
# kind and its ``point`` label, written by the kind at compute time.
POINT_COLUMNS = ["problem", "point"]
MAX_FACET_POINTS = 6
MAX_FACET_COMPONENTS = 8   # more components (a high-dimensional ELBO): tables, no panels
Z_FLAG = 4.0   # |z| above this is highlighted in the table
# The report holds every row in memory (pandas: measured 750 B a row at the peak of reading):
# a bigger run is refused rather than exhausting the machine (10^7 seeds: 2 x 10^7 rows).
MAX_REPORT_ROWS = 1_000_000
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


def _new_figure(nrows: int, ncols: int, legend_entries: int = 0):
    # At least 7.5 in wide: a single column must still fit the figure title; wider by the
    # legends that go right of each panel (``_legend``).
    outside = -(-legend_entries // 14) if legend_entries > LEGEND_INSIDE else 0
    fig = Figure(figsize=(max(5.2 * ncols, 7.5) + 3.0 * outside * ncols, 3.7 * nrows + 0.6),
                 dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


LEGEND_INSIDE = 12   # more entries than this (e.g. the REBAR toy's 16 estimators) go outside


def _legend(ax) -> None:
    """The panel's legend: inside (loc "best", explicit: no slow-"best" warning) when short;
    else right of the panel in columns of at most 14 entries, so it never squeezes the axes
    to nothing."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= LEGEND_INSIDE:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=-(-entries // 14), frameon=False)


def _log_if_positive(ax, axis: str, values) -> None:
    # A log axis without positive data makes matplotlib warn (and tests turn warnings into
    # errors), so fall back to a linear axis.
    v = np.asarray(values, dtype=float)
    if np.any(np.isfinite(v) & (v > 0)):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _variance_vs_n(summary, points, components, estimators, title) -> Figure:
    colours = palette(estimators)
    fig, axes = _new_figure(len(points), len(components), 2 * len(estimators))
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
                _legend(ax)
    fig.suptitle(title, fontsize=12)
    return fig


def _mean_vs_n(summary, points, components, estimators, title) -> Figure:
    colours = palette(estimators)
    fig, axes = _new_figure(len(points), len(components), len(estimators) + 1)
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
                _legend(ax)
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
    fig, axes = _new_figure(len(rows), len(components),
                            (2 if what == "var" else 1) * len(estimators) + (what != "var"))
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
                _legend(ax)
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
p.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 0.8em; }
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


def _header_html(df, summary, run_dir: Path, created: str, group: Group,
                 level: str = "h1") -> str:
    experiments = ", ".join(dict.fromkeys(df["experiment"]))
    seeds = sorted(df.groupby("cell")["seed"].nunique().unique())
    seeds_text = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}"
    per_cell = df.groupby(["cell", "seconds"]).size().reset_index()
    sources = [f"{e}/{c}: {s}" for e, c, s in summary[["estimator", "param", "exact_source"]]
               .drop_duplicates().itertuples(index=False)][:40]
    writers = ", ".join(df.attrs.get("harness_versions", [])) or "?"
    shape = (f"{_plural(df['point'].nunique(), 'problem point')} "
             f"x {_plural(df['n_samples'].nunique(), 'value')} of N")
    cells = df["cell"].nunique()
    if group.total is not None and cells < group.total:
        cells_text = f"{cells} of {group.total}: incomplete ({shape} in the results)"
    else:
        cells_text = f"{cells} ({shape})"
    items = [
        ("experiment", experiments),
        ("run directory", str(run_dir)),
        ("problem", ", ".join(f"{k}: {KINDS[k].description}" if k in KINDS else k
                              for k in dict.fromkeys(df["problem"]))),
        ("cells", cells_text),
        ("seeds per cell", seeds_text),
        ("N", ", ".join(str(n) for n in sorted(df["n_samples"].unique()))),
        ("estimators", ", ".join(dict.fromkeys(df["estimator"]))),
        ("backend", ", ".join(dict.fromkeys(df["backend"]))),
        # a cell computed in blocks of seeds has one wall time per block
        ("compute time", f"{per_cell['seconds'].sum():.1f} s (sum over cells)"),
        ("exact references", "; ".join(dict.fromkeys(sources))),
        ("harness version", f"{__version__} (report); data written by {writers}"),
        ("code", group.code_text),
        ("created", created),
    ]
    meta = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    notes = "".join(f'<p class="warn">{html.escape(n)}</p>' for n in group.warnings)
    grid = group.grid_text if group.grid_text is not None else "(grid not recorded)"
    sub = "h2" if level == "h1" else "h3"
    return (f"<{level}>{html.escape(group.title or experiments)}</{level}>{notes}"
            f"<dl class=\"meta\">{meta}</dl>"
            f"<{sub}>Grid</{sub}><pre>{html.escape(grid)}</pre>")


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


@dataclass
class Group:
    """One grid's results on the page: its files, its YAML and what to say about them."""

    title: str | None
    files: list[Path]
    grid_text: str | None
    total: int | None = None          # cells of the grid (None: unknown)
    warnings: list[str] = field(default_factory=list)
    code_text: str = ""


@dataclass
class Selection:
    """Which result files the report shows (``select``), and what it leaves out."""

    groups: list[Group]
    notes: list[str]                  # for stderr (also on the page)


def select(run_dir, include_all: bool = False) -> Selection:
    """The cells of the grid last run in ``run_dir`` (``run_dir/grid.yaml``) computed by the
    running code; files of other grids or of other code are left out and counted.  With
    ``include_all`` every file is shown, grouped by the grid that computed it (the last
    grid's cells first, whatever code computed them).  A directory without ``grid.yaml``
    (written before it was kept) shows every file."""
    from .runner import last_run, plan

    run_dir = Path(run_dir)
    stored = scan(run_dir)
    if not stored:
        read_results(run_dir)          # raises the one-line ResultsError (no results)
    by_path = {f.path: f for f in stored}
    record = last_run(run_dir)
    if record is None:
        note = f"{run_dir}: no grid recorded (no grid.json): every result file is reported"
        if include_all:
            return Selection(_groups_by_grid(run_dir, stored, "results"), [note])
        return Selection([Group(None, [f.path for f in stored], None,
                                warnings=[note], code_text=_codes(stored))], [note])

    current = record.code
    p = plan(record.ids, run_dir, current)
    done, stale = p.done, p.stale
    total = len(record.ids)
    others = [by_path[path] for path in p.other_files if path in by_path]
    notes, warnings = [], []
    if len(done) < total:
        text = (f"incomplete run: {len(done)} of {total} cells of grid {record.name} done "
                f"({len(p.missing)} missing, {len(stale)} computed by other code); "
                f"resume with: harness run {record.path} --out {run_dir}")
        notes.append(text)
        warnings.append(text)
    left = []
    if others:
        left.append(f"{_plural(len(others), 'result file')} of other grids")
    if stale and not include_all:
        left.append(f"{_plural(len(stale), 'cell')} computed by other code")
    if left and not include_all:
        text = f"left out: {' and '.join(left)} (harness report --all includes them)"
        notes.append(text)
        warnings.append(text)
    if not include_all:
        files = [p.stored[i].path for i in done]
        if not files:
            raise ResultsError(
                f"{run_dir}: none of the {total} cells of grid {record.name} has results "
                f"computed by this code ({len(stale)} computed by other code, "
                f"{_plural(len(others), 'file')} of other grids) (fix: `harness run {record.path} "
                f"--out {run_dir}` to compute them, or `harness report --all {run_dir}`)")
        return Selection([Group(record.name, files, record.text, total, warnings,
                                _codes([p.stored[i] for i in done], current))], notes)
    mine = [p.stored[i] for i in record.ids if i in p.stored and p.stored[i].readable]
    groups = []
    if mine:
        if stale:
            warnings.append(f"{len(stale)} of these cells were computed by other code")
        groups.append(Group(f"{record.name} (the grid last run here)", [f.path for f in mine],
                            record.text, total, warnings, _codes(mine, current)))
    groups += _groups_by_grid(run_dir, others, "other grid")
    if others:
        notes.append(f"--all: {_plural(len(others), 'result file')} of other grids "
                     "included, grouped by grid")
    return Selection(groups, notes)


def _codes(stored, current: str | None = None) -> str:
    """The code digests (and harness versions) that computed some files, ``current`` (by
    default the package's own digest) marked."""
    from .provenance import code_digest

    current = current or code_digest()
    seen = {}
    for f in stored:
        seen.setdefault((f.code or "unknown", f.version), 0)
        seen[(f.code or "unknown", f.version)] += 1
    return "; ".join(f"{code} (harness {version}{', current' if code == current else ''}): "
                     f"{_plural(n, 'cell')}" for (code, version), n in seen.items())


def _groups_by_grid(run_dir: Path, stored, what: str) -> list[Group]:
    """Files grouped by the grid that computed them (its digest), each with its YAML."""
    groups: dict[str | None, list] = {}
    for f in stored:
        if f.readable:
            groups.setdefault(f.grid, []).append(f)
    out = []
    for digest, files in groups.items():
        text = None
        if digest is not None:
            path = run_dir / "grids" / f"{digest}.yaml"
            text = path.read_text() if path.is_file() else None
        names = ", ".join(sorted({f.experiment or "?" for f in files}))
        title = f"{names} ({what}" + (f" {digest})" if digest else ", grid not recorded)")
        out.append(Group(title, [f.path for f in files], text, None, [], _codes(files)))
    return out


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_report(run_dir, include_all: bool = False, echo=None) -> Path:
    """Write ``run_dir/report/`` (PNGs, summary.csv, index.html); returns the index.html path.

    Shows the cells of the grid last run in ``run_dir`` computed by the running code
    (``select``; ``include_all``: every file, grouped by grid).  One page for every kind:
    the header, the variance and mean figures and the seed-000 tables of the estimate rows,
    then each problem kind's own section (``report_section``).  Notes (an incomplete run,
    files left out) go to ``echo`` (default stderr) and on the page.  The report is built in
    a hidden directory and then replaces ``report/`` as a whole, so a failure (a full disk)
    or an interruption leaves the previous report intact.  Raises ``ResultsError`` if the
    run has no readable results, ``FilesystemError`` if the report cannot be written.
    """
    run_dir = Path(run_dir)
    echo = echo or _stderr
    selection = select(run_dir, include_all)
    rows = sum(pq.read_metadata(path).num_rows for g in selection.groups for path in g.files)
    if rows > MAX_REPORT_ROWS:
        raise ResultsError(
            f"{run_dir}: the results hold {rows:,} rows, more than a report reads into "
            f"memory ({MAX_REPORT_ROWS:,}) (fix: read the Parquet files in pieces with "
            "pyarrow or pandas, or report a run with fewer seeds)")
    for note in selection.notes:
        if note:
            echo(f"report: {note}")
    out = run_dir / "report"
    tmp = run_dir / f".report.tmp-{os.getpid()}"
    _remove_stale_report_dirs(run_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        tmp.mkdir()
        parts, titles = [], []
        single = len(selection.groups) == 1 and not include_all
        for i, group in enumerate(selection.groups, 1):
            group_dir = tmp if single else tmp / f"grid-{i}"
            group_dir.mkdir(exist_ok=True)
            df = read_results(run_dir, group.files)
            titles.append(group.title or ", ".join(dict.fromkeys(df["experiment"])))
            parts += _group_html(df, group, run_dir, group_dir, created,
                                 level="h1" if single else "h2")
        title = ", ".join(titles)
        if not single:
            parts.insert(0, f"<h1>{html.escape(title)}</h1>" + "".join(
                f'<p class="warn">{html.escape(n)}</p>' for n in selection.notes if n))
        page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}: harness report</title>"
                f"<style>{CSS}</style></head><body>{''.join(parts)}"
                f"<p class=\"note\">Generated by harness {__version__} from "
                f"{run_dir / 'results'} on {created}.</p></body></html>\n")
        atomic_write_bytes(tmp / "index.html", lambda fh: fh.write(page.encode("utf-8")))
        _replace_dir(tmp, out)
    except OSError as err:
        raise filesystem_error(err, "write the report", out,
                               elsewhere="copy the run directory somewhere writable and "
                                         "report it there") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


def _remove_stale_report_dirs(run_dir: Path) -> None:
    """Hidden report directories of killed processes (``.report.tmp-<pid>``, ``.old-``)."""
    from .claims import pid_alive

    for path in run_dir.glob(".report.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``: the old one is renamed aside first and removed
    after, so ``target`` is always either the old report or the new one."""
    old = target.with_name(f".report.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _group_html(df, group: Group, run_dir: Path, out: Path, created: str,
                level: str) -> list[str]:
    """The header, figures, kind sections and tables of one group's rows (files in out)."""
    summary = summarise(df)
    experiment = group.title or ", ".join(dict.fromkeys(df["experiment"]))
    figures, tables = [], []
    if not summary.empty:
        figures, tables = _estimate_figures(summary, experiment, out)
        summary.to_csv(out / "summary.csv", index=False)
    sections = []
    for name in dict.fromkeys(df["problem"]):
        if name in KINDS:
            kind_figures, kind_html = KINDS[name].report_section(df, summary, out)
            sections.append((kind_figures, kind_html))

    parts = [_header_html(df, summary, run_dir, created, group, level)]
    if figures:
        parts.append("<h2>Figures</h2>" if level == "h1" else "<h3>Figures</h3>")
    for name, caption in figures:
        parts.append(img_html(out / name, caption))
        parts.append(f'<p class="note">{html.escape(caption)}</p>')
    for kind_figures, kind_html in sections:
        for name, caption in kind_figures:
            parts.append(img_html(out / name, caption))
            parts.append(f'<p class="note">{html.escape(caption)}</p>')
        parts.append(kind_html)
    parts += tables
    return parts


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
