"""Exact references: the gradient and the per-sample variance of each estimator's term.

``reference(estimator, component, cost, mu, sigma, k) -> (exact_grad, exact_var, source)``
takes a registry name or a label (``score_function[baseline=optimal]``) or an
``EstimatorSpec``-like object.  In order:

1. a closed form in ``Cost.exact_variance[(label, component)]``: source ``closed_form``;
2. the variant's own ``exact_moments`` (estimators with extra randomness or accumulated
   baselines define their per-sample variance and its reference in their module
   docstring): source as it reports (``quadrature``);
3. for per-sample estimators without extra randomness, Gauss-Hermite quadrature of the
   estimator's own per-sample formula over eps ~ N(0, 1) (``harness.quadrature``):

       Var[g] = E[g(eps)^2] - E[g(eps)]^2,   E[h(eps)] ~= sum_j w_j h(e_j)

   source ``quadrature``;
4. otherwise ``none`` (exact_var NaN).

The gradient is always the cost's closed form ``exact_grad``.  The ``source`` of every value
is recorded in the results (``exact_source``) so a reader knows which is which.
"""

from __future__ import annotations

import math

import numpy as np

from . import registry
from .quadrature import hermite_rule
from .registry import COSTS

COMPONENTS = ("mu", "sigma")


def quadrature_moments(estimator, component: str, cost: str, mu: float, sigma: float,
                       k: float) -> tuple[float, float]:
    """(E[g], Var[g]) of a per-sample estimator's term by Gauss-Hermite quadrature over eps
    (its extra random streams, if any, are fixed at key 0: only meaningful without them)."""
    est, c = registry.resolve(estimator), COSTS[cost]
    if est.n_moments:
        raise ValueError(f"{est.name} is accumulated: it has no per-sample formula")
    comp = COMPONENTS.index(component)
    consts = tuple(est.prepare(c, component, mu, sigma, k)) if est.n_consts else None
    nodes, weights = hermite_rule()
    terms = np.empty_like(nodes)
    for j, eps in enumerate(nodes):
        x = mu + sigma * eps
        f = c.value(x, k)
        df = c.derivative(x, k) if c.derivative is not None else 0.0
        args = (comp, c.value, k, mu, sigma, eps, f, df, np.uint64(0), np.uint64(0), np.int64(0))
        terms[j] = est.per_sample(*args, consts) if consts is not None else est.per_sample(*args)
    mean = float(weights @ terms)
    second = float(weights @ (terms * terms))
    return mean, max(second - mean * mean, 0.0)


def reference(estimator, component: str, cost: str, mu: float, sigma: float,
              k: float = 0.0) -> tuple[float, float, str]:
    """Return (exact_grad, exact_var, source) for one estimator term (see the module doc)."""
    c = COSTS[cost]
    est = registry.resolve(estimator)
    grad = float(c.exact_grad(mu, sigma, k)[component])
    closed = c.exact_variance.get((est.name, component))
    if closed is not None:
        return grad, float(closed(mu, sigma, k)), "closed_form"
    if est.exact_moments is not None:
        _, var, source = est.exact_moments(c, component, mu, sigma, k)
        return grad, float(var), source
    if est.extra_randomness or est.n_moments:
        return grad, math.nan, "none"
    return grad, quadrature_moments(est.name, component, cost, mu, sigma, k)[1], "quadrature"
