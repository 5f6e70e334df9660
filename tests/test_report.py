"""The report: files, embedded images, and numbers that agree with a direct computation.

Runs use a stand-in kernel (``helpers.fake_estimate``: right means and variances on average,
deterministic per seed); ``test_report_of_a_real_run`` needs the real harness.backends.cpu.
"""

import base64
import re
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import exact_reference, expectation_grid, fake_backend

import harness
from harness.errors import ResultsError
from harness.report import MAX_FACET_POINTS, build_report, fitted_slope, summarise
from harness.results import read_results
from harness.runner import run_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def fake_kernel(monkeypatch):
    monkeypatch.setitem(sys.modules, "harness.backends.cpu", fake_backend())


def make_grid(name="report_test", cost="square", params=(("mu", (2.0,)), ("sigma", (1.0,))),
              n_samples=(10, 100, 1000), seeds=tuple(range(200)), wrt=("mu", "sigma")):
    return expectation_grid(
        name=name, cost=cost, params=params, wrt=wrt, n_samples=n_samples, seeds=seeds,
        source_text=f"name: {name}\nproblem:\n  cost: {cost}  # <grid text>\n")


def embedded_images(page: str) -> dict[str, bytes]:
    """{data-file name: decoded PNG bytes} of every <img> in the page."""
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*'
                       r'data-file="([^"]+)"', page)
    return {name: base64.b64decode(data) for data, name in found}


def direct_statistics(df: pd.DataFrame) -> pd.DataFrame:
    """The table's statistics computed straight from the rows with pandas."""
    df = df.fillna({"k": 0.0})  # (only for grouping: square has k NaN)
    rows = []
    for key, g in df.groupby(["mu", "sigma", "k", "param", "n_samples", "estimator"]):
        x = g["estimate"].to_numpy()
        r = len(x)
        var = x.var(ddof=1)
        m4 = np.mean((x - x.mean()) ** 4)
        exact_grad, exact_var = g["exact_grad"].iloc[0], g["exact_var"].iloc[0]
        n = key[4]
        se_var = np.sqrt((m4 - var**2 * (r - 3) / (r - 1)) / r)
        rows.append(dict(zip(["mu", "sigma", "k", "param", "n_samples", "estimator"], key),
                         seeds=r, mean=x.mean(), var=var,
                         z_mean=(x.mean() - exact_grad) / np.sqrt(var / r),
                         exact_var_n=exact_var / n, z_var=(var - exact_var / n) / se_var,
                         mean_sample_var=g["sample_var"].mean()))
    return pd.DataFrame(rows)


def test_report_files_and_embedded_images(tmp_path):
    grid = make_grid()
    run_grid(grid, tmp_path, progress=False)
    before = time.time()
    index = build_report(tmp_path)
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text()
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["mean_vs_n.png", "variance_vs_n.png"]
    images = embedded_images(page)
    assert sorted(images) == pngs
    for name, data in images.items():   # the page carries the very files written beside it
        assert data.startswith(PNG_MAGIC)
        assert data == (tmp_path / "report" / name).read_bytes()
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page
    # Header: experiment, grid text, cells, seeds, version, creation time, SE method.
    assert "<h1>report_test</h1>" in page
    assert "cost: square  # &lt;grid text&gt;" in page
    assert "<dt>cells</dt><dd>3 (1 problem point x 3 values of N)</dd>" in page
    assert "<dt>seeds per cell</dt><dd>200</dd>" in page
    assert f"{harness.__version__} (report)" in page
    created = re.search(r"<dt>created</dt><dd>([^<]+)</dd>", page).group(1)
    assert abs(pd.Timestamp(created).timestamp() - before) < 60
    assert "fourth central moment" in page


def test_report_table_agrees_with_a_direct_pandas_computation(tmp_path):
    grid = make_grid(cost="quadratic", params=(("mu", (2.0,)), ("sigma", (1.5,)), ("k", (-1.0,))))
    run_grid(grid, tmp_path, progress=False)
    index = build_report(tmp_path)
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    direct = direct_statistics(read_results(tmp_path))
    assert len(table) == len(direct) == 3 * 2 * 2
    key = ["param", "n_samples", "estimator"]
    merged = table.merge(direct, on=key, suffixes=("", "_direct"), validate="one_to_one")
    for column in ["seeds", "mean", "var", "z_mean", "exact_var_n", "z_var", "mean_sample_var"]:
        np.testing.assert_allclose(merged[column], merged[f"{column}_direct"], rtol=1e-9,
                                   err_msg=column)
    # Exact values in the table are harness.exact's.
    params = {"mu": 2.0, "sigma": 1.5, "k": -1.0}
    for row in table.itertuples():
        grad, var, source = exact_reference(row.estimator, row.param, "normal", "quadratic",
                                            params)
        assert (row.exact_grad, row.exact_var, row.exact_source) == (grad, var, source)
    # The page shows the same numbers (formatted).
    page = index.read_text()
    sections = page.split("<h3>")[1:]   # one table per component
    for row in merged.itertuples():
        section = next(s for s in sections if s.startswith(f"gradient wrt {row.param}<"))
        start = (f"<td>{row.n_samples}</td><td class=\"text\">{row.estimator}</td>"
                 f"<td>{row.seeds}</td><td>{row.mean_direct:.5g}</td>")
        tr = re.search(re.escape(start) + ".*?</tr>", section).group(0)
        assert f">{row.z_mean_direct:+.2f}</td>" in tr and f">{row.z_var_direct:+.2f}</td>" in tr
        assert f">{row.var_direct:.4g}</td>" in tr


def test_summary_order_and_flags_large_z(tmp_path):
    run_grid(make_grid(), tmp_path, progress=False)
    summary = summarise(read_results(tmp_path))
    assert list(summary["param"]) == ["mu"] * 6 + ["sigma"] * 6
    assert list(summary["estimator"][:2]) == ["score_function", "pathwise"]  # grid order
    assert list(summary["n_samples"][:6]) == [10, 10, 100, 100, 1000, 1000]
    # A shifted estimator must stand out: |z mean| > 4 is flagged in the page.
    df = read_results(tmp_path)
    df.loc[df["estimator"] == "pathwise", "estimate"] += 1.0
    shifted = summarise(df)
    assert (shifted.loc[shifted["estimator"] == "pathwise", "z_mean"] > 4).all()


def test_fitted_slope():
    n = np.array([10, 100, 1000, 10000])
    assert fitted_slope(n, 87.0 / n) == pytest.approx(-1.0)
    assert np.isnan(fitted_slope(n[:1], [1.0]))
    assert fitted_slope(n, [0.0, 1.0, 0.1, 0.01]) == pytest.approx(-1.0)  # zeros skipped


def test_report_with_a_few_problem_points_facets_them(tmp_path):
    grid = make_grid(cost="quadratic",
                     params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", (-3.0, 0.0, 3.0))))
    run_grid(grid, tmp_path, progress=False)
    page = build_report(tmp_path).read_text()
    assert sorted(embedded_images(page)) == ["mean_vs_n.png", "variance_vs_n.png"]
    for k in ("-3", "0", "3"):
        assert f"gradient wrt mu; k = {k}</h3>" in page
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(table) == 3 * 2 * 3 * 2


def test_report_with_many_points_plots_against_the_swept_parameter(tmp_path):
    ks = tuple(np.linspace(-3.0, 3.0, MAX_FACET_POINTS + 2))
    grid = make_grid(cost="quadratic", params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", ks)),
                     n_samples=(10, 100), seeds=tuple(range(50)))
    run_grid(grid, tmp_path, progress=False)
    page = build_report(tmp_path).read_text()
    assert sorted(embedded_images(page)) == [
        "mean_vs_k.png", "study_variance_quadratic.png", "study_work_quadratic.png",
        "variance_vs_k.png"]
    assert not (tmp_path / "report" / "variance_vs_n.png").exists()
    assert "Best estimator per range of k" in page
    best = pd.read_csv(tmp_path / "report" / "study_best.csv")
    assert set(best["component"]) == {"mu", "sigma"} and len(best) == 2 * 4
    assert "the table shows the largest N only" in page
    # One row per k, component and estimator: N = 100 only.
    assert page.count('<td class="text">score_function</td>') == len(ks) * 2
    assert page.count("<td>100</td><td class=\"text\">") == len(ks) * 2 * 2
    assert len(pd.read_csv(tmp_path / "report" / "summary.csv")) == len(ks) * 2 * 2 * 2


def test_rebuilding_replaces_stale_figures(tmp_path):
    ks = tuple(np.linspace(-3.0, 3.0, MAX_FACET_POINTS + 1))
    many = make_grid(cost="quadratic", params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", ks)),
                     n_samples=(10,), seeds=tuple(range(20)))
    run_grid(many, tmp_path, progress=False)
    build_report(tmp_path)
    for f in (tmp_path / "results").glob("*.parquet"):
        f.unlink()
    run_grid(make_grid(seeds=tuple(range(20))), tmp_path, progress=False)
    build_report(tmp_path)
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "mean_vs_n.png", "variance_vs_n.png"]


def test_report_without_results_raises(tmp_path):
    with pytest.raises(ResultsError, match="fix:"):
        build_report(tmp_path)
    assert not (tmp_path / "report").exists()


def test_two_grids_in_one_directory_report_the_last_one(tmp_path, capsys):
    # Same problem point and N from two different grids in one directory: their seeds must
    # never be mixed.  The report shows the grid last run; --all shows each grid apart.
    run_grid(make_grid(name="a", n_samples=(10,)), tmp_path, progress=False)
    run_grid(make_grid(name="b", n_samples=(10,)), tmp_path, progress=False)
    page = build_report(tmp_path).read_text()
    assert "<h1>b</h1>" in page and "left out: 1 result file of other grids" in page
    assert "left out: 1 result file of other grids" in capsys.readouterr().err
    assert set(pd.read_csv(tmp_path / "report" / "summary.csv")["seeds"]) == {200}
    page = build_report(tmp_path, include_all=True).read_text()
    assert "<h2>b (the grid last run here)</h2>" in page and "<h2>a (other grid " in page
    for group in ("grid-1", "grid-2"):
        summary = pd.read_csv(tmp_path / "report" / group / "summary.csv")
        assert set(summary["seeds"]) == {200}          # one grid's seeds each
    # Mixed in one table, the statistics refuse them.
    with pytest.raises(ResultsError, match="own --out directory"):
        summarise(read_results(tmp_path))


def test_report_of_a_single_seed_run_does_not_fail(tmp_path):
    # Variance across one seed is undefined: NaN in the table, no crash, no warning.
    run_grid(make_grid(seeds=(5,)), tmp_path, progress=False)
    page = build_report(tmp_path).read_text()
    assert "<td>&ndash;</td>" in page


def test_report_of_a_real_run(tmp_path, monkeypatch):
    """Needs harness.backends.cpu: the seed-000 problem, run -> report end to end."""
    monkeypatch.delitem(sys.modules, "harness.backends.cpu")  # undo the fake
    # quadratic with k = 0 is the seed-000 cost x^2 (and shares its compiled kernel with
    # test_runner's real-kernel test).
    grid = make_grid(cost="quadratic", params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", (0.0,))),
                     n_samples=(100, 1000), seeds=tuple(range(100)))
    run_grid(grid, tmp_path, progress=False)
    page = build_report(tmp_path).read_text()
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    sf = table[(table["estimator"] == "score_function") & (table["param"] == "mu")]
    assert set(sf["exact_var"]) == {87.0} and set(sf["exact_grad"]) == {4.0}
    assert (table["z_mean"].abs() < 5).all()
    assert len(embedded_images(page)) == 2
