"""Pathwise (reparameterisation) estimator.

Estimand:  d/dtheta_c E_q[f(x)] for a reparameterisable family, x = to_x(theta, e).
Formula:   g = f'(x) * dx/dtheta_c (the family's ``dx_dtheta``), with e the main draw
           (stream 0).  Normal: mu: g = f'(x); sigma: g = f'(x) * eps.
Requires:  the cost's derivative and a reparameterisable family; 1 evaluation of f' per
           sample.  Per-sample kind.
Per-sample variance: Var[f'(x) dx/dtheta]; reference: the cost's closed forms where derived,
           else quadrature of f'(x) dx/dtheta(x) over the family's rule.
Reference: Kingma & Welling (2014); Mohamed et al., JMLR 2020, Section 5.
"""

from numba import njit

from ..axes import Estimator
from ..quadrature import values


@njit
def per_sample(component, s, family, cost, consts):
    return s.df * family.dx_dtheta(component, s.theta, s.e)


def reference(family, cost, component, params):
    """E and Var of g = f'(x) dx/dtheta(x) over the family's rule."""
    theta = family.theta(params)
    x, w = family.rule(theta)
    g = values(cost.derivative, x, params.get("k", 0.0)) * family.dx_at(component, theta, x)
    mean = float(w @ g)
    return mean, max(float(w @ (g * g)) - mean * mean, 0.0)


ESTIMATOR = Estimator(
    name="pathwise",
    per_sample=per_sample,
    evals_per_sample=1,
    description="f'(x) * dx/dtheta: needs a differentiable f, usually low variance",
    needs=frozenset({"derivative", "reparameterisation"}),
    reference=reference,
)
