"""Exact ELBO, ELBO gradient and optimum of the logistic-regression target, apart from the
kernel (plain NumPy/SciPy; nothing here calls ``harness.vi.kernels``).

Target (``logistic_regression.py``): log g(z) = sum_n log sigmoid(a_n) + log N(z; 0, I),
a_n = s_n x_n . z with s_n = 2 y_n - 1 (since y t - log(1 + e^t) = log sigmoid((2y - 1) t)).

Reduction.  Under q(z) = N(mu, Sigma), Sigma = C C^T, z = mu + C eps, each a_n is
one-dimensional Gaussian, a_n ~ N(m_n, v_n) with m_n = s_n x_n . mu and
v_n = |C^T x_n|^2.  With h(a) = log sigmoid(a), h'(a) = sigmoid(-a),
h''(a) = -sigmoid(a) sigmoid(-a), and the prior and entropy terms in closed form
(E|z|^2 = |mu|^2 + ||C||_F^2, H[q] = d/2 (1 + log 2 pi) + sum_i log C_ii):

  ELBO = sum_n E[h(a_n)] - 1/2 (|mu|^2 + ||C||_F^2) + d/2 + sum_i log C_ii

(the prior's -d/2 log 2 pi cancels the entropy's).  Differentiating under the 1-D integrals
(d/dm E[h(a)] = E[h'(a)], d/dv E[h(a)] = 1/2 E[h''(a)], Price/Bonnet; dv_n/dC =
2 x_n x_n^T C), with M = sum_n E[h''(a_n)] x_n x_n^T:

  grad_mu       = sum_n s_n E[h'(a_n)] x_n - mu
  grad_C        = M C - C + diag(1 / C_ii)
  full, L[i,j]  = (M L)[i,j] - L[i,j] + [i = j] / L_ii       (i >= j)
  diag, log_sigma[i] = sigma_i grad_C[i,i] = 1 + sigma_i^2 (M_ii - 1).

The three 1-D moments E[h(a)], E[h'(a)], E[h''(a)] of each a_n ~ N(m, sd^2):

- sd <= SD_SWITCH (2): Gauss-Hermite with NODES (200) nodes in the standardised variable,
  a = m + sd e.  h is analytic only in the strip |Im a| < pi, i.e. pi / sd in e, so GH
  converges slowly for wide a_n (measured with 200 nodes against adaptive quadrature:
  4e-14 at sd = 3, 2.6e-8 at sd = 5.6, 2e-3 at sd = 20; at q = N(0, I) the sd_n reach 20.6);
- sd > SD_SWITCH: the non-decaying part in closed form, the rest by Gauss-Legendre in a.
  h(a) = min(a, 0) + r(a), r(a) = -log(1 + e^-|a|);  E[min(a, 0)] = m Phi(-m/sd) -
  sd phi(m/sd).  h'(a) = 1[a < 0] + r1(a), r1(a) = sign(a) sigmoid(-|a|);  E[1[a < 0]] =
  Phi(-m/sd).  r, r1 and h'' decay like e^-|a| and are smooth on each half-line, so their
  Gaussian expectations are integrals over a in [-A_MAX, 0] and [0, A_MAX] (A_MAX = 40:
  the tails are < 5e-18), each by LEGENDRE_NODES (200) Gauss-Legendre nodes (measured
  error < 1.5e-13 against adaptive quadrature for sd in [0.5, 200]).

Checked in tests/test_vi_logistic_exact.py: the moments against adaptive quadrature, the
gradient against central differences of this ELBO (max |fd - grad| 1.9e-8 at N(0, I),
where |grad| reaches 218; 1e-9 near the optimum) and against a NumPy Monte Carlo.

Minibatches (``batch: B``) do not change these values: the minibatch target is an
unbiased estimate of the full-data log g, so the exact ELBO and gradient are the
full-data ones.

Per-sample variances: none is exact here (``exact_var`` is not set: sources ``none``).
Every estimator's per-sample variance is a second moment of a sum over data points:
reparam / stl need E[h'(a_n) h'(a_m) ...] and the score function E[h(a_n) h(a_m) s_p^2]
for every pair (n, m), i.e. 2-D Gaussian integrals over (a_n, a_m) (161,596 pairs, times
polynomial moments for the scale components), which the 1-D reduction does not give.

Optimum: L-BFGS (``scipy.optimize.minimize``, L-BFGS-B) on the exact -ELBO and its exact
gradient; diag in theta = (mu, log_sigma) from N(0, I); full in (mu, L with log-diagonal)
from the diag optimum.  Cached per family (the data are fixed).  Measured (shipped data,
N(0, I) prior): diag ELBO* = -67.463367, max |grad| there 7e-8, |mu*| = 4.687,
max_i |mu*_i| = 1.585, sigma* in [0.278, 0.659]; full ELBO* = -55.465137, max |grad| 1.5e-7,
|mu*| = 4.366, diag(L*) in [0.281, 0.892].  The gradient at the optimum is at the rounding
level of the quadrature sums (|ELBO| ~ 67), where L-BFGS's line search stops.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from scipy.special import expit, ndtr

from ..codes import F_DIAG, F_FULL

NODES = 200                  # Gauss-Hermite nodes (sd <= SD_SWITCH)
SD_SWITCH = 2.0
LEGENDRE_NODES = 200         # per half-line (sd > SD_SWITCH)
A_MAX = 40.0
# ftol = 0: stop on the projected gradient (or when the line search can make no progress at
# the ELBO's rounding level, |grad| ~ 1e-7)
LBFGS_OPTIONS = {"maxiter": 20000, "maxcor": 30, "ftol": 0.0, "gtol": 1e-10}
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _minimize(neg, start):
    """L-BFGS-B from ``start`` on ``neg`` (value and gradient); scipy.optimize is imported
    here, not with the module (a run that never fits a logistic target does not pay for
    it)."""
    from scipy import optimize

    return optimize.minimize(neg, start, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)


@cache
def _hermite(n: int):
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


@cache
def _legendre(n: int):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * A_MAX * (x + 1.0), 0.5 * A_MAX * w


def _log_sigmoid(a):
    return -np.logaddexp(0.0, -a)


def moments(m, sd, nodes: int = NODES, which: tuple[int, ...] = (0, 1, 2)):
    """(E[h(a)], E[h'(a)], E[h''(a)]) for a ~ N(m, sd^2) elementwise, h = log sigmoid;
    only the orders in ``which`` are computed (the others are None)."""
    m, sd = np.broadcast_arrays(np.asarray(m, float), np.asarray(sd, float))
    out = [np.empty(m.shape) if k in which else None for k in range(3)]
    e0, e1, e2 = out
    narrow = sd <= SD_SWITCH
    if narrow.any():
        x, w = _hermite(nodes)
        a = m[narrow, None] + sd[narrow, None] * x
        if e0 is not None:
            e0[narrow] = _log_sigmoid(a) @ w
        if e1 is not None:
            e1[narrow] = expit(-a) @ w
        if e2 is not None:
            e2[narrow] = -(expit(a) * expit(-a)) @ w
    wide = ~narrow
    if wide.any():
        t, w = _legendre(LEGENDRE_NODES)
        mm, ss = m[wide, None], sd[wide, None]
        dens_p = np.exp(-0.5 * ((t - mm) / ss) ** 2) * (_INV_SQRT_2PI / ss)   # at a = +t
        dens_m = np.exp(-0.5 * ((t + mm) / ss) ** 2) * (_INV_SQRT_2PI / ss)   # at a = -t
        u = m[wide] / sd[wide]
        if e0 is not None:
            r = -np.log1p(np.exp(-t))         # r(+-t)
            e0[wide] = (m[wide] * ndtr(-u) - sd[wide] * np.exp(-0.5 * u * u) * _INV_SQRT_2PI
                        + (r * (dens_p + dens_m)) @ w)
        if e1 is not None:
            r1 = expit(-t)                    # r1(+t) = -r1(-t)
            e1[wide] = ndtr(-u) + (r1 * (dens_p - dens_m)) @ w
        if e2 is not None:
            b = -expit(t) * expit(-t)         # h''(+-t)
            e2[wide] = (b * (dens_p + dens_m)) @ w
    return e0, e1, e2


class LogisticELBO:
    """Exact ELBO and gradient for data X (n x d) and labels y in {0, 1}, prior N(0, I)."""

    def __init__(self, X, y, nodes: int = NODES):
        X = np.asarray(X, float)
        self.X = X
        self.A = (2.0 * np.asarray(y, float) - 1.0)[:, None] * X    # rows s_n x_n
        self.d = X.shape[1]
        self.nodes = nodes

    def _moments(self, mu, C, which):
        m = self.A @ mu
        sd = np.sqrt(((self.X @ C) ** 2).sum(axis=1))
        return moments(m, sd, self.nodes, which)

    def elbo(self, mu, C) -> float:
        mu, C = np.asarray(mu, float), np.asarray(C, float)
        e0, _, _ = self._moments(mu, C, (0,))
        return float(e0.sum() - 0.5 * (mu @ mu + (C * C).sum()) + 0.5 * self.d
                     + np.log(np.abs(np.diag(C))).sum())

    def grad_mu_C(self, mu, C):
        """(grad_mu, grad_C) of the ELBO as a function of (mu, C) (C's full d x d gradient)."""
        mu, C = np.asarray(mu, float), np.asarray(C, float)
        _, e1, e2 = self._moments(mu, C, (1, 2))
        g_mu = self.A.T @ e1 - mu
        M = (self.X * e2[:, None]).T @ self.X
        g_C = M @ C - C + np.diag(1.0 / np.diag(C))
        return g_mu, g_C

    def grad(self, family: int, mu, C) -> np.ndarray:
        """The ELBO gradient in theta order (``harness.vi.families``)."""
        g_mu, g_C = self.grad_mu_C(mu, C)
        if family == F_DIAG:
            s = np.diag(np.asarray(C, float))
            return np.concatenate([g_mu, s * np.diag(g_C)])
        return np.concatenate([g_mu, g_C[np.tril_indices(self.d)]])

    # -- optimum

    def _fit_diag(self):
        d = self.d

        def neg(theta):
            mu, ls = theta[:d], theta[d:]
            C = np.diag(np.exp(ls))
            return -self.elbo(mu, C), -self.grad(F_DIAG, mu, C)

        res = _minimize(neg, np.zeros(2 * d))
        return res.x[:d].copy(), np.diag(np.exp(res.x[d:])), res

    def _fit_full(self, mu0, C0):
        d = self.d
        il = np.tril_indices(d)
        on_diag = il[0] == il[1]

        def unpack(u):
            L = np.zeros((d, d))
            vals = u[d:].copy()
            vals[on_diag] = np.exp(vals[on_diag])
            L[il] = vals
            return u[:d], L

        def neg(u):
            mu, L = unpack(u)
            g = self.grad(F_FULL, mu, L)
            g[d:][on_diag] *= np.diag(L)               # chain rule through L_ii = exp(u)
            return -self.elbo(mu, L), -g

        vals = C0[il].copy()
        vals[on_diag] = np.log(vals[on_diag])
        u0 = np.concatenate([mu0, vals])
        res = _minimize(neg, u0)
        mu, L = unpack(res.x)
        return mu, L, res

    def optimum(self, family: int):
        """(mu*, C*, scipy result) maximising the exact ELBO over the family."""
        mu, C, res = self._fit_diag()
        if family == F_DIAG:
            return mu, C, res
        return self._fit_full(mu, C)


@cache
def shipped() -> LogisticELBO:
    """The exact ELBO of the shipped data (``logistic_regression.load``)."""
    from .logistic_regression import load
    return LogisticELBO(*load())


@cache
def _optimum(family: int):
    if family == F_DIAG:
        mu, C, res = shipped().optimum(F_DIAG)
    else:
        mu, C, res = shipped()._fit_full(*_optimum(F_DIAG)[:2])
    mu.setflags(write=False)
    C.setflags(write=False)
    return mu, C, float(-res.fun)


def optimum(family: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu*, C*) of the shipped data for a family code (cached; copies)."""
    mu, C, _ = _optimum(int(family))
    return mu.copy(), C.copy()


def optimal_elbo(family: int) -> float:
    return _optimum(int(family))[2]


def exact_elbo(family: int, mu, C) -> float:
    return shipped().elbo(mu, C)


def exact_grad(family: int, mu, C) -> np.ndarray:
    return shipped().grad(int(family), mu, C)
