"""Score-function (REINFORCE, likelihood-ratio) estimator, with optional baselines.

Estimand:  d/dtheta E_q[f(x)] for q = N(mu, sigma^2), theta in {mu, sigma}.
Score:     s(eps) = d/dtheta log q:  mu: eps / sigma;  sigma: (eps^2 - 1) / sigma,
           with x_i = mu + sigma * eps_i, eps_i the shared normal stream 0 of the seed.
Formula:   g_i = (f(x_i) - b) * s(eps_i); the N-sample estimate is mean(g_i).  Since
           E[s] = 0, any b independent of sample i keeps it unbiased.
Option ``baseline`` (default ``none``):

``none``           b = 0.  Per-sample kind; 1 evaluation of f per sample.
                   Per-sample variance: Var[f s] (closed forms for quadratic/square, else
                   Gauss-Hermite quadrature over eps).
``mean``           b_i = mean of f over the *other* N - 1 samples of the same seed
                   (leave-one-out), so b_i is independent of sample i and the estimate stays
                   unbiased.  Algebraically the estimate is the sample covariance of f and s,
                   (sum f s - sum f sum s / N) / (N - 1).  Accumulated kind: the kernel sums
                   f~ s, f~, s, f~^2 s^2, f~ s^2, s^2 with f~ = f - f(mu) (a shift that cancels
                   exactly, it only guards against cancellation) and ``finalize`` forms the
                   estimate and sum g_i^2 = (N^2 sum f~^2 s^2 - 2 N F sum f~ s^2 + F^2 sum s^2)
                   / (N - 1)^2 (F = sum f~).  1 evaluation per sample.
                   Per-sample variance: the within-seed sample variance of the terms
                   g_i = (f_i - b_i) s_i.  Its reference ``exact_var`` is the N -> infinity
                   limit V = Var[(f - E f) s] (quadrature over eps); exactly,
                   N Var[estimate] = V + (Var[f] E[s^2] + E[f s]^2) / (N - 1)
                   (the variance of a sample covariance), an O(1/N) relative excess.
``optimal``        b = b^ = sum f(x'_j) s(eps'_j)^2 / sum s(eps'_j)^2 over an independent
                   stream eps'_j (j = 1..N, ``normal_at(key, j, STREAM_BASELINE)``) of the
                   same seed: the sample version of the variance-minimising scalar
                   b* = E[f s^2] / E[s^2], independent of the main samples, hence unbiased.
                   Accumulated kind (one pass: both streams are drawn in the same loop).
                   2 evaluations of f per sample (the N extra evaluations are counted).
                   Per-sample variance: the within-seed sample variance of
                   g_i = (f_i - b^) s_i; reference V* = Var[(f - b*) s] (quadrature), and
                   N Var[estimate] = V* + E[(b^ - b*)^2] E[s^2] = V* + O(1/N).
``exact_optimal``  b = b* computed exactly (quadrature over eps) once per cell: an oracle for
                   studies, not an algorithm.  Per-sample kind; 1 evaluation per sample.
                   Per-sample variance V* as above, exactly.

Random streams: 0 (shared eps); ``optimal`` also STREAM_BASELINE = 4.
Shapes: scalars per sample; the kernel returns (seeds, estimators, components).
Reference: Williams (1992); Mohamed et al., JMLR 2020, Sections 4 and 7.
"""

import numpy as np
from numba import njit

from ..base import Estimator
from ..quadrature import hermite_rule, values
from ..rng import normal_at

STREAM_BASELINE = 4


@njit(inline="always")
def score(component, sigma, eps):
    if component == 0:
        return eps / sigma
    return (eps * eps - 1.0) / sigma


@njit
def per_sample(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    if component == 0:
        return f * eps / sigma
    return f * (eps * eps - 1.0) / sigma


@njit
def per_sample_exact_optimal(component, cost, k, mu, sigma, eps, f, df, key0, key1, index,
                             consts):
    return (f - consts[0]) * score(component, sigma, eps)


@njit
def moments_mean(component, cost, k, mu, sigma, eps, f, df, key0, key1, index, consts):
    ft = f - consts[0]
    s = score(component, sigma, eps)
    fs = ft * s
    return fs, ft, s, fs * fs, fs * s, s * s


def finalize_mean(means, variances, n, consts):
    a, f_sum, s_sum, q, p, t = (n * means[:, j] for j in range(6))
    estimate = (a - f_sum * s_sum / n) / (n - 1)
    sum_g2 = (n * n * q - 2.0 * n * f_sum * p + f_sum * f_sum * t) / ((n - 1.0) ** 2)
    return estimate, np.maximum(sum_g2 - n * estimate * estimate, 0.0) / (n - 1)


@njit
def moments_optimal(component, cost, k, mu, sigma, eps, f, df, key0, key1, index, consts):
    ft = f - consts[0]
    s = score(component, sigma, eps)
    e2 = normal_at(key0, key1, index, STREAM_BASELINE)
    f2 = cost(mu + sigma * e2, k) - consts[0]
    s2 = score(component, sigma, e2)
    fs = ft * s
    return fs, s, fs * fs, fs * s, s * s, f2 * s2 * s2, s2 * s2


def finalize_optimal(means, variances, n, consts):
    a, s_sum, q, p, t, b_num, b_den = (n * means[:, j] for j in range(7))
    b = b_num / b_den
    estimate = (a - b * s_sum) / n
    # sample variance of g = f~ s - b s from the kernel's (shifted) variances of f~ s and s
    # and their raw covariance
    cov = (p - a * s_sum / n) / (n - 1)
    var = variances[:, 0] - 2.0 * b * cov + b * b * variances[:, 1]
    return estimate, np.maximum(var, 0.0)


# ---- per-cell constants and exact references (Python) ---------------------------------------

def _terms(cost, component, mu, sigma, k):
    """(weights, f, s) at the Gauss-Hermite nodes over eps."""
    eps, w = hermite_rule()
    f = values(cost.value, mu + sigma * eps, k)
    s = eps / sigma if component == "mu" else (eps * eps - 1.0) / sigma
    return w, f, s


def optimal_baseline(cost, component, mu, sigma, k) -> float:
    """b* = E[f s^2] / E[s^2] by quadrature."""
    w, f, s = _terms(cost, component, mu, sigma, k)
    return float(w @ (f * s * s)) / float(w @ (s * s))


def baseline_moments(cost, component, mu, sigma, k, b):
    """(E[(f - b) s], Var[(f - b) s]) by quadrature."""
    w, f, s = _terms(cost, component, mu, sigma, k)
    g = (f - b) * s
    mean = float(w @ g)
    return mean, max(float(w @ (g * g)) - mean * mean, 0.0)


def _prepare_shift(cost, component, mu, sigma, k):
    return (float(cost.value(mu, k)),)


def _prepare_exact_optimal(cost, component, mu, sigma, k):
    return (optimal_baseline(cost, component, mu, sigma, k),)


def _exact_mean(cost, component, mu, sigma, k):
    mean, var = baseline_moments(cost, component, mu, sigma, k, cost.exact_mean(mu, sigma, k))
    return mean, var, "quadrature"


def _exact_optimal(cost, component, mu, sigma, k):
    b = optimal_baseline(cost, component, mu, sigma, k)
    mean, var = baseline_moments(cost, component, mu, sigma, k, b)
    return mean, var, "quadrature"


def configure(baseline):
    if baseline == "none":
        return ESTIMATOR
    if baseline == "exact_optimal":
        return Estimator(name="", per_sample=per_sample_exact_optimal, needs_derivative=False,
                         evals_per_sample=1, description="score function, exact b*",
                         n_consts=1, prepare=_prepare_exact_optimal,
                         exact_moments=_exact_optimal)
    if baseline == "mean":
        return Estimator(name="", per_sample=moments_mean, needs_derivative=False,
                         evals_per_sample=1, description="score function, leave-one-out mean",
                         n_moments=6, finalize=finalize_mean, n_consts=1,
                         prepare=_prepare_shift, exact_moments=_exact_mean)
    return Estimator(name="", per_sample=moments_optimal, needs_derivative=False,
                     evals_per_sample=2, description="score function, b* from a 2nd stream",
                     extra_randomness=True, n_moments=7, finalize=finalize_optimal, n_consts=1,
                     prepare=_prepare_shift, exact_moments=_exact_optimal)


ESTIMATOR = Estimator(
    name="score_function",
    per_sample=per_sample,
    needs_derivative=False,
    evals_per_sample=1,
    description="f(x) * grad log q(x): unbiased for any f, high variance",
    options={"baseline": ("none", "mean", "optimal", "exact_optimal")},
    configure=configure,
)
