"""REBAR for a Bernoulli variable (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, 2017):
the score function with the concrete relaxation as a control variate, made unbiased by the
reparameterised conditional relaxation.

Estimand:  d/dlogit E[f(x)], x ~ Bernoulli(p), p = sigmoid(logit).  Unbiased for every
           temperature lambda and scale eta.
Noise:     u the main uniform (stream 0), z = logit + L(u), L = log(1 - u) - log(u), the hard
           sample x = 1{z > 0} (the family's sample); v a second uniform (stream ``STREAM``,
           counter index i); the conditional relaxation z~ ~ p(z | x), reparameterised by v
           with r = v / (1 - v):
             x = 1: z~ = log(1 + r / (1 - p)),   dz~/dlogit = r p / (1 - p + r)
             x = 0: z~ = -log(1 + r / p),        dz~/dlogit = r (1 - p) / (p + r).
Formula:   with sigma_l(z) = sigmoid(z / lambda) and c(z) = f'(sigma_l(z)) sigma_l(z)
           (1 - sigma_l(z)) / lambda (the derivative of f(sigma_l(z)) in z):
             g = (f(x) - eta f(sigma_l(z~))) (x - p) + eta (c(z) - c(z~) dz~/dlogit).
           The three eta terms have expectation zero (the REBAR identity
           E[f(sigma_l(z~)) (x - p)] = d/dlogit E[f(sigma_l(z))] - E[d/dlogit f(sigma_l(z~))]).
Options:   ``temperature`` lambda (default 0.5; ``gumbel_softmax.TEMPERATURES``), ``eta``
           (default 1.0; one of ``ETAS``).  Fixed, not optimised (the papers tune both).
Requires:  the Bernoulli family; the cost's value and derivative, defined on [0, 1].  3
           evaluations per sample: f(x) and (f, f') at each of the two relaxed samples.
           Per-sample kind.
Per-sample variance: ``reference``, source "quadrature": given x, z and z~ are i.i.d. from
           p(z | x), so E and E[g^2] are sums over x of 1-D integrals over z (the logistic rule
           restricted to z > 0 or z < 0, ``harness.quadrature.logistic_rule``), with
           dz~/dlogit written in z~ (x = 1: p (1 - e^-z~); x = 0: (1 - p) (1 - e^z~)), not in
           v as the kernel computes it.
Random streams: 0 and ``STREAM`` (= 4).
Reference: Tucker et al., NeurIPS 2017, Section 3 and Appendix C (binary case).
"""

import math
from functools import partial

import numpy as np
from numba import njit
from scipy.special import expit

from ..axes import Estimator
from ..distributions.bernoulli import logistic_noise, probability
from ..quadrature import logistic_rule, values
from ..rng import uniform_pair
from .gumbel_softmax import TEMPERATURES

STREAM = 4
ETAS = (1.0, 0.5)


@njit(inline="always")
def _slope(cost, z, tau, k):
    """d/dz f(sigmoid(z / tau))."""
    y = probability(z / tau)
    return cost.derivative(y, k) * y * probability(-z / tau) / tau


@njit
def per_sample(component, s, family, cost, consts):
    tau, eta = consts[0], consts[1]
    logit = s.theta[0]
    p, q = probability(logit), probability(-logit)
    z = logit + logistic_noise(s.e)
    v = uniform_pair(s.key0, s.key1, s.index, STREAM)[0]
    r = v / (1.0 - v)
    if s.x == 1.0:
        z_cond = math.log1p(r / q)
        dz_cond = r * p / (q + r)
    else:
        z_cond = -math.log1p(r / p)
        dz_cond = r * q / (p + r)
    f_cond = cost.value(probability(z_cond / tau), s.k)
    return ((s.f - eta * f_cond) * (s.x - p)
            + eta * (_slope(cost, z, tau, s.k) - _slope(cost, z_cond, tau, s.k) * dz_cond))


def prepare(temperature, eta, family, cost, component, params):
    return float(temperature), float(eta)


def reference(temperature, eta, family, cost, component, params):
    """E and Var of g: sums over x of 1-D integrals over z given x (module docstring)."""
    logit, tau, k = params["logit"], float(temperature), params.get("k", 0.0)
    p = float(expit(logit))
    noise, w = logistic_rule([-logit])
    z = logit + noise
    y = expit(z / tau)
    f_relaxed = values(cost.value, y, k)
    slope = values(cost.derivative, y, k) * y * expit(-z / tau) / tau
    mean = second = 0.0
    given = ((1.0, z > 0, p * -np.expm1(-z)), (0.0, z < 0, (1.0 - p) * -np.expm1(z)))
    for x, region, dz_cond in given:
        weight = w * region
        prob = float(weight.sum())                        # P(x), the rule's own mass
        if prob == 0.0:                                   # |logit| beyond the rule's range
            continue
        f_x = float(values(cost.value, np.array([x]), k)[0])
        a = (f_x - eta * f_relaxed) * (x - p) - eta * slope * dz_cond    # z as z~
        e_a, e_a2 = float(weight @ a) / prob, float(weight @ (a * a)) / prob
        e_c, e_c2 = float(weight @ slope) / prob, float(weight @ (slope * slope)) / prob
        mean += prob * (e_a + eta * e_c)
        second += prob * (e_a2 + 2.0 * eta * e_a * e_c + eta * eta * e_c2)
    return mean, max(second - mean * mean, 0.0)


def configure(eta, temperature):
    return Estimator(
        name="", per_sample=per_sample, evals_per_sample=3,
        description=f"REBAR, lambda = {temperature}, eta = {eta}", needs=NEEDS,
        families=("bernoulli",), streams=(STREAM,), n_consts=2,
        prepare=partial(prepare, temperature, eta), reference=partial(reference, temperature, eta))


NEEDS = frozenset({"derivative", "unit_interval"})

ESTIMATOR = Estimator(
    name="rebar",
    per_sample=per_sample,
    evals_per_sample=3,
    description="score function with the concrete relaxation as an unbiased control variate",
    needs=NEEDS,
    families=("bernoulli",),
    streams=(STREAM,),
    n_consts=2,
    prepare=partial(prepare, TEMPERATURES[0], ETAS[0]),
    reference=partial(reference, TEMPERATURES[0], ETAS[0]),
    options={"temperature": TEMPERATURES, "eta": ETAS},
    configure=configure,
)
