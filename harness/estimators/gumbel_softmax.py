"""Gumbel-softmax / concrete relaxation for a Bernoulli variable (Jang, Gu & Poole, 2017;
Maddison, Mnih & Teh, 2017): the pathwise gradient of the relaxed problem.

Estimand:  d/dlogit E[f(y_tau)], the relaxed sample y_tau = sigmoid((logit + L) / tau) in
           (0, 1), L = log(1 - u) - log(u) ~ Logistic(0, 1) from the main uniform u (stream
           0; as tau -> 0, y_tau -> x = 1{logit + L > 0}, the family's sample).  *Biased* for
           d/dlogit E[f(x)] at every tau > 0 (``biased``): its exact expectation is the
           results column ``exact_estimator_mean``, the bias that minus ``exact_grad``.
Formula:   g = f'(y_tau) y_tau (1 - y_tau) / tau   (dy_tau/dlogit, with L fixed).
Option ``temperature`` tau (default 0.5): one of ``TEMPERATURES``.
Requires:  the Bernoulli family; the cost's derivative, defined on [0, 1] (every built-in cost:
           square, quadratic, exp, cos are defined on the whole line; a cost with a narrower
           ``domain`` is rejected).  1 evaluation of f' per sample.  Per-sample kind.
Per-sample variance and expectation: ``reference``, source "quadrature": E and Var of the
           formula above over L ~ Logistic(0, 1) (``harness.quadrature.logistic_rule``),
           written in L from the definition, apart from the kernel.
Reference: Jang et al., ICLR 2017; Maddison et al., ICLR 2017 (binary concrete, Section 3.3).
"""

from functools import partial

from numba import njit
from scipy.special import expit

from ..axes import Estimator
from ..distributions.bernoulli import logistic_noise, probability
from ..quadrature import logistic_rule, values

TEMPERATURES = (0.5, 0.1, 0.25, 1.0, 2.0)   # the first is the default


@njit
def per_sample(component, s, family, cost, consts):
    tau = consts[0]
    z = (s.theta[0] + logistic_noise(s.e)) / tau
    y = probability(z)
    return cost.derivative(y, s.k) * y * probability(-z) / tau


def prepare(temperature, family, cost, component, params):
    return (float(temperature),)


def reference(temperature, family, cost, component, params):
    """E and Var of g over L ~ Logistic(0, 1)."""
    logit, tau = params["logit"], float(temperature)
    noise, w = logistic_rule([-logit])
    z = (logit + noise) / tau
    y = expit(z)
    g = values(cost.derivative, y, params.get("k", 0.0)) * y * expit(-z) / tau
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


def configure(temperature):
    return Estimator(
        name="", per_sample=per_sample, evals_per_sample=1, biased=True,
        description=f"concrete relaxation, tau = {temperature}", needs=NEEDS,
        families=("bernoulli",), n_consts=1, prepare=partial(prepare, temperature),
        reference=partial(reference, temperature))


NEEDS = frozenset({"derivative", "unit_interval"})

ESTIMATOR = Estimator(
    name="gumbel_softmax",
    per_sample=per_sample,
    evals_per_sample=1,
    description="f'(y) dy/dlogit at the relaxed sample y = sigmoid((logit + L) / tau): biased",
    needs=NEEDS,
    biased=True,
    families=("bernoulli",),
    n_consts=1,
    prepare=partial(prepare, TEMPERATURES[0]),
    reference=partial(reference, TEMPERATURES[0]),
    options={"temperature": TEMPERATURES},
    configure=configure,
)
