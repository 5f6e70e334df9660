"""f(x) = (x - k)^2 under q = N(mu, sigma^2); write a = mu - k.

Exact references (derived by expanding (a + sigma*eps)^2 and using E[eps^(2m)] = (2m-1)!!):
    E f            = a^2 + sigma^2
    grad wrt mu    = 2a,              grad wrt sigma = 2 sigma
Per-sample variances of the estimator terms:
    score function, mu:    a^4/sigma^2 + 14 a^2 + 15 sigma^2
    score function, sigma: 2 a^4/sigma^2 + 60 a^2 + 74 sigma^2
    pathwise, mu:          4 sigma^2
    pathwise, sigma:       4 a^2 + 8 sigma^2
    antithetic pathwise, mu:    0 (the term is 2a for every eps)
    antithetic pathwise, sigma: 8 sigma^2 (the term is 2 sigma eps^2)

Under q = Gamma(shape, rate) (``GAMMA_FORMS``), from the moments of e = rate x ~ Gamma(a, 1),
a = shape: m_n = E e^n = a (a + 1) ... (a + n - 1), and, since e^n q_a(e) = m_n q_{a+n}(e)
and log e under Gamma(a + n, 1) has mean digamma(a + n) and variance trigamma(a + n),
    E[e^n (log e - digamma(a))^2] = m_n ((digamma(a + n) - digamma(a))^2 + trigamma(a + n)).
With c = rate k, f = (e - c)^2 / rate^2:
    E f            = (a (a + 1) - 2 c a + c^2) / rate^2
    grad wrt shape = (2 a + 1 - 2 c) / rate^2,   grad wrt rate = -2 a (a + 1) / rate^3
                     + 2 k a / rate^2
    score function, shape: E[(e - c)^4 (log e - digamma(a))^2] / rate^4 - grad^2
    score function, rate:  E[(e - c)^4 (a - e)^2] / rate^6 - grad^2
    pathwise, rate:        4 E[(e - c)^2 e^2] / rate^6 - grad^2 (the term is -2 (e - c) e /
                           rate^3)
with the polynomials expanded into the moments above.  Pathwise wrt shape has no closed
form (dx/dshape is not elementary): quadrature (``harness.exact``).
"""

import numpy as np
from numba import njit
from scipy import special

from ..axes import ClosedForms, Cost


@njit
def value(x, k):
    d = x - k
    return d * d


@njit
def derivative(x, k):
    return 2.0 * (x - k)


def second_derivative(x, k):
    return 2.0


def exact_mean(mu, sigma, k):
    a = mu - k
    return a * a + sigma * sigma


def exact_grad(mu, sigma, k):
    return {"mu": 2.0 * (mu - k), "sigma": 2.0 * sigma}


def _sf_mu(mu, sigma, k):
    a = mu - k
    return a**4 / sigma**2 + 14.0 * a**2 + 15.0 * sigma**2


def _sf_sigma(mu, sigma, k):
    a = mu - k
    return 2.0 * a**4 / sigma**2 + 60.0 * a**2 + 74.0 * sigma**2


def _pw_mu(mu, sigma, k):
    return 4.0 * sigma**2


def _pw_sigma(mu, sigma, k):
    a = mu - k
    return 4.0 * a**2 + 8.0 * sigma**2


def _ap_mu(mu, sigma, k):
    return 0.0


def _ap_sigma(mu, sigma, k):
    return 8.0 * sigma**2


EXACT_VARIANCE = {
    ("score_function", "mu"): _sf_mu,
    ("score_function", "sigma"): _sf_sigma,
    ("pathwise", "mu"): _pw_mu,
    ("pathwise", "sigma"): _pw_sigma,
    ("antithetic_pathwise", "mu"): _ap_mu,
    ("antithetic_pathwise", "sigma"): _ap_sigma,
}

# ---- under q = Gamma(shape, rate) (module docstring) -------------------------------------------

def _gamma_moments(a, n):
    """m_0 .. m_n of Gamma(a, 1): m_j = a (a + 1) ... (a + j - 1)."""
    return np.cumprod(np.concatenate([[1.0], a + np.arange(n)]))


def _gamma_poly_mean(coefficients, a):
    """E[p(e)] for the polynomial p with ``coefficients`` (lowest degree first)."""
    return float(np.dot(coefficients, _gamma_moments(a, len(coefficients) - 1)))


def _gamma_shifted_power(c, power):
    """Coefficients of (e - c)^power, lowest degree first."""
    return np.polynomial.polynomial.polypow([-c, 1.0], power)


def gamma_mean(shape, rate, k):
    c = rate * k
    return (shape * (shape + 1.0) - 2.0 * c * shape + c * c) / rate ** 2


def gamma_grad(shape, rate, k):
    return {"shape": (2.0 * shape + 1.0 - 2.0 * rate * k) / rate ** 2,
            "rate": -2.0 * shape * (shape + 1.0) / rate ** 3 + 2.0 * k * shape / rate ** 2}


def _gamma_sf_shape(shape, rate, k):
    a, quartic = shape, _gamma_shifted_power(rate * k, 4)
    m = _gamma_moments(a, 4)
    n = np.arange(5)
    log_moments = m * ((special.digamma(a + n) - special.digamma(a)) ** 2
                       + special.polygamma(1, a + n))
    second = float(np.dot(quartic, log_moments)) / rate ** 4
    return second - gamma_grad(shape, rate, k)["shape"] ** 2


def _gamma_sf_rate(shape, rate, k):
    p = np.polynomial.polynomial.polymul(_gamma_shifted_power(rate * k, 4),
                                         _gamma_shifted_power(shape, 2))
    return _gamma_poly_mean(p, shape) / rate ** 6 - gamma_grad(shape, rate, k)["rate"] ** 2


def _gamma_pw_rate(shape, rate, k):
    p = np.polynomial.polynomial.polymul(_gamma_shifted_power(rate * k, 2), [0.0, 0.0, 1.0])
    return 4.0 * _gamma_poly_mean(p, shape) / rate ** 6 - gamma_grad(shape, rate, k)["rate"] ** 2


GAMMA_VARIANCE = {
    ("score_function", "shape"): _gamma_sf_shape,
    ("score_function", "rate"): _gamma_sf_rate,
    ("pathwise", "rate"): _gamma_pw_rate,
}
GAMMA_FORMS = ClosedForms(mean=gamma_mean, grad=gamma_grad, variance=GAMMA_VARIANCE)

COST = Cost(
    name="quadratic",
    params=("k",),
    value=value,
    derivative=derivative,
    second_derivative=second_derivative,
    closed_forms={"normal": ClosedForms(mean=exact_mean, grad=exact_grad,
                                        variance=EXACT_VARIANCE),
                  "gamma": GAMMA_FORMS},
    description="(x - k)^2",
)
