"""Gaussian target g(z) = N(z; m, S) (normalised), with closed-form ELBO, gradient and
per-sample variances.

With P = S^-1, Sigma = C C^T, a = -P (mu - m):
  ELBO = -d/2 log 2pi - 1/2 log|S| - 1/2 [tr(P Sigma) + (mu - m)^T P (mu - m)]
         + d/2 (1 + log 2pi) + log|det C|
  grad mu = a;  grad L[i,j] = -(P L)[i,j] + [i=j] / L_ii;
  grad log_sigma[i] = 1 - P_ii sigma_i^2.
Optimum: full mu = m, L = chol(S) (ELBO = 0);  diag mu = m, sigma_i = P_ii^-1/2.

Per-sample variances (G = a - B eps is linear in eps; E eps^4 = 3):
  reparam (= reparam_sampled_entropy), B = P C:
    mu[i]: sum_k B_ik^2;   L[i,j]: a_i^2 + B_ij^2 + sum_k B_ik^2;
    log_sigma[i]: sigma_i^2 (a_i^2 + B_ii^2 + sum_k B_ik^2)
  stl: the same with B' = P C - C^-T in place of B.
The score function's variances: exact tensor Gauss-Hermite quadrature of a plain-NumPy
transcription of its definition (``harness.vi.references``).

Grid: ``mean: [...]`` and ``cov: [[...]]``, or ``target_seed: n`` with ``dim: d``:
m = normals(n, d, stream 1), S = A A^T / d + 0.5 I with A = normals(n, d*d, stream 2)
reshaped row-major (``harness.rng.normals``).
"""

from __future__ import annotations

import math

import numpy as np

from ...rng import normals
from .. import codes
from . import Target, TargetData


def seeded(seed: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    m = normals(seed, d, stream=1)
    A = normals(seed, d * d, stream=2).reshape(d, d)
    return m, A @ A.T / d + 0.5 * np.eye(d)


def make(m, S) -> TargetData:
    m, S = np.asarray(m, float), np.asarray(S, float)
    d = m.size
    P = np.linalg.inv(S)
    P = 0.5 * (P + P.T)
    logdet_S = np.linalg.slogdet(S)[1]
    lognorm = -0.5 * d * math.log(2 * math.pi) - 0.5 * logdet_S

    def elbo(family, mu, C):
        Sigma = C @ C.T
        r = mu - m
        return float(lognorm - 0.5 * (np.trace(P @ Sigma) + r @ P @ r)
                     + 0.5 * d * (1 + math.log(2 * math.pi)) + np.log(np.abs(np.diag(C))).sum())

    def grad(family, mu, C):
        a = -P @ (mu - m)
        if family == codes.F_DIAG:
            s = np.diag(C)
            return np.concatenate([a, 1.0 - np.diag(P) * s * s])
        GL = -P @ C + np.diag(1.0 / np.diag(C))
        return np.concatenate([a, GL[np.tril_indices(d)]])

    def var(code, family, mu, C):
        if code not in (codes.E_REPARAM, codes.E_REPARAM_SAMPLED_ENTROPY, codes.E_STL,
                        codes.E_WRONG_NO_ENTROPY):
            return None
        a = -P @ (mu - m)
        B = P @ C
        if code == codes.E_STL:
            B = B - np.linalg.inv(C).T
        row = (B * B).sum(axis=1)
        if family == codes.F_DIAG:
            s = np.diag(C)
            return np.concatenate([row, s * s * (a * a + np.diag(B) ** 2 + row)])
        i, j = np.tril_indices(d)
        return np.concatenate([row, a[i] ** 2 + B[i, j] ** 2 + row[i]])

    def optimum(family):
        if family == codes.F_DIAG:
            return m.copy(), np.diag(1.0 / np.sqrt(np.diag(P)))
        return m.copy(), np.linalg.cholesky(S)

    return TargetData("gaussian", codes.T_GAUSSIAN, d, np.concatenate([m, [lognorm]]),
                      np.ascontiguousarray(P), np.zeros(1, np.int64), elbo, grad, var, optimum,
                      {"mean": m.tolist(), "cov": S.tolist()})


def build(params: dict, dim) -> TargetData:
    if "target_seed" in params:
        return make(*seeded(int(params["target_seed"]), int(dim)))
    return make(params["mean"], params["cov"])


TARGET = Target("gaussian", codes.T_GAUSSIAN, ("mean", "cov", "target_seed", "dim"), build,
                description="N(mean, cov): closed-form ELBO, gradient and variances",
                has_optimum=True)
