"""Straight-through Gumbel estimator for a Bernoulli variable (Bengio et al., 2013; Jang et
al., 2017): the hard sample forward, the relaxed sample's derivative backward.

Estimand:  an approximation of d/dlogit E[f(x)], x ~ Bernoulli(sigmoid(logit)): *biased*
           (``biased``; its exact expectation is ``exact_estimator_mean``).
Formula:   with u the main uniform (stream 0), L = log(1 - u) - log(u), z = logit + L,
           x = 1{z > 0} the family's sample and y_tau = sigmoid(z / tau):
             g = f'(x) y_tau (1 - y_tau) / tau.
Option ``temperature`` tau (default 0.5): one of ``gumbel_softmax.TEMPERATURES``.
Requires:  the Bernoulli or categorical family; the cost's derivative at 0 and 1 (a cost
           defined on [0, 1]; [0, K - 1] for K categories).  1 evaluation of f' per sample.
           Per-sample kind; Bernoulli: no extra streams (categorical: ``STREAMS``).
Per-sample variance and expectation: ``reference``, source "quadrature": E and Var of the
           formula over L ~ Logistic(0, 1), split where x jumps (L = -logit).
Categorical family (``categorical[K=...]``): with the K Gumbels of ``relaxed_categorical``
           (its own streams ``STREAMS``), the hard index b = argmax(logits + G) (a categorical
           sample, not the family's x: the forward pass must match the relaxation) and the
           soft index y:  g_j = f'(b) z_j (j - y) / tau.  Exact expectation and variance as
           for ``gumbel_softmax`` (K = 2, 3; none beyond).
Reference: Bengio, Leonard & Courville (2013); Jang et al., ICLR 2017, Section 2.2.
"""

from functools import partial

from numba import njit
from scipy.special import expit

from ..axes import Estimator
from ..distributions.bernoulli import logistic_noise, probability
from ..quadrature import logistic_rule, values
from . import relaxed_categorical
from .gumbel_softmax import FAMILIES, TEMPERATURES
from .relaxed_categorical import relaxed_index

STREAMS = (9, 10, 11, 12)   # the categorical family's Gumbels: G_k on stream 9 + k // 2


@njit
def per_sample(component, s, family, cost, consts):
    tau = consts[0]
    z = (s.theta[0] + logistic_noise(s.e)) / tau
    return cost.derivative(s.x, s.k) * probability(z) * probability(-z) / tau


@njit
def per_sample_categorical(component, s, family, cost, consts):
    tau = consts[0]
    y, z, hard = relaxed_index(s.theta, tau, s.key0, s.key1, s.index, STREAMS[0], component)
    return cost.derivative(hard, s.k) * z * (component - y) / tau


def prepare(temperature, family, cost, component, params):
    return (float(temperature),)


def reference(temperature, family, cost, component, params):
    """E and Var of g over L ~ Logistic(0, 1) (categorical: over the Gumbels, K <= 3)."""
    if family.base_name == "categorical":
        return relaxed_categorical.moments(
            family.theta(params), temperature, family.params.index(component),
            cost.derivative, params.get("k", 0.0), hard=True)
    logit, tau = params["logit"], float(temperature)
    noise, w = logistic_rule([-logit])
    z = logit + noise
    hard = (z > 0).astype(float)
    g = values(cost.derivative, hard, params.get("k", 0.0)) * expit(z / tau) * expit(-z / tau) \
        / tau
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


def configure(temperature):
    return Estimator(
        name="", per_sample=per_sample, evals_per_sample=1, biased=True,
        description=f"straight-through, tau = {temperature}", needs=NEEDS,
        families=FAMILIES, per_sample_by_family=BY_FAMILY, streams=STREAMS, n_consts=1,
        prepare=partial(prepare, temperature), reference=partial(reference, temperature))


NEEDS = frozenset({"derivative", "unit_interval"})
BY_FAMILY = {"categorical": per_sample_categorical}

ESTIMATOR = Estimator(
    name="straight_through",
    per_sample=per_sample,
    evals_per_sample=1,
    description="f'(x) at the hard sample times the relaxed sample's dy/dlogit: biased",
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
