"""Every registered estimator variant x cost x component against exact references.

For each case we run R seeds of N samples and compute three z-scores, each in units of its
own standard error, and require |z| < Z = 5:
  - mean:      mean over seeds of the N-sample estimate vs the exact gradient,
               SE = sqrt(exact_var / (N R));
  - pooled:    mean over seeds of the within-seed sample variance vs the exact per-sample
               variance, SE = sd(sample_var) / sqrt(R);
  - spread:    variance across seeds of the estimate vs exact_var / N,
               SE = sd((e - mean e)^2) / sqrt(R).
Estimators with sample-estimated baselines or coefficients have an O(1/N) relative excess in
the last two (their module docstrings give it); at N = 2000 it is far below one SE.
The same function must reject deliberately wrong estimators (biased, scaled, extra noise),
which are compared against the references of the estimator they impersonate.

Cases are generated from the registry (every estimator with every option combination, every
cost), so a new estimator or cost is checked without changes here
(``test_new_estimator_and_cost_are_picked_up_automatically``).
One fused serial kernel per cost serves every variant (compile time dominates the suite).
"""

import functools
import math

import numpy as np
import pytest
from numba import njit

from harness import exact, registry
from harness.backends import cpu
from harness.base import Cost, Estimator
from harness.rng import uniform_pair

Z = 5.0
N, R = 2000, 400
POINTS = [  # (mu, sigma, k): asymmetric (mu != k), large sigma, small sigma with mu far from k
    (2.0, 1.0, 0.5),
    (0.5, 2.5, 1.0),
    (-1.5, 0.3, 2.0),
]
COMPONENTS = registry.DISTRIBUTIONS["normal"].components


def all_labels() -> tuple:
    """Every registered estimator with every combination of its options."""
    return tuple(label for name in registry.ESTIMATORS for label in registry.variants(name))


def applicable(cost: str) -> tuple:
    c = registry.COSTS[cost]
    return tuple(label for label in all_labels()
                 if not (registry.resolve(label).needs_derivative and c.derivative is None))


def cases():
    return [(label, cost, comp, point)
            for cost in registry.COSTS for label in applicable(cost)
            for comp in COMPONENTS for point in POINTS]


@functools.cache
def run(estimators: tuple, cost: str, point: tuple, n: int = N, r: int = R) -> dict:
    """{(estimator, component): (estimates[r], sample_vars[r])}: one fused kernel per call.
    Serial compiles (3x faster to compile than parallel ones, bitwise the same numbers:
    tests/test_kernel.py)."""
    est, var = cpu.estimate("normal", cost, estimators, COMPONENTS, *point, n, np.arange(r),
                            parallel=False)
    return {(e, c): (est[:, i, j], var[:, i, j])
            for i, e in enumerate(estimators) for j, c in enumerate(COMPONENTS)}


def z_scores(estimator, reference_estimator, cost, component, mu, sigma, k, fused=None,
             n=N, r=R):
    e, v = run(fused or (estimator,), cost, (mu, sigma, k), n, r)[(estimator, component)]
    grad, exact_var, _ = exact.reference(reference_estimator, component, cost, mu, sigma, k)
    if exact_var <= 1e-24 * (1.0 + grad * grad):
        # a zero-variance estimator (delta_cv on a quadratic cost: the control variate is f
        # itself): every estimate must be the gradient up to rounding
        close = np.allclose(e, grad, rtol=1e-9, atol=1e-9) and np.all(v < 1e-12 * (1 + grad**2))
        return {"exact": 0.0 if close else math.inf}
    spread = (e - e.mean()) ** 2
    return {
        "mean": (e.mean() - grad) / math.sqrt(exact_var / (n * r)),
        "pooled": (v.mean() - exact_var) / (v.std(ddof=1) / math.sqrt(r)),
        "spread": (e.var(ddof=1) - exact_var / n) / (spread.std(ddof=1) / math.sqrt(r)),
    }


@pytest.mark.parametrize("estimator,cost,component,point", cases())
def test_estimator_matches_exact_mean_and_variance(estimator, cost, component, point):
    z = z_scores(estimator, estimator, cost, component, *point, fused=applicable(cost))
    assert max(abs(v) for v in z.values()) < Z, z


def test_every_variant_has_an_exact_variance():
    for cost in registry.COSTS:
        for label in applicable(cost):
            for comp in COMPONENTS:
                _, var, source = exact.reference(label, comp, cost, *POINTS[0])
                assert source in ("closed_form", "quadrature") and math.isfinite(var), \
                    (label, cost, comp, source)


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


@njit
def mv_wrong_constant(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    # measure-valued with the Rayleigh constant 1/sigma instead of 1/(sigma sqrt(2 pi))
    u0, u1 = uniform_pair(key0, key1, index, 1)
    w = math.sqrt(-2.0 * math.log(u0))
    if component == 0:
        return (cost(mu + sigma * w, k) - cost(mu - sigma * w, k)) / sigma
    return (cost(mu + sigma * w, k) - f) / sigma


WRONG = {
    "shifted_score": (shifted_score, "score_function"),
    "scaled_pathwise": (scaled_pathwise, "pathwise"),
    "noisy_pathwise": (noisy_pathwise, "pathwise"),
    "mv_wrong_constant": (mv_wrong_constant, "measure_valued"),
}


@pytest.fixture
def wrong_registered(monkeypatch):
    for name, (fn, impersonates) in WRONG.items():
        real = registry.ESTIMATORS[impersonates]
        monkeypatch.setitem(registry.ESTIMATORS, name, Estimator(
            name=name, per_sample=fn, needs_derivative=real.needs_derivative,
            evals_per_sample=1, description="deliberately wrong", extra_randomness=True))
    registry._resolve.cache_clear()
    yield
    registry._resolve.cache_clear()


ASYMMETRIC = (0.5, 2.5, -1.0)
ZERO_MU_GRADIENT = (1.0, 0.7, 1.0)  # mu = k: a mean test alone cannot see a scale error here


@pytest.mark.parametrize("wrong,component,point", [
    (wrong, component, point)
    for wrong in sorted(WRONG) for component in ("mu", "sigma")
    for point in (ASYMMETRIC, ZERO_MU_GRADIENT)
    # a shifted score is biased by 0.05 E[f] (mu) and 0.1 E[f eps] (sigma): at mu = k the
    # latter is 0 and the bias ~1e-3 of the gradient, below what R x N samples resolve
    if not (wrong == "shifted_score" and point == ZERO_MU_GRADIENT and component == "sigma")
    # at mu = k the coupled mu-term of a quadratic cost is exactly 0 whatever its constant
    and not (wrong == "mv_wrong_constant" and point == ZERO_MU_GRADIENT and component == "mu")
])
def test_same_check_rejects_wrong_estimators(wrong_registered, wrong, component, point):
    z = z_scores(wrong, WRONG[wrong][1], "quadratic", component, *point)
    assert max(abs(v) for v in z.values()) > Z, z


# ---- baselines never bias the estimate -------------------------------------------------------

BASELINES = [label for label in all_labels()
             if label.startswith(("score_function", "delta_cv"))]
FAR_FROM_ZERO = (1.0, 1.0, -1.0)      # quadratic: gradient (4, 2), per-sample sd ~ 10


@njit
def self_mean_baseline(component, cost, k, mu, sigma, eps, f, df, key0, key1, index, consts):
    # wrong: a "mean" baseline that includes sample i itself (the biased, tempting choice):
    # accumulated like the leave-one-out one, but b = mean over all N samples
    s = eps / sigma if component == 0 else (eps * eps - 1.0) / sigma
    ft = f - consts[0]
    return ft * s, ft, s, ft * ft * s * s, ft * s * s, s * s


def _finalize_self_mean(means, variances, n, consts):
    fs, f_mean, s_mean = means[:, 0], means[:, 1], means[:, 2]
    estimate = fs - f_mean * s_mean
    return estimate, np.full_like(estimate, np.nan)


def test_baselines_are_unbiased_at_small_n_and_a_self_including_mean_is_not(monkeypatch):
    """At N = 4 an O(1/N) bias would be 25% of the gradient; R = 40000 seeds resolve ~1%."""
    n, r = 4, 40_000
    base = registry.ESTIMATORS["score_function"]
    monkeypatch.setitem(registry.ESTIMATORS, "self_mean_baseline", Estimator(
        name="self_mean_baseline", per_sample=self_mean_baseline, needs_derivative=False,
        evals_per_sample=1, description="deliberately biased", n_moments=6,
        finalize=_finalize_self_mean, n_consts=1, prepare=base.configure("mean").prepare))
    registry._resolve.cache_clear()
    try:
        labels = (*BASELINES, "self_mean_baseline")
        results = run(labels, "quadratic", FAR_FROM_ZERO, n, r)
        for label in labels:
            for comp in COMPONENTS:
                e, _ = results[(label, comp)]
                grad = exact.reference("score_function", comp, "quadratic", *FAR_FROM_ZERO)[0]
                z = (e.mean() - grad) / (e.std(ddof=1) / math.sqrt(r))
                if label == "self_mean_baseline":
                    assert abs(z) > Z, (label, comp, z)   # biased by -grad / N
                else:
                    assert abs(z) < Z, (label, comp, z)
    finally:
        registry._resolve.cache_clear()


# ---- the variance of the N-sample estimate falls like 1/N -------------------------------------

@pytest.mark.parametrize("cost", ["quadratic", "exp"])
def test_variance_of_the_estimate_falls_like_one_over_n(cost):
    """N Var[estimate] -> exact_var: at each N within Z SE of exact_var, plus the O(1/N)
    relative excess (an O(1/N^2) term in Var[estimate]) that sample-estimated baselines and
    coefficients add, bounded by 25 exact_var / N; for the others, whose N Var is exact at
    every N, the log-log slope within 0.1 of -1.  Zero-variance estimators (delta_cv on a
    quadratic cost) are checked elsewhere."""
    point, r = POINTS[0], 1000
    labels = applicable(cost)
    ns = (10, 100, 1000, 10_000)
    per_n = {n: run(labels, cost, point, n, r) for n in ns}
    for label in labels:
        for comp in COMPONENTS:
            _, v_exact, _ = exact.reference(label, comp, cost, *point)
            if v_exact < 1e-20:
                continue
            scaled = []
            for n in ns:
                e, _ = per_n[n][(label, comp)]
                var = e.var(ddof=1)
                se = ((e - e.mean()) ** 2).std(ddof=1) / math.sqrt(r)
                excess = 25.0 * v_exact / n if registry.resolve(label).n_moments else 0.0
                assert v_exact / n - Z * se < var < v_exact / n + excess + Z * se, \
                    (label, comp, n, var * n, v_exact)
                if label == "score_function[baseline=mean]":
                    # the leave-one-out estimate is a sample covariance: its exact variance
                    exact_n = (v_exact + loo_excess(cost, comp, point) / (n - 1)) / n
                    assert abs(var - exact_n) < Z * se, (comp, n, var, exact_n)
                scaled.append(var)
            if not registry.resolve(label).n_moments:  # no excess: a clean -1 slope
                slope = np.polyfit(np.log(ns), np.log(scaled), 1)[0]
                assert abs(slope + 1.0) < 0.1, (label, comp, slope)


def loo_excess(cost, comp, point):
    """Var[f] E[s^2] + E[f s]^2: N Var[LOO estimate] = V + this / (N - 1)."""
    from harness.quadrature import hermite_rule, values
    mu, sigma, k = point
    eps, w = hermite_rule()
    f = values(registry.COSTS[cost].value, mu + sigma * eps, k)
    s = eps / sigma if comp == "mu" else (eps * eps - 1) / sigma
    var_f = w @ (f * f) - (w @ f) ** 2
    return var_f * (w @ (s * s)) + (w @ (f * s)) ** 2


# ---- a new estimator or cost needs only its module and registry line -------------------------

@njit
def antithetic_score(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    """Score function averaged over the antithetic pair eps, -eps (unbiased)."""
    f_minus = cost(mu - sigma * eps, k)
    if component == 0:
        return (f - f_minus) * eps / (2.0 * sigma)
    return (f + f_minus) * (eps * eps - 1.0) / (2.0 * sigma)


@njit
def quartic_value(x, k):
    return x * x * x * x


@njit
def quartic_derivative(x, k):
    return 4.0 * x * x * x


QUARTIC = Cost(
    name="quartic", params=(), value=quartic_value, derivative=quartic_derivative,
    exact_mean=lambda mu, sigma, k=0.0: mu**4 + 6 * mu**2 * sigma**2 + 3 * sigma**4,
    exact_grad=lambda mu, sigma, k=0.0: {"mu": 4 * mu**3 + 12 * mu * sigma**2,
                                         "sigma": 12 * mu**2 * sigma + 12 * sigma**3},
    description="x^4 (test plug-in)")


def test_new_estimator_and_cost_are_picked_up_automatically(monkeypatch):
    before = set(cases())
    monkeypatch.setitem(registry.ESTIMATORS, "antithetic_score", Estimator(
        name="antithetic_score", per_sample=antithetic_score, needs_derivative=False,
        evals_per_sample=2, description="test plug-in"))
    monkeypatch.setitem(registry.COSTS, "quartic", QUARTIC)
    registry._resolve.cache_clear()
    try:
        new = [c for c in cases() if c not in before]
        assert {(c[0], c[1]) for c in new} >= {("antithetic_score", "quadratic"),
                                               ("score_function", "quartic"),
                                               ("antithetic_score", "quartic")}
        # the same conformance check, on the new entries (one fused kernel for all of them)
        fused = ("antithetic_score", "score_function", "pathwise")
        for label, cost, comp, point in new:
            if cost in ("quadratic", "quartic") and label in fused and point == POINTS[0]:
                z = z_scores(label, label, cost, comp, *point, fused=fused)
                assert max(abs(v) for v in z.values()) < Z, (label, cost, comp, z)
    finally:
        registry._resolve.cache_clear()


# ---- exact references -------------------------------------------------------------------------

@pytest.mark.parametrize("cost", sorted(registry.COSTS))
@pytest.mark.parametrize("point", POINTS)
def test_closed_forms_agree_with_quadrature(cost, point):
    c = registry.COSTS[cost]
    assert c.exact_variance, f"{cost} has no closed-form variances"
    for (est, comp), closed in c.exact_variance.items():
        mean, var = exact.quadrature_moments(est, comp, cost, *point)
        assert mean == pytest.approx(c.exact_grad(*point)[comp], rel=1e-9, abs=1e-10)
        assert var == pytest.approx(closed(*point), rel=1e-9)


@pytest.mark.parametrize("cost", sorted(registry.COSTS))
def test_quadrature_references_reproduce_the_exact_gradient(cost):
    """Every variant's own reference integrates to the closed-form gradient: a check of its
    quadrature rule (Rayleigh, Maxwell, 2-D coupled) and of its unbiasedness algebra."""
    c = registry.COSTS[cost]
    for label in applicable(cost):
        est = registry.resolve(label)
        if est.exact_moments is None:
            continue
        for point in POINTS:
            for comp in COMPONENTS:
                mean, var, _ = est.exact_moments(c, comp, *point)
                grad = c.exact_grad(*point)[comp]
                assert mean == pytest.approx(grad, rel=1e-8, abs=1e-9), (label, comp, point)
                assert var >= 0


def test_exact_optimal_baseline_minimises_the_variance():
    for cost in ("quadratic", "exp", "cos"):
        for comp in COMPONENTS:
            v = {b: exact.reference(f"score_function[baseline={b}]", comp, cost, *POINTS[0])[1]
                 for b in ("none", "mean", "exact_optimal")}
            assert v["exact_optimal"] <= min(v["none"], v["mean"]) * (1 + 1e-12), (cost, comp, v)


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


def test_second_derivatives_by_finite_differences():
    for c in registry.COSTS.values():
        if c.second_derivative is None:
            continue
        for x in (-1.3, 0.2, 0.9):
            for k in (0.5, 2.0):
                h = 1e-6
                fd = (c.derivative(x + h, k) - c.derivative(x - h, k)) / (2 * h)
                assert c.second_derivative(x, k) == pytest.approx(fd, rel=1e-6, abs=1e-6)


# ---- labels and options -------------------------------------------------------------------------

def test_labels_round_trip_and_resolve_to_variants():
    for label in all_labels():
        name, options = registry.parse_label(label)
        assert registry.label(name, options) == label
        assert registry.resolve(label).name == label
    assert registry.resolve("measure_valued[coupling=false]").per_sample is not \
        registry.resolve("measure_valued").per_sample
    assert registry.resolve("score_function[baseline=optimal]").evals_per_sample == 2
