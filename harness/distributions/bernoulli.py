"""The Bernoulli family q(x; logit): x in {0, 1}, P(x = 1) = p = sigmoid(logit); params
("logit",), no constraint.

Sampler:   base draw u ~ Uniform(0, 1) on the shared Philox streams
           (``harness.rng.uniform_pair``: two draws per counter), x = 1{u < p}.  The same u
           drives every Bernoulli estimator: ARM and DisARM use u (and 1 - u), the relaxed
           estimators (``gumbel_softmax``, ``straight_through``, ``rebar``) the logistic noise
           L = log(1 - u) - log(u), for which x = 1{logit + L > 0} is the same sample.
Score:     d/dlogit log q(x) = x - p.
Pathwise:  none (x is a step function of logit): ``pathwise`` and the other reparameterisation
           estimators are rejected by the registry; the discrete estimators replace them.
Moments:   E x = p, Var x = p (1 - p); d/dlogit: (p (1 - p), (1 - 2 p) p (1 - p)).
References: the exact two-point rule x in {0, 1} with weights (1 - p, p) (``rule``): every
           expectation of a function of x is a finite sum.  ``base_rule`` is a Gauss-Legendre
           rule over u; it is exact only for smooth functions of u, and x is not one, so nothing
           integrates x over it (the estimators' references split the u-integrals at p).
"""

import math

import numpy as np
from numba import njit
from scipy.special import expit

from ..axes import Family
from ..quadrature import unit_nodes
from ..rng import uniform_pair

# ---- kernel functions (@njit; theta = (logit,), e = u) ---------------------------------------

draw_pair = uniform_pair  # (key0, key1, pair, stream) -> two Uniform(0, 1) draws


@njit(inline="always")
def probability(logit):
    """sigmoid(logit) without overflow for either sign."""
    if logit >= 0.0:
        return 1.0 / (1.0 + math.exp(-logit))
    t = math.exp(logit)
    return t / (1.0 + t)


@njit(inline="always")
def logistic_noise(u):
    """L = log(1 - u) - log(u) ~ Logistic(0, 1), decreasing in u: x = 1{logit + L > 0} is
    1{u < p}, the family's sample (the relaxed estimators' noise)."""
    return math.log(1.0 - u) - math.log(u)


@njit(inline="always")
def to_x(theta, e):
    return 1.0 if e < probability(theta[0]) else 0.0


@njit(inline="always")
def score(component, theta, e):
    return to_x(theta, e) - probability(theta[0])


@njit(inline="always")
def times_score(component, theta, e, v):
    return v * (to_x(theta, e) - probability(theta[0]))


@njit(inline="always")
def centred(theta, e):
    return to_x(theta, e) - probability(theta[0])


# ---- reference functions (NumPy, in x, from the probability mass function) -------------------

def base_rule():
    return unit_nodes()


def rule(theta):
    p = float(expit(theta[0]))
    return np.array([0.0, 1.0]), np.array([float(expit(-theta[0])), p])


def score_at(component, theta, x):
    return np.asarray(x, dtype=np.float64) - float(expit(theta[0]))


def mean(theta):
    return float(expit(theta[0]))


def moment_grads(component, theta):
    p, q = float(expit(theta[0])), float(expit(-theta[0]))
    return p * q, (q - p) * p * q


FAMILY = Family(
    name="bernoulli",
    params=("logit",),
    positive=(),
    description="Bernoulli(sigmoid(logit)), x = 1{u < sigmoid(logit)}",
    draw_pair=draw_pair, to_x=to_x, score=score, times_score=times_score, centred=centred,
    base_rule=base_rule, rule=rule, score_at=score_at, mean=mean, moment_grads=moment_grads,
)
