"""Score-function estimator with the delta-method control variate.

Estimand:  d/dtheta E_q[f(x)] for q = N(mu, sigma^2), theta in {mu, sigma}.
Control variate: the second-order Taylor expansion of f around mu (the expansion point is a
           constant: it does not move with theta),
             h(x) = f(mu) + f'(mu) (x - mu) + f''(mu) (x - mu)^2 / 2,
           whose expectation is exact: E_q[h] = f(mu) + f''(mu) sigma^2 / 2 at the expansion
           point, with gradient G_h = f'(mu) (wrt mu) and f''(mu) sigma (wrt sigma).
Formula:   g_i = f(x_i) s_i - beta (h(x_i) s_i - G_h), s the score (see ``score_function``),
           x_i = mu + sigma eps_i, eps_i the shared normal stream 0.  Unbiased for any beta
           independent of sample i.
Option ``coefficient`` (default 1):

``1``          beta = 1: g_i = (f_i - h_i) s_i + G_h.  Per-sample kind; 1 evaluation of f per
               sample (f', f'' only at mu, once per cell).  Per-sample variance
               Var[(f - h) s] (Gauss-Hermite quadrature over eps).
``estimated``  beta^ = Cov(f' s', h' s') / Var(h' s'), the sample estimate of the
               variance-minimising beta* (as in Mohamed et al. and their code, from fresh
               samples so the estimate stays unbiased) over an independent stream eps'_j
               (j = 1..N, ``normal_at(key, j, STREAM_COEFFICIENT)``) of the same seed.
               Accumulated kind (one pass).  2 evaluations of f per sample (counted).
               Per-sample variance: the within-seed sample variance of
               g_i = f_i s_i - beta^ (h_i s_i - G_h); reference: the N -> infinity limit
               Var[f s - beta* h s] (quadrature); N Var[estimate] exceeds it by
               E[(beta^ - beta*)^2] Var[h s] = O(1/N).

Requires:  a cost with ``derivative`` and ``second_derivative`` (used at mu only).
Random streams: 0; ``estimated`` also STREAM_COEFFICIENT = 4 (shared with
           ``score_function[baseline=optimal]``).
Reference: Paisley, Blei, Jordan, ICML 2012; Mohamed et al., JMLR 2020, Section 7.
"""

import numpy as np
from numba import njit

from ..base import Estimator
from ..errors import ConfigError
from ..quadrature import hermite_rule, values
from ..rng import normal_at
from .score_function import STREAM_BASELINE, score

# the same independent stream as score_function's optimal baseline: both need an independent
# copy of the samples, and sharing it lets LLVM compute the draws once in a fused kernel
STREAM_COEFFICIENT = STREAM_BASELINE


@njit(inline="always")
def taylor(consts, sigma, eps):
    """h at x = mu + sigma eps; consts = (f(mu), f'(mu), f''(mu), G_h)."""
    d = sigma * eps
    return consts[0] + d * (consts[1] + 0.5 * consts[2] * d)


@njit
def per_sample_unit(component, cost, k, mu, sigma, eps, f, df, key0, key1, index, consts):
    return (f - taylor(consts, sigma, eps)) * score(component, sigma, eps) + consts[3]


@njit
def moments_estimated(component, cost, k, mu, sigma, eps, f, df, key0, key1, index, consts):
    s = score(component, sigma, eps)
    h = taylor(consts, sigma, eps)
    r = (f - h) * s + consts[3]          # the beta = 1 term
    d = h * s - consts[3]                # the centred control variate
    e2 = normal_at(key0, key1, index, STREAM_COEFFICIENT)
    s2 = score(component, sigma, e2)
    h2 = taylor(consts, sigma, e2)
    a2 = (cost(mu + sigma * e2, k) - h2) * s2
    b2 = h2 * s2 - consts[3]
    return r, d, r * r, r * d, d * d, a2, b2, a2 * b2, b2 * b2


def finalize_estimated(means, variances, n, consts):
    r, d, rr, rd, dd, a2, b2, ab2, bb2 = (n * means[:, j] for j in range(9))
    # f s = r + d, so g = f s - beta d = r + gamma d with gamma = 1 - beta^,
    # beta^ = Cov(f' s', b') / Var(b') = 1 + Cov(a', b') / Var(b')
    var_b = bb2 - b2 * b2 / n
    cov_ab = ab2 - a2 * b2 / n
    gamma = np.where(var_b > 0, -cov_ab / np.where(var_b > 0, var_b, 1.0), 0.0)
    estimate = (r + gamma * d) / n
    # sample variance of g = r + gamma d from the kernel's (shifted, cancellation-free)
    # variances of r and d and their raw covariance, which only enters scaled by gamma
    cov_rd = (rd - r * d / n) / (n - 1)
    var = variances[:, 0] + 2.0 * gamma * cov_rd + gamma * gamma * variances[:, 1]
    return estimate, np.maximum(var, 0.0)


# ---- per-cell constants and exact references (Python) ---------------------------------------

def prepare(cost, component, mu, sigma, k):
    if cost.derivative is None or cost.second_derivative is None:
        raise ConfigError(f"delta_cv needs f' and f'' of the cost, {cost.name} lacks them",
                          key="estimators", fix="drop delta_cv or use a twice-differentiable cost")
    f0 = float(cost.value(mu, k))
    f1 = float(cost.derivative(mu, k))
    f2 = float(cost.second_derivative(mu, k))
    return f0, f1, f2, (f1 if component == "mu" else f2 * sigma)


def _nodes(cost, component, mu, sigma, k):
    eps, w = hermite_rule()
    c = prepare(cost, component, mu, sigma, k)
    f = values(cost.value, mu + sigma * eps, k)
    h = c[0] + sigma * eps * (c[1] + 0.5 * c[2] * sigma * eps)
    s = eps / sigma if component == "mu" else (eps * eps - 1.0) / sigma
    return w, f * s, h * s


def _moments(w, g):
    mean = float(w @ g)
    return mean, max(float(w @ (g * g)) - mean * mean, 0.0)


def beta_star(cost, component, mu, sigma, k) -> float:
    """beta* = Cov(f s, h s) / Var(h s) by quadrature."""
    w, fs, hs = _nodes(cost, component, mu, sigma, k)
    m_f, m_h = float(w @ fs), float(w @ hs)
    return float(w @ ((fs - m_f) * (hs - m_h))) / float(w @ ((hs - m_h) ** 2))


def _exact_unit(cost, component, mu, sigma, k):
    w, fs, hs = _nodes(cost, component, mu, sigma, k)
    mean, var = _moments(w, fs - hs)
    return mean + prepare(cost, component, mu, sigma, k)[3], var, "quadrature"


def _exact_estimated(cost, component, mu, sigma, k):
    beta = beta_star(cost, component, mu, sigma, k)
    w, fs, hs = _nodes(cost, component, mu, sigma, k)
    mean, var = _moments(w, fs - beta * hs)
    return mean + beta * prepare(cost, component, mu, sigma, k)[3], var, "quadrature"


def configure(coefficient):
    if coefficient == "estimated":
        return Estimator(name="", per_sample=moments_estimated, needs_derivative=True,
                         evals_per_sample=2, description="delta-method CV, beta from a 2nd stream",
                         extra_randomness=True, n_moments=9, finalize=finalize_estimated,
                         n_consts=4, prepare=prepare, exact_moments=_exact_estimated)
    return Estimator(name="", per_sample=per_sample_unit, needs_derivative=True,
                     evals_per_sample=1, description="delta-method CV, beta = 1",
                     n_consts=4, prepare=prepare, exact_moments=_exact_unit)


ESTIMATOR = Estimator(
    name="delta_cv",
    per_sample=per_sample_unit,
    needs_derivative=True,
    evals_per_sample=1,
    description="score function minus a 2nd-order Taylor control variate around mu",
    n_consts=4,
    prepare=prepare,
    exact_moments=_exact_unit,
    options={"coefficient": (1, "estimated")},
    configure=configure,
)
