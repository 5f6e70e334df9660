"""Score-function (REINFORCE, likelihood-ratio) estimator, with optional baselines.

Estimand:  d/dtheta_c E_q[f(x)] for any family q(x; theta) and cost f.
Score:     s(x) = d/dtheta_c log q(x; theta) (the family's ``score``; normal: eps / sigma for
           mu, (eps^2 - 1) / sigma for sigma), x_i the main samples (stream 0).
Formula:   g_i = (f(x_i) - b) s(x_i); the N-sample estimate is mean(g_i).  Since E[s] = 0,
           any b independent of sample i keeps it unbiased.
Requires:  the cost's value only; any family.
Option ``baseline`` (default ``none``):

``none``           b = 0.  Per-sample kind; 1 evaluation of f per sample.
                   Per-sample variance Var[f s]; reference: closed forms of the cost where
                   derived, else quadrature of f s over the family's rule.
``mean``           b_i = mean of f over the *other* N - 1 samples of the same seed
                   (leave-one-out), so b_i is independent of sample i and the estimate stays
                   unbiased.  Algebraically the estimate is the sample covariance of f and s,
                   (sum f s - sum f sum s / N) / (N - 1).  Accumulated kind: the kernel sums
                   f~ s, f~, s, f~^2 s^2, f~ s^2, s^2 with f~ = f - f(E x) (a shift that
                   cancels exactly, it only guards against cancellation) and
                   ``moments_to_estimate`` forms the estimate and sum g_i^2 = (N^2 sum f~^2 s^2
                   - 2 N F sum f~ s^2 + F^2 sum s^2) / (N - 1)^2 (F = sum f~).  1 evaluation per
                   sample.  Per-sample variance: the within-seed sample variance of the terms
                   g_i = (f_i - b_i) s_i.  Reference ``exact_var``: the N -> infinity limit
                   V = Var[(f - E f) s] (quadrature).  Exactly (``finite_n``), with
                   X = Var[f] E[s^2] + E[f s]^2:  N Var[estimate] = V + X / (N - 1) (the
                   variance of a sample covariance) and E[sample_var] = V + (N Var[f] E[s^2]
                   - X) / (N - 1)^2.
``optimal``        b = b^ = sum f(x'_j) s(x'_j)^2 / sum s(x'_j)^2 over the independent copy
                   x'_j of the samples (j = 1..N, stream 2**31: ``harness.rng``), the sample
                   version of the variance-minimising b* = E[f s^2] / E[s^2], independent of
                   the main samples, hence unbiased.  Accumulated kind (one pass: both streams
                   are drawn in the same loop).  2 evaluations of f per sample (counted).
                   Per-sample variance: the within-seed sample variance of g_i = (f_i - b^) s_i;
                   reference V* = Var[(f - b*) s] (quadrature).  Given b^ the terms are i.i.d.
                   with variance V* + (b^ - b*)^2 E[s^2], so both N Var[estimate] and
                   E[sample_var] equal V* + E[(b^ - b*)^2] E[s^2]; to first order (delta method
                   for the ratio b^, ``finite_n``) V* + E[(f - b*)^2 s^4] / (N E[s^2]) +
                   O(1/N^2).
``exact_optimal``  b = b* computed exactly (quadrature) once per cell: an oracle for studies,
                   not an algorithm.  Per-sample kind; 1 evaluation per sample; variance V*.

Random streams: 0; ``optimal`` also the independent copy of stream 0 (``independent_copy``).
Shapes: scalars per sample; the kernel returns (seeds, estimators, components).
Reference: Williams (1992); Mohamed et al., JMLR 2020, Sections 4 and 7.
"""

import numpy as np
from numba import njit

from ..axes import Estimator
from ..quadrature import value_at, values


@njit
def per_sample(component, s, family, cost, consts):
    return family.times_score(component, s.theta, s.e, s.f)


@njit
def per_sample_exact_optimal(component, s, family, cost, consts):
    return (s.f - consts[0]) * family.score(component, s.theta, s.e)


@njit
def moments_mean(component, s, family, cost, consts):
    ft = s.f - consts[0]
    score = family.score(component, s.theta, s.e)
    fs = ft * score
    return fs, ft, score, fs * fs, fs * score, score * score


def estimate_mean(means, variances, n, consts):
    a, f_sum, s_sum, q, p, t = (n * means[:, j] for j in range(6))
    estimate = (a - f_sum * s_sum / n) / (n - 1)
    sum_g2 = (n * n * q - 2.0 * n * f_sum * p + f_sum * f_sum * t) / ((n - 1.0) ** 2)
    return estimate, np.maximum(sum_g2 - n * estimate * estimate, 0.0) / (n - 1)


@njit
def moments_optimal(component, s, family, cost, consts):
    ft = s.f - consts[0]
    score = family.score(component, s.theta, s.e)
    f2 = s.f_copy - consts[0]
    s2 = family.score(component, s.theta, s.e_copy)
    fs = ft * score
    return fs, score, fs * fs, fs * score, score * score, f2 * s2 * s2, s2 * s2


def estimate_optimal(means, variances, n, consts):
    a, s_sum, q, p, t, b_num, b_den = (n * means[:, j] for j in range(7))
    b = b_num / b_den
    estimate = (a - b * s_sum) / n
    # sample variance of g = f~ s - b s from the kernel's (shifted) variances of f~ s and s
    # and their raw covariance
    cov = (p - a * s_sum / n) / (n - 1)
    var = variances[:, 0] - 2.0 * b * cov + b * b * variances[:, 1]
    return estimate, np.maximum(var, 0.0)


# ---- per-cell constants (Python) -------------------------------------------------------------

def _prepare_shift(family, cost, component, params):
    return (value_at(cost.value, family.mean(family.theta(params)), params.get("k", 0.0)),)


def _prepare_exact_optimal(family, cost, component, params):
    """(b*,): E[f s^2] / E[s^2] over the family's rule in x (``optimal_baseline``).  A base-draw
    rule would not do for every family: the Bernoulli sample is a step function of its
    uniform, which no smooth rule over u integrates exactly; its two-point rule in x does."""
    return (optimal_baseline(family, cost, component, params),)


# ---- exact references: NumPy transcriptions over the family's quadrature rule ---------------

def _nodes(family, cost, component, params):
    """(weights, f, s) at the family's quadrature nodes."""
    theta = family.theta(params)
    x, w = family.rule(theta)
    return w, values(cost.value, x, params.get("k", 0.0)), family.score_at(component, theta, x)


def _mean_var(w, g):
    """E and Var of g over the rule, the variance in two passes: E[g^2] - E[g]^2 would cancel
    to ~1e-17 where g is constant (the optimal baseline of a single Bernoulli: Var 0)."""
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


def optimal_baseline(family, cost, component, params) -> float:
    """b* = E[f s^2] / E[s^2] by quadrature."""
    w, f, s = _nodes(family, cost, component, params)
    return float(w @ (f * s * s)) / float(w @ (s * s))


def reference_none(family, cost, component, params):
    """E and Var of g = f s."""
    w, f, s = _nodes(family, cost, component, params)
    return _mean_var(w, f * s)


def reference_mean(family, cost, component, params):
    """N -> infinity limit: E and Var of g = (f - E f) s."""
    w, f, s = _nodes(family, cost, component, params)
    return _mean_var(w, (f - float(w @ f)) * s)


def reference_optimal(family, cost, component, params):
    """E and Var of g = (f - b*) s."""
    w, f, s = _nodes(family, cost, component, params)
    b = float(w @ (f * s * s)) / float(w @ (s * s))
    return _mean_var(w, (f - b) * s)


def finite_n_mean(family, cost, component, params, n):
    """(E[sample_var], N Var[estimate]) of the leave-one-out baseline at N = n, exactly."""
    w, f, s = _nodes(family, cost, component, params)
    _, v = reference_mean(family, cost, component, params)
    var_f = float(w @ (f * f)) - float(w @ f) ** 2
    return finite_n_mean_from_moments(v, float(w @ (f * s)), var_f, float(w @ (s * s)), n)


def finite_n_optimal(family, cost, component, params, n):
    """(E[sample_var], N Var[estimate]) of the estimated optimal baseline at N = n, to first
    order in 1/N: V* + E[(f - b*)^2 s^4] / (N E[s^2]) for both."""
    w, f, s = _nodes(family, cost, component, params)
    s2 = float(w @ (s * s))
    b = float(w @ (f * s * s)) / s2
    _, v = _mean_var(w, (f - b) * s)
    return finite_n_optimal_from_moments(v, float(w @ ((f - b) ** 2 * s ** 4)), s2, n)


# The finite-N algebra from the moments alone, shared with the ELBO kind's references
# (``harness.vi.references.finite_n``: per gradient component, on arrays).

def finite_n_mean_from_moments(v, c, var_f, mean_s2, n):
    """(E[sample_var], N Var[estimate]) of the leave-one-out baseline at N = n, exactly, from
    V = Var[(f - E f) s], c = E[f s], Var[f] and E[s^2]: with X = Var[f] E[s^2] + c^2,
    N Var[estimate] = V + X / (N - 1) and E[sample_var] = V + (N Var[f] E[s^2] - X) / (N - 1)^2."""
    x = var_f * mean_s2 + c ** 2
    return v + (n * var_f * mean_s2 - x) / (n - 1.0) ** 2, v + x / (n - 1.0)


def finite_n_optimal_from_moments(v_star, fourth, mean_s2, n):
    """(E[sample_var], N Var[estimate]) of the estimated optimal baseline at N = n to first
    order in 1/N, from V* = Var[(f - b*) s], E[(f - b*)^2 s^4] and E[s^2]: both
    V* + E[(f - b*)^2 s^4] / (N E[s^2])."""
    excess = fourth / (n * mean_s2)
    return v_star + excess, v_star + excess


def configure(baseline):
    if baseline == "none":
        return ESTIMATOR
    if baseline == "exact_optimal":
        return Estimator(name="", per_sample=per_sample_exact_optimal, evals_per_sample=1,
                         description="score function, exact b*", n_consts=1,
                         prepare=_prepare_exact_optimal, reference=reference_optimal)
    if baseline == "mean":
        return Estimator(name="", per_sample=moments_mean, evals_per_sample=1,
                         description="score function, leave-one-out mean", n_moments=6,
                         moments_to_estimate=estimate_mean, n_consts=1, prepare=_prepare_shift,
                         reference=reference_mean, finite_n=finite_n_mean)
    if baseline == "optimal":
        return Estimator(name="", per_sample=moments_optimal, evals_per_sample=2,
                         description="score function, b* from the independent copy",
                         independent_copy=True, n_moments=7,
                         moments_to_estimate=estimate_optimal, n_consts=1,
                         prepare=_prepare_shift, reference=reference_optimal,
                         finite_n=finite_n_optimal)
    raise ValueError(f"unknown baseline {baseline!r}")


ESTIMATOR = Estimator(
    name="score_function",
    per_sample=per_sample,
    evals_per_sample=1,
    description="f(x) * grad log q(x): unbiased for any f, high variance",
    reference=reference_none,
    options={"baseline": ("none", "mean", "optimal", "exact_optimal")},
    configure=configure,
)
