"""f(x) = cos(k x) under q = N(mu, sigma^2) (Mohamed et al. 2020, Section 3).

Exact references, from E[exp(i b x)] = exp(i b mu - b^2 sigma^2 / 2):
    E f            = cos(k mu) exp(-k^2 sigma^2 / 2)
    grad wrt mu    = -k sin(k mu) exp(-k^2 sigma^2 / 2)
    grad wrt sigma = -k^2 sigma cos(k mu) exp(-k^2 sigma^2 / 2)
Per-sample variances in closed form (``EXACT_VARIANCE``) from
    E[exp(t eps) p(eps)] = exp(t^2/2) E_{e ~ N(t, 1)}[p(e)] with t = i b sigma (complex),
using cos^2 = (1 + cos 2kx)/2, sin^2 = (1 - cos 2kx)/2 and sin cos = sin(2kx)/2: score function
and pathwise, both components.  Antithetic pathwise (x~ = mu - sigma eps, b = k sigma): the
terms are -k sin(k mu) cos(b eps) (mu) and -k eps cos(k mu) sin(b eps) (sigma), so
    E g^2 = k^2 sin^2(k mu) (1 + exp(-2 b^2)) / 2                       (mu)
    E g^2 = k^2 cos^2(k mu) (1 - (1 - 4 b^2) exp(-2 b^2)) / 2           (sigma)
from E[eps^2 cos(c eps)] = (1 - c^2) exp(-c^2 / 2).  Other estimators: quadrature
(the estimator modules' references, ``harness.exact``).
f and f' are branch-free (``cos_any``/``sin_any``) so the kernel stays vectorised.
"""

import cmath
import math

from numba import njit

from ..axes import ClosedForms, Cost
from ..scalar_math import cos_any, sin_any


@njit
def value(x, k):
    return cos_any(k * x)


@njit
def derivative(x, k):
    return -k * sin_any(k * x)


def second_derivative(x, k):
    return -k * k * math.cos(k * x)


def exact_mean(mu, sigma, k):
    return math.cos(k * mu) * math.exp(-0.5 * (k * sigma) ** 2)


def exact_grad(mu, sigma, k):
    damp = math.exp(-0.5 * (k * sigma) ** 2)
    return {"mu": -k * math.sin(k * mu) * damp, "sigma": -k * k * sigma * math.cos(k * mu) * damp}


def wave(b, mu, sigma, p):
    """E[exp(i b x) p(eps)] (complex) for a polynomial p = (c0, c1, ...) in eps, degree <= 4."""
    t = 1j * b * sigma
    moments = (1.0, t, t * t + 1, t ** 3 + 3 * t, t ** 4 + 6 * t * t + 3)
    return cmath.exp(1j * b * mu + 0.5 * t * t) * sum(c * e for c, e in zip(p, moments))


def _cos2(mu, sigma, k, p):
    """E[cos^2(kx) p(eps)]."""
    return 0.5 * (wave(0.0, mu, sigma, p).real + wave(2 * k, mu, sigma, p).real)


def _sin2(mu, sigma, k, p):
    """E[sin^2(kx) p(eps)]."""
    return 0.5 * (wave(0.0, mu, sigma, p).real - wave(2 * k, mu, sigma, p).real)


def _sf_mu(mu, sigma, k):
    return _cos2(mu, sigma, k, (0, 0, 1)) / sigma ** 2 - exact_grad(mu, sigma, k)["mu"] ** 2


def _sf_sigma(mu, sigma, k):
    return (_cos2(mu, sigma, k, (1, 0, -2, 0, 1)) / sigma ** 2
            - exact_grad(mu, sigma, k)["sigma"] ** 2)


def _pw_mu(mu, sigma, k):
    return k * k * _sin2(mu, sigma, k, (1,)) - exact_grad(mu, sigma, k)["mu"] ** 2


def _pw_sigma(mu, sigma, k):
    return k * k * _sin2(mu, sigma, k, (0, 0, 1)) - exact_grad(mu, sigma, k)["sigma"] ** 2


def _ap_mu(mu, sigma, k):
    second = 0.5 * (k * math.sin(k * mu)) ** 2 * (1.0 + math.exp(-2.0 * (k * sigma) ** 2))
    return second - exact_grad(mu, sigma, k)["mu"] ** 2


def _ap_sigma(mu, sigma, k):
    b2 = (k * sigma) ** 2
    second = 0.5 * (k * math.cos(k * mu)) ** 2 * (1.0 - (1.0 - 4.0 * b2) * math.exp(-2.0 * b2))
    return second - exact_grad(mu, sigma, k)["sigma"] ** 2


EXACT_VARIANCE = {
    ("score_function", "mu"): _sf_mu,
    ("score_function", "sigma"): _sf_sigma,
    ("pathwise", "mu"): _pw_mu,
    ("pathwise", "sigma"): _pw_sigma,
    ("antithetic_pathwise", "mu"): _ap_mu,
    ("antithetic_pathwise", "sigma"): _ap_sigma,
}

COST = Cost(
    name="cos",
    params=("k",),
    value=value,
    derivative=derivative,
    second_derivative=second_derivative,
    closed_forms={"normal": ClosedForms(mean=exact_mean, grad=exact_grad,
                                        variance=EXACT_VARIANCE)},
    description="cos(k x)",
)
