"""Antithetic pathwise estimator: the pathwise term averaged over an antithetic pair.

Estimand:  d/dtheta_c E_q[f(x)] for a reparameterisable family with an antithetic base draw.
Formula:   with e the main draw (stream 0) and e~ = antithetic(e) (same law; normal: -eps),
           x = to_x(theta, e), x~ = to_x(theta, e~):
             g = ( f'(x) dx/dtheta_c(e) + f'(x~) dx/dtheta_c(e~) ) / 2.
           Each half is a pathwise term, so E g is the gradient; the pair is negatively
           correlated for monotone f', which lowers the variance.
           Normal: mu: g = (f'(mu + sigma eps) + f'(mu - sigma eps)) / 2;
                   sigma: g = eps (f'(mu + sigma eps) - f'(mu - sigma eps)) / 2.
Requires:  the cost's derivative, a reparameterisable family with an antithetic draw.
           2 evaluations of f' per sample (``evals_per_sample = 2``).  Per-sample kind, no
           extra random streams.
Per-sample variance: Var[g] (within-seed sample variance, divisor N - 1); reference: the
           cost's closed forms where derived (quadratic and square: mu 0, sigma 8 sigma^2;
           exp; cos), else quadrature of the expression above over the family's rule
           (``reference``, a NumPy transcription with x~ = the family's ``antithetic_at``).
Reference: Hammersley & Morton (1956); Mohamed et al., JMLR 2020, Section 8.
"""

from numba import njit

from ..axes import Estimator
from ..quadrature import values


@njit
def per_sample(component, s, family, cost, consts):
    e_anti = family.antithetic(s.e)
    df_anti = cost.derivative(family.to_x(s.theta, e_anti), s.k)
    return 0.5 * (s.df * family.dx_dtheta(component, s.theta, s.e)
                  + df_anti * family.dx_dtheta(component, s.theta, e_anti))


def reference(family, cost, component, params):
    """E and Var of g = (f'(x) dx/dtheta(x) + f'(x~) dx/dtheta(x~)) / 2 over the family's rule."""
    theta = family.theta(params)
    k = params.get("k", 0.0)
    x, w = family.rule(theta)
    x_anti = family.antithetic_at(theta, x)
    g = 0.5 * (values(cost.derivative, x, k) * family.dx_at(component, theta, x)
               + values(cost.derivative, x_anti, k) * family.dx_at(component, theta, x_anti))
    mean = float(w @ g)
    return mean, max(float(w @ (g * g)) - mean * mean, 0.0)


ESTIMATOR = Estimator(
    name="antithetic_pathwise",
    per_sample=per_sample,
    evals_per_sample=2,
    description="pathwise term averaged over eps and its antithetic draw",
    needs=frozenset({"derivative", "reparameterisation", "antithetic"}),
    reference=reference,
)
