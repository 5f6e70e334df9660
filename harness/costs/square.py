"""f(x) = x^2: the cost of the reparameterisation-trick seed; ``quadratic`` with k = 0 (its
closed forms under the normal and the gamma family).

With q = N(theta, 1) and theta = 2: exact gradient 4, per-sample variance 87 (score function)
and 4 (pathwise), as in the seed experiment.
"""

from numba import njit

from ..axes import ClosedForms, Cost
from . import quadratic


@njit
def value(x, k):
    return x * x


@njit
def derivative(x, k):
    return 2.0 * x


def _at_zero(fn):
    def at_k0(mu, sigma, k=0.0):
        return fn(mu, sigma, 0.0)

    at_k0.__name__ = fn.__name__
    return at_k0


def _gamma_at_zero(fn):
    def at_k0(shape, rate, k=0.0):
        return fn(shape, rate, 0.0)

    at_k0.__name__ = fn.__name__
    return at_k0


COST = Cost(
    name="square",
    params=(),
    value=value,
    derivative=derivative,
    second_derivative=quadratic.second_derivative,
    closed_forms={"normal": ClosedForms(
        mean=_at_zero(quadratic.exact_mean),
        grad=_at_zero(quadratic.exact_grad),
        variance={key: _at_zero(fn) for key, fn in quadratic.EXACT_VARIANCE.items()}),
        "gamma": ClosedForms(
            mean=_gamma_at_zero(quadratic.gamma_mean),
            grad=_gamma_at_zero(quadratic.gamma_grad),
            variance={key: _gamma_at_zero(fn) for key, fn in quadratic.GAMMA_VARIANCE.items()})},
    description="x^2",
)
