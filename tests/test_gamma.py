"""The Gamma family: its Marsaglia-Tsang sampler on Philox attempt counters, the implicit
reparameterisation derivative d/da P(a, x), and its exact references, each against scipy
(never against the kernel), with deliberately wrong variants rejected by the same checks.

Statistical checks are z-scores at Z = 5 (moments: mean and variance of the draws in their
standard errors) and a Kolmogorov-Smirnov test whose threshold is the asymptotic 5-sigma
quantile (p < 5.7e-7 rejects)."""

import math

import numpy as np
import pytest
from conformance import FAMILY_POINTS, Z, params, run
from numba import njit
from scipy import integrate, special, stats

from harness import exact, registry
from harness.distributions import gamma
from harness.errors import ConfigError

SHAPES = (0.3, 1.0, 4.5)
P_REJECT = 2.0 * stats.norm.sf(Z)   # the two-sided 5-sigma tail, 5.7e-7
N_DRAWS = 200_000


@njit
def _draws(shape, seed, n, stream, boost):
    """n Gamma(shape, 1) draws of ``seed`` on ``stream``: the family's sampler, or with
    ``boost=False`` a deliberately wrong one for shape < 1 (Gamma(shape + 1) unboosted)."""
    out = np.empty(n)
    theta = (shape if boost else shape + 1.0, 1.0)
    for p in range(n // 2):
        out[2 * p], out[2 * p + 1] = gamma.draw_pair_at(theta, np.uint64(seed), np.uint64(0),
                                                        np.uint64(p), np.uint64(stream))
    return out


def moment_z(x, shape):
    """z-scores of the sample mean and variance against Gamma(shape, 1): mean shape, variance
    shape, Var[(x - m)^2] = mu4 - shape^2 with the fourth central moment 3 shape^2 + 6 shape."""
    n = x.size
    z_mean = (x.mean() - shape) / math.sqrt(shape / n)
    mu4 = 3.0 * shape ** 2 + 6.0 * shape
    z_var = (x.var(ddof=1) - shape) / math.sqrt((mu4 - shape ** 2) / n)
    return z_mean, z_var


@pytest.mark.parametrize("shape", SHAPES)
def test_sampler_moments_and_distribution_match_scipy(shape):
    x = _draws(shape, 11, N_DRAWS, 0, True)
    assert np.all(x > 0.0)
    assert max(abs(z) for z in moment_z(x, shape)) < Z
    assert stats.kstest(x, stats.gamma(shape).cdf).pvalue > P_REJECT


def test_sampler_without_the_boost_is_rejected():
    """Gamma(1.3) where Gamma(0.3) is due: both checks must reject it."""
    x = _draws(0.3, 11, N_DRAWS, 0, False)
    assert max(abs(z) for z in moment_z(x, 0.3)) > Z
    assert stats.kstest(x, stats.gamma(0.3).cdf).pvalue < P_REJECT


def test_sampler_streams_are_pure_and_the_copy_is_independent():
    """A pair's draws do not depend on which other pairs were drawn (counters only), and the
    independent copy stream (2**31) gives other numbers, uncorrelated with the main ones."""
    full = _draws(0.7, 5, 2000, 0, True)
    one = gamma.draw_pair_at((0.7, 1.0), np.uint64(5), np.uint64(0), np.uint64(777),
                             np.uint64(0))
    assert (full[1554], full[1555]) == one
    copy = _draws(0.7, 5, N_DRAWS, 2**31, True)
    main = _draws(0.7, 5, N_DRAWS, 0, True)
    r = np.corrcoef(main, copy)[0, 1]
    assert abs(r) * math.sqrt(N_DRAWS) < Z


# ---- d/da P(a, x) and the implicit reparameterisation ----------------------------------------

def scipy_dpda(a, x, h):
    """Central difference of scipy's gammainc (gammaincc above the mean) with step h."""
    if x > a:
        return (special.gammaincc(a - h, x) - special.gammaincc(a + h, x)) / (2.0 * h)
    return (special.gammainc(a + h, x) - special.gammainc(a - h, x)) / (2.0 * h)


@pytest.mark.parametrize("a", (0.05, 0.3, 1.0, 4.5, 30.0))
def test_incomplete_gamma_derivative_matches_scipy(a):
    """At quantiles 1e-6 .. 1 - 1e-6 of Gamma(a): Richardson-extrapolated central differences
    of scipy (truncation O(h^4), rounding 1e-16 / h) agree to 1e-9 relative; the implicit
    de/da equals -dP/da / scipy's density."""
    for q in (1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6):
        x = float(stats.gamma(a).ppf(q))
        h = 1e-3 * min(a, 1.0)
        reference = (4.0 * scipy_dpda(a, x, h / 2.0) - scipy_dpda(a, x, h)) / 3.0
        assert gamma.incomplete_gamma_da(a, x) == pytest.approx(reference, rel=1e-9), (a, q)
        assert gamma.shape_derivative(a, x) == pytest.approx(
            -reference / stats.gamma(a).pdf(x), rel=1e-9), (a, q)
        assert gamma.digamma(a) == pytest.approx(special.digamma(a), rel=1e-14, abs=1e-14)


def test_a_wrong_derivative_fails_the_same_comparison():
    """d/da P of the unregularised function (a missing 1 / Gamma(a)) is rejected."""
    a, x = 4.5, 4.0
    h = 1e-3
    reference = (4.0 * scipy_dpda(a, x, h / 2.0) - scipy_dpda(a, x, h)) / 3.0
    wrong = (special.gammainc(a + h, x) * special.gamma(a + h)
             - special.gammainc(a - h, x) * special.gamma(a - h)) / (2.0 * h)
    assert wrong != pytest.approx(reference, rel=1e-9)


# ---- exact references against scipy quadrature in x --------------------------------------------

def _cost_f(cost, x, k):
    return registry.COSTS[cost].value(x, k)


def _cost_df(cost, x, k):
    return registry.COSTS[cost].derivative(x, k)


@pytest.mark.parametrize("cost", ("square", "quadratic", "exp", "cos"))
@pytest.mark.parametrize("point", FAMILY_POINTS["gamma"])
def test_references_match_scipy_quadrature_in_x(cost, point):
    """The gradient and the score-function and pathwise variances by scipy quad over the
    Gamma density in x, with the score written from the density and dx/dshape from scipy's
    gammainc (finite differences) and density; square also against the moment closed forms
    d/dshape E x^2 = (2 shape + 1) / rate^2, d/drate = -2 shape (shape + 1) / rate^3."""
    shape, rate, k = point
    p_ = params(cost, point, "gamma")
    density = stats.gamma(shape, scale=1.0 / rate).pdf

    def expect(h):
        # below the mode region in log x (the x^(shape - 1) end and log x terms become
        # smooth); the mass beyond the upper end is below e^-100
        cut, end = max(shape, 1.0) / rate, (shape + 130.0 + 30.0 * math.sqrt(shape)) / rate
        opts = dict(limit=400, epsabs=1e-13, epsrel=1e-11)

        def in_log(y):
            x = math.exp(y)
            return density(x) * h(x) * x if x > 0.0 else 0.0

        return (integrate.quad(in_log, -math.inf, math.log(cut), **opts)[0]
                + integrate.quad(lambda x: density(x) * h(x), cut, end, **opts)[0])

    scores = {"shape": lambda x: math.log(rate * x) - special.digamma(shape),
              "rate": lambda x: shape / rate - x}

    def dx(component, x):
        if component == "rate":
            return -x / rate
        e, h = rate * x, 1e-3 * min(shape, 1.0)
        dpda = (4.0 * scipy_dpda(shape, e, h / 2.0) - scipy_dpda(shape, e, h)) / 3.0
        pdf = stats.gamma(shape).pdf(e)
        return -dpda / pdf / rate if pdf > 0.0 else 0.0   # 0 / 0 where the density underflows

    for component in ("shape", "rate"):
        score = scores[component]
        grad = expect(lambda x, score=score: _cost_f(cost, x, k) * score(x))
        if cost == "square":
            closed = ((2.0 * shape + 1.0) / rate ** 2 if component == "shape"
                      else -2.0 * shape * (shape + 1.0) / rate ** 3)
            assert grad == pytest.approx(closed, rel=1e-9)
        terms = {"score_function": lambda x, score=score: _cost_f(cost, x, k) * score(x),
                 "pathwise": lambda x, c=component: _cost_df(cost, x, k) * dx(c, x)}
        for label, g in terms.items():
            ref = exact.references(label, component, "gamma", cost, p_)
            closed = cost in ("square", "quadratic") and (label, component) != (
                "pathwise", "shape")
            assert ref.source == ("closed_form" if closed else "quadrature")
            assert ref.grad == pytest.approx(grad, rel=1e-9, abs=1e-12), (label, component)
            second = expect(lambda x, g=g: g(x) ** 2)
            assert ref.var == pytest.approx(second - grad ** 2, rel=1e-7, abs=1e-12), \
                (label, component)


# ---- a deliberately wrong implicit gradient: the conformance check must reject it ------------

@njit
def pathwise_wrong_shape_derivative(component, s, family, cost, consts):
    """dx/dshape taken as x / shape (right for the mean, wrong for the variate: the rate of
    a scaled Gamma); dx/drate is left right."""
    if component == 0:
        return s.df * s.x / s.theta[0]
    return s.df * family.dx_dtheta(component, s.theta, s.e)


def test_wrong_shape_derivative_is_rejected(monkeypatch):
    from conformance import z_scores
    from test_estimators import _register_wrong

    _register_wrong(monkeypatch, "gamma_wrong_dx", pathwise_wrong_shape_derivative, "pathwise")
    point = FAMILY_POINTS["gamma"][2]
    z = z_scores("gamma_wrong_dx", "pathwise", "cos", "shape", point, family="gamma")
    assert max(abs(v) for v in z.values()) > Z, z
    z_right = z_scores("gamma_wrong_dx", "pathwise", "cos", "rate", point, family="gamma")
    assert max(abs(v) for v in z_right.values()) < Z, z_right
    run.cache_clear()   # the wrong kernel's numbers must not serve other tests


def test_backend_cuda_rejects_gamma_in_one_line():
    from harness import config

    text = ("name: g\nbackend: cuda\nproblem:\n  distribution: gamma\n  cost: square\n"
                    "  shape: 2.0\n  rate: 1.0\nestimators: [pathwise]\nn_samples: 100\n"
                    "seeds: 2\n")
    with pytest.raises(ConfigError, match="gamma does not run on backend cuda"):
        config.parse_grid(text, "g.yaml")
    config.parse_grid(text.replace("cuda", "cpu"), "g.yaml")   # the same grid on the CPU


@pytest.mark.parametrize("cost", ("square", "quadratic"))
@pytest.mark.parametrize("point", FAMILY_POINTS["gamma"])
def test_moment_closed_forms_match_the_quadrature_rule(cost, point):
    """The closed forms of the polynomial costs (moments and log-moments of the Gamma) against
    the estimators' transcriptions over the family's Gauss-Legendre rule: two independent
    routes to the same numbers."""
    p_ = params(cost, point, "gamma")
    fam, c = registry.get_family("gamma"), registry.get_cost(cost)
    forms = c.closed_forms["gamma"]
    x, w = fam.rule(fam.theta(p_))
    assert forms.mean(**p_) == pytest.approx(float(w @ c.value(x, p_.get("k", 0.0))), rel=1e-12)
    for (label, component), variance in forms.variance.items():
        mean, var = registry.resolve(label).reference(fam, c, component, p_)
        assert forms.grad(**p_)[component] == pytest.approx(mean, rel=1e-11, abs=1e-13)
        assert variance(**p_) == pytest.approx(var, rel=1e-11), (label, component)


# ---- G-REP: a deliberately wrong variant (no correction term) must be rejected ----------------

@njit
def grep_without_correction(component, s, family, cost, consts):
    """Only g_rep = f'(x) x d log e / da at fixed standardised eps: biased wrt shape (the law
    of eps depends on shape)."""
    if component == 1:
        return -s.df * s.x / s.theta[1]
    psi, psi1, psi2 = consts
    return s.df * s.x * ((math.log(s.e) - psi) * psi2 / (2.0 * psi1) + psi1)


def test_grep_without_its_correction_term_is_rejected(monkeypatch):
    from conformance import z_scores

    from harness.axes import Estimator

    real = registry.ESTIMATORS["grep"]
    monkeypatch.setitem(registry.ESTIMATORS, "grep_no_correction", Estimator(
        name="grep_no_correction", per_sample=grep_without_correction, evals_per_sample=1,
        description="deliberately wrong", needs=real.needs, families=real.families,
        n_consts=real.n_consts, prepare=real.prepare, reference=real.reference))
    point = FAMILY_POINTS["gamma"][1]
    z = z_scores("grep_no_correction", "grep", "cos", "shape", point, family="gamma")
    assert max(abs(v) for v in z.values()) > Z, z
    run.cache_clear()   # the wrong kernel's numbers must not serve other tests


def test_cuda_backend_refuses_gamma_when_called_directly():
    from harness.backends import cuda
    from harness.errors import BackendError

    with pytest.raises(BackendError, match="does not run distribution gamma"):
        cuda.estimate("gamma", "square", ["pathwise"], ["shape"], {"shape": 2.0, "rate": 1.0},
                      100, np.arange(2))
