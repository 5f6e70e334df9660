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
"""

from numba import njit

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

COST = Cost(
    name="quadratic",
    params=("k",),
    value=value,
    derivative=derivative,
    second_derivative=second_derivative,
    closed_forms={"normal": ClosedForms(mean=exact_mean, grad=exact_grad,
                                        variance=EXACT_VARIANCE)},
    description="(x - k)^2",
)
