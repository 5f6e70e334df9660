"""Gumbel-softmax / concrete relaxation for a Bernoulli (and a categorical) variable (Jang, Gu
& Poole, 2017; Maddison, Mnih & Teh, 2017): the pathwise gradient of the relaxed problem.

Estimand:  d/dlogit E[f(y_tau)], the relaxed sample y_tau = sigmoid((logit + L) / tau) in
           (0, 1), L = log(1 - u) - log(u) ~ Logistic(0, 1) from the main uniform u (stream
           0; as tau -> 0, y_tau -> x = 1{logit + L > 0}, the family's sample).  *Biased* for
           d/dlogit E[f(x)] at every tau > 0 (``biased``): its exact expectation is the
           results column ``exact_estimator_mean``, the bias that minus ``exact_grad``.
Formula:   g = f'(y_tau) y_tau (1 - y_tau) / tau   (dy_tau/dlogit, with L fixed).
Option ``temperature`` tau (default 0.5): one of ``TEMPERATURES``.
Requires:  the Bernoulli or categorical family; the cost's derivative, defined on [0, 1]
           ([0, K - 1] for K categories; every built-in cost: square, quadratic, exp, cos are
           defined on the whole line; a cost with a narrower ``domain`` is rejected).
           1 evaluation of f' per sample.  Per-sample kind.
Per-sample variance and expectation: ``reference``, source "quadrature": E and Var of the
           formula above over L ~ Logistic(0, 1) (``harness.quadrature.logistic_rule``),
           written in L from the definition, apart from the kernel.
Categorical family (``categorical[K=...]``): the relaxation of ``relaxed_categorical`` with K
           Gumbel draws of its own per sample (streams ``STREAMS``), the soft index
           y = sum_k k softmax((logits + G) / tau)_k in (0, K - 1):
             g_j = f'(y) z_j (j - y) / tau   (dy/dlogit_j).
           The cost is evaluated on the relaxed simplex through the soft index: it must be
           defined on [0, K - 1] (every built-in cost is).  Exact expectation and variance:
           ``relaxed_categorical.moments`` for K = 2 and 3 (source "quadrature"); for K > 3
           none (``exact_estimator_mean`` NaN, ``exact_source: none``).
Reference: Jang et al., ICLR 2017; Maddison et al., ICLR 2017 (binary concrete, Section 3.3).
"""

from functools import partial

from numba import njit
from scipy.special import expit

from ..axes import Estimator
from ..distributions.bernoulli import logistic_noise, probability
from ..quadrature import logistic_rule, values
from . import relaxed_categorical
from .relaxed_categorical import relaxed_index

TEMPERATURES = (0.5, 0.1, 0.25, 1.0, 2.0)   # the first is the default
STREAMS = (5, 6, 7, 8)   # the categorical family's Gumbels: G_k on stream 5 + k // 2
FAMILIES = ("bernoulli", "categorical")


@njit
def per_sample(component, s, family, cost, consts):
    tau = consts[0]
    z = (s.theta[0] + logistic_noise(s.e)) / tau
    y = probability(z)
    return cost.derivative(y, s.k) * y * probability(-z) / tau


@njit
def per_sample_categorical(component, s, family, cost, consts):
    tau = consts[0]
    y, z, _ = relaxed_index(s.theta, tau, s.key0, s.key1, s.index, STREAMS[0], component)
    return cost.derivative(y, s.k) * z * (component - y) / tau


def prepare(temperature, family, cost, component, params):
    return (float(temperature),)


def reference(temperature, family, cost, component, params):
    """E and Var of g over L ~ Logistic(0, 1) (categorical: over the Gumbels, K <= 3)."""
    if family.base_name == "categorical":
        return relaxed_categorical.moments(
            family.theta(params), temperature, family.params.index(component),
            cost.derivative, params.get("k", 0.0), hard=False)
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
        families=FAMILIES, per_sample_by_family=BY_FAMILY, streams=STREAMS, n_consts=1,
        prepare=partial(prepare, temperature), reference=partial(reference, temperature))


NEEDS = frozenset({"derivative", "unit_interval"})
BY_FAMILY = {"categorical": per_sample_categorical}

ESTIMATOR = Estimator(
    name="gumbel_softmax",
    per_sample=per_sample,
    evals_per_sample=1,
    description="f'(y) dy/dlogit at the relaxed sample y = sigmoid((logit + L) / tau): biased",
    needs=NEEDS,
    biased=True,
    families=FAMILIES,
    per_sample_by_family=BY_FAMILY,
    streams=STREAMS,
    n_consts=1,
    prepare=partial(prepare, TEMPERATURES[0]),
    reference=partial(reference, TEMPERATURES[0]),
    options={"temperature": TEMPERATURES},
    configure=configure,
)
