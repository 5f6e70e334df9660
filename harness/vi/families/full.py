"""Full-rank Gaussian q = N(mu, L L^T), lambda = (mu, L), L lower-triangular, L_ii > 0.

Sampler:  z = mu + L eps.
Score:    d/dmu log q = L^-T eps =: v;  d/dL_ij log q = v_i eps_j - [i = j] / L_ii.
Pathwise: dz/dmu = I;  dz_k/dL_ij = [k = i] eps_j.
Entropy:  d/dL_ij log|det L| = [i = j] / L_ii.
Components ``mu[i]`` then ``L[i,j]`` for i = 0..d-1, j = 0..i (row-major lower triangle: L[i,j]
is theta[d + i (i + 1) / 2 + j]); grid ``q: {mu: [...], L: [[...], ...]}``.  After each
optimisation step the diagonal of L is kept >= min_diag (``project``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..codes import F_FULL
from . import Family


@njit
def transform(mu, C, eps, z, v):
    d = mu.size
    logdet = 0.0
    for i in range(d):
        acc = mu[i]
        for j in range(i + 1):
            acc += C[i, j] * eps[j]
        z[i] = acc
        logdet += math.log(C[i, i])
    _solve_transpose(C, eps, v)
    return logdet


@njit
def inverse(mu, C, z, eps, v):
    d = mu.size
    for i in range(d):                       # L eps = z - mu, forward substitution
        acc = z[i] - mu[i]
        for k in range(i):
            acc -= C[i, k] * eps[k]
        eps[i] = acc / C[i, i]
    _solve_transpose(C, eps, v)


@njit
def _solve_transpose(C, eps, v):
    """v = L^-T eps, by back substitution."""
    d = eps.size
    for i in range(d - 1, -1, -1):
        acc = eps[i]
        for k in range(i + 1, d):
            acc -= C[k, i] * v[k]
        v[i] = acc / C[i, i]


@njit
def score(C, eps, v, out):
    # the score's v_i eps_j is the pathwise term of h = v; then the - [i = j] / L_ii
    pathwise(C, eps, v, out)
    d = eps.size
    for i in range(d):
        out[d + i * (i + 1) // 2 + i] -= 1.0 / C[i, i]


@njit
def pathwise(C, eps, h, out):
    d = eps.size
    for i in range(d):
        out[i] = h[i]
    for i in range(d):
        row = d + i * (i + 1) // 2
        for j in range(i + 1):
            out[row + j] = h[i] * eps[j]


@njit
def add_entropy_gradient(C, out):
    d = C.shape[0]
    for i in range(d):
        out[d + i * (i + 1) // 2 + i] += 1.0 / C[i, i]


@njit
def unpack_into(theta, mu, C):
    d = mu.size
    mu[:] = theta[:d]
    C[:, :] = 0.0
    for i in range(d):
        C[i, :i + 1] = theta[d + i * (i + 1) // 2:d + (i + 1) * (i + 2) // 2]


@njit
def project(theta, d, min_diag):
    """L_ii >= min_diag: a step must not leave the family (L_ii > 0)."""
    for i in range(d):
        k = d + i * (i + 1) // 2 + i
        if theta[k] < min_diag:
            theta[k] = min_diag


def n_params(d: int) -> int:
    return d + d * (d + 1) // 2


def components(d: int) -> tuple[str, ...]:
    return tuple([f"mu[{i}]" for i in range(d)]
                 + [f"L[{i},{j}]" for i in range(d) for j in range(i + 1)])


def theta(mu, C) -> np.ndarray:
    mu, C = np.asarray(mu, float), np.asarray(C, float)
    return np.concatenate([mu, C[np.tril_indices(mu.size)]])


def unpack(theta) -> tuple[np.ndarray, np.ndarray]:
    theta = np.asarray(theta, float)
    d = int(round((-3 + np.sqrt(9 + 8 * theta.size)) / 2))
    C = np.zeros((d, d))
    C[np.tril_indices(d)] = theta[d:]
    return theta[:d].copy(), C


FAMILY = Family("full", F_FULL, ("mu", "L"), "normal",
                "full-rank Gaussian N(mu, L L^T), L lower-triangular, positive diagonal",
                n_params, components, theta, unpack)
