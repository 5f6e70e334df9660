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
sample variance, which the N -> infinity values above approach as O(1/N); the algebra is the
1-D study's, ``harness.estimators.score_function.finite_n_*_from_moments``):

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

User-written targets (``harness.vi.targets.user``, dim <= ``USER_MAX_DIM``): the same
definitions with log g and G = grad_z log g the user's functions (the target's definition;
the estimators' terms are transcribed here, apart from the kernels), plus the pathwise
estimators' terms, with dz/dlambda (mu: I; full L[i,j]: e_j at row i; diag log_sigma[i]:
e_i sigma_i) and the entropy gradient (full: [i = j] / L_ii; diag: 1):

  ``reparam``                  t = G^T dz/dlambda + grad log|det C|
  ``stl``                      t = (G + v)^T dz/dlambda          (grad_z log q = -v)
  ``reparam_sampled_entropy``  t = (G + v)^T dz/dlambda - s

and per-sample variance E[(t - E t)^2].  The exact gradient is c_j = E[f s_j] (the
score-function identity: log g only, so a wrong user gradient cannot hide in the reference)
and the ELBO E f.  The integrands are not polynomials: every quantity is computed with pairs
of tensor Gauss-Hermite rules (``USER_NODES`` per coordinate, coarse to fine) and kept from
the first pair that agrees to ``USER_RTOL`` (relative to the largest component of the
estimator; ``USER_ATOL`` absolute for quantities that vanish); else the reference is NaN
(``exact_source`` none), as it is for dim > ``USER_MAX_DIM``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solve_triangular

from ..errors import HarnessError
from ..estimators.score_function import (
    finite_n_mean_from_moments,
    finite_n_optimal_from_moments,
)
from ..quadrature import hermite_tensor
from .codes import (
    E_REPARAM,
    E_REPARAM_SAMPLED_ENTROPY,
    E_SCORE,
    E_SCORE_EXACT_OPTIMAL,
    E_SCORE_MEAN,
    E_SCORE_OPTIMAL,
    E_STL,
    F_DIAG,
    T_GAUSSIAN,
    T_USER,
)

QUAD_NODES = 5
FINITE_N_NODES = 7
QUAD_MAX_POINTS = 2_000_000
USER_MAX_DIM = 2
# pairs of rules (nodes per coordinate), tried in turn: a quantity is kept from the first pair
# that agrees (the finer rule's value); smooth targets stop at the first, targets with complex
# singularities near the real axis (a mixture's log-sum-exp) need the last
USER_NODES = ((40, 60), (100, 150), (200, 300))
USER_RTOL = 1e-7
USER_ATOL = 1e-12            # for quantities that vanish (a gradient at the optimum)


def unavailable(target_code: int, dim: int, nodes: int = QUAD_NODES) -> str | None:
    """Why the quadrature references cannot be computed here (None: they can)."""
    if target_code == T_USER:
        if dim > USER_MAX_DIM:
            return (f"the exact b* of a user target needs quadrature over dim {dim}: "
                    f"available for dim <= {USER_MAX_DIM}")
        return None
    if target_code != T_GAUSSIAN:
        return ("the exact b* needs quadrature of a known log density: the gaussian target "
                f"only, or a user target with dim <= {USER_MAX_DIM}")
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
    Gaussian target or a user target, from the definitions in the module docstring."""
    f, s, _, _ = _integrand_score_pieces(problem, eps)
    return f, s


def _integrand_score_pieces(problem, eps):
    """f[n], s[n, P], G[n, d] (None on the Gaussian target) and v[n, d] = rows of C^-T e."""
    t, mu, C = problem.target, np.asarray(problem.mu, float), np.asarray(problem.C, float)
    z = mu + eps @ C.T
    G = None
    if t.code == T_GAUSSIAN:
        m, S = np.asarray(t.info["mean"], float), np.asarray(t.info["cov"], float)
        log_g, _, _ = _log_normal(z - m, np.linalg.cholesky(S))
    elif t.user is not None:
        log_g, G = t.user.density(z)
    else:
        raise ValueError("integrand_and_score: the gaussian target or a user target only")
    log_q, e, C_inverse = _log_normal(z - mu, C)
    v = e @ C_inverse                                   # rows of C^-T e
    if problem.family.code == F_DIAG:
        scale = e * e - 1.0
    else:
        rows, cols = np.tril_indices(mu.size)
        scale = v[:, rows] * e[:, cols] - np.where(rows == cols, 1.0 / np.diag(C)[rows], 0.0)
    return log_g - log_q, np.concatenate([v, scale], axis=1), G, v


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
    """The exact per-sample variance of an estimator (kernel code; the score function: its
    N -> infinity value), or None where there is no independent reference (other estimators
    and targets, too many quadrature points, or user-target quadrature that did not
    converge)."""
    if problem.target.code == T_USER:
        if unavailable(T_USER, problem.dim):
            return None
        return user_moments(problem)["var"].get(code)
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
    if problem.target.code == T_USER:
        b_star = user_moments(problem)["b_star"]
        if b_star is None:
            raise HarnessError("score_function baseline exact_optimal: the quadrature of b* "
                               f"for {problem.target.name} did not converge (rules of "
                               f"{USER_NODES[-1]} nodes per coordinate disagree)")
        return b_star
    return score_function_moments(problem)["b_star"]


def finite_n(problem, code: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(N Var[N-sample estimate], E[within-seed sample variance]) at N = n for the
    estimators whose finite-N variances differ from their N -> infinity ``exact_var``
    (``baseline=mean``: exact; ``baseline=optimal``: to O(1/N^2)); None otherwise (the
    per-sample variance is then exact at every N) or where unavailable."""
    if problem.target.code == T_USER:
        if code not in (E_SCORE_MEAN, E_SCORE_OPTIMAL) or unavailable(T_USER, problem.dim):
            return None
        m = user_moments(problem)
        needed = ("grad", "var_f", "mean_s2", "var_mean") if code == E_SCORE_MEAN else \
            ("var_optimal", "fourth", "mean_s2")
        if any(m[k] is None for k in needed):
            return None
        fourth = m["fourth"]
    elif code == E_SCORE_MEAN and not unavailable(problem.target.code, problem.dim):
        m = score_function_moments(problem)
    elif code == E_SCORE_OPTIMAL and not unavailable(problem.target.code, problem.dim,
                                                     FINITE_N_NODES):
        m = score_function_moments(problem)
        fourth = optimal_fourth_moment(problem, m["b_star"])
    else:
        return None
    if code == E_SCORE_MEAN:
        sample_var, n_var = finite_n_mean_from_moments(m["var_mean"], m["grad"], m["var_f"],
                                                       m["mean_s2"], n)
    else:
        sample_var, n_var = finite_n_optimal_from_moments(m["var_optimal"], fourth,
                                                          m["mean_s2"], n)
    return n_var, sample_var


# ----------------------------------------------------------------------------- user targets

def gradient(problem) -> np.ndarray | None:
    """The exact ELBO gradient E[f s] of a user target (None: unavailable or not converged,
    or not a user target: the built-in targets have closed forms)."""
    if problem.target.code != T_USER or unavailable(T_USER, problem.dim):
        return None
    return user_moments(problem)["grad"]


def elbo(problem) -> float | None:
    """The exact ELBO E f of a user target (None as for ``gradient``).  Computed alone (f at
    the nodes, not the estimators' terms): optimisation traces ask for it at every record."""
    if problem.target.code != T_USER or unavailable(T_USER, problem.dim):
        return None
    value = _converged(("user_elbo", *_key(problem)), lambda nodes: {"mean_f": sum(
        w @ _integrand_score_pieces(problem, eps)[0]
        for eps, w in hermite_tensor(nodes, problem.dim))})["mean_f"]
    return None if value is None else float(value)


def _pathwise(problem, h, eps):
    """Rows of h^T dz/dlambda: mu: h;  diag log_sigma[i]: h_i eps_i sigma_i;
    full L[i,j]: h_i eps_j (i >= j)."""
    C = np.asarray(problem.C, float)
    if problem.family.code == F_DIAG:
        return np.concatenate([h, h * eps * np.diag(C)], axis=1)
    rows, cols = np.tril_indices(problem.dim)
    return np.concatenate([h, h[:, rows] * eps[:, cols]], axis=1)


def _entropy_gradient(problem):
    """grad_lambda log|det C|: 0 for mu;  diag: 1;  full L[i,j]: [i = j] / L_ii."""
    d, C = problem.dim, np.asarray(problem.C, float)
    if problem.family.code == F_DIAG:
        return np.concatenate([np.zeros(d), np.ones(d)])
    rows, cols = np.tril_indices(d)
    return np.concatenate([np.zeros(d), np.where(rows == cols, 1.0 / np.diag(C)[rows], 0.0)])


def _user_terms(problem, eps):
    """f, s and the pathwise estimators' terms {code: t[n, P]} (module docstring)."""
    f, s, G, v = _integrand_score_pieces(problem, eps)
    path_sticking = _pathwise(problem, G + v, eps)
    return f, s, {E_REPARAM: _pathwise(problem, G, eps) + _entropy_gradient(problem),
                  E_STL: path_sticking,
                  E_REPARAM_SAMPLED_ENTROPY: path_sticking - s}


def _user_moments_at(problem, nodes: int) -> dict:
    """The user-target quantities of the module docstring by the ``nodes``-point rule."""
    d = problem.dim
    mean_f = fs = s2 = fs2 = 0.0
    path_mean: dict = {}
    for eps, w in hermite_tensor(nodes, d):
        f, s, terms = _user_terms(problem, eps)
        mean_f += w @ f
        fs = fs + w @ (f[:, None] * s)
        s2 = s2 + w @ (s * s)
        fs2 = fs2 + w @ (f[:, None] * s * s)
        for code, t in terms.items():
            path_mean[code] = path_mean.get(code, 0.0) + w @ t
    b_star = fs2 / s2
    var_f = none = mean = optimal = fourth = 0.0
    path_var: dict = {}
    for eps, w in hermite_tensor(nodes, d):
        f, s, terms = _user_terms(problem, eps)
        fc = f - mean_f
        var_f += w @ (fc * fc)
        none = none + w @ ((f[:, None] * s - fs) ** 2)
        mean = mean + w @ ((fc[:, None] * s - fs) ** 2)
        optimal = optimal + w @ (((f[:, None] - b_star) * s - fs) ** 2)
        fourth = fourth + w @ (((f[:, None] - b_star) * s * s) ** 2)
        for code, t in terms.items():
            path_var[code] = path_var.get(code, 0.0) + w @ ((t - path_mean[code]) ** 2)
    return {"mean_f": np.atleast_1d(mean_f), "var_f": np.atleast_1d(var_f), "grad": fs,
            "mean_s2": s2, "b_star": b_star, "fourth": fourth, "var_none": none,
            "var_mean": mean, "var_optimal": optimal,
            **{f"var_{code}": v for code, v in path_var.items()}}


def user_moments(problem) -> dict:
    """The user-target references: each quantity of ``_user_moments_at`` from the first pair
    of rules of ``USER_NODES`` that agree (``_converged``; None where none does), and
    ``var``: code -> per-sample variance (the codes with a converged reference).  Cached
    per (target, family, q)."""
    key = ("user", *_key(problem))
    if key in _cache:
        return _cache[key]
    out = dict(_converged(("user_rules", *key[1:]), lambda n: _user_moments_at(problem, n)))
    for name in ("mean_f", "var_f"):
        out[name] = None if out[name] is None else float(out[name][0])
    out["var"] = {code: out[name] for code, name in (
        (E_SCORE, "var_none"), (E_SCORE_MEAN, "var_mean"), (E_SCORE_OPTIMAL, "var_optimal"),
        (E_SCORE_EXACT_OPTIMAL, "var_optimal"), (E_REPARAM, f"var_{E_REPARAM}"),
        (E_STL, f"var_{E_STL}"),
        (E_REPARAM_SAMPLED_ENTROPY, f"var_{E_REPARAM_SAMPLED_ENTROPY}"))
        if out[name] is not None}
    if len(_cache) > 64:
        _cache.clear()
    _cache[key] = out
    return out


def _converged(key, compute) -> dict:
    """``compute(nodes)`` (a dict of quantities) by the pairs of rules of ``USER_NODES``,
    coarse to fine: each quantity from the first pair that agrees to ``USER_RTOL`` relative
    to its largest component (plus ``USER_ATOL``), the finer rule's value; None where no
    pair agrees.  Cached under ``key``."""
    if key in _cache:
        return _cache[key]
    out: dict = {}
    for coarse_nodes, fine_nodes in USER_NODES:
        coarse, fine = compute(coarse_nodes), compute(fine_nodes)
        for name, value in fine.items():
            if out.get(name) is not None:
                continue
            value, other = np.asarray(value, float), np.asarray(coarse[name], float)
            scale = np.abs(value).max()
            ok = np.isfinite(value).all() and \
                bool(np.all(np.abs(value - other) <= USER_RTOL * scale + USER_ATOL))
            out[name] = value if ok else None
        if all(v is not None for v in out.values()):
            break
    if len(_cache) > 64:
        _cache.clear()
    _cache[key] = out
    return out
