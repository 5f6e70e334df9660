"""Every registered estimator x cost x component against exact references.

For each case we run R seeds of N samples and compute three z-scores, each in units of its
own standard error, and require |z| < Z = 5:
  - mean:      mean over seeds of the N-sample estimate vs the exact gradient,
               SE = sqrt(exact_var / (N R));
  - pooled:    mean over seeds of the within-seed sample variance vs the exact per-sample
               variance, SE = sd(sample_var) / sqrt(R);
  - spread:    variance across seeds of the estimate vs exact_var / N,
               SE = sd((e - mean e)^2) / sqrt(R).
The same function must reject deliberately wrong estimators (biased, scaled, extra noise),
which are compared against the references of the estimator they impersonate.
"""

import functools
import math

import numpy as np
import pytest
from numba import njit

from harness import exact, registry
from harness.backends import cpu
from harness.base import Estimator
from harness.rng import uniform_pair

Z = 5.0
N, R = 2000, 400
POINTS = [  # (mu, sigma, k): the seed-000 point, asymmetric ones, small and large sigma
    (2.0, 1.0, 0.0),
    (0.5, 2.5, -1.0),
    (-1.5, 0.3, 2.0),
]


@functools.cache
def run(estimators: tuple, cost: str, point: tuple) -> dict:
    """{(estimator, component): (estimates[R], sample_vars[R])}: one fused kernel per call."""
    components = registry.DISTRIBUTIONS["normal"].components
    est, var = cpu.estimate("normal", cost, estimators, components, *point, N, np.arange(R))
    return {(e, c): (est[:, i, j], var[:, i, j])
            for i, e in enumerate(estimators) for j, c in enumerate(components)}


def applicable(cost: str) -> tuple:
    c = registry.COSTS[cost]
    return tuple(name for name, e in registry.ESTIMATORS.items()
                 if not (e.needs_derivative and c.derivative is None))


def z_scores(estimator, reference_estimator, cost, component, mu, sigma, k, fused=None):
    e, v = run(fused or (estimator,), cost, (mu, sigma, k))[(estimator, component)]
    grad, exact_var, _ = exact.reference(reference_estimator, component, cost, mu, sigma, k)
    spread = (e - e.mean()) ** 2
    return {
        "mean": (e.mean() - grad) / math.sqrt(exact_var / (N * R)),
        "pooled": (v.mean() - exact_var) / (v.std(ddof=1) / math.sqrt(R)),
        "spread": (e.var(ddof=1) - exact_var / N) / (spread.std(ddof=1) / math.sqrt(R)),
    }


CASES = [
    (est, cost, comp, point)
    for est, e in registry.ESTIMATORS.items()
    for cost, c in registry.COSTS.items()
    if not (e.needs_derivative and c.derivative is None)
    for comp in registry.DISTRIBUTIONS["normal"].components
    for point in POINTS
]


@pytest.mark.parametrize("estimator,cost,component,point", CASES)
def test_estimator_matches_exact_mean_and_variance(estimator, cost, component, point):
    z = z_scores(estimator, estimator, cost, component, *point, fused=applicable(cost))
    assert max(abs(v) for v in z.values()) < Z, z


# ---- deliberately wrong estimators: the same check must reject each ------------------------

@njit
def shifted_score(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    s = eps + 0.05
    return f * s / sigma if component == 0 else f * (s * s - 1.0) / sigma


@njit
def scaled_pathwise(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    return 1.03 * (df if component == 0 else df * eps)


@njit
def noisy_pathwise(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    # unbiased (the added noise has mean 0) but with extra variance 2 * 0.6^2 sigma^2
    u0, u1 = uniform_pair(key0, key1, index, 1)
    noise = 0.6 * sigma * (u0 - 0.5) * math.sqrt(12.0) * math.sqrt(2.0)
    return (df if component == 0 else df * eps) + noise


WRONG = {
    "shifted_score": (shifted_score, "score_function"),
    "scaled_pathwise": (scaled_pathwise, "pathwise"),
    "noisy_pathwise": (noisy_pathwise, "pathwise"),
}


@pytest.fixture
def wrong_registered(monkeypatch):
    for name, (fn, impersonates) in WRONG.items():
        real = registry.ESTIMATORS[impersonates]
        monkeypatch.setitem(registry.ESTIMATORS, name, Estimator(
            name=name, per_sample=fn, needs_derivative=real.needs_derivative,
            evals_per_sample=1, description="deliberately wrong", extra_randomness=True))


ASYMMETRIC = (0.5, 2.5, -1.0)
ZERO_MU_GRADIENT = (1.0, 0.7, 1.0)  # mu = k: a mean test alone cannot see a scale error here


@pytest.mark.parametrize("wrong,component,point", [
    (wrong, component, point)
    for wrong in sorted(WRONG) for component in ("mu", "sigma")
    for point in (ASYMMETRIC, ZERO_MU_GRADIENT)
    # a shifted score is biased by 0.05 E[f] (mu) and 0.1 E[f eps] (sigma): at mu = k the
    # latter is 0 and the bias ~1e-3 of the gradient, below what R x N samples resolve
    if not (wrong == "shifted_score" and point == ZERO_MU_GRADIENT and component == "sigma")
])
def test_same_check_rejects_wrong_estimators(wrong_registered, wrong, component, point):
    z = z_scores(wrong, WRONG[wrong][1], "quadratic", component, *point)
    assert max(abs(v) for v in z.values()) > Z, z


# ---- exact references -------------------------------------------------------------------------

@pytest.mark.parametrize("cost", sorted(registry.COSTS))
@pytest.mark.parametrize("point", POINTS)
def test_closed_forms_agree_with_quadrature(cost, point):
    c = registry.COSTS[cost]
    assert c.exact_variance, f"{cost} has no closed-form variances"
    for (est, comp), closed in c.exact_variance.items():
        mean, var = exact.quadrature_moments(est, comp, cost, *point)
        assert mean == pytest.approx(c.exact_grad(*point)[comp], rel=1e-10, abs=1e-10)
        assert var == pytest.approx(closed(*point), rel=1e-10)


def test_seed_000_numbers():
    # the seed: q = N(2, 1), f = x^2: gradient 4, per-sample variances 87 and 4
    assert exact.reference("score_function", "mu", "square", 2.0, 1.0) == (4.0, 87.0, "closed_form")
    assert exact.reference("pathwise", "mu", "square", 2.0, 1.0) == (4.0, 4.0, "closed_form")


def test_exact_mean_gradient_by_finite_differences():
    for c in registry.COSTS.values():
        for mu, sigma, k in POINTS:
            h = 1e-5
            d_mu = (c.exact_mean(mu + h, sigma, k) - c.exact_mean(mu - h, sigma, k)) / (2 * h)
            d_sigma = (c.exact_mean(mu, sigma + h, k) - c.exact_mean(mu, sigma - h, k)) / (2 * h)
            g = c.exact_grad(mu, sigma, k)
            assert d_mu == pytest.approx(g["mu"], rel=1e-6, abs=1e-8)
            assert d_sigma == pytest.approx(g["sigma"], rel=1e-6, abs=1e-8)
