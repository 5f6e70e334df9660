"""Score-function estimator with the delta-method control variate.

Estimand:  d/dtheta_c E_q[f(x)] for any family q(x; theta) with mean m = E_q[x].
Control variate: the second-order Taylor expansion of f around m (the expansion point is a
           constant: it does not move with theta),
             h(x) = f(m) + f'(m) (x - m) + f''(m) (x - m)^2 / 2,
           whose expectation is exact, E_q[h] = f(m) + f'(m) (E x - m) + f''(m) (Var x +
           (E x - m)^2) / 2, with gradient at the current theta
             G_h = f'(m) dE[x]/dtheta_c + f''(m) dVar[x]/dtheta_c / 2
           (the family's ``moment_grads``; normal: G_h = f'(mu) wrt mu, f''(mu) sigma wrt sigma).
Formula:   g_i = f(x_i) s_i - beta (h(x_i) s_i - G_h), s the score (see ``score_function``),
           x_i the main samples (stream 0); x - m is the family's ``centred`` (normal:
           sigma * eps).  Unbiased for any beta independent of sample i.
Option ``coefficient`` (default 1):

``1``          beta = 1: g_i = (f_i - h_i) s_i + G_h.  Per-sample kind; 1 evaluation of f per
               sample (f', f'' only at m, once per cell).  Per-sample variance Var[(f - h) s]
               (quadrature of that expression over the family's rule).
``estimated``  beta^ = Cov(f' s', h' s') / Var(h' s'), the sample estimate of the
               variance-minimising beta* (as in Mohamed et al. and their code, from fresh
               samples so the estimate stays unbiased) over the independent copy x'_j of the
               samples (j = 1..N, stream 2**31: ``harness.rng``).  Accumulated kind (one pass).
               2 evaluations of f per sample (counted).  Per-sample variance: the within-seed
               sample variance of g_i = f_i s_i - beta^ (h_i s_i - G_h); reference: the
               N -> infinity limit V* = Var[f s - beta* h s] (quadrature).  Given beta^ the
               terms are i.i.d. with variance V* + (beta^ - beta*)^2 Var[h s], so N Var[estimate]
               and E[sample_var] both equal V* + E[(beta^ - beta*)^2] Var[h s]; beta^ is a
               regression slope of a = (f - h) s on b = h s - G_h (beta^ = 1 + slope), so to
               first order (``finite_n``) that is V* + E[r^2 (b - E b)^2] / (N Var[b]) +
               O(1/N^2), r = a - E a - (beta* - 1) (b - E b) the regression residual.

Requires:  the cost's derivative and second derivative (used at m only); any family.
Random streams: 0; ``estimated`` also the independent copy of stream 0.
Reference: Paisley, Blei, Jordan, ICML 2012; Mohamed et al., JMLR 2020, Section 7.
"""

import numpy as np
from numba import njit

from ..axes import Estimator
from ..quadrature import value_at, values


@njit(inline="always")
def taylor(consts, d):
    """h at x with d = x - m; consts = (f(m), f'(m), f''(m), G_h)."""
    return consts[0] + d * (consts[1] + 0.5 * consts[2] * d)


@njit
def per_sample_unit(component, s, family, cost, consts):
    h = taylor(consts, family.centred(s.theta, s.e))
    return (s.f - h) * family.score(component, s.theta, s.e) + consts[3]


@njit
def moments_estimated(component, s, family, cost, consts):
    score = family.score(component, s.theta, s.e)
    h = taylor(consts, family.centred(s.theta, s.e))
    r = (s.f - h) * score + consts[3]    # the beta = 1 term
    d = h * score - consts[3]            # the centred control variate
    e2 = s.e_copy
    s2 = family.score(component, s.theta, e2)
    h2 = taylor(consts, family.centred(s.theta, e2))
    a2 = (s.f_copy - h2) * s2
    b2 = h2 * s2 - consts[3]
    return r, d, r * r, r * d, d * d, a2, b2, a2 * b2, b2 * b2


def estimate_estimated(means, variances, n, consts):
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


# ---- per-cell constants (Python) -------------------------------------------------------------

def prepare(family, cost, component, params):
    """(f(m), f'(m), f''(m), G_h) at the family's mean m."""
    theta = family.theta(params)
    k = params.get("k", 0.0)
    m = family.mean(theta)
    f0 = value_at(cost.value, m, k)
    f1 = value_at(cost.derivative, m, k)
    f2 = float(cost.second_derivative(m, k))
    d_mean, d_var = family.moment_grads(component, theta)
    return f0, f1, f2, f1 * d_mean + 0.5 * f2 * d_var


# ---- exact references: NumPy transcriptions over the family's quadrature rule ---------------

def _nodes(family, cost, component, params):
    """(weights, f s, h s, G_h) at the family's quadrature nodes."""
    theta = family.theta(params)
    x, w = family.rule(theta)
    f0, f1, f2, g_h = prepare(family, cost, component, params)
    d = x - family.mean(theta)
    h = f0 + f1 * d + 0.5 * f2 * d * d
    s = family.score_at(component, theta, x)
    return w, values(cost.value, x, params.get("k", 0.0)) * s, h * s, g_h


def _mean_var(w, g):
    """E and Var of g over the rule, the variance in two passes (exactly ~0 where g is
    constant: beta* on a two-point family such as the Bernoulli fits h s to f s exactly)."""
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


def beta_star(family, cost, component, params) -> float:
    """beta* = Cov(f s, h s) / Var(h s) by quadrature."""
    w, fs, hs, _ = _nodes(family, cost, component, params)
    m_f, m_h = float(w @ fs), float(w @ hs)
    return float(w @ ((fs - m_f) * (hs - m_h))) / float(w @ ((hs - m_h) ** 2))


def reference_unit(family, cost, component, params):
    """E and Var of g = (f - h) s + G_h."""
    w, fs, hs, g_h = _nodes(family, cost, component, params)
    mean, var = _mean_var(w, fs - hs)
    return mean + g_h, var


def reference_estimated(family, cost, component, params):
    """N -> infinity limit: E and Var of g = f s - beta* (h s - G_h)."""
    beta = beta_star(family, cost, component, params)
    w, fs, hs, g_h = _nodes(family, cost, component, params)
    mean, var = _mean_var(w, fs - beta * hs)
    return mean + beta * g_h, var


def finite_n_estimated(family, cost, component, params, n):
    """(E[sample_var], N Var[estimate]) at N = n to first order in 1/N (module docstring)."""
    w, fs, hs, g_h = _nodes(family, cost, component, params)
    a, b = fs - hs, hs - g_h
    a_c, b_c = a - float(w @ a), b - float(w @ b)
    var_b = float(w @ (b_c * b_c))
    slope = float(w @ (a_c * b_c)) / var_b
    residual = a_c - slope * b_c
    _, v = reference_estimated(family, cost, component, params)
    excess = float(w @ (residual ** 2 * b_c ** 2)) / (n * var_b)
    return v + excess, v + excess


def configure(coefficient):
    if coefficient == "estimated":
        return Estimator(name="", per_sample=moments_estimated, evals_per_sample=2,
                         description="delta-method CV, beta from the independent copy",
                         needs=NEEDS, independent_copy=True, n_moments=9,
                         moments_to_estimate=estimate_estimated, n_consts=4, prepare=prepare,
                         reference=reference_estimated, finite_n=finite_n_estimated)
    return ESTIMATOR


NEEDS = frozenset({"derivative", "second_derivative"})

ESTIMATOR = Estimator(
    name="delta_cv",
    per_sample=per_sample_unit,
    evals_per_sample=1,
    description="score function minus a 2nd-order Taylor control variate around E x",
    needs=NEEDS,
    n_consts=4,
    prepare=prepare,
    reference=reference_unit,
    options={"coefficient": (1, "estimated")},
    configure=configure,
)
