"""Location-scale variational families q(z; lambda): z = mu + C eps, eps ~ phi (the base).

A family fixes the base density phi, the parameterisation of the scale C and the names of
the gradient components.  Registered here by name; the kernels (``harness.vi.kernels``)
dispatch on ``code``.  Both current families have a standard normal base; a Student-t or
logistic base is a new entry (and a new branch for log phi / grad log phi in the kernel).

- ``diag``: lambda = (mu, log_sigma), C = diag(exp(log_sigma)); components ``mu[i]``,
  ``log_sigma[i]``; grid ``q: {mu: [...], log_sigma: [...]}``.
- ``full``: lambda = (mu, L), C = L lower-triangular with positive diagonal, Sigma = L L^T;
  components ``mu[i]`` and ``L[i,j]`` (lower triangle, i >= j, 0-based, row-major);
  grid ``q: {mu: [...], L: [[...], ...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels


@dataclass(frozen=True)
class Family:
    name: str
    code: int
    base: str               # the base density phi
    scale_key: str          # the grid key of the scale parameter under q
    description: str

    def components(self, d: int) -> tuple[str, ...]:
        mu = [f"mu[{i}]" for i in range(d)]
        if self.code == kernels.F_DIAG:
            return tuple(mu + [f"log_sigma[{i}]" for i in range(d)])
        return tuple(mu + [f"L[{i},{j}]" for i in range(d) for j in range(i + 1)])

    def n_params(self, d: int) -> int:
        return kernels.n_params(self.code, d)

    def theta(self, mu, C) -> np.ndarray:
        """The parameter vector (component order) of q with location mu and scale C."""
        mu, C = np.asarray(mu, float), np.asarray(C, float)
        d = mu.size
        if self.code == kernels.F_DIAG:
            return np.concatenate([mu, np.log(np.diag(C))])
        return np.concatenate([mu, C[np.tril_indices(d)]])

    def unpack(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """(mu, C) of a parameter vector."""
        theta = np.asarray(theta, float)
        if self.code == kernels.F_DIAG:
            d = theta.size // 2
            return theta[:d].copy(), np.diag(np.exp(theta[d:]))
        d = int(round((-3 + np.sqrt(9 + 8 * theta.size)) / 2))
        C = np.zeros((d, d))
        C[np.tril_indices(d)] = theta[d:]
        return theta[:d].copy(), C


FAMILIES = {
    "diag": Family("diag", kernels.F_DIAG, "normal", "log_sigma",
                   "mean-field Gaussian N(mu, diag(exp(2 log_sigma)))"),
    "full": Family("full", kernels.F_FULL, "normal", "L",
                   "full-rank Gaussian N(mu, L L^T), L lower-triangular, positive diagonal"),
}
