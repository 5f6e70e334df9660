"""DisARM: ARM averaged over the antithetic pair u, 1 - u, in closed form (Dong, Mnih & Tucker,
2020).

Estimand:  d/dlogit E[f(x)], x ~ Bernoulli(p), p = sigmoid(logit).
Formula:   with u the main uniform (stream 0), b = 1{u < p} (the family's sample) and its
           antithetic partner b~ = 1{1 - u < p}:
             g = 1/2 (f(b) - f(b~)) (-1)^b~ 1{b != b~} sigmoid(|logit|).
           Unbiased (f is linear in b on {0, 1}; P(b != b~) = 2 min(p, q), q = 1 - p).
Requires:  the Bernoulli family; the cost's value only.  2 evaluations of f per sample (f(b~)
           is needed only when b != b~; counted always).  Per-sample kind, no extra streams.
Per-sample variance: with D = f(1) - f(0), g = D sigmoid(|logit|) / 2 on a set of probability
           2 min(p, q), else 0: Var[g] = min(p, q) D^2 sigmoid(|logit|)^2 / 2 - (D p q)^2 (the
           closed form the tests check).  Reference (``reference``, source "quadrature"): the
           definition integrated over u, split at p and 1 - p (piecewise constant: exact).
Reference: Dong, Mnih & Tucker, NeurIPS 2020, Eq. (5).
"""

import numpy as np
from numba import njit
from scipy.special import expit

from ..axes import Estimator
from ..distributions.bernoulli import probability
from ..quadrature import split_unit_rule, values


@njit
def per_sample(component, s, family, cost, consts):
    logit = s.theta[0]
    p = probability(logit)
    b = 1.0 if s.e < p else 0.0
    b_anti = 1.0 if 1.0 - s.e < p else 0.0
    if b == b_anti:
        return 0.0
    sign = -1.0 if b_anti == 1.0 else 1.0
    return 0.5 * (s.f - cost.value(b_anti, s.k)) * sign * probability(abs(logit))


def reference(family, cost, component, params):
    """E and Var of g(u) over u ~ Uniform(0, 1)."""
    logit = params["logit"]
    p = float(expit(logit))
    u, w = split_unit_rule([p, 1.0 - p])
    k = params.get("k", 0.0)
    b, b_anti = (u < p).astype(float), (1.0 - u < p).astype(float)
    g = 0.5 * (values(cost.value, b, k) - values(cost.value, b_anti, k)) \
        * np.where(b_anti == 1.0, -1.0, 1.0) * (b != b_anti) * float(expit(abs(logit)))
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


ESTIMATOR = Estimator(
    name="disarm",
    per_sample=per_sample,
    evals_per_sample=2,
    description="ARM merged over u and 1 - u: (f(b) - f(b~)) (-1)^b~ 1{b != b~} "
                "sigmoid(|logit|) / 2",
    families=("bernoulli",),
    reference=reference,
)
