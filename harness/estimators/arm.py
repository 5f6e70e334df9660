"""ARM: the augment-REINFORCE-merge estimator for a Bernoulli variable (Yin & Zhou, 2019).

Estimand:  d/dlogit E[f(x)], x ~ Bernoulli(p), p = sigmoid(logit).
Formula:   with u the main uniform (stream 0; the family's sample is x = 1{u < p}) and
           q = sigmoid(-logit) = 1 - p:
             g = ( f(1{u > q}) - f(1{u < q}) ) (u - 1/2).
           Unbiased: f(b) = f(0) + (f(1) - f(0)) b is linear in b, and
           E[(1{u > q} - 1{u < q}) (u - 1/2)] = p q.
Requires:  the Bernoulli family; the cost's value only (at 0 and 1).  2 evaluations of f
           per sample.  Per-sample kind, no extra random streams.
Per-sample variance: with D = f(1) - f(0), g = +-D (u - 1/2), so Var[g] = D^2 / 12 - (D p q)^2
           (the closed form the tests check the reference against).  Reference
           (``reference``, source "quadrature"): the definition above integrated over u by
           Gauss-Legendre split at q (the integrand is a polynomial on each side: exact).
Reference: Yin & Zhou, ICLR 2019, Theorem 1 (univariate case).
"""

from numba import njit
from scipy.special import expit

from ..axes import Estimator
from ..distributions.bernoulli import probability
from ..quadrature import split_unit_rule, values


@njit
def per_sample(component, s, family, cost, consts):
    q = probability(-s.theta[0])
    u = s.e
    f_up = cost.value(1.0 if u > q else 0.0, s.k)
    f_down = cost.value(1.0 if u < q else 0.0, s.k)
    return (f_up - f_down) * (u - 0.5)


def reference(family, cost, component, params):
    """E and Var of g(u) over u ~ Uniform(0, 1)."""
    q = float(expit(-params["logit"]))
    u, w = split_unit_rule([q])
    k = params.get("k", 0.0)
    g = (values(cost.value, (u > q).astype(float), k)
         - values(cost.value, (u < q).astype(float), k)) * (u - 0.5)
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


ESTIMATOR = Estimator(
    name="arm",
    per_sample=per_sample,
    evals_per_sample=2,
    description="(f(1{u > 1-p}) - f(1{u < 1-p})) (u - 1/2): unbiased, 2 evaluations",
    families=("bernoulli",),
    reference=reference,
)
