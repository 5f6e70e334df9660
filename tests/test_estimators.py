"""Every registered estimator variant x cost x component against exact references.

The check (``tests/conformance.py``): R seeds of N samples, z-scores of the mean, the pooled
within-seed variance and the spread across seeds against the exact gradient and variances
(finite-N values where an estimator's module gives them), or, without an independent reference
(``exact_source: none``), the across-seed variance against the within-seed variance / N; every
|z| < Z = 5.  The same functions must reject deliberately wrong estimators (biased, scaled,
extra noise, noise shared by the samples of a seed, a missing antithetic draw), compared
against the references of the estimator they impersonate.

Cases are generated from the registry (every estimator with every option combination, every
cost it can run on), so a new estimator or cost is checked without changes here
(``test_new_estimator_and_cost_are_picked_up_automatically``).
One fused serial kernel per cost serves every variant (compile time dominates the suite).
"""

import math

import numpy as np
import pytest
from conformance import (
    COMPONENTS,
    FAMILIES,
    FAMILY,
    FAMILY_POINTS,
    POINTS,
    N,
    Z,
    all_labels,
    applicable,
    conformance_components,
    conformance_labels,
    expected,
    params,
    run,
    z_scores,
)
from numba import njit

from harness import exact, registry
from harness.axes import ClosedForms, Cost, Estimator
from harness.rng import SECOND_VARIATE_OFFSET, uniform_pair

# Cases where a finite-N reference is a first-order (delta-method) approximation that is not
# accurate at N = 2000: delta_cv's estimated coefficient on a cos cost under the gamma family,
# rate component, at shape 0.3 and shape 1 (the regressor h s - G_h is heavy-tailed: e^3
# terms), where the O(1/N) term is 1-6 times V* and the measured variance is below it
# (e.g. shape 1, rate 2, k 1: 0.084 +- 0.005 measured, 0.119 first order, V* 0.066).  At
# N = 1e5 they agree for shape 1 (``test_delta_cv_finite_n_on_gamma_holds_at_large_n``);
# shape 0.3 is still 5.3 SE low there (measured, not checked: N = 1e6 is too slow for the
# suite).  Strict: if the approximation is ever improved, these must be moved back.
FIRST_ORDER_TOO_COARSE = {("delta_cv[coefficient=estimated]", "cos", "rate", (0.3, 1.0, 0.5),
                           "gamma"),
                          ("delta_cv[coefficient=estimated]", "cos", "rate", (1.0, 2.0, 1.0),
                           "gamma")}


# Under these families ``square`` is ``quadratic`` at k = 0 with no other code: the family's
# and the estimators' kernel code is the same, f = x^2 and f' = 2x run in the square kernels of
# the other families, and the closed forms are quadratic's at k = 0 (checked against scipy's
# quadrature, without kernels, in tests/test_gamma.py and tests/test_beta.py).  Their square
# kernels would compile 30 more term kernels (~2 s each per Python) for no new code path.
SQUARE_IS_QUADRATIC_AT_ZERO = ("gamma", "beta")


def cases():
    """(label, cost, component, point, family) for every family, cost and estimator variant
    the registry allows (``conformance_labels``: numeric options in full on the toy cost;
    ``SQUARE_IS_QUADRATIC_AT_ZERO``)."""
    return [(label, cost, comp, point, family)
            for family in FAMILIES for cost in registry.COSTS
            if not (cost == "square" and family in SQUARE_IS_QUADRATIC_AT_ZERO)
            for label in conformance_labels(cost, family)
            for comp in registry.supported_components(label, family,
                                                      conformance_components(cost, family))
            for point in FAMILY_POINTS[family]]


def marked_cases():
    """``cases()`` with those of ``FIRST_ORDER_TOO_COARSE`` as strict expected failures."""
    return [pytest.param(*case, marks=pytest.mark.xfail(
                strict=True, reason="first-order finite-N variance too coarse at N = 2000"))
            if case in FIRST_ORDER_TOO_COARSE else case for case in cases()]


def test_delta_cv_finite_n_on_gamma_holds_at_large_n():
    """The shape-1 case of ``FIRST_ORDER_TOO_COARSE`` at N = 1e5, where the first-order
    finite-N variance is accurate: the same check passes.  The estimator alone: its term
    kernel is the conformance check's (one per variant and component, whatever else a cell
    runs), and its numbers do not depend on the other terms of a cell, so fusing the other
    variants would only compute 4e7 samples of terms nobody checks here."""
    for label, cost, comp, point, family in sorted(FIRST_ORDER_TOO_COARSE):
        if point[0] < 1.0:
            continue
        z = z_scores(label, label, cost, comp, point, fused=(label,),
                     n=100_000, r=400, family=family)
        assert max(abs(v) for v in z.values()) < Z, (point, z)


@pytest.mark.parametrize("estimator,cost,component,point,family", marked_cases())
def test_estimator_matches_exact_mean_and_variance(estimator, cost, component, point, family):
    """Biased estimators (relaxations) against their own exact expectation, every other one
    against the exact gradient (``conformance.expected``)."""
    z = z_scores(estimator, estimator, cost, component, point,
                 fused=conformance_labels(cost, family), family=family)
    assert max(abs(v) for v in z.values()) < Z, z


def test_every_variant_has_an_independent_exact_variance():
    for family in FAMILIES:
        for cost in registry.COSTS:
            for label in applicable(cost, family):
                for comp in registry.supported_components(
                        label, family, registry.get_family(family).params):
                    ref = exact.references(label, comp, family, cost,
                                           params(cost, FAMILY_POINTS[family][0], family))
                    assert ref.source in ("closed_form", "quadrature"), (label, cost, family)
                    assert math.isfinite(ref.var) and math.isfinite(ref.estimator_mean), \
                        (label, cost, comp, family, ref)


# ---- deliberately wrong estimators: the same check must reject each ------------------------

@njit
def shifted_score(component, s, family, cost, consts):
    e = s.e + 0.05
    return s.f * e / s.theta[1] if component == 0 else s.f * (e * e - 1.0) / s.theta[1]


@njit
def scaled_pathwise(component, s, family, cost, consts):
    return 1.03 * s.df * family.dx_dtheta(component, s.theta, s.e)


@njit
def noisy_pathwise(component, s, family, cost, consts):
    # unbiased (the added noise has mean 0) but with extra variance 2 * 0.6^2 sigma^2
    u0, u1 = uniform_pair(s.key0, s.key1, s.index, 1)
    noise = 0.6 * s.theta[1] * (u0 - 0.5) * math.sqrt(12.0) * math.sqrt(2.0)
    return s.df * family.dx_dtheta(component, s.theta, s.e) + noise


@njit
def shared_noise_pathwise(component, s, family, cost, consts):
    # unbiased, but the noise is drawn once per seed (index 0) and shared by its samples: the
    # within-seed variance misses it, the variance across seeds does not
    u0, u1 = uniform_pair(s.key0, s.key1, 0, 1)
    noise = 2.0 * s.theta[1] * (u0 - 0.5) * math.sqrt(12.0)
    return s.df * family.dx_dtheta(component, s.theta, s.e) + noise


@njit
def mv_wrong_constant(component, s, family, cost, consts):
    # measure-valued with the Rayleigh constant 1/sigma instead of 1/(sigma sqrt(2 pi))
    mu, sigma = s.theta
    u0, u1 = uniform_pair(s.key0, s.key1, s.index, 1)
    w = math.sqrt(-2.0 * math.log(u0))
    if component == 0:
        return (cost.value(mu + sigma * w, s.k) - cost.value(mu - sigma * w, s.k)) / sigma
    return (cost.value(mu + sigma * w, s.k) - s.f) / sigma


@njit
def antithetic_same_draw(component, s, family, cost, consts):
    # "antithetic" pathwise whose second draw is e itself, not antithetic(e): the pathwise
    # estimator, unbiased, with the pathwise variance instead of the antithetic one
    x2 = family.to_x(s.theta, s.e)
    return 0.5 * (s.df + cost.derivative(x2, s.k)) * family.dx_dtheta(component, s.theta, s.e)


WRONG = {  # name -> (per_sample, impersonated estimator)
    "shifted_score": (shifted_score, "score_function"),
    "scaled_pathwise": (scaled_pathwise, "pathwise"),
    "noisy_pathwise": (noisy_pathwise, "pathwise"),
    "mv_wrong_constant": (mv_wrong_constant, "measure_valued"),
    "antithetic_same_draw": (antithetic_same_draw, "antithetic_pathwise"),
}


def _register_wrong(monkeypatch, name, fn, impersonates, reference=True):
    """Register ``fn`` under ``name`` with the needs of ``impersonates`` (and, if
    ``reference``, its reference: the check compares against the impersonated estimator)."""
    real = registry.ESTIMATORS[impersonates]
    monkeypatch.setitem(registry.ESTIMATORS, name, Estimator(
        name=name, per_sample=fn, evals_per_sample=1, description="deliberately wrong",
        needs=real.needs, families=real.families,
        reference=real.reference if reference else None))


@pytest.fixture
def wrong_registered(monkeypatch):
    for name, (fn, impersonates) in WRONG.items():
        _register_wrong(monkeypatch, name, fn, impersonates)
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
    # at mu = k the pathwise and antithetic sigma-terms of a quadratic have the same variance
    and not (wrong == "antithetic_same_draw" and point == ZERO_MU_GRADIENT
             and component == "sigma")
])
def test_same_check_rejects_wrong_estimators(wrong_registered, wrong, component, point):
    z = z_scores(wrong, WRONG[wrong][1], "quadratic", component, point,
                 fused=tuple(sorted(WRONG)))
    assert max(abs(v) for v in z.values()) > Z, z


# ---- no circular references --------------------------------------------------------------------

def test_a_circular_reference_is_impossible(monkeypatch):
    """An estimator without an independent reference gets exact_source none and a NaN
    variance, never its own variance: nothing in harness.exact calls per_sample."""
    calls = []

    def per_sample(*args):  # a kernel function that records any call from the references
        calls.append(args)
        return 0.0

    monkeypatch.setitem(registry.ESTIMATORS, "no_reference", Estimator(
        name="no_reference", per_sample=per_sample, evals_per_sample=1,
        description="no reference"))
    registry._resolve.cache_clear()
    try:
        for cost in registry.COSTS:
            for comp in COMPONENTS:
                grad, var, source = exact.reference("no_reference", comp, FAMILY, cost,
                                                    params(cost, POINTS[0]))
                closed = registry.COSTS[cost].closed_forms[FAMILY].grad(
                    **params(cost, POINTS[0]))[comp]
                assert (source, math.isnan(var), grad) == ("none", True, closed)
        assert calls == []
    finally:
        registry._resolve.cache_clear()


def test_without_a_reference_the_variance_is_checked_across_seeds(monkeypatch):
    """exact_source none: pathwise without its reference passes the consistency check, and
    the same check rejects noise shared by a seed's samples (right mean, within-seed variance
    too small) and a biased estimator."""
    for name, fn in (("pathwise_unreferenced", registry.ESTIMATORS["pathwise"].per_sample),
                     ("shared_noise_pathwise", shared_noise_pathwise),
                     ("scaled_pathwise", scaled_pathwise)):
        _register_wrong(monkeypatch, name, fn, "pathwise", reference=False)
    registry._resolve.cache_clear()
    try:
        fused = ("pathwise_unreferenced", "shared_noise_pathwise", "scaled_pathwise")
        for comp in COMPONENTS:
            for label in fused:
                assert expected(label, "quadratic", comp, ASYMMETRIC, N)[3] == "none"
                z = z_scores(label, label, "quadratic", comp, ASYMMETRIC, fused=fused)
                if label == "pathwise_unreferenced":
                    assert max(abs(v) for v in z.values()) < Z, (comp, z)
                else:
                    assert max(abs(v) for v in z.values()) > Z, (label, comp, z)
    finally:
        registry._resolve.cache_clear()


# ---- baselines never bias the estimate -------------------------------------------------------

BASELINES = [label for label in all_labels()
             if label.startswith(("score_function", "delta_cv"))]
FAR_FROM_ZERO = (1.0, 1.0, -1.0)      # quadratic: gradient (4, 2), per-sample sd ~ 10


@njit
def self_mean_baseline(component, s, family, cost, consts):
    # wrong: a "mean" baseline that includes sample i itself (the biased, tempting choice):
    # accumulated like the leave-one-out one, but b = mean over all N samples
    score = family.score(component, s.theta, s.e)
    ft = s.f - consts[0]
    return ft * score, ft, score, ft * ft * score * score, ft * score * score, score * score


def _estimate_self_mean(means, variances, n, consts):
    fs, f_mean, s_mean = means[:, 0], means[:, 1], means[:, 2]
    estimate = fs - f_mean * s_mean
    return estimate, np.full_like(estimate, np.nan)


def test_baselines_are_unbiased_at_small_n_and_a_self_including_mean_is_not(monkeypatch):
    """At N = 4 an O(1/N) bias would be 25% of the gradient; R = 40000 seeds resolve ~1%.
    There the leave-one-out variance matches its exact finite-N values (``finite_n``: the
    variance of a sample covariance) and, wrt mu, visibly not the N -> infinity reference
    (27% above it: the correction the conformance check applies is not negligible)."""
    n, r = 4, 40_000
    loo = registry.resolve("score_function[baseline=mean]")
    monkeypatch.setitem(registry.ESTIMATORS, "self_mean_baseline", Estimator(
        name="self_mean_baseline", per_sample=self_mean_baseline, evals_per_sample=1,
        description="deliberately biased", n_moments=6,
        moments_to_estimate=_estimate_self_mean, n_consts=1, prepare=loo.prepare))
    registry._resolve.cache_clear()
    try:
        labels = (*BASELINES, "self_mean_baseline")
        results = run(labels, "quadratic", FAR_FROM_ZERO, n, r)
        for label in labels:
            for comp in COMPONENTS:
                e, _ = results[(label, comp)]
                grad = exact.reference("score_function", comp, FAMILY, "quadratic",
                                       params("quadratic", FAR_FROM_ZERO))[0]
                z = (e.mean() - grad) / (e.std(ddof=1) / math.sqrt(r))
                if label == "self_mean_baseline":
                    assert abs(z) > Z, (label, comp, z)   # biased by -grad / N
                else:
                    assert abs(z) < Z, (label, comp, z)
        loo = "score_function[baseline=mean]"
        for comp in COMPONENTS:
            e, v = results[(loo, comp)]
            _, pooled, spread_n, _ = expected(loo, "quadratic", comp, FAR_FROM_ZERO, n)
            limit = exact.reference(loo, comp, FAMILY, "quadratic",
                                    params("quadratic", FAR_FROM_ZERO))[1]
            se = ((e - e.mean()) ** 2).std(ddof=1) / math.sqrt(r)
            assert abs(e.var(ddof=1) - spread_n / n) < Z * se, (comp, e.var(ddof=1) * n, spread_n)
            assert abs(v.mean() - pooled) < Z * v.std(ddof=1) / math.sqrt(r), (comp, v.mean())
            if comp == "mu":
                assert abs(e.var(ddof=1) - limit / n) > Z * se, (e.var(ddof=1) * n, limit)
    finally:
        registry._resolve.cache_clear()


# ---- the variance of the N-sample estimate falls like 1/N -------------------------------------

@pytest.mark.parametrize("cost", ["quadratic", "exp"])
def test_variance_of_the_estimate_falls_like_one_over_n(cost):
    """N Var[estimate] at each N within Z SE of its exact value: exact_var for per-sample
    variants (and then the log-log slope of Var within 0.1 of -1), the module's finite-N value
    for variants with sample-estimated baselines or coefficients (``finite_n``: exact for the
    leave-one-out mean, first order in 1/N for the estimated optimal baseline and
    control-variate coefficient, so those only at N where the first-order excess is below
    10% of exact_var: the neglected O(1/N^2) term, of the order of its square, is then below
    the SE).  Zero-variance estimators (delta_cv on a quadratic cost) are checked elsewhere."""
    point, r = POINTS[0], 1000
    labels = applicable(cost)
    ns = (10, 100, 1000, 10_000)
    per_n = {n: run(labels, cost, point, n, r) for n in ns}
    for label in labels:
        v = registry.resolve(label)
        for comp in COMPONENTS:
            if expected(label, cost, comp, point, 10_000)[2] < 1e-20:
                continue
            v_exact = exact.reference(label, comp, FAMILY, cost, params(cost, point))[1]
            scaled = []
            for n in ns:
                var_n = expected(label, cost, comp, point, n)[2] / n
                if v.finite_n is not None and label != "score_function[baseline=mean]" and \
                        var_n * n > 1.1 * v_exact:
                    continue  # first order only: not where the correction is large
                e, _ = per_n[n][(label, comp)]
                var = e.var(ddof=1)
                se = ((e - e.mean()) ** 2).std(ddof=1) / math.sqrt(r)
                assert abs(var - var_n) < Z * se, (label, comp, n, var * n, var_n * n)
                scaled.append(var)
            assert len(scaled) >= 1, (label, comp)
            if v.finite_n is None:  # no excess: a clean -1 slope
                slope = np.polyfit(np.log(ns), np.log(scaled), 1)[0]
                assert abs(slope + 1.0) < 0.1, (label, comp, slope)


# ---- a new estimator or cost needs only its module and registry line -------------------------

@njit
def antithetic_score(component, s, family, cost, consts):
    """Score function averaged over the antithetic pair eps, -eps (unbiased)."""
    mu, sigma = s.theta
    f_minus = cost.value(mu - sigma * s.e, s.k)
    if component == 0:
        return (s.f - f_minus) * s.e / (2.0 * sigma)
    return (s.f + f_minus) * (s.e * s.e - 1.0) / (2.0 * sigma)


@njit
def quartic_value(x, k):
    return x * x * x * x


@njit
def quartic_derivative(x, k):
    return 4.0 * x * x * x


QUARTIC = Cost(
    name="quartic", params=(), value=quartic_value, derivative=quartic_derivative,
    description="x^4 (test plug-in, no closed forms: quadrature references)")


def test_new_estimator_and_cost_are_picked_up_automatically(monkeypatch):
    before = set(cases())
    monkeypatch.setitem(registry.ESTIMATORS, "antithetic_score", Estimator(
        name="antithetic_score", per_sample=antithetic_score, evals_per_sample=2,
        description="test plug-in without a reference", families=("normal",)))
    monkeypatch.setitem(registry.COSTS, "quartic", QUARTIC)
    registry._resolve.cache_clear()
    try:
        new = [c for c in cases() if c not in before]
        assert {(c[0], c[1]) for c in new} >= {("antithetic_score", "quadratic"),
                                               ("score_function", "quartic"),
                                               ("antithetic_score", "quartic"),
                                               ("antithetic_pathwise", "quartic"),
                                               ("arm", "quartic"), ("rebar", "quartic")}
        # the same conformance check, on the new entries (one fused kernel for all of them)
        fused = ("antithetic_score", "score_function", "pathwise")
        for label, cost, comp, point, family in new:
            if cost in ("quadratic", "quartic") and label in fused and point == POINTS[0] \
                    and family == FAMILY:
                z = z_scores(label, label, cost, comp, point, fused=fused)
                assert max(abs(v) for v in z.values()) < Z, (label, cost, comp, z)
        # the quartic has no closed forms: gradient and variances by quadrature
        grad, _, source = exact.reference("pathwise", "mu", FAMILY, "quartic",
                                          {"mu": 2.0, "sigma": 1.0})
        assert source == "quadrature" and grad == pytest.approx(4 * 8 + 12 * 2, rel=1e-12)
    finally:
        registry._resolve.cache_clear()


# ---- exact references -------------------------------------------------------------------------

@pytest.mark.parametrize("cost", sorted(registry.COSTS))
@pytest.mark.parametrize("point", POINTS)
def test_closed_forms_agree_with_the_estimators_own_transcriptions(cost, point):
    """Two independent derivations of each closed-form variance: the cost module's formula
    and the estimator module's NumPy transcription of its definition (quadrature)."""
    c, p = registry.COSTS[cost], params(cost, point)
    forms = c.closed_forms[FAMILY]
    assert forms.variance, f"{cost} has no closed-form variances"
    for (label, comp), closed in forms.variance.items():
        mean, var = registry.resolve(label).reference(registry.FAMILIES[FAMILY], c, comp, p)
        assert mean == pytest.approx(forms.grad(**p)[comp], rel=1e-9, abs=1e-10), (label, comp)
        assert var == pytest.approx(closed(**p), rel=1e-9, abs=1e-12), (label, comp)


@pytest.mark.parametrize("cost", sorted(registry.COSTS))
def test_quadrature_references_reproduce_the_exact_gradient(cost):
    """Every variant's own reference integrates to the closed-form gradient: a check of its
    quadrature rule (Rayleigh, Maxwell, 2-D coupled) and of its unbiasedness algebra; the
    quadrature gradient E[f s] of exact.gradient agrees too."""
    c, fam = registry.COSTS[cost], registry.FAMILIES[FAMILY]
    for point in POINTS:
        p = params(cost, point)
        for comp in COMPONENTS:
            grad = c.closed_forms[FAMILY].grad(**p)[comp]
            assert exact.gradient(fam, c, comp, p) == pytest.approx(grad, rel=1e-9, abs=1e-10)
            for label in applicable(cost):
                mean, var = registry.resolve(label).reference(fam, c, comp, p)
                assert mean == pytest.approx(grad, rel=1e-8, abs=1e-9), (label, comp, point)
                assert var >= 0


def test_exact_optimal_baseline_minimises_the_variance():
    for cost in ("quadratic", "exp", "cos"):
        for comp in COMPONENTS:
            v = {b: exact.reference(f"score_function[baseline={b}]", comp, FAMILY, cost,
                                    params(cost, POINTS[0]))[1]
                 for b in ("none", "mean", "exact_optimal")}
            assert v["exact_optimal"] <= min(v["none"], v["mean"]) * (1 + 1e-12), (cost, comp, v)


def test_seed_000_numbers():
    # the seed: q = N(2, 1), f = x^2: gradient 4, per-sample variances 87 and 4
    p = {"mu": 2.0, "sigma": 1.0}
    assert exact.reference("score_function", "mu", FAMILY, "square", p) == (4.0, 87.0,
                                                                             "closed_form")
    assert exact.reference("pathwise", "mu", FAMILY, "square", p) == (4.0, 4.0, "closed_form")


def test_exact_mean_gradient_by_finite_differences():
    for c in registry.COSTS.values():
        forms = c.closed_forms[FAMILY]
        for point in POINTS:
            p = params(c.name, point)
            h = 1e-5
            g = forms.grad(**p)
            for comp in COMPONENTS:
                up, down = forms.mean(**{**p, comp: p[comp] + h}), \
                    forms.mean(**{**p, comp: p[comp] - h})
                assert (up - down) / (2 * h) == pytest.approx(g[comp], rel=1e-6, abs=1e-8)


def test_second_derivatives_by_finite_differences():
    for c in registry.COSTS.values():
        if c.second_derivative is None:
            continue
        for x in (-1.3, 0.2, 0.9):
            for k in (0.5, 2.0):
                h = 1e-6
                fd = (c.derivative(x + h, k) - c.derivative(x - h, k)) / (2 * h)
                assert c.second_derivative(x, k) == pytest.approx(fd, rel=1e-6, abs=1e-6)


# ---- labels, options and declarations -----------------------------------------------------------

def test_labels_round_trip_and_resolve_to_variants():
    for label in all_labels():
        name, options = registry.parse_label(label)
        assert registry.label(name, options) == label
        assert registry.resolve(label).name == label
    assert registry.resolve("measure_valued[coupling=false]").per_sample is not \
        registry.resolve("measure_valued").per_sample
    assert registry.resolve("score_function[baseline=optimal]").evals_per_sample == 2
    assert registry.resolve("antithetic_pathwise").evals_per_sample == 2


def test_declared_streams_do_not_collide():
    """Own streams are in 1 .. 2**29 - 1 (0 is the main samples, 2**29 + s a family's second
    variate, 2**30 + s rejection attempts, 2**31 + s copies) and no two estimators share one
    (common random numbers across estimators come from stream 0)."""
    owners = {}
    for name in registry.ESTIMATORS:
        for label in registry.variants(name):
            for stream in registry.resolve(label).streams:
                assert 0 < stream < SECOND_VARIATE_OFFSET, (label, stream)
                assert owners.setdefault(stream, name) == name, (label, stream, owners[stream])


def test_combinations_that_cannot_work_are_rejected_before_running():
    from harness.errors import ConfigError

    no_second = Cost(name="no_f2", params=(), value=quartic_value,
                     derivative=quartic_derivative,
                     closed_forms={FAMILY: ClosedForms(mean=None, grad=None)})
    for label in ("delta_cv", "delta_cv[coefficient=estimated]"):
        with pytest.raises(ConfigError, match="needs the second derivative of the cost"):
            registry.check_combination(label, FAMILY, no_second)
    registry.check_combination("antithetic_pathwise", FAMILY, no_second)  # has f'
    no_derivative = Cost(name="step", params=(), value=quartic_value)
    for label in ("pathwise", "antithetic_pathwise", "delta_cv"):
        with pytest.raises(ConfigError, match="needs the derivative of the cost") as info:
            registry.check_combination(label, FAMILY, no_derivative)
        assert "\n" not in str(info.value) and "use score_function" in str(info.value)


def test_validate_rejects_delta_cv_on_a_cost_without_a_second_derivative(monkeypatch):
    """Before issue 9 this grid passed validation and failed when run; now the config loader
    rejects it at the estimator's line, in one line."""
    from harness.config import parse_grid
    from harness.errors import ConfigError

    monkeypatch.setitem(registry.COSTS, "no_f2", Cost(
        name="no_f2", params=(), value=quartic_value, derivative=quartic_derivative))
    text = ("problem:\n  distribution: normal\n  cost: no_f2\n  mu: 2.0\n  sigma: 1.0\n"
            "estimators: [pathwise, delta_cv]\nn_samples: 100\nseeds: 3\n")
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    message = str(info.value)
    assert message.startswith("g.yaml:6: estimators[1]: delta_cv needs the second derivative")
    assert "\n" not in message
    parse_grid(text.replace(", delta_cv", ""), "g.yaml")  # pathwise alone is fine
