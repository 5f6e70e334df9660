"""The conformance check shared by tests/test_estimators.py and tests/test_user_cost.py.

For one (estimator, cost, component, point) we run R seeds of N samples and compute z-scores,
each in units of its own standard error (the tests require |z| < Z = 5):
  - mean:      mean over seeds of the N-sample estimate vs the exact gradient,
               SE = sqrt(Var[g] / (N R));
  - pooled:    mean over seeds of the within-seed sample variance vs its exact expectation,
               SE = sd(sample_var) / sqrt(R);
  - spread:    variance across seeds of the estimate vs its exact value Var[g] / N,
               SE = sd((e - mean e)^2) / sqrt(R).
For a biased estimator (``Estimator.biased``: relaxations, straight-through) the mean is
compared with its own exact expectation (``harness.exact.references(...).estimator_mean``),
not with the gradient.
Var[g] is the N -> infinity reference of ``harness.exact``; estimators with sample-estimated
baselines or coefficients differ from it at finite N by O(1/N), and their modules give the
finite-N values (``Estimator.finite_n``), used instead.
Without an independent reference (``exact_source: none``) the variance is checked another way:
the variance across seeds of the estimate against the mean within-seed variance / N
(``consistency``, per seed d = (e - mean e)^2 R / (R - 1) - v / N, which carries their
correlation), and the mean against the exact gradient in units of the estimated SE.

``cost`` is a built-in cost name or a user cost's hashable key (``registry.cost_key(spec)``),
so that ``run`` can cache one fused kernel per (estimators, cost, point, N, R).
"""

import dataclasses
import functools
import math

import numpy as np

from harness import exact, registry
from harness.backends import cpu

Z = 5.0
N, R = 2000, 400
FAMILY = "normal"
# points per family: the family's parameters in order, then k (ignored by costs without one)
FAMILY_POINTS = {
    # (mu, sigma, k): asymmetric (mu != k), large sigma, small sigma with mu far from k
    "normal": [(2.0, 1.0, 0.5), (0.5, 2.5, 1.0), (-1.5, 0.3, 2.0)],
    # (logit, k): p near 1/2 (the REBAR toy's regime), p small, p large; k > 0 (exp needs it)
    # and k != 1/2 (where the quadratic cost is constant on {0, 1})
    "bernoulli": [(0.3, 0.45), (-1.5, 0.8), (2.0, 2.0)],
    # (rate, k): unit rate, a fast and a slow decay
    "exponential": [(1.0, 0.5), (2.5, 2.0), (0.4, 1.0)],
    # (shape, rate, k): shape < 1 (the boosted sampler, a density unbounded at 0), the
    # exponential case shape = 1, and shape > 1 with a slow rate
    "gamma": [(0.3, 1.0, 0.5), (1.0, 2.0, 1.0), (4.5, 0.7, 2.0)],
    # (a, b, k): the arcsine law (a density unbounded at both ends, both gammas boosted), a
    # skewed law with mass near 0, and one with mass near 1; k inside and outside (0, 1)
    "beta": [(0.5, 0.5, 0.3), (2.0, 5.0, 0.6), (3.0, 1.5, 2.0)],
    # (logits[0], logits[1], logits[2], k): no two probabilities equal, one category rare
    # (p = 0.03), the middle one most likely; k between categories (no f(b) ties on quadratic)
    "categorical[K=3]": [(0.2, -0.5, 1.0, 0.8), (-2.5, 0.3, 0.9, 1.3), (0.5, 1.5, -1.0, 0.4)],
}
# every registered family, and each sized family (registry.FAMILY_FACTORIES) at K = 3
FAMILIES = (*registry.FAMILIES, *(f.name(3) for f in registry.FAMILY_FACTORIES.values()))
POINTS = FAMILY_POINTS[FAMILY]
COMPONENTS = registry.FAMILIES[FAMILY].params


def spec(cost):
    """The cost spec for a name or a user cost's key (a tuple of (key, value) pairs)."""
    return dict(cost) if isinstance(cost, tuple) else cost


def params(cost, point, family=FAMILY) -> dict:
    """The cell's parameters: the family's (normal: mu, sigma) and, for costs that take one,
    k (the point's last entry)."""
    names = registry.get_family(family).params
    has_k = bool(registry.get_cost(spec(cost)).params)
    return {**dict(zip(names, point)), **({"k": point[-1]} if has_k else {})}


def all_labels() -> tuple:
    """Every registered estimator with every combination of its options."""
    return tuple(label for name in registry.ESTIMATORS for label in registry.variants(name))


def applicable(cost, family=FAMILY) -> tuple:
    """The labels that can run on (family, cost)."""
    return tuple(label for label in all_labels()
                 if registry.combination_problem(label, family, spec(cost)) is None)


# Option values that only change a constant (a temperature, a scale eta) give the same code
# with another number: every such variant is checked on TOY_COST (the REBAR / RELAX toy's
# quadratic), the defaults on every other cost.  Each fused kernel compiles in about 5 s per
# term on 2 cores, so the full product on every cost would cost minutes for no new code path.
NUMERIC_OPTIONS = ("temperature", "eta")
TOY_COST = "quadratic"


def conformance_labels(cost, family=FAMILY) -> tuple:
    """The labels the conformance test checks on (family, cost): every applicable variant on
    the normal family and on TOY_COST; elsewhere, and for sized families (the categorical,
    with a kernel per component) everywhere, those with numeric options at their defaults
    (the temperature is a per-cell constant of the same code)."""
    labels = applicable(cost, family)
    if family == "normal" or (cost == TOY_COST and family in registry.FAMILIES):
        return labels
    return tuple(label for label in labels
                 if not any(key in NUMERIC_OPTIONS for key, _ in registry.parse_label(label)[1]))


def conformance_components(cost, family=FAMILY) -> tuple:
    """The components the conformance test checks on (family, cost): every one, except for a
    sized family (the categorical's logits[j]) off TOY_COST, where only logits[1] is: its
    components run the same code with another index j, a constant compiled into each term
    kernel (one kernel per component: ~2 s each, in each Python of CI)."""
    components = registry.get_family(family).params
    if family in registry.FAMILIES or cost == TOY_COST:
        return components
    return components[1:2]


@functools.cache
def run(estimators: tuple, cost, point: tuple, n: int = N, r: int = R,
        family: str = FAMILY) -> dict:
    """{(estimator, component): (estimates[r], sample_vars[r])}: one fused kernel per call
    (per set of components: an estimator defined for some components only, measure_valued
    under gamma, runs with those).  Serial compiles (3x faster to compile than parallel
    ones, the same numbers to rounding: tests/test_kernel.py)."""
    groups = {}
    for e in estimators:
        supported = registry.supported_components(e, family, conformance_components(cost, family))
        groups.setdefault(supported, []).append(e)
    out = {}
    for components, labels in groups.items():
        est, var = cpu.estimate(family, spec(cost), labels, components,
                                params(cost, point, family), n, np.arange(r), parallel=False)
        out.update({(e, c): (est[:, i, j], var[:, i, j])
                    for i, e in enumerate(labels) for j, c in enumerate(components)})
    return out


def expected(reference_estimator, cost, component, point, n, family=FAMILY):
    """(exact expectation of the estimate, E[sample_var], n Var[estimate], source) at sample
    size n; the expectation is the gradient, or a biased estimator's own exact mean."""
    p = params(cost, point, family)
    ref = exact.references(reference_estimator, component, family, spec(cost), p)
    v = registry.resolve(reference_estimator)
    target = ref.estimator_mean if v.biased else ref.grad
    if v.finite_n is not None and ref.source != "none":
        pooled, spread = v.finite_n(registry.get_family(family), registry.get_cost(spec(cost)),
                                    component, p, n)
        return target, pooled, spread, ref.source
    return target, ref.var, ref.var, ref.source


def z_scores(estimator, reference_estimator, cost, component, point, fused=None, n=N, r=R,
             family=FAMILY):
    """The z-scores of one case (module docstring); ``fused``: the estimators of the kernel
    that computes it (default: the estimator alone)."""
    e, v = run(fused or (estimator,), cost, point, n, r, family)[(estimator, component)]
    grad, pooled, spread_n, source = expected(reference_estimator, cost, component, point, n,
                                              family)
    spread = (e - e.mean()) ** 2
    if source == "none":
        d = spread * r / (r - 1) - v / n
        return {"mean": (e.mean() - grad) / math.sqrt(v.mean() / (n * r)),
                "consistency": d.mean() / (d.std(ddof=1) / math.sqrt(r))}
    if spread_n <= 1e-24 * (1.0 + grad * grad):
        # a zero-variance estimator (delta_cv on a quadratic cost: the control variate is f
        # itself; antithetic_pathwise wrt mu on a quadratic): every estimate must be the
        # gradient up to rounding
        close = np.allclose(e, grad, rtol=1e-9, atol=1e-9) and np.all(v < 1e-12 * (1 + grad**2))
        return {"exact": 0.0 if close else math.inf}
    return {
        "mean": (e.mean() - grad) / math.sqrt(spread_n / (n * r)),
        "pooled": (v.mean() - pooled) / (v.std(ddof=1) / math.sqrt(r)),
        "spread": (e.var(ddof=1) - spread_n / n) / (spread.std(ddof=1) / math.sqrt(r)),
    }


def register_wrong(monkeypatch, name, per_sample, impersonates):
    """Register ``per_sample`` under ``name`` as a copy of the variant ``impersonates`` (its
    needs, families, constants and reference: the check compares against the impersonated
    estimator), with ``per_sample_by_family={}`` so it runs on every family; the resolve
    cache is cleared (the caller clears it, and ``run``'s, when done)."""
    monkeypatch.setitem(registry.ESTIMATORS, name, dataclasses.replace(
        registry.resolve(impersonates), name=name, per_sample=per_sample,
        per_sample_by_family={}, description="deliberately wrong"))
    registry._resolve.cache_clear()
