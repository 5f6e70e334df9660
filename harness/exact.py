"""Exact references: the gradient and the per-sample variance of each estimator's term.

Closed forms come first (``Cost.exact_grad`` and ``Cost.exact_variance``).  Where a cost has
no closed-form variance for an estimator, the variance is computed by Gauss-Hermite
quadrature of the estimator's own per-sample formula over eps ~ N(0, 1):

    Var[g] = E[g(eps)^2] - E[g(eps)]^2,   E[h(eps)] ~= sum_j w_j h(e_j) / sqrt(2 pi)

with ``QUADRATURE_NODES`` probabilists' Hermite nodes (exact for polynomials of degree
< 2 * QUADRATURE_NODES; smooth costs converge geometrically).  The ``source`` of every value
is recorded in the results (``exact_source``) so a reader knows which is which.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .registry import COSTS, ESTIMATORS

QUADRATURE_NODES = 160


@cache
def _hermite_rule(n: int = QUADRATURE_NODES):
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return nodes, weights / math.sqrt(2.0 * math.pi)


def quadrature_moments(estimator: str, component: str, cost: str, mu: float, sigma: float,
                       k: float) -> tuple[float, float]:
    """(E[g], Var[g]) of the estimator's per-sample term by Gauss-Hermite quadrature."""
    est, c = ESTIMATORS[estimator], COSTS[cost]
    comp = ("mu", "sigma").index(component)
    nodes, weights = _hermite_rule()
    terms = np.empty_like(nodes)
    for j, eps in enumerate(nodes):
        x = mu + sigma * eps
        f = c.value(x, k)
        df = c.derivative(x, k) if c.derivative is not None else 0.0
        terms[j] = est.per_sample(comp, c.value, k, mu, sigma, eps, f, df,
                                  np.uint64(0), np.uint64(0), np.uint64(0))
    mean = float(weights @ terms)
    second = float(weights @ (terms * terms))
    return mean, max(second - mean * mean, 0.0)


def reference(estimator: str, component: str, cost: str, mu: float, sigma: float,
              k: float = 0.0) -> tuple[float, float, str]:
    """Return (exact_grad, exact_var, source) for one estimator term.

    ``source`` is ``"closed_form"`` or ``"quadrature"``, or ``"none"`` (exact_var NaN) when
    neither is available.
    """
    c = COSTS[cost]
    grad = float(c.exact_grad(mu, sigma, k)[component])
    closed = c.exact_variance.get((estimator, component))
    if closed is not None:
        return grad, float(closed(mu, sigma, k)), "closed_form"
    if ESTIMATORS[estimator].extra_randomness:
        return grad, math.nan, "none"
    return grad, quadrature_moments(estimator, component, cost, mu, sigma, k)[1], "quadrature"
