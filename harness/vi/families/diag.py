"""Mean-field Gaussian q = N(mu, diag(sigma^2)), lambda = (mu, log_sigma).

Sampler:  z = mu + C eps with C = diag(sigma), sigma = exp(log_sigma).
Score:    d/dmu_i log q = (C^-T eps)_i = eps_i / sigma_i;  d/dlog_sigma_i log q = eps_i^2 - 1.
Pathwise: dz_i/dmu_i = 1;  dz_i/dlog_sigma_i = eps_i sigma_i.
Entropy:  d/dlog_sigma_i log|det C| = 1.
Components ``mu[i]``, ``log_sigma[i]`` (theta = mu then log_sigma); grid
``q: {mu: [...], log_sigma: [...]}``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..codes import F_DIAG
from . import Family


@njit
def transform(mu, C, eps, z, v):
    logdet = 0.0
    for i in range(mu.size):
        z[i] = mu[i] + C[i, i] * eps[i]
        v[i] = eps[i] / C[i, i]
        logdet += math.log(C[i, i])
    return logdet


@njit
def inverse(mu, C, z, eps, v):
    for i in range(mu.size):
        eps[i] = (z[i] - mu[i]) / C[i, i]
        v[i] = eps[i] / C[i, i]


@njit
def score(C, eps, v, out):
    d = eps.size
    for i in range(d):
        out[i] = v[i]
        out[d + i] = eps[i] * eps[i] - 1.0


@njit
def pathwise(C, eps, h, out):
    d = eps.size
    for i in range(d):
        out[i] = h[i]
        out[d + i] = h[i] * eps[i] * C[i, i]


@njit
def add_entropy_gradient(C, out):
    d = C.shape[0]
    for i in range(d):
        out[d + i] += 1.0


@njit
def unpack_into(theta, mu, C):
    d = mu.size
    mu[:] = theta[:d]
    C[:, :] = 0.0
    for i in range(d):
        C[i, i] = math.exp(theta[d + i])


@njit
def project(theta, d, min_diag):
    """Nothing to do: every log_sigma gives a valid scale."""


def n_params(d: int) -> int:
    return 2 * d


def components(d: int) -> tuple[str, ...]:
    return tuple([f"mu[{i}]" for i in range(d)] + [f"log_sigma[{i}]" for i in range(d)])


def theta(mu, C) -> np.ndarray:
    mu, C = np.asarray(mu, float), np.asarray(C, float)
    return np.concatenate([mu, np.log(np.diag(C))])


def unpack(theta) -> tuple[np.ndarray, np.ndarray]:
    theta = np.asarray(theta, float)
    d = theta.size // 2
    return theta[:d].copy(), np.diag(np.exp(theta[d:]))


FAMILY = Family("diag", F_DIAG, ("mu", "log_sigma"), "normal",
                "mean-field Gaussian N(mu, diag(exp(2 log_sigma)))",
                n_params, components, theta, unpack)
