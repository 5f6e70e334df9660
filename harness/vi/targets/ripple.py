"""Rippled Gaussian: log g(z) = log N(z; 0, I) + a sum_i cos(omega z_i) (unnormalised).

The case where the pathwise gradient loses: grad_z log g = -z - a omega sin(omega z)
oscillates with amplitude a*omega, so every pathwise estimator's variance grows like
(a omega)^2, while the score function only sees the bounded values a cos(omega z)
(Mohamed et al. 2020, Sec. 8.2, make the same point with the cost cos(omega x)).

Closed forms under q = N(mu, Sigma) (z_i ~ N(mu_i, Sigma_ii), E cos(omega z_i) =
cos(omega mu_i) exp(-omega^2 Sigma_ii / 2)):
  ELBO = -d/2 log 2pi - 1/2 sum_i (mu_i^2 + Sigma_ii) + a sum_i cos(omega mu_i) e_i
         + d/2 (1 + log 2pi) + log|det C|,   e_i = exp(-omega^2 Sigma_ii / 2)
  grad mu_i = -mu_i - a omega sin(omega mu_i) e_i
  dELBO/dSigma_ii = -1/2 - a omega^2 cos(omega mu_i) e_i / 2 =: h_i
  grad L[i,j] = 2 L_ij h_i + [i=j] / L_ii;  grad log_sigma[i] = 2 sigma_i^2 h_i + 1.
Grid keys: ``dim`` (required), ``a`` (default 1.0), ``omega`` (default 5.0).
"""

from __future__ import annotations

import math

import numpy as np

from .. import codes
from . import Target, TargetData


def make(d: int, a: float, omega: float) -> TargetData:
    def parts(mu, C):
        sii = (C * C).sum(axis=1)
        e = np.exp(-0.5 * omega * omega * sii)
        return sii, e

    def elbo(family, mu, C):
        sii, e = parts(mu, C)
        return float(-0.5 * d * math.log(2 * math.pi) - 0.5 * (mu @ mu + sii.sum())
                     + a * (np.cos(omega * mu) * e).sum() + 0.5 * d * (1 + math.log(2 * math.pi))
                     + np.log(np.diag(C)).sum())

    def grad(family, mu, C):
        sii, e = parts(mu, C)
        gmu = -mu - a * omega * np.sin(omega * mu) * e
        h = -0.5 - 0.5 * a * omega * omega * np.cos(omega * mu) * e
        if family == codes.F_DIAG:
            s = np.diag(C)
            return np.concatenate([gmu, 2 * s * s * h + 1.0])
        GL = 2 * C * h[:, None] + np.diag(1.0 / np.diag(C))
        return np.concatenate([gmu, GL[np.tril_indices(d)]])

    return TargetData("ripple", codes.T_RIPPLE, d, np.array([a, omega], float),
                      np.zeros((1, 1)), np.zeros(1, np.int64), elbo, grad, None, None,
                      {"a": a, "omega": omega})


def build(params: dict, dim) -> TargetData:
    return make(int(dim), float(params.get("a", 1.0)), float(params.get("omega", 5.0)))


TARGET = Target("ripple", codes.T_RIPPLE, ("dim", "a", "omega"), build,
                description="N(0, I) x exp(a sum cos(omega z)): pathwise variance ~ (a omega)^2")
