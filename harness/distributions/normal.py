"""The normal family q(x; mu, sigma) = N(mu, sigma^2), params ("mu", "sigma"), sigma > 0.

Sampler:   base draw eps ~ N(0, 1) by Box-Muller on the shared Philox streams
           (``harness.rng.normal_pair``: two draws per counter), x = mu + sigma * eps.
Score:     d/dmu log q = (x - mu) / sigma^2 = eps / sigma;
           d/dsigma log q = ((x - mu)^2 / sigma^2 - 1) / sigma = (eps^2 - 1) / sigma.
Pathwise:  dx/dmu = 1, dx/dsigma = eps = (x - mu) / sigma (reparameterisable).
Antithetic draw: -eps (x -> 2 mu - x).  Moments: E x = mu, Var x = sigma^2, so
           d(E x, Var x)/dmu = (1, 0) and d(E x, Var x)/dsigma = (0, 2 sigma).
Quadrature: Gauss-Hermite over eps (``harness.quadrature.hermite_rule``, 400 nodes:
           ``base_rule``), mapped to x = mu + sigma * eps for the references (``rule``).
           The reference functions (``*_at``) are written in x from the density, apart from
           the kernel functions in eps.
"""

import numpy as np
from numba import njit

from ..axes import Family
from ..quadrature import hermite_rule
from ..rng import normal_pair

# ---- kernel functions (@njit; theta = (mu, sigma), e = eps) ---------------------------------

draw_pair = normal_pair  # (key0, key1, pair, stream) -> two N(0, 1) draws


@njit(inline="always")
def to_x(theta, e):
    return theta[0] + theta[1] * e


@njit(inline="always")
def score(component, theta, e):
    if component == 0:
        return e / theta[1]
    return (e * e - 1.0) / theta[1]


@njit(inline="always")
def times_score(component, theta, e, v):
    if component == 0:
        return v * e / theta[1]
    return v * (e * e - 1.0) / theta[1]


@njit(inline="always")
def dx_dtheta(component, theta, e):
    if component == 0:
        return 1.0
    return e


@njit(inline="always")
def antithetic(e):
    return -e


@njit(inline="always")
def centred(theta, e):
    return theta[1] * e


# ---- reference functions (NumPy, in x, from the density) --------------------------------------

def base_rule():
    return hermite_rule()


def rule(theta):
    eps, w = hermite_rule()
    mu, sigma = theta
    return mu + sigma * eps, w


def score_at(component, theta, x):
    mu, sigma = theta
    if component == "mu":
        return (x - mu) / sigma ** 2
    return ((x - mu) ** 2 / sigma ** 2 - 1.0) / sigma


def dx_at(component, theta, x):
    mu, sigma = theta
    return np.ones_like(x) if component == "mu" else (x - mu) / sigma


def antithetic_at(theta, x):
    return 2.0 * theta[0] - x


def mean(theta):
    return theta[0]


def moment_grads(component, theta):
    return (1.0, 0.0) if component == "mu" else (0.0, 2.0 * theta[1])


FAMILY = Family(
    name="normal",
    params=("mu", "sigma"),
    positive=("sigma",),
    description="N(mu, sigma^2), x = mu + sigma * eps",
    draw_pair=draw_pair, to_x=to_x, score=score, times_score=times_score, centred=centred,
    dx_dtheta=dx_dtheta, antithetic=antithetic,
    base_rule=base_rule, rule=rule, score_at=score_at, dx_at=dx_at, antithetic_at=antithetic_at,
    mean=mean, moment_grads=moment_grads,
)
