"""REBAR on the categorical family (``rebar`` with ``per_sample_categorical``): its exact
references against independent computations, the kernel against them in standard-error units
(z = 5) at K = 2, 3 and 4, and deliberately wrong variants the same checks must reject.

Independent computations: the Bernoulli REBAR's reference (K = 2 is the Bernoulli REBAR at
logit = l_1 - l_0, negated for l_0), the exact gradient as a sum over the categories written
here (REBAR is unbiased, so its reference mean must be it), and a plain-NumPy simulation of
the definition (numpy's Gumbels, argmax, the conditional sampler written from the truncated
Gumbel's CDF, the relaxations' derivatives by central finite differences in the logits).
The conformance check over the registry (``tests/test_estimators.py``) covers K = 3 on every
cost, and ``tests/test_kernel.py`` the thread counts.
"""

import math

import numpy as np
import pytest
from conformance import Z, conformance_components, z_scores
from numba import njit

from harness import exact, registry
from harness.axes import Estimator
from harness.backends import cpu
from harness.estimators import rebar
from harness.estimators.relaxed_categorical import relaxed_index

LABELS = registry.variants("rebar")   # every (temperature, eta)
K3 = {"logits[0]": 0.2, "logits[1]": -0.5, "logits[2]": 1.0, "k": 0.8}
# (logits..., k) per K for the kernel checks: unequal probabilities, k between categories
POINTS = {2: (0.4, -0.3, 0.7), 3: (0.2, -0.5, 1.0, 0.8), 4: (0.1, 0.9, -0.6, 0.3, 1.6)}


def pmf(logits):
    m = max(logits)
    w = [math.exp(x - m) for x in logits]
    return [x / sum(w) for x in w]


# ---- references against independent computations -----------------------------------------------

@pytest.mark.parametrize("cost", ["quadratic", "cos"])
@pytest.mark.parametrize("label", LABELS)
def test_two_categories_are_the_bernoulli_rebar(cost, label):
    """K = 2: the sector quadrature of the categorical REBAR against the Bernoulli REBAR's
    logistic-rule quadrature at logit = l_1 - l_0, same temperature and eta: the mean is
    +-the Bernoulli's (l_1, l_0), the variance the same (~1e-8 relative: the sector rule)."""
    l0, l1, k = 0.4, -0.3, 0.7
    b = exact.references(label, "logit", "bernoulli", cost, {"logit": l1 - l0, "k": k})
    b_mean, _ = registry.resolve(label).reference(
        registry.get_family("bernoulli"), registry.COSTS[cost], "logit",
        {"logit": l1 - l0, "k": k})
    for comp, sign in (("logits[1]", 1.0), ("logits[0]", -1.0)):
        c = exact.references(label, comp, "categorical[K=2]", cost,
                             {"logits[0]": l0, "logits[1]": l1, "k": k})
        mean, var = registry.resolve(label).reference(
            registry.get_family("categorical[K=2]"), registry.COSTS[cost], comp,
            {"logits[0]": l0, "logits[1]": l1, "k": k})
        assert c.source == "quadrature" and c.estimator_mean == c.grad
        assert c.grad == pytest.approx(sign * b.grad, rel=1e-12)
        assert mean == pytest.approx(sign * b_mean, rel=1e-7), (label, comp)
        assert var == pytest.approx(b.var, rel=1e-7), (label, comp)


@pytest.mark.parametrize("cost", ["quadratic", "cos", "exp"])
def test_three_category_reference_mean_is_the_exact_gradient(cost):
    """REBAR is unbiased: the sector quadrature's mean is p_j (f(j) - E f) (a sum written
    here) for every component and option, to the quadrature's accuracy."""
    logits = [K3["logits[0]"], K3["logits[1]"], K3["logits[2]"]]
    p = pmf(logits)
    fs = [float(registry.COSTS[cost].value(float(b), K3["k"])) for b in range(3)]
    mean_f = sum(pb * fb for pb, fb in zip(p, fs))
    fam = registry.get_family("categorical[K=3]")
    for label in LABELS:
        for j in range(3):
            mean, var = registry.resolve(label).reference(fam, registry.COSTS[cost],
                                                          f"logits[{j}]", K3)
            assert mean == pytest.approx(p[j] * (fs[j] - mean_f), abs=1e-7), (label, j)
            assert var > 0.0


def simulate(logits, tau, eta, value, n, seed, conditional=True):
    """Per-sample REBAR terms g (n, K) from the definition in NumPy: Gumbel-max b, the
    conditional sampler z~ | b from the truncated Gumbel's inverse CDF, and the relaxations'
    gradients by central differences in the logits (z at fixed G; z~ at fixed v and b);
    ``value`` the cost as a NumPy function of the index.  ``conditional=False``: the
    unconditional z in place of z~ (a wrong estimator)."""
    rng = np.random.default_rng(seed)
    logits = np.asarray(logits, dtype=float)
    kk = logits.size
    gumbels = rng.gumbel(size=(n, kk))
    v = rng.uniform(size=(n, kk))
    b = np.argmax(logits + gumbels, axis=1)
    rows = np.arange(n)

    def relaxed_cost(z):
        s = np.exp((z - z.max(axis=1, keepdims=True)) / tau)
        y = (s / s.sum(axis=1, keepdims=True)) @ np.arange(kk)
        return value(y)

    def conditional_z(ls):
        # the maximum is Gumbel(log Z); the others Gumbel(l_i) truncated below it:
        # P(z_i <= t | z_i < M) = exp(-e^{l_i - t} + e^{l_i - M}) = v_i
        top = np.log(np.exp(ls).sum()) - np.log(-np.log(v[rows, b]))
        z = -np.log(np.exp(-top)[:, None] - np.log(v) * np.exp(-ls))
        z[rows, b] = top
        return z

    def fd(make):
        h = 1e-5
        out = np.empty((n, kk))
        for j in range(kk):
            step = np.zeros(kk)
            step[j] = h
            out[:, j] = (relaxed_cost(make(logits + step)) - relaxed_cost(make(logits - step))) \
                / (2 * h)
        return out

    def free(ls):
        return ls + gumbels

    cond = conditional_z if conditional else free
    p = np.exp(logits - logits.max())
    p /= p.sum()
    score = (b[:, None] == np.arange(kk)).astype(float) - p
    f_b = value(b.astype(float))
    return ((f_b - eta * relaxed_cost(cond(logits)))[:, None] * score
            + eta * (fd(free) - fd(cond)))


@pytest.mark.parametrize("tau, eta", [(0.5, 1.0), (0.1, 0.5), (2.0, 1.0)])
def test_three_category_reference_matches_a_numpy_simulation(tau, eta):
    """K = 3, quadratic cost (written here): the sector quadrature's mean and variance
    against 2e5 draws of the NumPy simulation, in SE units (|z| < Z), each component.  The
    same check rejects the simulation with the unconditional z in place of z~ (biased; worst
    |z| measured 126 at tau = 2, 1359 at tau = 0.5, 4114 at tau = 0.1, printed with -s)."""
    logits = [K3["logits[0]"], K3["logits[1]"], K3["logits[2]"]]
    cost, n = registry.COSTS["quadratic"], 200_000

    def quadratic(x):
        return (x - K3["k"]) ** 2

    g = simulate(logits, tau, eta, quadratic, n, seed=3)
    wrong = simulate(logits, tau, eta, quadratic, n, seed=4, conditional=False)
    worst_wrong = 0.0
    label = registry.label("rebar", [(key, val) for key, val in (("temperature", tau),
                                                                 ("eta", eta))
                                     if val != registry.ESTIMATORS["rebar"].defaults[key]])
    fam = registry.get_family("categorical[K=3]")
    for j in range(3):
        mean, var = registry.resolve(label).reference(fam, cost, f"logits[{j}]", K3)
        dev = (g[:, j] - mean) ** 2
        z_mean = (g[:, j].mean() - mean) / math.sqrt(var / n)
        z_var = (dev.mean() - var) / (dev.std() / math.sqrt(n))
        assert abs(z_mean) < Z and abs(z_var) < Z, (j, z_mean, z_var)
        # the variance check has power: a 20 % error would be > 2 Z standard errors off
        assert 0.2 * var > 2 * Z * dev.std() / math.sqrt(n)
        print(f"tau {tau} eta {eta} logits[{j}]: z mean {z_mean:+.2f}, z var {z_var:+.2f}")
        w_dev = (wrong[:, j] - mean) ** 2
        worst_wrong = max(worst_wrong, abs(wrong[:, j].mean() - mean) / math.sqrt(var / n),
                          abs(w_dev.mean() - var) / (w_dev.std() / math.sqrt(n)))
    print(f"tau {tau} eta {eta}: unconditional z~, worst |z| {worst_wrong:.1f}")
    assert worst_wrong > Z, worst_wrong


def test_references_beyond_three_categories_are_none():
    p = {"logits[0]": 0.1, "logits[1]": 0.2, "logits[2]": -0.3, "logits[3]": 0.0, "k": 1.0}
    ref = exact.references("rebar", "logits[2]", "categorical[K=4]", "quadratic", p)
    assert ref.source == "none" and math.isnan(ref.var)
    assert ref.estimator_mean == ref.grad and math.isfinite(ref.grad)


# ---- the kernel against the references (conformance check, z = 5) -------------------------------

def kernel_cases():
    """(K, cost, component): every component on the toy cost (quadratic), logits[1] on cos
    (``conformance_components``: one kernel per component)."""
    return [(kk, cost, comp) for kk in (2, 3, 4) for cost in ("quadratic", "cos")
            for comp in conformance_components(cost, f"categorical[K={kk}]")]


@pytest.mark.parametrize("kk, cost, component", kernel_cases())
def test_kernel_matches_the_references(kk, cost, component):
    """Mean against the exact gradient, pooled and spread variances against the quadrature
    (K = 2, 3); K = 4 (``exact_source: none``): the mean against the gradient and the
    across-seed variance against the within-seed one.  On cos fused with the wrong variants
    below (one kernel run serves both tests)."""
    z = z_scores("rebar", "rebar", cost, component, POINTS[kk], fused=fused(cost),
                 family=f"categorical[K={kk}]")
    assert max(abs(v) for v in z.values()) < Z, z


@njit
def rebar_unconditional(component, s, family, cost, consts):
    # z (coupled to b) in place of z~: the control variate's correction cancels, biased
    tau, eta = consts[0], consts[1]
    p = math.exp(s.theta[component] - rebar.log_normaliser(s.theta))
    y, _, hard = relaxed_index(s.theta, tau, s.key0, s.key1, s.index,
                               rebar.GUMBEL_STREAMS[0], component)
    score = (1.0 if hard == component else 0.0) - p
    return (cost.value(hard, s.k) - eta * cost.value(y, s.k)) * score


@njit
def rebar_without_conditional_slope(component, s, family, cost, consts):
    # drops -eta d/dl f(sigma(z~)): biased by eta times its expectation
    tau, eta = consts[0], consts[1]
    log_norm = rebar.log_normaliser(s.theta)
    p = math.exp(s.theta[component] - log_norm)
    y, z, hard = relaxed_index(s.theta, tau, s.key0, s.key1, s.index,
                               rebar.GUMBEL_STREAMS[0], component)
    y_cond, _ = rebar.conditional_relaxation(s.theta, tau, s.key0, s.key1, s.index, int(hard),
                                             component, log_norm, p)
    score = (1.0 if hard == component else 0.0) - p
    return ((cost.value(hard, s.k) - eta * cost.value(y_cond, s.k)) * score
            + eta * cost.derivative(y, s.k) * z * (component - y) / tau)


@njit
def rebar_decoupled(component, s, family, cost, consts):
    # b = the family's x (its own uniform, independent of the Gumbels z) and z~ | x: every
    # term keeps its expectation (unbiased), but f(b) no longer shares noise with the control
    # variate's free part: another variance
    tau, eta = consts[0], consts[1]
    log_norm = rebar.log_normaliser(s.theta)
    p = math.exp(s.theta[component] - log_norm)
    y, z, _ = relaxed_index(s.theta, tau, s.key0, s.key1, s.index, rebar.GUMBEL_STREAMS[0],
                            component)
    y_cond, jacobian = rebar.conditional_relaxation(s.theta, tau, s.key0, s.key1, s.index,
                                                    int(s.x), component, log_norm, p)
    score = (1.0 if s.x == component else 0.0) - p
    return ((s.f - eta * cost.value(y_cond, s.k)) * score
            + eta * (cost.derivative(y, s.k) * z * (component - y) / tau
                     - cost.derivative(y_cond, s.k) * jacobian))


WRONG = {"rebar_unconditional": rebar_unconditional,
         "rebar_without_conditional_slope": rebar_without_conditional_slope,
         "rebar_decoupled": rebar_decoupled}
WRONG_COST = "cos"   # one component (logits[1]): one kernel per wrong variant and K


def fused(cost):
    """The estimators of the kernel run for ``cost``: the wrong ones on ``WRONG_COST``."""
    return ("rebar", *sorted(WRONG)) if cost == WRONG_COST else ("rebar",)


@pytest.fixture(autouse=True)
def wrong_registered(monkeypatch):
    """The wrong variants as estimators with rebar's constants and references (the kernel
    test fuses them, so they must be registered there too)."""
    real = registry.resolve("rebar")
    for name, fn in WRONG.items():
        monkeypatch.setitem(registry.ESTIMATORS, name, Estimator(
            name=name, per_sample=fn, evals_per_sample=3, description="deliberately wrong",
            needs=real.needs, families=("categorical",), n_consts=2, prepare=real.prepare,
            reference=real.reference))
    registry._resolve.cache_clear()
    yield
    registry._resolve.cache_clear()


@pytest.mark.parametrize("wrong", sorted(WRONG))
@pytest.mark.parametrize("kk", [2, 3, 4])
def test_same_check_rejects_wrong_variants(wrong, kk):
    """Cos cost, logits[1] (the kernel run of the check above): the biased variants by the
    mean; the decoupled one (unbiased) by the variances with the mean accepted; at K = 4 (no
    reference: the mean and the across- vs within-seed consistency) only the biased ones can
    be.  Measured z (mean / pooled / spread), the correct rebar: K = 2 +0.08 / -0.20 / +0.23,
    K = 3 -1.01 / +0.68 / -2.09, K = 4 +0.66 / consistency -0.09; unconditional: K = 2 +486,
    K = 3 -255, K = 4 +61 (mean); without the conditional slope: -88, +51, +67
    (mean); decoupled: mean -0.22 / -0.17 / +0.39, pooled -197 (K = 2) and -37 (K = 3)."""
    z = z_scores(wrong, "rebar", WRONG_COST, "logits[1]", POINTS[kk], fused=fused(WRONG_COST),
                 family=f"categorical[K={kk}]")
    if wrong == "rebar_decoupled":
        assert abs(z["mean"]) < Z, z
        if kk < 4:
            assert max(abs(z["pooled"]), abs(z["spread"])) > Z, z
        return
    assert abs(z["mean"]) > Z, z


def test_two_categories_l0_is_minus_l1_on_the_same_draws():
    """K = 2: g_0 = -g_1 sample by sample (module docstring of ``rebar``), so the estimates
    are negatives and the variances equal, to rounding."""
    est, var = cpu.estimate("categorical[K=2]", "quadratic", ["rebar"],
                            ["logits[0]", "logits[1]"],
                            {"logits[0]": 0.4, "logits[1]": -0.3, "k": 0.7}, 2000,
                            np.arange(3), parallel=False)
    assert np.allclose(est[:, 0, 0], -est[:, 0, 1], rtol=1e-9, atol=1e-12)
    assert np.allclose(var[:, 0, 0], var[:, 0, 1], rtol=1e-9)


def test_extreme_logits_give_finite_terms():
    """Logits 800 apart (the conditional sampler's e^{z~_b - l_i} overflows to inf for the
    lowest): every estimate and variance finite, and the gradient of a near-certain category
    estimated as ~0."""
    for logits in ((800.0, 0.0, -800.0), (-800.0, 0.0, 800.0), (0.0, 0.0, 0.0)):
        params = {f"logits[{j}]": x for j, x in enumerate(logits)} | {"k": 0.8}
        est, var = cpu.estimate("categorical[K=3]", "quadratic", ["rebar"], ["logits[1]"],
                                params, 2000, np.arange(2), parallel=False)
        assert np.isfinite(est).all() and np.isfinite(var).all(), (logits, est, var)
        if logits[0] != 0.0:
            assert np.all(np.abs(est) < 1e-6), (logits, est)
