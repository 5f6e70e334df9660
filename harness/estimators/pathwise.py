"""Pathwise (reparameterisation) estimator.

Estimand:  d/dtheta E_q[f(x)] for q = N(mu, sigma^2), theta in {mu, sigma}.
Formula:   with x = mu + sigma * eps (eps the shared normal stream 0 of the seed),
           g = f'(x) * dx/dtheta:
             mu:    g = f'(x)
             sigma: g = f'(x) * eps
Requires:  a differentiable cost (``cost.derivative`` not None); 1 evaluation of f' per sample.
Reference: Kingma & Welling (2014); Mohamed et al., JMLR 2020, Section 5.
"""

from numba import njit

from ..base import Estimator


@njit
def per_sample(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    if component == 0:
        return df
    return df * eps


ESTIMATOR = Estimator(
    name="pathwise",
    per_sample=per_sample,
    needs_derivative=True,
    evals_per_sample=1,
    description="f'(x) * dx/dtheta: needs a differentiable f, usually low variance",
)
