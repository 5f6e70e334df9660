"""f(x) = exp(-k x^2) under q = N(mu, sigma^2) (Mohamed et al. 2020, Section 3), k > 0.

Exact references, from the Gaussian integral exp(-a x^2) N(x; mu, sigma^2) with
D = 1 + 2 k sigma^2:
    E f            = D^(-1/2) exp(-k mu^2 / D)
    grad wrt mu    = E f * (-2 k mu / D)
    grad wrt sigma = E f * (-2 k sigma / D + 4 k^2 mu^2 sigma / D^2)
Per-sample variances in closed form (``EXACT_VARIANCE``), from the tilt identity
    E[exp(-a x^2) p(eps)] = sqrt(v) exp(-a mu^2 v) E_{e ~ N(m, v)}[p(e)],
    v = 1 / (1 + 2 a sigma^2),  m = -2 a mu sigma v,
for polynomials p (a = 2k for the squared terms): score function and pathwise, both
components.  Antithetic pathwise (x~ = mu - sigma eps): E g^2 = (E[f'(x)^2 q] +- E[f'(x)
f'(x~) q]) / 2 with q = 1 (mu, +) or eps^2 (sigma, -), where, with D = 1 + 4 k sigma^2,
    E[f'(x) f'(x~)]       = 4 k^2 exp(-2 k mu^2) (mu^2 D^(-1/2) - sigma^2 D^(-3/2))
    E[f'(x) f'(x~) eps^2] = 4 k^2 exp(-2 k mu^2) (mu^2 D^(-3/2) - 3 sigma^2 D^(-5/2))
(x x~ = mu^2 - sigma^2 eps^2, x^2 + x~^2 = 2 mu^2 + 2 sigma^2 eps^2).  Other estimators:
quadrature (the estimator modules' references, ``harness.exact``).
f and f' are branch-free (``exp_clamped``: inputs below -700 give exp(-700)), so the kernel
stays vectorised.
"""

import math

from numba import njit

from ..axes import ClosedForms, Cost
from ..scalar_math import exp_clamped


@njit
def value(x, k):
    return exp_clamped(-k * x * x)


@njit
def derivative(x, k):
    return -2.0 * k * x * exp_clamped(-k * x * x)


def second_derivative(x, k):
    return (4.0 * k * k * x * x - 2.0 * k) * math.exp(-k * x * x)


def exact_mean(mu, sigma, k):
    d = 1.0 + 2.0 * k * sigma * sigma
    return math.exp(-k * mu * mu / d) / math.sqrt(d)


def exact_grad(mu, sigma, k):
    d = 1.0 + 2.0 * k * sigma * sigma
    m = exact_mean(mu, sigma, k)
    return {"mu": m * (-2.0 * k * mu / d),
            "sigma": m * (-2.0 * k * sigma / d + 4.0 * k * k * mu * mu * sigma / d ** 2)}


def tilted(a, mu, sigma, p):
    """E[exp(-a x^2) p(eps)] for a polynomial p = (c0, c1, c2, ...) in eps (up to degree 4)."""
    v = 1.0 / (1.0 + 2.0 * a * sigma * sigma)
    m = -2.0 * a * mu * sigma * v
    moments = (1.0, m, m * m + v, m ** 3 + 3 * m * v, m ** 4 + 6 * m * m * v + 3 * v * v)
    return math.sqrt(v) * math.exp(-a * mu * mu * v) * sum(c * e for c, e in zip(p, moments))


def _sf_mu(mu, sigma, k):
    # (f eps / sigma)^2 = exp(-2k x^2) eps^2 / sigma^2
    return tilted(2 * k, mu, sigma, (0, 0, 1)) / sigma ** 2 - exact_grad(mu, sigma, k)["mu"] ** 2


def _sf_sigma(mu, sigma, k):
    # (eps^2 - 1)^2 = 1 - 2 eps^2 + eps^4
    return (tilted(2 * k, mu, sigma, (1, 0, -2, 0, 1)) / sigma ** 2
            - exact_grad(mu, sigma, k)["sigma"] ** 2)


def _pw_mu(mu, sigma, k):
    # f'^2 = 4 k^2 x^2 exp(-2k x^2), x = mu + sigma eps
    p = (mu * mu, 2 * mu * sigma, sigma * sigma)
    return 4 * k * k * tilted(2 * k, mu, sigma, p) - exact_grad(mu, sigma, k)["mu"] ** 2


def _pw_sigma(mu, sigma, k):
    # (f' eps)^2 = 4 k^2 x^2 eps^2 exp(-2k x^2)
    p = (0, 0, mu * mu, 2 * mu * sigma, sigma * sigma)
    return 4 * k * k * tilted(2 * k, mu, sigma, p) - exact_grad(mu, sigma, k)["sigma"] ** 2


def _antithetic_cross(mu, sigma, k, squared_eps):
    """E[f'(x) f'(x~)] (or with a factor eps^2), x = mu + sigma eps, x~ = mu - sigma eps."""
    d = 1.0 + 4.0 * k * sigma * sigma
    scale = 4.0 * k * k * math.exp(-2.0 * k * mu * mu)
    if squared_eps:
        return scale * (mu * mu * d ** -1.5 - 3.0 * sigma * sigma * d ** -2.5)
    return scale * (mu * mu * d ** -0.5 - sigma * sigma * d ** -1.5)


def _ap_mu(mu, sigma, k):
    g = exact_grad(mu, sigma, k)["mu"]
    second = 0.5 * (_pw_mu(mu, sigma, k) + g * g) + 0.5 * _antithetic_cross(mu, sigma, k, False)
    return second - g * g


def _ap_sigma(mu, sigma, k):
    g = exact_grad(mu, sigma, k)["sigma"]
    second = 0.5 * (_pw_sigma(mu, sigma, k) + g * g) - 0.5 * _antithetic_cross(mu, sigma, k, True)
    return second - g * g


EXACT_VARIANCE = {
    ("score_function", "mu"): _sf_mu,
    ("score_function", "sigma"): _sf_sigma,
    ("pathwise", "mu"): _pw_mu,
    ("pathwise", "sigma"): _pw_sigma,
    ("antithetic_pathwise", "mu"): _ap_mu,
    ("antithetic_pathwise", "sigma"): _ap_sigma,
}

COST = Cost(
    name="exp",
    params=("k",),
    value=value,
    derivative=derivative,
    second_derivative=second_derivative,
    closed_forms={"normal": ClosedForms(mean=exact_mean, grad=exact_grad,
                                        variance=EXACT_VARIANCE)},
    description="exp(-k x^2)",
    positive=("k",),  # for k <= 0 the Gaussian integrals diverge once sigma^2 >= 1/(2|k|)
)
