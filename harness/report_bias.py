"""The bias section of the report, for biased estimators (the Bernoulli relaxations:
``gumbel_softmax``, ``straight_through``), whose exact expectation is stored per row in
``exact_estimator_mean`` (``harness.exact``).

Called from the expectation kind's ``report_section`` when a run has rows of a biased
estimator.  Built only from the stored per-seed rows, at the largest N of each point:

``bias_vs_temperature.png``  bias = E[estimate] - exact gradient against the estimator's
    ``temperature`` (log x-axis), one panel per chosen value of the swept parameter (at most
    ``MAX_PANELS``, spread over the sweep), one colour per estimator: the exact bias
    (exact_estimator_mean - exact_grad) as a line, the estimated bias (mean over seeds of the
    estimate, minus the exact gradient) as markers with a 95% confidence interval over seeds
    (+- 1.96 sd / sqrt(R)).
``bias.csv`` and an HTML table: the same numbers per (point, estimator label), with the bias
    in units of its standard error (z) and the exact per-sample variance, so bias and
    variance can be read side by side.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from . import registry

MAX_PANELS = 4
DPI = 110


def _label_parts(label: str):
    """(estimator name, temperature or NaN, biased?) of a stored estimator label; labels the
    current registry does not know (other code) are not biased estimators of this code."""
    try:
        name, options = registry.parse_label(label)
        biased = registry.resolve(label).biased
    except Exception:  # noqa: BLE001 - a label of other code: not drawn here
        return label, np.nan, False
    options = dict(options)
    default = registry.ESTIMATORS[name].defaults.get("temperature", np.nan)
    return name, float(options.get("temperature", default)), bool(biased)


def bias_points(df: pd.DataFrame, x: str | None) -> pd.DataFrame:
    """One row per (point, component, biased estimator label) at the largest N."""
    if "exact_estimator_mean" not in df:
        return pd.DataFrame()
    parts = {label: _label_parts(label) for label in df["estimator"].unique()}
    biased = [label for label, (_, _, b) in parts.items() if b]
    rows = df[df["estimator"].isin(biased)]
    if rows.empty:
        return pd.DataFrame()
    largest = rows.groupby("point")["n_samples"].transform("max")
    rows = rows[rows["n_samples"] == largest]
    keys = ["point", "param", "estimator"] + ([x] if x else [])
    out = rows.groupby(keys, sort=False).agg(
        mean=("estimate", "mean"), sd=("estimate", "std"), seeds=("seed", "size"),
        grad=("exact_grad", "first"), own=("exact_estimator_mean", "first"),
        exact_var=("exact_var", "first"), n_samples=("n_samples", "first")).reset_index()
    out["name"] = out["estimator"].map(lambda label: parts[label][0])
    out["temperature"] = out["estimator"].map(lambda label: parts[label][1])
    out["exact_bias"] = out["own"] - out["grad"]
    out["bias"] = out["mean"] - out["grad"]
    out["se"] = out["sd"] / np.sqrt(out["seeds"])
    out["z"] = (out["mean"] - out["own"]) / out["se"]
    return out


def _figure(points: pd.DataFrame, x: str | None) -> Figure:
    if x:
        values = np.sort(points[x].unique())
        chosen = values[np.unique(np.linspace(0, len(values) - 1,
                                              min(MAX_PANELS, len(values))).round().astype(int))]
        panels = [(f"{x} = {v:g}", points[points[x] == v]) for v in chosen]
    else:
        panels = [(point, points[points["point"] == point])
                  for point in list(dict.fromkeys(points["point"]))[:MAX_PANELS]]
    names = list(dict.fromkeys(points["name"]))
    colours = dict(zip(names, sns.color_palette("tab10", len(names))))
    fig = Figure(figsize=(4.6 * len(panels), 4.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, sub) in zip(axes, panels):
        for name in names:
            s = sub[sub["name"] == name].sort_values("temperature")
            if s.empty:
                continue
            ax.plot(s["temperature"], s["exact_bias"], color=colours[name], lw=1.3, label=name)
            ax.errorbar(s["temperature"], s["bias"], yerr=1.96 * s["se"], fmt="o", ms=3,
                        color=colours[name], elinewidth=0.8, alpha=0.8)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("temperature")
        ax.set_ylabel("bias = E[estimate] - exact gradient")
        ax.set_title(title, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=max(len(labels), 1),
               fontsize=8, frameon=False)
    fig.suptitle("bias of the relaxed estimators against the temperature (lines exact, "
                 "markers estimate with 95% CI over seeds)", fontsize=10)
    return fig


def bias_section(df: pd.DataFrame, out, x: str | None) -> tuple[list[tuple[str, str]], str]:
    """Write the bias figure and table into ``out`` (``x``: the swept parameter, or None);
    return ([(png name, caption)], html).  Empty if the run has no biased estimator."""
    points = bias_points(df, x)
    if points.empty:
        return [], ""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = _figure(points, x)
        fig.savefig(out / "bias_vs_temperature.png")
    columns = (["point", "param", "estimator", "n_samples", "seeds", "grad", "own",
                "exact_bias", "bias", "se", "z", "exact_var"])
    table = points[columns].rename(columns={
        "grad": "exact gradient", "own": "exact E[estimate]", "exact_bias": "exact bias",
        "bias": "estimated bias", "se": "SE", "z": "z (estimate vs exact E)",
        "exact_var": "exact per-sample variance"})
    table.to_csv(out / "bias.csv", index=False)
    caption = ("bias of each biased estimator against its temperature at the largest N; lines: "
               "the exact bias (exact_estimator_mean - exact_grad); markers: the mean estimate "
               "minus the exact gradient with its 95% CI over seeds.")
    shown = table if len(table) <= 60 else table.iloc[:: max(1, len(table) // 60)]
    thinned = "" if shown is table else " (every row there; thinned here)"
    parts = ["<h2>Bias of the relaxed estimators</h2>",
             '<p class="note">Every row: E[estimate] exactly (quadrature over the noise), its '
             "bias against the exact gradient, the estimated bias over seeds and z = (mean - "
             f"exact E) / SE; full table in bias.csv{html.escape(thinned)}.</p>",
             shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)]
    return [("bias_vs_temperature.png", caption)], "".join(parts)
