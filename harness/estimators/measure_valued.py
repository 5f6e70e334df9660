"""Measure-valued (weak-derivative) estimator for the Gaussian.

Estimand:  d/dtheta E_q[f(x)] for q = N(mu, sigma^2), theta in {mu, sigma}.
Formula:   the derivative of the density is split into a positive and a negative part, each a
           probability density times a constant c:  d/dtheta q = c (q+ - q-), so
           g = c (f(x+) - f(x-)) with x+ ~ q+, x- ~ q-.
  mu:      c = 1 / (sigma sqrt(2 pi)),  x+- = mu +- sigma W+-,  W ~ Rayleigh(1) =
           Weibull(shape 2, scale sqrt 2), drawn as W = sqrt(-2 log U).
  sigma:   c = 1 / sigma,  x+ = mu + sigma M with M ~ double-sided Maxwell (density
           m^2 phi(m)), drawn as M = +-sqrt(-2 log V0 + Z^2) (a chi with 3 degrees of freedom,
           sign from V1 < 1/2), and x- = mu + sigma E with E ~ N(0, 1).
Option ``coupling`` (default true): common random numbers between the two parts.
  true:    mu: W- = W+ (one U).  sigma: E = M * U' with U' = frac(2 V1) ~ Uniform(0, 1)
           independent of the sign, since M U' ~ N(0, 1) exactly for U' independent of M.
  false:   mu: W+ and W- from two independent uniforms.  sigma: E = the shared eps
           (stream 0), independent of M.
Requires:  the normal family (the decompositions above are the Gaussian's); the cost's value
           only.  2 evaluations of f per sample and component (``evals_per_sample = 2``).
Random streams: mu uses ``uniform_pair(key, i, 1)`` (U, and U- when uncoupled); sigma uses
           ``uniform_pair(key, i, 2)`` (V0, V1) and ``normal_at(key, i, 3)`` (Z).  Both
           variants read them through ``shared_draws`` (mu: (W+, W-) = the Rayleigh draws
           of U and U-; sigma: (M, V1)), so a study with both draws them once per sample.
Per-sample variance: Var[g] of the term above (per-sample kind, within-seed sample
           variance).  Reference (``reference``, source "quadrature", NumPy): mu: 1-D composite
           Gauss-Legendre over the Rayleigh density (coupled: E[(f(x+) - f(x-))^2]; uncoupled:
           the two parts' moments combined by independence); sigma: Gauss-Hermite over the
           Maxwell density (E_M[h] = E_eps[eps^2 h(eps)]), uncoupled combined with E_q f by
           independence, coupled a 2-D rule (Gauss-Hermite in M x Gauss-Legendre in U').
Reference: Pflug (1989); Heidergott & Vazquez-Abad (2000); Mohamed et al., JMLR 2020,
           Section 6.
"""

import math

import numpy as np
from numba import njit

from ..axes import Estimator
from ..quadrature import hermite_rule, rayleigh_expect, unit_nodes, values
from ..rng import normal_at, uniform_pair
from ..scalar_math import log_unit

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
STREAM_MU, STREAM_SIGMA, STREAM_SIGMA_NORMAL = 1, 2, 3


@njit(inline="always")
def _maxwell(key0, key1, index):
    """(M, V1): a double-sided Maxwell draw and the uniform whose half gave its sign."""
    v0, v1 = uniform_pair(key0, key1, index, STREAM_SIGMA)
    z = normal_at(key0, key1, index, STREAM_SIGMA_NORMAL)
    r = math.sqrt(-2.0 * log_unit(v0) + z * z)
    return (r if v1 < 0.5 else -r), v1


@njit(inline="always")
def shared_draws(component, key0, key1, index):
    """The random numbers of sample ``index`` both variants use: mu: (W+, W-), Rayleigh
    draws sqrt(-2 log U) of the two uniforms of stream 1 (the coupled variant uses W+
    only); sigma: (M, V1) (``_maxwell``)."""
    if component == 0:
        u0, u1 = uniform_pair(key0, key1, index, STREAM_MU)
        return math.sqrt(-2.0 * log_unit(u0)), math.sqrt(-2.0 * log_unit(u1))
    return _maxwell(key0, key1, index)


@njit
def per_sample_coupled(component, s, family, cost, consts):
    mu, sigma = s.theta
    if component == 0:
        w = s.shared[0]
        return (cost.value(mu + sigma * w, s.k) - cost.value(mu - sigma * w, s.k)) * (
            INV_SQRT_2PI / sigma)
    m, v1 = s.shared
    t = 2.0 * v1
    u = t - np.float64(np.int64(t))  # frac(2 V1), t >= 0 (no np.floor: numba-cuda lacks it)
    return (cost.value(mu + sigma * m, s.k) - cost.value(mu + sigma * (m * u), s.k)) / sigma


@njit
def per_sample_independent(component, s, family, cost, consts):
    mu, sigma = s.theta
    if component == 0:
        w_plus, w_minus = s.shared
        return (cost.value(mu + sigma * w_plus, s.k) - cost.value(mu - sigma * w_minus, s.k)) * (
            INV_SQRT_2PI / sigma)
    m = s.shared[0]
    return (cost.value(mu + sigma * m, s.k) - s.f) / sigma


# ---- exact references by quadrature ---------------------------------------------------------

def _mu_moments(cost, mu, sigma, k, coupled):
    """(mean, variance) of the mu-term, by composite Gauss-Legendre over the Rayleigh law."""
    c = INV_SQRT_2PI / sigma

    def fp(w):
        return values(cost.value, mu + sigma * w, k)

    def fm(w):
        return values(cost.value, mu - sigma * w, k)

    mean = c * (rayleigh_expect(fp) - rayleigh_expect(fm))
    if coupled:
        second = c * c * rayleigh_expect(lambda w: (fp(w) - fm(w)) ** 2)
    else:
        second = c * c * (rayleigh_expect(lambda w: fp(w) ** 2)
                          - 2.0 * rayleigh_expect(fp) * rayleigh_expect(fm)
                          + rayleigh_expect(lambda w: fm(w) ** 2))
    return mean, max(second - mean * mean, 0.0)


def _sigma_moments(cost, mu, sigma, k, coupled):
    """(mean, variance) of the sigma-term: Gauss-Hermite over the Maxwell law, Gauss-Legendre
    over U' when coupled."""
    eps, w = hermite_rule()
    maxwell_w = w * eps * eps                         # E_M[h(M)] = E_eps[eps^2 h(eps)]
    f_plus = values(cost.value, mu + sigma * eps, k)
    mean = (float(maxwell_w @ f_plus) - float(w @ f_plus)) / sigma
    if coupled:
        u, wu = unit_nodes()
        f_minus = values(cost.value, mu + sigma * eps[:, None] * u[None, :], k)
        inner = ((f_plus[:, None] - f_minus) ** 2) @ wu
        second = float(maxwell_w @ inner) / sigma ** 2
    else:
        second = (float(maxwell_w @ f_plus ** 2) - 2.0 * float(maxwell_w @ f_plus)
                  * float(w @ f_plus) + float(w @ f_plus ** 2)) / sigma ** 2
    return mean, max(second - mean * mean, 0.0)


def _reference(coupled):
    def reference(family, cost, component, params):
        moments = _mu_moments if component == "mu" else _sigma_moments
        return moments(cost, params["mu"], params["sigma"], params.get("k", 0.0), coupled)
    return reference


def configure(coupling):
    return Estimator(
        name="",
        per_sample=per_sample_coupled if coupling else per_sample_independent,
        evals_per_sample=2,
        description=f"weak derivative, {'coupled' if coupling else 'independent'} parts",
        families=FAMILIES,
        streams=STREAMS,
        reference=_reference(bool(coupling)),
        shared_draws=shared_draws,
    )


FAMILIES = ("normal",)  # the Rayleigh / Maxwell decompositions are those of the Gaussian
STREAMS = (STREAM_MU, STREAM_SIGMA, STREAM_SIGMA_NORMAL)

ESTIMATOR = Estimator(
    name="measure_valued",
    per_sample=per_sample_coupled,
    evals_per_sample=2,
    description="c (f(x+) - f(x-)): weak derivative (Rayleigh / Maxwell decompositions)",
    families=FAMILIES,
    streams=STREAMS,
    reference=_reference(True),
    shared_draws=shared_draws,
    options={"coupling": (True, False)},
    configure=configure,
)
