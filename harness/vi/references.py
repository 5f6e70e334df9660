"""Exact references of the score-function ELBO estimators, written apart from the kernels.

A reference computed by the code under test would be circular, so nothing here calls
``harness.vi.kernels``: the integrand and the score are plain-NumPy transcriptions of their
definitions, integrated by tensor Gauss-Hermite quadrature (``harness.quadrature``), which
is exact here because on the Gaussian target every integrand is a polynomial in eps.
Closed forms (ELBO, gradient, the pathwise estimators' variances) live with the targets
(``harness.vi.targets.gaussian``).  Where neither exists, ``exact_var`` is NaN with
``exact_source`` none (``harness.vi.api.reference``).

Definitions (eps ~ N(0, I_d), z = mu + C eps, target g = N(m, S), q = N(mu, C C^T)):

  f(z) = log g(z) - log q(z),  log N(z; m, S) = -|K^-1 (z - m)|^2 / 2 - log|det K|
         - d/2 log 2 pi with K = chol(S); log q likewise with C (e = C^-1 (z - mu)).
  s = grad_lambda log q(z; lambda) at fixed z, v = C^-T e:
         mu: v;  full L[i,j]: v_i e_j - [i = j] / L_ii (i >= j);  diag log_sigma[i]: e_i^2 - 1.
  Per component j: c_j = E[f s_j] (the ELBO gradient), and

  ``score_function`` (b = 0)      V_j  = E[(f s_j)^2] - c_j^2
  ``baseline=mean`` (N -> inf)    V_j  = E[((f - E f) s_j)^2] - c_j^2
  ``baseline=optimal`` (N -> inf) and ``exact_optimal``:
                                  V*_j = E[((f - b*_j) s_j)^2] - c_j^2,
                                  b*_j = E[f s_j^2] / E[s_j^2]

Finite N (``finite_n``: the variance of the N-sample estimate and the expected within-seed
sample variance, which the N -> infinity values above approach as O(1/N)):

  ``baseline=mean``: the estimate is the sample covariance of f and s_j, so exactly
      N Var[estimate] = V_j + (c_j^2 + Var[f] E[s_j^2]) / (N - 1)
      E[sample var]   = V_j + Var[f] E[s_j^2] / (N - 1) - c_j^2 / (N - 1)^2
  ``baseline=optimal``: given b^_j (independent of the main draws) the terms are i.i.d. with
      variance V*_j + (b^_j - b*_j)^2 E[s_j^2], and by the delta method for the ratio b^_j
      N Var[estimate] = E[sample var] = V*_j + E[(f - b*_j)^2 s_j^4] / (N E[s_j^2]) + O(1/N^2)
      (a large-N expansion: s_j^4 is heavy-tailed, and at N = 20 it overstated the measured
      excess up to 4.8x on the d = 2 Gaussian target; at N = 2000, where the tests use it,
      the excess itself is 1-2% of V*_j)

Quadrature: ``QUAD_NODES`` = 5 nodes per coordinate are exact for E[f^2 s^2] (f has degree
2 and s_j degree <= 2 in each coordinate: degree <= 8 < 10); the finite-N term of
``optimal`` has degree <= 12 and uses ``FINITE_N_NODES`` = 7.  At most ``QUAD_MAX_POINTS``
points: d <= 9 (5 nodes), d <= 7 (7 nodes).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solve_triangular

from ..errors import HarnessError
from ..quadrature import hermite_tensor
from .codes import (
    E_SCORE,
    E_SCORE_EXACT_OPTIMAL,
    E_SCORE_MEAN,
    E_SCORE_OPTIMAL,
    F_DIAG,
    T_GAUSSIAN,
)

QUAD_NODES = 5
FINITE_N_NODES = 7
QUAD_MAX_POINTS = 2_000_000


def unavailable(target_code: int, dim: int, nodes: int = QUAD_NODES) -> str | None:
    """Why the quadrature references cannot be computed here (None: they can)."""
    if target_code != T_GAUSSIAN:
        return "the exact b* needs exact quadrature, available for the gaussian target only"
    if nodes ** dim > QUAD_MAX_POINTS:
        return (f"the exact b* quadrature needs {nodes}^{dim} points, more than "
                f"{QUAD_MAX_POINTS:,} (d <= {int(math.log(QUAD_MAX_POINTS) / math.log(nodes))})")
    return None


def _log_normal(x, chol):
    """log N(x; 0, chol chol^T) for the rows x[n, d], and the rows of (chol^-1 x^T)^T."""
    d = chol.shape[0]
    inverse = solve_triangular(chol, np.eye(d), lower=True)
    e = x @ inverse.T
    logdet = np.log(np.abs(np.diag(chol))).sum()
    return -0.5 * (e * e).sum(axis=1) - logdet - 0.5 * d * math.log(2 * math.pi), e, inverse


def integrand_and_score(problem, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f[n] and s[n, P] (components in theta order) at the base draws eps[n, d], on the
    Gaussian target, from the definitions in the module docstring."""
    t, mu, C = problem.target, np.asarray(problem.mu, float), np.asarray(problem.C, float)
    if t.code != T_GAUSSIAN:
        raise ValueError("integrand_and_score: gaussian target only")
    m, S = np.asarray(t.info["mean"], float), np.asarray(t.info["cov"], float)
    z = mu + eps @ C.T
    log_g, _, _ = _log_normal(z - m, np.linalg.cholesky(S))
    log_q, e, C_inverse = _log_normal(z - mu, C)
    v = e @ C_inverse                                   # rows of C^-T e
    if problem.family.code == F_DIAG:
        scale = e * e - 1.0
    else:
        rows, cols = np.tril_indices(mu.size)
        scale = v[:, rows] * e[:, cols] - np.where(rows == cols, 1.0 / np.diag(C)[rows], 0.0)
    return log_g - log_q, np.concatenate([v, scale], axis=1)


_cache: dict = {}


def score_function_moments(problem) -> dict:
    """The expectations behind the N -> infinity formulas of the module docstring, by tensor
    Gauss-Hermite quadrature (``QUAD_NODES`` per coordinate): ``mean_f``, ``var_f``,
    ``grad`` (c_j), ``mean_s2`` (E s_j^2), ``b_star``, ``var_none``, ``var_mean``,
    ``var_optimal`` (V_j, V*_j).  Two passes: the second centres f at E f and b*_j, so the
    variances are sums of squares, not differences of large numbers."""
    key = _key(problem)
    if key in _cache:
        return _cache[key]
    d = problem.dim
    mean_f = fs = s2 = fs2 = 0.0
    for eps, w in hermite_tensor(QUAD_NODES, d):
        f, s = integrand_and_score(problem, eps)
        mean_f += w @ f
        fs = fs + w @ (f[:, None] * s)
        s2 = s2 + w @ (s * s)
        fs2 = fs2 + w @ (f[:, None] * s * s)
    b_star = fs2 / s2
    var_f = none = mean = optimal = 0.0
    for eps, w in hermite_tensor(QUAD_NODES, d):
        f, s = integrand_and_score(problem, eps)
        fc = f - mean_f
        var_f += w @ (fc * fc)
        none = none + w @ ((f[:, None] * s) ** 2)
        mean = mean + w @ ((fc[:, None] * s) ** 2)
        optimal = optimal + w @ (((f[:, None] - b_star) * s) ** 2)
    out = {"mean_f": float(mean_f), "var_f": float(var_f), "grad": fs, "mean_s2": s2,
           "b_star": b_star}
    for name, second in (("none", none), ("mean", mean), ("optimal", optimal)):
        out[f"var_{name}"] = np.maximum(second - fs * fs, 0.0)
    if len(_cache) > 64:
        _cache.clear()
    _cache[key] = out
    return out


def _key(problem) -> tuple:
    return (problem.target.name, repr(problem.target.info), problem.family.name,
            np.asarray(problem.mu, float).tobytes(), np.asarray(problem.C, float).tobytes())


def optimal_fourth_moment(problem, b_star) -> np.ndarray:
    """E[(f - b*_j)^2 s_j^4] by the ``FINITE_N_NODES`` rule (degree <= 12: exact)."""
    total = 0.0
    for eps, w in hermite_tensor(FINITE_N_NODES, problem.dim):
        f, s = integrand_and_score(problem, eps)
        total = total + w @ (((f[:, None] - b_star) * s * s) ** 2)
    return total


def variance(problem, code: int) -> np.ndarray | None:
    """The exact (N -> infinity) per-sample variance of a score-function estimator (kernel
    code), or None where there is no independent reference (other estimators and targets,
    or too many quadrature points)."""
    which = {E_SCORE: "var_none", E_SCORE_MEAN: "var_mean", E_SCORE_OPTIMAL: "var_optimal",
             E_SCORE_EXACT_OPTIMAL: "var_optimal"}.get(code)
    if which is None or unavailable(problem.target.code, problem.dim):
        return None
    return score_function_moments(problem)[which]


def optimal_baselines(problem) -> np.ndarray:
    """The exact per-component optimal baselines b*_j = E[f s_j^2] / E[s_j^2] (the per-cell
    constants of ``baseline=exact_optimal``); HarnessError where unavailable."""
    why = unavailable(problem.target.code, problem.dim)
    if why:
        raise HarnessError(f"score_function baseline exact_optimal: {why}")
    return score_function_moments(problem)["b_star"]


def finite_n(problem, code: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(N Var[N-sample estimate], E[within-seed sample variance]) at N = n for the
    estimators whose finite-N variances differ from their N -> infinity ``exact_var``
    (``baseline=mean``: exact; ``baseline=optimal``: to O(1/N^2)); None otherwise (the
    per-sample variance is then exact at every N) or where unavailable."""
    if code == E_SCORE_MEAN and not unavailable(problem.target.code, problem.dim):
        m = score_function_moments(problem)
        c2, spread = m["grad"] ** 2, m["var_f"] * m["mean_s2"]
        return (m["var_mean"] + (c2 + spread) / (n - 1),
                m["var_mean"] + spread / (n - 1) - c2 / (n - 1) ** 2)
    if code == E_SCORE_OPTIMAL and not unavailable(problem.target.code, problem.dim,
                                                   FINITE_N_NODES):
        m = score_function_moments(problem)
        fourth = optimal_fourth_moment(problem, m["b_star"])
        value = m["var_optimal"] + fourth / (n * m["mean_s2"])
        return value, value
    return None
