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
Random streams: 0 and ``STREAM`` (= 4); categorical: ``GUMBEL_STREAMS`` (20-23) and
           ``CONDITIONAL_STREAMS`` (24-27), not stream 0.
Categorical family (``categorical[K=...]``, gradient wrt every ``logits[j]``; p = softmax(l)):
           z = l + G with K Gumbels of its own (``relaxed_categorical``, streams
           ``GUMBEL_STREAMS``), the hard index b = argmax z (a categorical sample: not the
           family's x, which is drawn from another uniform and would not match z) and the
           relaxation y = sum_k k softmax(z / lambda)_k (the soft index; the cost evaluated
           on the relaxed simplex through it, as ``gumbel_softmax``).  The conditional
           relaxation z~ ~ p(z | b), reparameterised by K uniforms v_k (streams
           ``CONDITIONAL_STREAMS``, v_k on stream 24 + k // 2), E_k = -log v_k, in the
           unnormalised logits (log Z = log sum_k e^{l_k}; the papers' appendices write it for
           normalised ones, log Z = 0): the maximum of the Gumbels is
           Gumbel(log Z) whatever b, and the others are Gumbel(l_i) truncated below it:
             z~_b = log Z - log E_b,    z~_i = -log(e^{-z~_b} + E_i e^{-l_i})   (i != b).
           At fixed v and b, with w_i = z~_i - z~_b (w_b = 0):
             dz~_i/dl_j = 1{i = j} + e^{w_i} (p_j - 1{i = j})
           (dz~_b/dl_j = p_j).  With S(z)_i = softmax(z / lambda)_i (i - y) / lambda the
           soft index's gradient in z and y~ the soft index of z~:
             g_j = (f(b) - eta f(y~)) (1{b = j} - p_j)
                   + eta (f'(y) S(z)_j - f'(y~) sum_i S(z~)_i dz~_i/dl_j).
           Unbiased for every lambda and eta (the same identity as above).  K = 2 is the
           Bernoulli REBAR at logit = l_1 - l_0 in law, sample by sample negated for l_0 (z_1
           - z_0 = logit + Logistic; given b, z~_1 - z~_0 has the Bernoulli's conditional law
           and d(z~_1 - z~_0)/dl_1 = p_1 (1 - e^{-(z~_1 - z~_0)}) for b = 1, the Bernoulli's
           dz~/dlogit written in z~).  Per-sample variance: ``categorical_moments`` for K = 2
           and 3 (source "quadrature"): given b, z and z~ are i.i.d. from p(z | b), so E and
           E[g^2] are sums over b of integrals over the sector of the Gumbel differences where
           b wins (``relaxed_categorical.weighted_sectors``), with dz~/dl written in z~ as
           above, not in v as the kernel computes it.  K > 3: none (``exact_source: none``);
           the mean is the exact gradient (a finite sum) for every K.  Evaluations counted as
           for the Bernoulli (``evals_per_sample`` 3): f(b), f and f' at y~, f' at y.
Not for categorical: ``arm`` and ``disarm`` are binary estimators in their papers; their
           categorical extensions (ARSM, Yin et al., ICML 2019; Dong, Mnih & Tucker, NeurIPS
           2021) are other estimators, not provided.
Reference: Tucker et al., NeurIPS 2017, Section 3 and the appendix (binary and categorical
           cases); Grathwohl et al., ICLR 2018 (RELAX), appendix (the conditional sampler of
           the categorical case).
"""

import math
from functools import lru_cache, partial

import numpy as np
from numba import njit
from scipy.special import expit, softmax

from ..axes import Estimator
from ..distributions.bernoulli import logistic_noise, probability
from ..distributions.categorical import largest
from ..quadrature import logistic_rule, values
from ..rng import uniform_pair
from .gumbel_softmax import TEMPERATURES
from .relaxed_categorical import relaxed, relaxed_index, uniform_k, weighted_sectors

STREAM = 4
GUMBEL_STREAMS = (20, 21, 22, 23)        # categorical: G_k on stream 20 + k // 2
CONDITIONAL_STREAMS = (24, 25, 26, 27)   # categorical: v_k on stream 24 + k // 2
ETAS = (1.0, 0.5)
FAMILIES = ("bernoulli", "categorical")


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


@njit(inline="always")
def log_normaliser(theta):
    """log sum_k e^{l_k}, shifted by the largest logit (no overflow)."""
    m = largest(theta)
    total = 0.0
    for j in range(len(theta)):
        total += math.exp(theta[j] - m)
    return m + math.log(total)


@njit(inline="always")
def conditional_relaxation(theta, tau, key0, key1, index, b, component, log_norm, p):
    """(y~, sum_i S(z~)_i dz~_i/dl_component) for the conditional relaxation z~ ~ p(z | b)
    drawn from the v's (module docstring): one pass, no array.  z~_b = top is the maximum;
    e^{w_i} = 1 / (1 + x_i) with x_i = E_i e^{top - l_i}, so the softmax weights
    e^{w_i / tau} need no shift."""
    top = log_norm - math.log(-math.log(uniform_k(key0, key1, index, CONDITIONAL_STREAMS[0],
                                                  b)))
    total = weighted = ratio_total = ratio_weighted = 0.0
    weight_c = x_c = 0.0
    for i in range(len(theta)):
        x = 0.0
        if i != b:
            x = -math.log(uniform_k(key0, key1, index, CONDITIONAL_STREAMS[0], i)) \
                * math.exp(top - theta[i])
        weight = math.exp(-math.log1p(x) / tau)
        ratio = 1.0 / (1.0 + x)
        total += weight
        weighted += i * weight
        ratio_total += weight * ratio
        ratio_weighted += i * weight * ratio
        if i == component:
            weight_c, x_c = weight, x
    y_cond = weighted / total
    # dz~_i/dl_c = 1{i = c} (1 - e^{w_c}) + e^{w_i} p_c, and 1 - e^{w_c} = x_c / (1 + x_c)
    # (1 where x_c overflowed: a logit far below the maximum)
    below = x_c / (1.0 + x_c) if x_c < math.inf else 1.0
    return y_cond, (weight_c * (component - y_cond) * below
                    + p * (ratio_weighted - y_cond * ratio_total)) / (total * tau)


@njit
def per_sample_categorical(component, s, family, cost, consts):
    tau, eta = consts[0], consts[1]
    log_norm = log_normaliser(s.theta)
    p = math.exp(s.theta[component] - log_norm)
    y, z, hard = relaxed_index(s.theta, tau, s.key0, s.key1, s.index, GUMBEL_STREAMS[0],
                               component)
    y_cond, jacobian = conditional_relaxation(s.theta, tau, s.key0, s.key1, s.index,
                                              int(hard), component, log_norm, p)
    score = (1.0 if hard == component else 0.0) - p
    return ((cost.value(hard, s.k) - eta * cost.value(y_cond, s.k)) * score
            + eta * (cost.derivative(y, s.k) * z * (component - y) / tau
                     - cost.derivative(y_cond, s.k) * jacobian))


def prepare(temperature, eta, family, cost, component, params):
    return float(temperature), float(eta)


def reference(temperature, eta, family, cost, component, params):
    """E and Var of g: sums over x of 1-D integrals over z given x (module docstring);
    categorical: ``categorical_moments`` (K <= 3, else None)."""
    if family.base_name == "categorical":
        logits = family.theta(params)
        if len(logits) > 3:
            return None
        means, variances = categorical_moments(logits, float(temperature), float(eta),
                                               cost.value, cost.derivative,
                                               float(params.get("k", 0.0)))
        j = family.params.index(component)
        return float(means[j]), float(variances[j])
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


@lru_cache(maxsize=64)
def categorical_moments(logits: tuple, tau: float, eta: float, value, derivative,
                        k_cost: float):
    """(E[g_j], Var[g_j]) for every j on the categorical family, K = 2 or 3: given b, z and
    z~ are i.i.d. from p(z | b) (the sector where b wins), so with g = A(b, z~) + eta C(z)
    E[g^2 | b] = E[A^2 | b] + 2 eta E[A | b] E[C | b] + eta^2 E[C^2 | b]; dz~/dl in z~
    (module docstring)."""
    logits = np.asarray(logits, dtype=np.float64)
    k = logits.size
    p = softmax(logits)
    index = np.arange(k)
    first, second = np.zeros(k), np.zeros(k)
    for b, d, weight in weighted_sectors(logits, tau):
        prob = float(weight.sum())
        z, y = relaxed(d, tau)
        f_relaxed = values(value, y, k_cost)
        slope = values(derivative, y, k_cost)[:, None] * z * (index - y[:, None]) / tau
        ratio = np.exp(d - d[:, b:b + 1])                    # e^{z_i - z_b}, z as z~
        f_b = float(values(value, np.array([float(b)]), k_cost)[0])
        for j in range(k):
            one = (index == j).astype(np.float64)
            jacobian = one + ratio * (p[j] - one)            # dz~_i / dl_j
            a = (f_b - eta * f_relaxed) * (float(b == j) - p[j]) \
                - eta * (slope * jacobian).sum(axis=1)
            c = slope[:, j]                                  # d/dl_j f(sigma(z)), z free
            e_a, e_c = float(weight @ a), float(weight @ c)
            first[j] += e_a + eta * e_c
            second[j] += (float(weight @ (a * a)) + 2.0 * eta * e_a * e_c / prob
                          + eta * eta * float(weight @ (c * c)))
    return first, np.maximum(second - first * first, 0.0)


def configure(eta, temperature):
    return Estimator(
        name="", per_sample=per_sample, evals_per_sample=3,
        description=f"REBAR, lambda = {temperature}, eta = {eta}", needs=NEEDS,
        families=FAMILIES, per_sample_by_family=BY_FAMILY, streams=STREAMS, n_consts=2,
        prepare=partial(prepare, temperature, eta), reference=partial(reference, temperature, eta))


NEEDS = frozenset({"derivative", "unit_interval"})
BY_FAMILY = {"categorical": per_sample_categorical}
STREAMS = (STREAM, *GUMBEL_STREAMS, *CONDITIONAL_STREAMS)

ESTIMATOR = Estimator(
    name="rebar",
    per_sample=per_sample,
    evals_per_sample=3,
    description="score function with the concrete relaxation as an unbiased control variate",
    needs=NEEDS,
    families=FAMILIES,
    per_sample_by_family=BY_FAMILY,
    streams=STREAMS,
    n_consts=2,
    prepare=partial(prepare, TEMPERATURES[0], ETAS[0]),
    reference=partial(reference, TEMPERATURES[0], ETAS[0]),
    options={"temperature": TEMPERATURES, "eta": ETAS},
    configure=configure,
)
