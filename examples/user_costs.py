"""Costs written by a user, for examples/user_cost.yaml (which names them as
``cost: {python: "user_costs:softplus", ...}``; this file sits next to the grid).

Plain Python functions of x and the grid's parameter k that numba can compile: float
arithmetic, ``math`` functions and branches.  The harness has no closed forms for them, so
the exact gradient and per-sample variances come by quadrature (``exact_source:
quadrature``).
"""

import math


def softplus(x, k):
    """f(x) = log(1 + exp(k x)), written so that exp never overflows."""
    t = k * x
    return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


def softplus_prime(x, k):
    """f'(x) = k sigmoid(k x)."""
    t = k * x
    if t >= 0.0:
        return k / (1.0 + math.exp(-t))
    e = math.exp(t)
    return k * e / (1.0 + e)


def softplus_second(x, k):
    """f''(x) = k^2 sigmoid(k x) (1 - sigmoid(k x))."""
    e = math.exp(-abs(k * x))
    return k * k * e / (1.0 + e) ** 2
