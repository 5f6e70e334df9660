"""The exponential family q(x; rate) = rate exp(-rate x) on x > 0, params ("rate",), rate > 0.

Sampler:   base draw e ~ Exp(1) as e = -log(u), u from the shared Philox streams
           (``harness.rng.uniform_pair``: two draws per counter), x = e / rate (the exact
           inverse-CDF reparameterisation).
Score:     d/drate log q = 1 / rate - x = (1 - e) / rate.
Pathwise:  dx/drate = -e / rate^2 = -x / rate (reparameterisable).
Moments:   E x = 1 / rate, Var x = 1 / rate^2; d/drate: (-1 / rate^2, -2 / rate^3).
Quadrature: composite Gauss-Legendre over t = rate x in [0, 80] with weight e^-t (the mass
           beyond is e^-80), ``EXP_PANELS`` x 16 nodes: robust for the narrow (exp, large k)
           and oscillating (cos) costs where Gauss-Laguerre is not.  The reference functions
           (``*_at``) are written in x from the density, apart from the kernel functions in e.
"""

import numpy as np
from numba import njit

from ..axes import Family
from ..quadrature import composite_legendre
from ..rng import uniform_pair
from ..scalar_math import log_unit

EXP_PANELS = 640

# ---- kernel functions (@njit; theta = (rate,), e ~ Exp(1)) ------------------------------------


@njit(inline="always")
def draw_pair(key0, key1, pair, stream):
    """Two Exp(1) draws -log(u) at Philox counter (pair, stream)."""
    u0, u1 = uniform_pair(key0, key1, pair, stream)
    return -log_unit(u0), -log_unit(u1)


@njit(inline="always")
def to_x(theta, e):
    return e / theta[0]


@njit(inline="always")
def score(component, theta, e):
    return (1.0 - e) / theta[0]


@njit(inline="always")
def times_score(component, theta, e, v):
    return v * (1.0 - e) / theta[0]


@njit(inline="always")
def dx_dtheta(component, theta, e):
    return -e / (theta[0] * theta[0])


@njit(inline="always")
def centred(theta, e):
    return (e - 1.0) / theta[0]


# ---- reference functions (NumPy, in x, from the density) --------------------------------------

def base_rule():
    t, w = composite_legendre(0.0, 80.0, EXP_PANELS, 16)
    return t, w * np.exp(-t)


def rule(theta):
    t, w = base_rule()
    return t / theta[0], w


def score_at(component, theta, x):
    return 1.0 / theta[0] - x


def dx_at(component, theta, x):
    return -x / theta[0]


def mean(theta):
    return 1.0 / theta[0]


def moment_grads(component, theta):
    rate = theta[0]
    return -1.0 / rate ** 2, -2.0 / rate ** 3


FAMILY = Family(
    name="exponential",
    params=("rate",),
    positive=("rate",),
    description="Exp(rate), x = -log(u) / rate",
    draw_pair=draw_pair, to_x=to_x, score=score, times_score=times_score, centred=centred,
    dx_dtheta=dx_dtheta,
    base_rule=base_rule, rule=rule, score_at=score_at, dx_at=dx_at,
    mean=mean, moment_grads=moment_grads,
)
