"""The Bernoulli and exponential families and the discrete estimators (ARM, DisARM, the
concrete relaxation, straight-through, REBAR): references against independent computations,
wrong variants the conformance check must reject, validation, and thread-count
reproducibility.  The conformance check itself runs over every family in
``tests/test_estimators.py`` (``cases()``).

Independent computations: closed forms derived here in the docstrings (finite sums over
x in {0, 1}), and ``scipy.integrate.quad`` over the uniform noise u (the references integrate
over the logistic noise L or use fixed Gauss-Legendre rules).
"""

import math
from functools import partial

import numba
import numpy as np
import pytest
from conformance import FAMILY_POINTS, Z, conformance_labels, params, register_wrong, z_scores
from helpers import PLAIN_COSTS, needs_cuda
from numba import njit
from scipy import integrate, stats
from scipy.special import expit

from harness import exact, registry
from harness.axes import Cost
from harness.backends import cpu
from harness.config import parse_grid
from harness.distributions.bernoulli import logistic_noise, probability
from harness.distributions.exponential import draw_pair as exponential_pair
from harness.errors import ConfigError
from harness.estimators.measure_valued import STREAM_RATE
from harness.rng import uniform_pair

BERNOULLI_POINTS = FAMILY_POINTS["bernoulli"]
EXPONENTIAL_POINTS = FAMILY_POINTS["exponential"]
COSTS = sorted(registry.COSTS)
TEMPERATURES = registry.ESTIMATORS["gumbel_softmax"].options["temperature"]


def f(cost, x, k):
    return float(registry.COSTS[cost].value(float(x), k))


def df(cost, x, k):
    return float(registry.COSTS[cost].derivative(float(x), k))


# ---- Bernoulli: closed forms over x in {0, 1} --------------------------------------------------

@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("point", BERNOULLI_POINTS)
def test_bernoulli_references_match_closed_forms(cost, point):
    """With p = sigmoid(logit), q = 1 - p, D = f(1) - f(0):
    gradient p q D; score function g = f(x) (x - p): E g^2 = p q^2 f(1)^2 + q p^2 f(0)^2;
    leave-one-out limit g = (f(x) - E f)(x - p): E g^2 = p q D^2 (p^3 + q^3);
    ARM g = +-D (u - 1/2): E g^2 = D^2 / 12; DisARM: E g^2 = min(p, q) D^2 sigmoid(|logit|)^2 / 2.
    Each reference's mean is the gradient (the estimators are unbiased)."""
    p_ = params(cost, point, "bernoulli")
    logit, k = point
    p, q = expit(logit), expit(-logit)
    f0, f1 = f(cost, 0.0, k), f(cost, 1.0, k)
    d = f1 - f0
    grad = p * q * d
    second = {
        "score_function": p * q * q * f1 * f1 + q * p * p * f0 * f0,
        "score_function[baseline=mean]": p * q * d * d * (p ** 3 + q ** 3),
        "arm": d * d / 12.0,
        "disarm": min(p, q) * d * d * expit(abs(logit)) ** 2 / 2.0,
    }
    for label, e_g2 in second.items():
        ref = exact.references(label, "logit", "bernoulli", cost, p_)
        assert ref.grad == pytest.approx(grad, rel=1e-12, abs=1e-15), label
        assert ref.estimator_mean == ref.grad
        own_mean = registry.resolve(label).reference(
            registry.FAMILIES["bernoulli"], registry.COSTS[cost], "logit", p_)[0]
        assert own_mean == pytest.approx(grad, rel=1e-10, abs=1e-14), label
        assert ref.var == pytest.approx(e_g2 - grad * grad, rel=1e-9, abs=1e-14), label
    # the optimal baseline makes a single Bernoulli's score term constant: variance 0
    assert exact.reference("score_function[baseline=optimal]", "logit", "bernoulli", cost,
                           p_)[1] == pytest.approx(0.0, abs=1e-12 * (1 + d * d))


# ---- Bernoulli relaxations: adaptive quadrature over u ------------------------------------------

def _quad_u(g, p):
    """(E g, E g^2) over u ~ Uniform(0, 1), adaptive, split at the hard sample's jump u = p."""
    opts = dict(points=[p], limit=400, epsabs=1e-13, epsrel=1e-11)
    return (integrate.quad(g, 0.0, 1.0, **opts)[0],
            integrate.quad(lambda u: g(u) ** 2, 0.0, 1.0, **opts)[0])


def _relaxed(logit, tau, u):
    z = (logit + math.log((1.0 - u) / u)) / tau
    return z, expit(z)


def _concrete_term(cost, logit, k, tau, u):
    z, y = _relaxed(logit, tau, u)
    return df(cost, y, k) * y * expit(-z) / tau


def _straight_through_term(cost, logit, k, tau, u):
    z, y = _relaxed(logit, tau, u)
    return df(cost, 1.0 if u < expit(logit) else 0.0, k) * y * expit(-z) / tau


def _relaxed_objective(cost, logit, k, tau):
    """E[f(y)], y the relaxed sample, by quad over u."""
    return integrate.quad(lambda u: f(cost, _relaxed(logit, tau, u)[1], k), 0.0, 1.0,
                          points=[expit(logit)], limit=400, epsabs=1e-14, epsrel=1e-13)[0]


@pytest.mark.parametrize("cost", ["quadratic", "cos"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_relaxed_references_match_adaptive_quadrature_over_u(cost, tau):
    """Gumbel-softmax g = f'(y) y (1 - y) / tau and straight-through g = f'(x) y (1 - y) / tau,
    y = sigmoid((logit + log((1 - u) / u)) / tau), x = 1{u < p}: mean and variance by scipy
    quad over u against the references (Gauss-Legendre over L).  And the concrete
    estimator's expectation is the gradient of the relaxed objective E[f(y)] (finite
    differences of quad), which is not the exact gradient: it is biased."""
    for logit, k in BERNOULLI_POINTS:
        p_ = params(cost, (logit, k), "bernoulli")
        p = expit(logit)

        for name, g in (("gumbel_softmax", partial(_concrete_term, cost, logit, k, tau)),
                        ("straight_through", partial(_straight_through_term, cost, logit, k,
                                                     tau))):
            label = f"{name}[temperature={tau}]" if tau != TEMPERATURES[0] else name
            ref = exact.references(label, "logit", "bernoulli", cost, p_)
            mean, second = _quad_u(g, p)
            assert ref.estimator_mean == pytest.approx(mean, rel=1e-8, abs=1e-11), (label, logit)
            assert ref.var == pytest.approx(second - mean * mean, rel=1e-7, abs=1e-11), \
                (label, logit)

        h = 1e-4
        fd = (_relaxed_objective(cost, logit + h, k, tau)
              - _relaxed_objective(cost, logit - h, k, tau)) / (2 * h)
        label = f"gumbel_softmax[temperature={tau}]" if tau != TEMPERATURES[0] else \
            "gumbel_softmax"
        ref = exact.references(label, "logit", "bernoulli", cost, p_)
        assert ref.estimator_mean == pytest.approx(fd, rel=1e-6, abs=1e-8)


def _rebar_term(cost, logit, k, tau, eta, u, v):
    """REBAR's term at (u, v), written from Tucker et al. (2017) in u and v, as a plain
    transcription (the reference works in z instead)."""
    p = expit(logit)
    b = 1.0 if u < p else 0.0
    z = logit + math.log((1.0 - u) / u)
    r = v / (1.0 - v)
    if b:
        z_c = math.log(1.0 + r / (1.0 - p))
        dz_c = r * p / (1.0 - p + r)
    else:
        z_c = -math.log(1.0 + r / p)
        dz_c = r * (1.0 - p) / (p + r)

    def slope(zz):
        y = expit(zz / tau)
        return df(cost, y, k) * y * expit(-zz / tau) / tau

    return ((f(cost, b, k) - eta * f(cost, expit(z_c / tau), k)) * (b - p)
            + eta * (slope(z) - slope(z_c) * dz_c))


def _rebar_power(power, cost, logit, k, tau, eta, v, u):
    return _rebar_term(cost, logit, k, tau, eta, u, v) ** power


@pytest.mark.parametrize("label,tau,eta", [("rebar", 0.5, 1.0),
                                           ("rebar[eta=0.5,temperature=0.25]", 0.25, 0.5)])
def test_rebar_reference_matches_a_double_integral_over_u_and_v(label, tau, eta):
    """E and E[g^2] of REBAR by scipy dblquad over (u, v) (split at u = p) against the
    reference (1-D integrals over z given x); its mean is the exact gradient (unbiased)."""
    cost = "quadratic"
    for logit, k in BERNOULLI_POINTS[:2]:
        p = expit(logit)
        ref = exact.references(label, "logit", "bernoulli", cost,
                               params(cost, (logit, k), "bernoulli"))
        moments = []
        for power in (1, 2):
            total = 0.0
            for lo, hi in ((0.0, p), (p, 1.0)):
                term = partial(_rebar_power, power, cost, logit, k, tau, eta)
                total += integrate.dblquad(term, lo, hi, 0.0, 1.0, epsabs=1e-11,
                                           epsrel=1e-9)[0]
            moments.append(total)
        assert ref.estimator_mean == ref.grad
        assert moments[0] == pytest.approx(ref.grad, rel=1e-6, abs=1e-9)
        assert ref.var == pytest.approx(moments[1] - moments[0] ** 2, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("cost", COSTS)
def test_every_rebar_variant_integrates_to_the_exact_gradient(cost):
    for label in registry.variants("rebar"):
        for point in BERNOULLI_POINTS:
            p_ = params(cost, point, "bernoulli")
            mean, _ = registry.resolve(label).reference(
                registry.FAMILIES["bernoulli"], registry.COSTS[cost], "logit", p_)
            grad = exact.reference(label, "logit", "bernoulli", cost, p_)[0]
            assert mean == pytest.approx(grad, rel=1e-9, abs=1e-13), (label, point)


# ---- exponential: closed forms and adaptive quadrature in x -------------------------------------

@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("point", EXPONENTIAL_POINTS)
def test_exponential_references_match_adaptive_quadrature_in_x(cost, point):
    """q = rate e^{-rate x}: score 1/rate - x, pathwise dx/drate = -x/rate.  The gradient and
    the score-function and pathwise variances by scipy quad over x; for the quadratic also
    the closed form d/drate (2/rate^2 - 2k/rate + k^2) = -4/rate^3 + 2k/rate^2."""
    rate, k = point
    p_ = params(cost, point, "exponential")

    def expect(h):
        return integrate.quad(lambda x: rate * math.exp(-rate * x) * h(x), 0.0, math.inf,
                              limit=400, epsabs=1e-13, epsrel=1e-11)[0]

    def score_term(x):
        return f(cost, x, k) * (1.0 / rate - x)

    def pathwise_term(x):
        return df(cost, x, k) * (-x / rate)

    grad = expect(score_term)
    if cost == "quadratic":
        assert grad == pytest.approx(-4.0 / rate ** 3 + 2.0 * k / rate ** 2, rel=1e-9)
    for label, g in (("score_function", score_term), ("pathwise", pathwise_term)):
        ref = exact.references(label, "rate", "exponential", cost, p_)
        assert ref.grad == pytest.approx(grad, rel=1e-9, abs=1e-12), label
        second = expect(partial(_squared, g))
        assert ref.var == pytest.approx(second - grad ** 2, rel=1e-8, abs=1e-12), label


def _squared(g, x):
    return g(x) ** 2


# ---- exponential: the measure-valued (weak-derivative) estimator --------------------------------

MEASURE_VALUED = ("measure_valued", "measure_valued[coupling=false]")


@pytest.mark.parametrize("point", EXPONENTIAL_POINTS)
def test_exponential_weak_derivative_decomposition(point):
    """Table 2 of Mohamed et al. (2020) for Exp(rate): d/drate q = c (q+ - q-) with c = 1/rate,
    q+ = Exp(rate), q- = Gamma(2, rate): checked pointwise against a central difference of
    the density in rate (scipy.stats densities, not the module's), and in expectation: the
    module's reference mean (its sign and constant) equals a central difference in rate of
    E_q[f] by scipy quad, for every cost."""
    rate, k = point
    h = 1e-6 * rate
    x = np.linspace(0.01, 8.0 / rate, 41)
    fd = (stats.expon.pdf(x, scale=1 / (rate + h)) - stats.expon.pdf(x, scale=1 / (rate - h))) \
        / (2 * h)
    split = (stats.expon.pdf(x, scale=1 / rate) - stats.gamma.pdf(x, 2, scale=1 / rate)) / rate
    assert np.allclose(split, fd, rtol=1e-7, atol=1e-9 * rate)

    def objective(cost, r):
        return integrate.quad(lambda x: r * math.exp(-r * x) * PLAIN_COSTS[cost](x, k), 0.0,
                              math.inf, limit=400, epsabs=1e-14, epsrel=1e-12)[0]

    for cost in COSTS:
        h = 1e-4 * rate
        slope = (objective(cost, rate + h) - objective(cost, rate - h)) / (2 * h)
        p_ = params(cost, point, "exponential")
        for label in MEASURE_VALUED:
            mean, _ = registry.resolve(label).reference(
                registry.FAMILIES["exponential"], registry.COSTS[cost], "rate", p_)
            assert mean == pytest.approx(slope, rel=1e-6, abs=1e-9), (cost, label)


def _raw_moments(law):
    """E[Y^j], j = 0..4, for Y ~ Exp(1) (j!) or Gamma(2, 1) ((j + 1)!)."""
    return [math.factorial(j + (law == "gamma2")) for j in range(5)]


def _central(law, m, power):
    """E[(Y - m)^power] from the raw moments (binomial expansion)."""
    raw = _raw_moments(law)
    return sum(math.comb(power, j) * raw[j] * (-m) ** (power - j) for j in range(power + 1))


def measure_valued_quadratic_closed_form(rate, k, coupled):
    """Var[g] for f = (x - k)^2 (square: k = 0), derived by hand from moments of Exp(1):
    coupled, g = -E2 (2 E1 + E2 - c) / rate^3 with c = 2 k rate: (48 - 12 c + c^2) / rate^6;
    uncoupled, g = (f(E1 / rate) - f(T / rate)) / rate with f(Y / rate) = (Y - k rate)^2 /
    rate^2: (Var_Exp + Var_Gamma2 of (Y - k rate)^2) / rate^6."""
    c, m = 2.0 * k * rate, k * rate
    if coupled:
        return (48.0 - 12.0 * c + c * c) / rate ** 6
    var = sum(_central(law, m, 4) - _central(law, m, 2) ** 2 for law in ("exp", "gamma2"))
    return var / rate ** 6


def measure_valued_scipy(cost, rate, k, coupled):
    """(mean, Var[g]) by scipy quad in x: x+ ~ Exp(rate), x- ~ Gamma(2, rate) (scipy.stats
    densities); coupled, x- = x+ + b with b ~ Exp(rate) independent (a 2-D integral over
    (x+, b))."""
    def expect(h, law):
        return integrate.quad(lambda x: law.pdf(x) * h(x), 0.0, math.inf, limit=400,
                              epsabs=1e-13, epsrel=1e-11)[0]

    plus, minus = stats.expon(scale=1 / rate), stats.gamma(2, scale=1 / rate)
    fx = partial(PLAIN_COSTS[cost], k=k)
    mean = (expect(fx, plus) - expect(fx, minus)) / rate
    if coupled:
        second = integrate.dblquad(
            lambda b, a: rate * rate * math.exp(-rate * (a + b)) * (fx(a) - fx(a + b)) ** 2,
            0.0, math.inf, 0.0, math.inf, epsabs=1e-12, epsrel=1e-10)[0] / rate ** 2
    else:
        second = (expect(lambda x: fx(x) ** 2, plus) - 2 * expect(fx, plus) * expect(fx, minus)
                  + expect(lambda x: fx(x) ** 2, minus)) / rate ** 2
    return mean, second - mean * mean


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("point", EXPONENTIAL_POINTS)
def test_exponential_measure_valued_references_match_scipy_and_closed_forms(cost, point):
    """The per-sample variance of both variants (the module's fixed rules: 1-D sums, a 2-D
    tensor rule for the coupled form) against hand-derived closed forms (square and
    quadratic) or scipy's adaptive quad / dblquad (exp and cos), and the gradient they
    integrate to against the exact gradient (E[f score])."""
    rate, k = point
    k = k if cost != "square" else 0.0
    p_ = params(cost, point, "exponential")
    for label, coupled in zip(MEASURE_VALUED, (True, False)):
        ref = exact.references(label, "rate", "exponential", cost, p_)
        own_mean = registry.resolve(label).reference(
            registry.FAMILIES["exponential"], registry.COSTS[cost], "rate", p_)[0]
        assert ref.source == "quadrature"
        assert own_mean == pytest.approx(ref.grad, rel=1e-10, abs=1e-13), label
        if cost in ("square", "quadratic"):
            grad, var = -4.0 / rate ** 3 + 2.0 * k / rate ** 2, \
                measure_valued_quadratic_closed_form(rate, k, coupled)
        else:
            grad, var = measure_valued_scipy(cost, rate, k, coupled)
        assert ref.grad == pytest.approx(grad, rel=1e-8, abs=1e-12), label
        assert ref.var == pytest.approx(var, rel=1e-7, abs=1e-12), label



# ---- deliberately wrong estimators: the conformance check must reject each -----------------------

@njit
def arm_off_centre(component, s, family, cost, consts):
    # ARM with (u - 0.45) for (u - 1/2): biased by 0.05 (f(1{u > q}) - f(1{u < q})) on average
    q = probability(-s.theta[0])
    u = s.e
    return (cost.value(1.0 if u > q else 0.0, s.k) - cost.value(1.0 if u < q else 0.0, s.k)) \
        * (u - 0.45)


@njit
def disarm_without_factor(component, s, family, cost, consts):
    # DisARM with 1/2 for sigmoid(|logit|): biased unless logit = 0
    p = probability(s.theta[0])
    b_anti = 1.0 if 1.0 - s.e < p else 0.0
    if s.x == b_anti:
        return 0.0
    sign = -1.0 if b_anti == 1.0 else 1.0
    return 0.5 * (s.f - cost.value(b_anti, s.k)) * sign * 0.5


@njit
def noisy_disarm(component, s, family, cost, consts):
    # unbiased DisARM plus zero-mean noise from a stream of its own: more variance
    u0, _ = uniform_pair(s.key0, s.key1, s.index, 99)
    return registry_disarm(component, s, family, cost, consts) + 0.3 * (u0 - 0.5)


@njit
def rebar_fixed_conditional(component, s, family, cost, consts):
    # REBAR that forgets that z~ moves with the logit (drops the dz~/dlogit term): biased
    tau, eta = consts[0], consts[1]
    logit = s.theta[0]
    p, q = probability(logit), probability(-logit)
    z = logit + logistic_noise(s.e)
    v = uniform_pair(s.key0, s.key1, s.index, 4)[0]
    r = v / (1.0 - v)
    z_cond = math.log1p(r / q) if s.x == 1.0 else -math.log1p(r / p)
    y, y_c = probability(z / tau), probability(z_cond / tau)
    return ((s.f - eta * cost.value(y_c, s.k)) * (s.x - p)
            + eta * cost.derivative(y, s.k) * y * (1.0 - y) / tau)


@njit
def gumbel_hotter(component, s, family, cost, consts):
    # the concrete estimator at 1.25 x its declared temperature: another (biased) expectation
    tau = 1.25 * consts[0]
    z = (s.theta[0] + logistic_noise(s.e)) / tau
    y = probability(z)
    return cost.derivative(y, s.k) * y * probability(-z) / tau


@njit
def exponential_pathwise_scaled(component, s, family, cost, consts):
    return 1.05 * s.df * family.dx_dtheta(component, s.theta, s.e)


@njit
def exponential_mv_double_constant(component, s, family, cost, consts):
    # the coupled weak derivative with c = 2 / rate for 1 / rate: twice the gradient
    rate = s.theta[0]
    e2, _ = exponential_pair(s.key0, s.key1, s.index, STREAM_RATE)
    return 2.0 * (s.f - cost.value((s.e + e2) / rate, s.k)) / rate


@njit
def exponential_mv_one_draw_twice(component, s, family, cost, consts):
    # the coupling taken too far: x- = (E1 + E1) / rate is Exp(rate / 2), not Gamma(2, rate)
    # (same mean, larger second moment: biased on every cost but a linear one)
    rate = s.theta[0]
    return (s.f - cost.value((s.e + s.e) / rate, s.k)) / rate


registry_disarm = registry.ESTIMATORS["disarm"].per_sample

WRONG = {  # name -> (per_sample, impersonated label, family)
    "arm_off_centre": (arm_off_centre, "arm", "bernoulli"),
    "disarm_without_factor": (disarm_without_factor, "disarm", "bernoulli"),
    "noisy_disarm": (noisy_disarm, "disarm", "bernoulli"),
    "rebar_fixed_conditional": (rebar_fixed_conditional, "rebar", "bernoulli"),
    "gumbel_hotter": (gumbel_hotter, "gumbel_softmax", "bernoulli"),
    "exponential_pathwise_scaled": (exponential_pathwise_scaled, "pathwise", "exponential"),
    "exponential_mv_double_constant": (exponential_mv_double_constant, "measure_valued",
                                       "exponential"),
    "exponential_mv_one_draw_twice": (exponential_mv_one_draw_twice, "measure_valued",
                                      "exponential"),
}


@pytest.fixture
def wrong_registered(monkeypatch):
    for name, (fn, impersonates, _) in WRONG.items():
        # per_sample_by_family={}: the wrong function runs on every family (measure_valued
        # maps the exponential family to its own kernel)
        register_wrong(monkeypatch, name, fn, impersonates)
    yield
    registry._resolve.cache_clear()


@pytest.mark.parametrize("wrong", sorted(WRONG))
@pytest.mark.parametrize("point", [0, 1])
def test_same_check_rejects_wrong_discrete_estimators(wrong_registered, wrong, point):
    fn, impersonates, family = WRONG[wrong]
    fused = tuple(sorted(name for name, (_, _, fam) in WRONG.items() if fam == family))
    z = z_scores(wrong, impersonates, "quadratic", registry.FAMILIES[family].params[0],
                 FAMILY_POINTS[family][point], fused=fused, family=family)
    assert max(abs(v) for v in z.values()) > Z, z


def test_a_biased_estimator_checked_against_the_gradient_is_rejected():
    """The conformance check compares relaxations with their own exact expectation; against
    the exact gradient (as if unbiased) the same numbers fail: the bias is resolved."""
    point = BERNOULLI_POINTS[0]
    z = z_scores("gumbel_softmax", "arm", "quadratic", "logit", point,
                 fused=("gumbel_softmax", "arm"), family="bernoulli")
    assert abs(z["mean"]) > Z, z
    z_own = z_scores("gumbel_softmax", "gumbel_softmax", "quadratic", "logit", point,
                     fused=("gumbel_softmax", "arm"), family="bernoulli")
    assert max(abs(v) for v in z_own.values()) < Z, z_own


@pytest.mark.parametrize("point", EXPONENTIAL_POINTS)
def test_lost_coupling_is_rejected_by_the_variance_check(point):
    """Each measure-valued variant checked against the other's reference: the means agree
    (both unbiased), the per-sample variances do not (coupling halves it or better at these
    points), and the same check rejects each swap; against its own reference each passes."""
    fused = conformance_labels("quadratic", "exponential")
    for label, other in (MEASURE_VALUED, MEASURE_VALUED[::-1]):
        z = z_scores(label, other, "quadratic", "rate", point, fused=fused, family="exponential")
        assert abs(z["mean"]) < Z and max(abs(z["pooled"]), abs(z["spread"])) > Z, (label, z)
        z_own = z_scores(label, label, "quadratic", "rate", point, fused=fused,
                         family="exponential")
        assert max(abs(v) for v in z_own.values()) < Z, (label, z_own)


# ---- validation: combinations that cannot work, in one line ------------------------------------

def _grid(distribution, params_text, estimators, cost="quadratic"):
    return (f"problem:\n  distribution: {distribution}\n  cost: {cost}\n{params_text}"
            f"estimators: [{estimators}]\nn_samples: 100\nseeds: 3\n")


@pytest.mark.parametrize("distribution,params_text,estimator,message", [
    ("bernoulli", "  logit: 0.3\n  k: 0.45\n", "pathwise",
     "pathwise needs a reparameterisable family (dx/dtheta), which family bernoulli is not"),
    ("bernoulli", "  logit: 0.3\n  k: 0.45\n", "measure_valued",
     "measure_valued is defined for the normal or exponential or gamma family only, not bernoulli"),
    ("normal", "  mu: 0.3\n  sigma: 1.0\n  k: 0.45\n", "gumbel_softmax",
     "gumbel_softmax is defined for the bernoulli or categorical family only, not normal"),
    ("exponential", "  rate: 2.0\n  k: 0.45\n", "rebar",
     "rebar is defined for the bernoulli or categorical family only, not exponential"),
    ("exponential", "  rate: 2.0\n  k: 0.45\n", "arm",
     "arm is defined for the bernoulli family only, not exponential"),
])
def test_validate_rejects_impossible_combinations(distribution, params_text, estimator,
                                                  message):
    grid = _grid(distribution, params_text, f"score_function, {estimator}")
    line = grid.splitlines().index(f"estimators: [score_function, {estimator}]") + 1
    with pytest.raises(ConfigError) as info:
        parse_grid(grid, "g.yaml")
    text = str(info.value)
    assert text.startswith(f"g.yaml:{line}: estimators[1]: {message}") and "\n" not in text, \
        text


@njit
def log_value(x, k):
    return math.log(x)


@njit
def log_derivative(x, k):
    return 1.0 / x


def test_relaxed_estimators_need_a_cost_defined_on_the_unit_interval(monkeypatch):
    """A cost defined on x > 0 only (log x) cannot be evaluated at the hard sample 0 nor
    trusted on the relaxed sample: every relaxed estimator is rejected; the score function
    and ARM (which evaluate f at 0 and 1 too) are not relaxed, but f(0) is -inf: the exact
    reference is not finite, so validate rejects them in one line as well."""
    monkeypatch.setitem(registry.COSTS, "log", Cost(
        name="log", params=(), value=log_value, derivative=log_derivative,
        domain=(0.0, math.inf), description="log x"))
    for label in ("gumbel_softmax", "straight_through", "rebar[temperature=0.1]"):
        with pytest.raises(ConfigError, match="evaluates the cost at a relaxed sample in "
                                              r"\[0, 1\], but cost log is defined on") as info:
            registry.check_combination(label, "bernoulli", "log")
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="g.yaml:5: estimators\\[0\\]: gumbel_softmax"):
        parse_grid(_grid("bernoulli", "  logit: 0.3\n", "gumbel_softmax", cost="log"), "g.yaml")
    registry.check_combination("arm", "bernoulli", "log")        # allowed by the registry ...
    with pytest.raises(ConfigError, match="cannot be computed in floating point"):
        parse_grid(_grid("bernoulli", "  logit: 0.3\n", "arm", cost="log"), "g.yaml")


# ---- end to end: the grid, the results column, the report ---------------------------------------

# one estimator set for the end-to-end, thread and CUDA tests: one parallel kernel to compile
BERNOULLI_SET = ("arm", "rebar", "gumbel_softmax", "score_function[baseline=mean]")


def test_a_bernoulli_grid_runs_and_stores_the_exact_bias(tmp_path):
    """harness run / report on a tiny Bernoulli grid: exact_estimator_mean equals exact_grad
    for the unbiased estimators and is the concrete estimator's own expectation (not the
    gradient) for gumbel_softmax; the report draws the bias section."""
    from harness.report import build_report
    from harness.results import read_results
    from harness.runner import run_grid

    text = ("name: tiny_bernoulli\nproblem:\n  distribution: bernoulli\n  cost: quadratic\n"
            "  logit: 0.3\n  k: [0.3, 0.45]\n"
            "estimators: [arm, rebar, gumbel_softmax, {name: score_function, baseline: mean}]\n"
            "n_samples: [200]\nseeds: 5\n")
    grid = parse_grid(text, tmp_path / "g.yaml")
    assert tuple(spec.label for spec in grid.estimators) == BERNOULLI_SET  # one kernel
    run_grid(grid, tmp_path, progress=False)
    df = read_results(tmp_path)
    assert set(df["distribution"]) == {"bernoulli"} and df["logit"].eq(0.3).all()
    for label, rows in df.groupby("estimator"):
        k = rows["k"].iloc[0]
        own = exact.references(label, "logit", "bernoulli", "quadratic",
                               {"logit": 0.3, "k": k}).estimator_mean
        if registry.resolve(label).biased:
            assert (rows["exact_estimator_mean"] != rows["exact_grad"]).all(), label
        else:
            assert (rows["exact_estimator_mean"] == rows["exact_grad"]).all(), label
        assert rows.groupby("k")["exact_estimator_mean"].nunique().eq(1).all()
        assert own == rows[rows["k"] == k]["exact_estimator_mean"].iloc[0]
    build_report(tmp_path)
    assert (tmp_path / "report" / "bias_vs_temperature.png").stat().st_size > 0
    assert "Bias of the relaxed estimators" in (tmp_path / "report" / "index.html").read_text()


# ---- reproducibility ----------------------------------------------------------------------------

def test_discrete_estimators_are_bitwise_identical_for_one_and_two_threads():
    """ARM, REBAR (its own stream) and the leave-one-out baseline (accumulated) on the
    Bernoulli family, and the exponential family's pathwise term: identical bits for 1 and 2
    threads and on rerun."""
    cases = [("bernoulli", list(BERNOULLI_SET), {"logit": 0.3, "k": 0.45}),
             ("exponential", ["pathwise", "score_function"], {"rate": 1.5, "k": 0.45})]
    for family, ests, p_ in cases:
        comps = registry.FAMILIES[family].params

        go = partial(cpu.estimate, family, "quadratic", ests, comps, p_, 150_001, np.arange(4))

        before = numba.get_num_threads()
        try:
            numba.set_num_threads(1)
            one = go()
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            two = go()
        finally:
            numba.set_num_threads(before)
        again = go()
        for other in (two, again):
            assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1])
        assert np.isfinite(one[0]).all() and (one[1] > 0).all()


@needs_cuda
@pytest.mark.parametrize("family,ests,params_", [
    ("bernoulli", list(BERNOULLI_SET), {"logit": 0.3, "k": 0.45}),
    ("exponential", list(MEASURE_VALUED), {"rate": 1.5, "k": 0.45})])
def test_cuda_backend_matches_the_cpu_on_the_same_streams(monkeypatch, family, ests, params_):
    """The Bernoulli family with ARM, REBAR (its own stream) and the leave-one-out baseline,
    and the exponential family's measure-valued variants (its own stream), on the CUDA
    backend (the simulator in tox -e cudasim): the CPU's numbers to the tolerance of
    tests/test_cuda.py, on the same Philox streams."""
    from harness.backends import cuda

    monkeypatch.setattr(cuda, "MIN_CHUNK_PAIRS", 64)
    seeds = np.array([0, 7, 2**40 + 3])
    comps = registry.FAMILIES[family].params
    for n in (3, 1001):
        args = (family, "quadratic", ests, comps, params_, n, seeds)
        (eg, vg), (ec, vc) = cuda.estimate(*args), cpu.estimate(*args)
        assert np.all(np.abs(eg - ec) <= 1e-12 * (np.abs(ec) + np.sqrt(vc))), n
        assert np.allclose(vg, vc, rtol=1e-10, atol=0), n
