"""``mode: optimize`` of the expectation kind (``harness.kinds.expectation_optimize``).

The statistical check uses a problem whose trajectory law is known exactly: q = N(mu, sigma^2),
f = (x - k)^2, plain SGD on mu with step lr and M samples per step.  With d = mu - k the
pathwise estimate is g = 2 (d + sigma ebar) (ebar: the mean of M standard normals), so

    d_{t+1} = a d_t - 2 lr sigma ebar_t,   a = 1 - 2 lr,
    d_T ~ Normal(a^T d_0, 4 lr^2 sigma^2 / M * sum_{j<T} a^(2j))   (independent ebar_t).

Every unbiased estimator has the same E[d_T] (the update is linear in g and E[g | d] = 2 d).
Over R seeds the mean and the variance of d_T are tested in standard errors at Z = 5 (d_T is
Gaussian, so SE(s^2) = V sqrt(2 / (R - 1))); the same checks reject a pathwise estimator scaled
by 1.1 (mean) and steps that reuse one random stream (variance).
"""

import math

import numpy as np
import pytest
from helpers import run_grid
from numba import njit

from harness import exact, registry
from harness.axes import Estimator
from harness.config import parse_grid
from harness.errors import ConfigError
from harness.kinds import expectation_optimize as eo
from harness.vi.api import OptimizerSpec

Z = 5.0
R, STEPS, LR, M = 400, 10, 0.1, 2
MU0, SIGMA, K = 20.0, 1.0, 0.0


def final_d(estimator, mu0=MU0, lr=LR, seeds=range(R)):
    opt = OptimizerSpec(name="sgd", lr=lr, steps=STEPS, samples=M, record_every=STEPS)
    run = eo.optimize("normal", "quadratic", estimator, ("mu",),
                      {"mu": mu0, "sigma": SIGMA, "k": K}, opt, list(seeds))
    assert run["theta"].shape == (len(seeds), 2, 1)
    assert (run["theta"][:, 0, 0] == mu0).all()
    return run["theta"][:, -1, 0] - K


def law(mu0=MU0, lr=LR):
    a = 1.0 - 2.0 * lr
    mean = a**STEPS * (mu0 - K)
    var = 4.0 * lr**2 * SIGMA**2 / M * sum(a ** (2 * j) for j in range(STEPS))
    return mean, var


def z_mean_var(d):
    mean, var = law()
    z_mean = (d.mean() - mean) / math.sqrt(var / d.size)
    z_var = (d.var(ddof=1) - var) / (var * math.sqrt(2.0 / (d.size - 1)))
    return z_mean, z_var


def test_pathwise_trajectory_has_the_exact_mean_and_variance():
    z_mean, z_var = z_mean_var(final_d("pathwise"))
    assert abs(z_mean) < Z and abs(z_var) < Z, (z_mean, z_var)


def test_score_function_trajectory_has_the_exact_mean():
    # a smaller start and step: the score function's noise grows like d^2 (at d = 20 and
    # lr = 0.1 the runs diverge)
    d = final_d("score_function", mu0=1.0, lr=0.03)
    mean, _ = law(mu0=1.0, lr=0.03)
    z = (d.mean() - mean) / (d.std(ddof=1) / math.sqrt(d.size))
    assert abs(z) < Z, z


@njit
def pathwise_times_1_1(component, s, family, cost, consts):
    return 1.1 * s.df * family.dx_dtheta(component, s.theta, s.e)


def test_the_mean_check_rejects_a_scaled_estimator(monkeypatch):
    real = registry.ESTIMATORS["pathwise"]
    monkeypatch.setitem(registry.ESTIMATORS, "pathwise_times_1_1", Estimator(
        name="pathwise_times_1_1", per_sample=pathwise_times_1_1, evals_per_sample=1,
        description="deliberately wrong", needs=real.needs, families=real.families))
    registry._resolve.cache_clear()
    try:
        z_mean, _ = z_mean_var(final_d("pathwise_times_1_1"))
    finally:
        registry._resolve.cache_clear()
    assert abs(z_mean) > Z, z_mean


def test_the_variance_check_rejects_steps_that_share_one_stream(monkeypatch):
    monkeypatch.setattr(eo, "step_key", lambda seed, step: np.uint64(seed + (1 << 32)))
    _, z_var = z_mean_var(final_d("pathwise"))
    assert z_var > Z, z_var


def test_step_keys_never_meet_an_estimate_cells_stream_or_each_other():
    keys = {int(eo.step_key(s, i)) for s in (0, 1, 2**32 - 1) for i in range(3)}
    assert len(keys) == 9 and all(k >> 32 >= 1 for k in keys)
    with pytest.raises(Exception, match="out of range"):
        eo.optimize("normal", "quadratic", "pathwise", ("mu",), {"mu": 0.0, "sigma": 1.0,
                    "k": 0.0}, OptimizerSpec(steps=2, samples=2, record_every=1), [2**32])


def test_exact_objective_matches_closed_forms():
    assert exact.objective("normal", "quadratic", {"mu": 1.5, "sigma": 0.7, "k": -0.5}) \
        == pytest.approx(2.0**2 + 0.7**2, rel=1e-12)
    p = 1.0 / (1.0 + math.exp(-0.3))
    assert exact.objective("bernoulli", "quadratic", {"logit": 0.3, "k": 0.45}) \
        == pytest.approx(p * 0.55**2 + (1 - p) * 0.45**2, rel=1e-12)


TOY = """\
name: toy_optimize
problem:
  distribution: bernoulli
  cost: quadratic
  logit: 0.0
  k: 0.45
mode: [estimate, optimize]
n_samples: [100]
optimizer: {name: adam, lr: 0.1, steps: 60, samples: 2, record_every: 20}
estimators: [score_function, arm, {name: gumbel_softmax, temperature: 0.5}]
seeds: 4
"""


def test_toy_runs_reruns_bitwise_and_reports(tmp_path):
    from harness.report import build_report

    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    _, df = run_grid(tmp_path / "a", TOY)
    _, again = run_grid(tmp_path / "b", TOY)
    traces = df[df["step"].notna()].sort_values(["estimator", "seed", "step"])
    twice = again[again["step"].notna()].sort_values(["estimator", "seed", "step"])
    # 3 estimators x 4 seeds x records (0, 20, 40, 60)
    assert len(traces) == 3 * 4 * 4 and set(traces["step"]) == {0, 20, 40, 60}
    assert set(traces["mode"]) == {"optimize"} and df.loc[df["step"].isna(), "mode"].isna().all()
    for column in ("theta", "estimate", "objective", "exact_grad", "exact_var"):
        np.testing.assert_array_equal(traces[column].to_numpy(), twice[column].to_numpy())
    # the recorded estimate is the gradient of the step that starts there; none at the end
    assert traces.loc[traces["step"] == 60, "estimate"].isna().all()
    assert traces.loc[traces["step"] < 60, "estimate"].notna().all()
    # exact objective of the recorded logit: the two-point sum, written here
    p = 1.0 / (1.0 + np.exp(-traces["theta"].to_numpy()))
    np.testing.assert_allclose(traces["objective"], p * 0.55**2 + (1 - p) * 0.45**2,
                               rtol=1e-12)
    # the unbiased estimators lower the objective (the optimum is logit -> -inf)
    end = traces[traces["step"] == 60].groupby("estimator")["objective"].median()
    assert end["score_function"] < 0.2525 and end["arm"] < 0.2525
    index = build_report(tmp_path / "a" / "out")
    report = index.parent
    assert (report / "optimize_traces.png").stat().st_size > 10_000
    table = (report / "optimize.csv").read_text()
    assert table.count("\n") == 1 + 3 and "gumbel_softmax[temperature=0.5]" in table
    # the estimate part of the report leaves the trace rows out
    summary = (report / "summary.csv").read_text()
    assert summary.count("\n") == 1 + 3   # one row per estimator (one point, one N, logit)


@pytest.mark.parametrize("extra, message", [
    ("optimizer: {steps: 10}\n", "optimizer is only used with mode: optimize"),
    ("mode: optimize\n", "optimizer"),
    ("mode: optimize\noptimizer: {samples: 1}\n", "samples per step must be >= 2"),
    ("mode: optimize\noptimizer: {var_samples: 100}\n", "var_samples is not used"),
    ("mode: [estimate, optimize]\nbackend: cuda\noptimizer: {steps: 10}\n",
     "mode estimate only"),
    ("mode: sometimes\n", "mode"),
])
def test_bad_optimize_grids_fail_in_one_line(tmp_path, extra, message):
    text = TOY.split("mode:")[0] + "n_samples: [100]\nestimators: [score_function]\nseeds: 2\n"
    if "mode: optimize\n" in extra and "estimate" not in extra:
        text = text.replace("n_samples: [100]\n", "")
    path = tmp_path / "g.yaml"
    path.write_text(text + extra)
    with pytest.raises(ConfigError) as err:
        parse_grid(path.read_text(), path)
    assert message in str(err.value) and "\n" not in str(err.value).strip()


def test_optimize_only_grid_takes_no_n_samples(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(TOY.replace("mode: [estimate, optimize]", "mode: optimize"))
    with pytest.raises(ConfigError, match="n_samples is only used with mode: estimate"):
        parse_grid(path.read_text(), path)
    path.write_text(TOY.replace("mode: [estimate, optimize]", "mode: optimize")
                    .replace("n_samples: [100]\n", ""))
    grid = parse_grid(path.read_text(), path)
    assert grid.problem.modes == ("optimize",) and grid.problem.optimizer.steps == 60
