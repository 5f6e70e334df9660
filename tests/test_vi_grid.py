"""ELBO grids: config validation (one-line errors with file:line: key), run -> report."""

import pathlib
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import run_grid

from harness.cli import main
from harness.config import load_grid, parse_grid
from harness.errors import ConfigError
from harness.results import read_results

GOOD = """\
name: t
problem:
  kind: elbo
  target: gaussian
  mean: [0.5, -1.0, 2.0]
  cov: [[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]]
  family: full
  q:
    mu: [0.0, 0.0, 0.0]
    L: [[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [-0.1, 0.3, 1.2]]
estimators: [reparam, stl, {name: score_function, baseline: mean}]
n_samples: [10, 1e3]
seeds: 20
"""


def test_good_grid_parses():
    g = parse_grid(GOOD, "g.yaml")
    assert g.kind == "elbo" and g.problem.modes == ("estimate",) and g.n_samples == (10, 1000)
    assert g.problem.target == "gaussian" and g.problem.optimizer is None
    (p,) = g.problem.points
    assert (p.target, p.family, p.dim) == ("gaussian", "full", 3)
    assert [e.label for e in g.estimators] == ["reparam", "stl", "score_function[baseline=mean]"]
    mu, C = p.q.resolve(p.family, p.dim, None)
    assert C[2, 1] == 0.3 and mu.shape == (3,)


def test_gaussian_cost_grids_unaffected():
    g = load_grid(pathlib.Path(__file__).parent.parent / "examples" / "reparam_trick.yaml")
    assert g.kind == "expectation" and g.problem.distribution == "normal"


BAD = [
    # (replace old -> new in GOOD, expected line, key, words in the message)
    ("L: [[1.0, 0.0, 0.0]", "L: [[-1.0, 0.0, 0.0]", 10, "problem.q.L[0]", "must be positive"),
    ("[0.2, 0.8, 0.0]", "[0.2, 0.8, 0.1]", 10, "problem.q.L[1]", "above the diagonal"),
    ("[0.0, 0.2, 1.5]]", "[0.0, 0.2, -1.5]]", 6, "problem.cov", "not positive definite"),
    ("[0.3, 1.0, 0.2]", "[0.3, 1.0]", 6, "problem.cov[1]", "row has 2 entries"),
    ("[[2.0, 0.3, 0.0]", "[[2.0, 0.0, 0.0]", 6, "problem.cov", "not symmetric"),
    ("mu: [0.0, 0.0, 0.0]", "mu: [0.0, 0.0]", 9, "problem.q.mu", "dimension 3"),
    ("family: full", "family: diag", 10, "problem.q.L", "another family"),
    ("target: gaussian", "target: gausian", 4, "problem.target", "did you mean 'gaussian'"),
    ("kind: elbo", "kind: elb", 3, "problem.kind", "unknown problem kind"),
    ("reparam, stl", "reparm, stl", 11, "estimators[0]", "did you mean 'reparam'"),
    ("baseline: mean", "baseline: loo", 11, "estimators[2].baseline",
     "use one of: none, mean, optimal, exact_optimal"),
    ("seeds: 20", "seeds: 20\nmode: optimize", 12, "n_samples", "only used with mode: estimate"),
    ("seeds: 20", "seeds: 20\noptimizer: {lr: 0.1}", 14, "optimizer", "mode: optimize"),
]


@pytest.mark.parametrize("old,new,line,key,words", BAD)
def test_bad_grids_give_one_line_errors(tmp_path, old, new, line, key, words):
    assert old in GOOD
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: {key}: "), msg
    assert words in msg and "(fix: " in msg and "\n" not in msg
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


@pytest.mark.parametrize("text,words", [
    ("target: ripple\n  family: diag", "missing required key"),                    # no dim
    ("target: logistic_regression\n  dim: 5\n  family: diag", "has dimension 31"),
    ("target: banana\n  dim: 1\n  family: full", "dim >= 2"),
    ("target: ripple\n  dim: [2, 3]\n  family: [diag, full]\n"
     "  q: {mu: [0, 0], L: [[1, 0], [0, 1]]}", "single family"),
    ("target: ripple\n  dim: 2\n  family: full\n  q: optimum", "no known optimum"),
])
def test_more_bad_problems(text, words):
    grid = f"problem:\n  kind: elbo\n  {text}\nestimators: [reparam]\nn_samples: 10\nseeds: 2\n"
    with pytest.raises(ConfigError) as err:
        parse_grid(grid, "g.yaml")
    assert words in str(err.value), str(err.value)


def test_optimizer_checks():
    base = ("problem: {kind: elbo, target: ripple, dim: 2, family: diag}\n"
            "estimators: [{name: score_function, baseline: mean}]\nmode: optimize\nseeds: 2\n")
    with pytest.raises(ConfigError, match="samples >= 2"):
        parse_grid(base + "optimizer: {samples: 1}\n", "g.yaml")
    with pytest.raises(ConfigError, match="exceeds steps"):
        parse_grid(base + "optimizer: {steps: 10, record_every: 20}\n", "g.yaml")
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        parse_grid(base + "optimizer: {l_r: 0.1}\n", "g.yaml")
    g = parse_grid(base + "optimizer: {name: sgd, lr: 1e-2, steps: 1e3, schedule: cosine}\n",
                   "g.yaml")
    o = g.problem.optimizer
    assert o.steps == 1000 and o.name == "sgd" and o.schedule == "cosine" and g.n_samples == ()


SMALL = """\
name: small
problem:
  kind: elbo
  target: gaussian
  target_seed: 3
  dim: [1, 2]
  family: [diag, full]
  q: {mu: 0.5, scale: 0.8}
mode: [estimate, optimize]
estimators: [reparam, stl, {name: score_function, baseline: mean}]
n_samples: [10, 100]
optimizer: {name: adam, lr: 0.05, steps: 40, samples: 4, record_every: 10, var_samples: 50}
seeds: 6
"""


def test_run_and_report_end_to_end(tmp_path):
    output, _ = run_grid(tmp_path, SMALL, "small.yaml")
    grid, out = tmp_path / "small.yaml", tmp_path / "out"
    runner = CliRunner()
    # 4 points x (2 N + 3 estimators) cells
    assert "20 cells (20 computed" in output
    df = read_results(out)
    assert set(df["mode"]) == {"estimate", "optimize"}
    assert set(df["problem"]) == {"elbo"} and df["point"].notna().all()
    # distribution is the variational family; the expectation kind's columns stay empty
    assert set(df["distribution"]) == {"diag", "full"}
    assert df["cost"].isna().all() and df["mu"].isna().all() and df["k"].isna().all()
    est = df[df["mode"] == "estimate"]
    # rows: seeds x estimators x components, components per point: d + (d or d(d+1)/2)
    per_point = {(1, "diag"): 2, (1, "full"): 2, (2, "diag"): 4, (2, "full"): 5}
    for (dim, fam), comps in per_point.items():
        sel = est[(est["dim"] == dim) & (est["distribution"] == fam)]
        assert len(sel) == 2 * 6 * 3 * comps
    assert set(est[(est["dim"] == 2) & (est["distribution"] == "full")]["param"]) == {
        "mu[0]", "mu[1]", "L[0,0]", "L[1,0]", "L[1,1]"}
    assert est["exact_grad"].notna().all() and est["exact_var"].notna().all()
    opt = df[df["mode"] == "optimize"]
    assert sorted(opt["step"].unique()) == [0, 10, 20, 30, 40]
    assert opt["exact_elbo"].notna().all() and opt["dist_opt"].notna().all()
    # the whole directory reads with plain pandas too
    assert len(pd.read_parquet(out / "results")) == len(df)
    # rerun skips every cell
    r = runner.invoke(main, ["run", str(grid), "--out", str(out)])
    assert "(0 computed, 20 skipped)" in r.output
    r = runner.invoke(main, ["report", str(out)])
    assert r.exit_code == 0, r.output
    # the common page's per-component figures, then the ELBO section's
    figures = ["variance_vs_n.png", "mean_vs_n.png", "elbo_variance_vs_n.png",
               "elbo_variance_vs_dim.png", "elbo_vs_step.png", "grad_var_vs_step.png",
               "dist_vs_step.png"]
    for name in ("index.html", "summary.csv", "trace_summary.csv", *figures):
        assert (out / "report" / name).is_file(), name
    page = (out / "report" / "index.html").read_text()
    assert re.findall(r'<img src="data:image/png;base64,[^"]+" alt="[^"]*" data-file="([^"]+)"',
                      page) == figures
    # The seed-000 tables: one per point and component of that point, each titled by both
    # (diag and full points of one dim are different points), none empty.
    seed000 = page.split("Seed-000 table")[1]
    titles = re.findall(r"<h3>([^<]*)</h3>", seed000)
    expected = [f"gradient wrt {c}; gaussian, {fam}, d={dim}: target_seed=3"
                for (dim, fam), comps in per_point.items()
                for c in sorted(set(est[(est["dim"] == dim) & (est["distribution"] == fam)]
                                    ["param"]))]
    assert sorted(titles) == sorted(expected)
    assert seed000.count("<tbody><tr") == len(titles)    # every table has rows


def test_estimate_columns_match_the_library(tmp_path):
    """The stored estimates are exactly the library's (same seeds, same streams)."""
    from harness.kinds.elbo import problem_of
    from harness.runner import compute_cell, expand_cells
    from harness.vi import api


    text = SMALL.replace("mode: [estimate, optimize]", "mode: estimate")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("optimizer"))
    g = parse_grid(text, "g.yaml")
    cell = expand_cells(g)[-1]
    assert (cell.point["dim"], cell.point["family"], cell.n_samples) == (2, "full", 100)
    table = compute_cell(cell).to_pandas()
    prob = problem_of(cell)
    est, var, _ = api.estimate(prob, [(e.name, e.options) for e in cell.estimators],
                               cell.n_samples, cell.seeds)
    np.testing.assert_array_equal(table["estimate"].to_numpy(), est.ravel())
    np.testing.assert_array_equal(table["sample_var"].to_numpy(), var.ravel())


@pytest.mark.parametrize("problem,extra,words", [
    ("target: logistic_regression\n  family: diag", "n_samples: 10\n", "gaussian target only"),
    ("target: gaussian\n  target_seed: 1\n  dim: [3, 10]\n  family: diag", "n_samples: 10\n",
     "dim 10: the exact b* quadrature needs 5^10 points"),
    ("target: gaussian\n  target_seed: 1\n  dim: 2\n  family: diag",
     "mode: optimize\noptimizer: {steps: 10}\n", "not available with mode: optimize"),
])
def test_exact_optimal_baseline_where_infeasible_is_a_config_error(problem, extra, words):
    grid = (f"problem:\n  kind: elbo\n  {problem}\n"
            f"estimators: [reparam, {{name: score_function, baseline: exact_optimal}}]\n"
            f"{extra}seeds: 2\n")
    with pytest.raises(ConfigError) as err:
        parse_grid(grid, "g.yaml")
    msg = str(err.value)
    assert "estimators[1]" in msg and words in msg and "\n" not in msg, msg


def test_report_of_many_points_that_no_numeric_column_tells_apart(tmp_path):
    """7 target seeds at one dim: more points than the page draws as panels by default, but
    no numeric column to draw them against.  The report shows every point, one per row."""
    from harness.report import build_report
    from harness.runner import run_grid

    seeds = list(range(1, 8))
    grid = parse_grid(f"problem: {{kind: elbo, target: gaussian, target_seed: {seeds}, "
                      "dim: 1, family: diag}\nestimators: [reparam]\nn_samples: [10, 20]\n"
                      "seeds: 3\n", tmp_path / "g.yaml")
    run_grid(grid, tmp_path, progress=False)
    page = build_report(tmp_path).read_text()
    assert re.findall(r'data-file="([^"]+)"', page)[:2] == ["variance_vs_n.png", "mean_vs_n.png"]
    titles = re.findall(r"<h3>([^<]*)</h3>", page.split("Seed-000 table")[1])
    assert titles == [f"gradient wrt {c}; gaussian, diag, d=1: target_seed={s}"
                      for s in seeds for c in ("mu[0]", "log_sigma[0]")]
