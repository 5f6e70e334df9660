"""The conformance check shared by tests/test_estimators.py and tests/test_user_cost.py.

For one (estimator, cost, component, point) we run R seeds of N samples and compute z-scores,
each in units of its own standard error (the tests require |z| < Z = 5):
  - mean:      mean over seeds of the N-sample estimate vs the exact gradient,
               SE = sqrt(Var[g] / (N R));
  - pooled:    mean over seeds of the within-seed sample variance vs its exact expectation,
               SE = sd(sample_var) / sqrt(R);
  - spread:    variance across seeds of the estimate vs its exact value Var[g] / N,
               SE = sd((e - mean e)^2) / sqrt(R).
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

import functools
import math

import numpy as np

from harness import exact, registry
from harness.backends import cpu

Z = 5.0
N, R = 2000, 400
FAMILY = "normal"
POINTS = [  # (mu, sigma, k): asymmetric (mu != k), large sigma, small sigma with mu far from k
    (2.0, 1.0, 0.5),
    (0.5, 2.5, 1.0),
    (-1.5, 0.3, 2.0),
]
COMPONENTS = registry.FAMILIES[FAMILY].params


def spec(cost):
    """The cost spec for a name or a user cost's key (a tuple of (key, value) pairs)."""
    return dict(cost) if isinstance(cost, tuple) else cost


def params(cost, point) -> dict:
    """The cell's parameters: mu, sigma and, for costs that take one, k."""
    mu, sigma, k = point
    has_k = bool(registry.get_cost(spec(cost)).params)
    return {"mu": mu, "sigma": sigma, **({"k": k} if has_k else {})}


def all_labels() -> tuple:
    """Every registered estimator with every combination of its options."""
    return tuple(label for name in registry.ESTIMATORS for label in registry.variants(name))


def applicable(cost) -> tuple:
    """The labels that can run on (FAMILY, cost)."""
    return tuple(label for label in all_labels()
                 if registry.combination_problem(label, FAMILY, spec(cost)) is None)


@functools.cache
def run(estimators: tuple, cost, point: tuple, n: int = N, r: int = R) -> dict:
    """{(estimator, component): (estimates[r], sample_vars[r])}: one fused kernel per call.
    Serial compiles (3x faster to compile than parallel ones, the same numbers to rounding:
    tests/test_kernel.py)."""
    est, var = cpu.estimate(FAMILY, spec(cost), estimators, COMPONENTS, params(cost, point), n,
                            np.arange(r), parallel=False)
    return {(e, c): (est[:, i, j], var[:, i, j])
            for i, e in enumerate(estimators) for j, c in enumerate(COMPONENTS)}


def expected(reference_estimator, cost, component, point, n):
    """(exact gradient, E[sample_var], n Var[estimate], source) at sample size n."""
    p = params(cost, point)
    grad, exact_var, source = exact.reference(reference_estimator, component, FAMILY,
                                              spec(cost), p)
    v = registry.resolve(reference_estimator)
    if v.finite_n is not None and source != "none":
        pooled, spread = v.finite_n(registry.get_family(FAMILY), registry.get_cost(spec(cost)),
                                    component, p, n)
        return grad, pooled, spread, source
    return grad, exact_var, exact_var, source


def z_scores(estimator, reference_estimator, cost, component, point, fused=None, n=N, r=R):
    """The z-scores of one case (module docstring); ``fused``: the estimators of the kernel
    that computes it (default: the estimator alone)."""
    e, v = run(fused or (estimator,), cost, point, n, r)[(estimator, component)]
    grad, pooled, spread_n, source = expected(reference_estimator, cost, component, point, n)
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
