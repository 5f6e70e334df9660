"""A target written by a user, for examples/user_target.yaml (which names it as
``target: {python: "user_targets:log_density", gradient: "user_targets:grad_log_density",
dim: 2}``; this file sits next to the grid).

g is an equal mixture of two unit Gaussians in 2-D, with modes at (+-SHIFT, 0): a bimodal
target that a Gaussian q cannot fit.  Plain Python functions of z (a float64 array of shape
(2,)) that numba can compile: log g(z) returns a float, its gradient an array of shape (2,).
The harness has no closed forms for it: the exact ELBO, gradient and per-sample variances
come by Gauss-Hermite quadrature over q (``exact_source: quadrature``).
"""

import math

import numpy as np

SHIFT = 1.5


def log_density(z):
    """log(N(z; (SHIFT, 0), I) / 2 + N(z; (-SHIFT, 0), I) / 2), without overflow."""
    a = -0.5 * ((z[0] - SHIFT) ** 2 + z[1] ** 2)
    b = -0.5 * ((z[0] + SHIFT) ** 2 + z[1] ** 2)
    top = max(a, b)
    return top + math.log(0.5 * math.exp(a - top) + 0.5 * math.exp(b - top)) \
        - math.log(2.0 * math.pi)


def grad_log_density(z):
    """grad log g = -z + SHIFT (2 r - 1) e_0, r = the weight of the mode at +SHIFT."""
    t = 2.0 * SHIFT * z[0]              # a - b
    r = 1.0 / (1.0 + math.exp(-t)) if t >= 0.0 else math.exp(t) / (1.0 + math.exp(t))
    return np.array([-z[0] + SHIFT * (2.0 * r - 1.0), -z[1]])
