"""Rejection-sampling variational inference gradient (RSVI; Naesseth, Ruiz, Linderman & Blei,
AISTATS 2017) for the Gamma family, through the Marsaglia-Tsang acceptance.

Estimand:  d/dtheta_c E_q[f(x)], q = Gamma(a, rate), a = shape, x = e / rate.
Proposal:  the family's sampler (``harness.distributions.gamma``) draws e = h(eps, alpha) =
           d (1 + c eps)^3, d = alpha - 1/3, c = 1 / sqrt(9 d), eps ~ N(0, 1), accepted with
           the Marsaglia-Tsang test; the accepted eps have the density
           pi(eps; alpha) = q_alpha(h(eps, alpha)) |dh/deps| (q_alpha the Gamma(alpha, 1)
           density), which depends on alpha.
Formula:   RSVI (eq. 7 of the paper): grad = E_pi[f'(x) dx/dtheta] + E_pi[f(x) d/dtheta log
           pi(eps; theta)] at fixed eps, i.e. g = g_rep + g_cor per sample.  Rate: x = e / rate,
           pi does not depend on rate: g = -f'(x) x / rate (exact reparameterisation).
  shape >= 1: alpha = a, with t = 1 + c eps = (e / d)^(1/3) (read back from the sample e):
             de/da   = t^2 (3 - t) / 2                        (d/da of d t^3 at fixed eps)
             d/da log pi = log e - psi(a) + ((a - 1) / e - 1) de/da + 1 / (2 d) - (t - 1) / (d t)
             g_shape = f'(x) (de/da) / rate + f(x) d/da log pi.
  shape < 1 (shape augmentation, B = 1, Section 5 of the paper, as the family's sampler):
             e = e' u^(1/a), e' = h(eps, a + 1) accepted for Gamma(a + 1), u ~ U(0, 1) (the
             boost uniform); pi is e''s, with alpha = a + 1 (so psi(a + 1), (alpha - 1) = a):
             dx/da   = x (de'/da / e' - log u / a^2)
             g_shape = f'(x) dx/da + f(x) d/da log pi(eps; a + 1).
           The augmentation keeps the correction term small (Naesseth et al.: its variance
           vanishes as alpha grows), whereas without it shape < 1 has no MT proposal at all.
Tails:     near the proposal's edge (t = 1 + c eps -> 0, e -> 0) d/da log pi ~ 1.5 / t, and
           the accepted t has density ~ t^(3 alpha - 1): Var[g] is finite for alpha > 2/3
           (always: alpha >= 1), but E[g^4] only for alpha > 4/3, so for shape in [1, 4/3]
           and, augmented, shape < 1/3 the within-seed sample variance has heavy tails (its
           own standard error, which the conformance check estimates, is unreliable; seen:
           pooled z -3.9 at shape 1 on every cost, rsvi's largest).
Requires:  the gamma family and the cost's derivative; 2 evaluations per sample (f and f').
           Per-sample kind; per-cell constant psi(alpha) (scipy).
Random streams: 0 (the family's base draw).  For shape < 1 the kernel needs e' and u, which
           the draw buffer does not carry (it holds e): it draws them again, bitwise as the
           family did: e' = ``gamma.draw_pair_at((a + 1, 1), ...)`` at the sample's pair on
           stream 0 (the same attempts, d and c as the family's boosted draw) and u = the
           family's boost uniform ``uniform_pair(pair, 0)``; a pure function of (seed,
           pair, stream), so bitwise reproducible for any thread count.
Per-sample variance: ``reference``, source "quadrature", written apart from the kernel: the
           derivatives at fixed eps are complex-step derivatives in alpha (step 1e-30 i) of
           h(eps, alpha) and of log pi(eps; alpha) = log phi(eps) + (alpha - 1) log h - h -
           loggamma(alpha) + log |dh/deps| (scipy's complex ``loggamma``; not the closed forms
           above), with eps read from the rule's nodes e (shape >= 1: the family's Gamma(a)
           rule, 1-D; shape < 1: a tensor rule over e' (Gamma(a + 1) rule) x v = -log u ~
           Exp(1) (composite Gauss-Legendre on [0, 80])).  tests/test_gamma.py checks it
           against the closed forms above (a plain-NumPy transcription) and its mean against
           the exact gradient.
Reference: Naesseth, Ruiz, Linderman & Blei, "Reparameterization gradients through
           acceptance-rejection sampling algorithms", AISTATS 2017, Sections 3-5 (Gamma:
           Section 5, eq. 11-12).
"""

import math

import numpy as np
from numba import njit
from scipy import special

from ..axes import Estimator
from ..distributions import gamma
from ..quadrature import composite_legendre, values
from ..rng import uniform_pair

AUGMENT_PANELS = 80   # the shape < 1 reference's rule over v = -log u: panels on [0, 80]
INNER_PANELS = (100, 100)   # and its Gamma(shape + 1) rule's (log part, linear part)


@njit(inline="always")
def _shape_terms(alpha, e, psi):
    """(de/dalpha, d/dalpha log pi) at fixed eps for e = h(eps, alpha) (module docstring)."""
    d = alpha - 1.0 / 3.0
    t = (e / d) ** (1.0 / 3.0)
    de = 0.5 * t * t * (3.0 - t)
    return de, math.log(e) - psi + ((alpha - 1.0) / e - 1.0) * de + 0.5 / d - (t - 1.0) / (d * t)


@njit
def per_sample(component, s, family, cost, consts):
    shape, rate = s.theta
    if component == 1:
        return -s.df * s.x / rate
    psi = consts[0]
    if shape >= 1.0:
        de, score = _shape_terms(shape, s.e, psi)
        return s.df * de / rate + s.f * score
    pair = np.uint64(s.index >> 1)
    inner = gamma.draw_pair_at((shape + 1.0, 1.0), s.key0, s.key1, pair, 0)
    boost = uniform_pair(s.key0, s.key1, pair, 0)
    first = s.index % 2 == 0
    e_inner = inner[0] if first else inner[1]
    u = boost[0] if first else boost[1]
    de, score = _shape_terms(shape + 1.0, e_inner, psi)
    return s.df * s.x * (de / e_inner - math.log(u) / (shape * shape)) + s.f * score


def prepare(family, cost, component, params):
    """(psi(alpha),): alpha = shape, or shape + 1 under the augmentation (shape < 1)."""
    a = float(params["shape"])
    return (float(special.digamma(a if a >= 1.0 else a + 1.0)),)


# ---- exact reference (NumPy / scipy, from the definitions, never the kernel) ------------------

STEP = 1e-30   # the complex step in alpha


def _proposal(t0, alpha0, alpha):
    """(h, log |dh/deps|) at the eps that gives 1 + c(alpha0) eps = t0 under alpha0, for
    the parameter alpha (complex: a complex step): h(eps, alpha) = d (1 + c eps)^3, d = alpha
    - 1/3, c = 1 / sqrt(9 d).  1 + c(alpha) eps is written as t0 + (c(alpha) / c(alpha0) - 1)
    (t0 - 1), so its real part is t0 exactly (eps itself would lose t0 where t0 << 1)."""
    d = alpha - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    t = t0 + (np.sqrt((alpha0 - 1.0 / 3.0) / d) - 1.0) * (t0 - 1.0)
    return d * t ** 3, np.log(3.0 * d * c) + 2.0 * np.log(t)


def _terms(e, alpha):
    """(de/dalpha, d/dalpha log pi) at fixed eps for e = h(eps, alpha), from the definitions
    (log pi = log phi(eps) + log q_alpha(h) + log |dh/deps|, log phi(eps) free of alpha) by a
    complex step in alpha (derivatives to rounding, no hand-derived formula)."""
    t0 = (e / (alpha - 1.0 / 3.0)) ** (1.0 / 3.0)
    z = alpha + 1j * STEP
    h, log_jacobian = _proposal(t0.astype(complex), alpha, z)
    log_pi = (z - 1.0) * np.log(h) - h - special.loggamma(z) + log_jacobian
    return np.imag(h) / STEP, np.imag(log_pi) / STEP


def reference(family, cost, component, params):
    """E and Var of g over the law of the sampler's variables (module docstring)."""
    a, rate, k = float(params["shape"]), float(params["rate"]), params.get("k", 0.0)
    if component == "rate" or a >= 1.0:
        e, w = gamma.standard_rule(a)
        x = e / rate
        f, df = values(cost.value, x, k), values(cost.derivative, x, k)
        if component == "rate":
            g = -df * x / rate
        else:
            de, score = _terms(e, a)
            g = df * de / rate + f * score
    else:
        inner, w_inner = gamma.standard_rule(a + 1.0, INNER_PANELS)   # e' ~ Gamma(a + 1)
        keep = w_inner > 1e-22
        inner, w_inner = inner[keep], w_inner[keep]
        v, wv = composite_legendre(0.0, 80.0, AUGMENT_PANELS, 16)   # v = -log u ~ Exp(1)
        wv = wv * np.exp(-v)
        de, score = _terms(inner, a + 1.0)
        x = (inner[:, None] * np.exp(-v[None, :] / a)) / rate
        f = values(cost.value, x.ravel(), k).reshape(x.shape)
        df = values(cost.derivative, x.ravel(), k).reshape(x.shape)
        g = df * x * ((de / inner)[:, None] + v[None, :] / (a * a)) + f * score[:, None]
        w = (w_inner[:, None] * wv[None, :])
    mean = float(np.sum(w * g))
    return mean, max(float(np.sum(w * g * g)) - mean * mean, 0.0)


ESTIMATOR = Estimator(
    name="rsvi",
    per_sample=per_sample,
    evals_per_sample=2,
    description="rejection-sampling reparameterisation (Naesseth et al. 2017) through the "
                "Marsaglia-Tsang acceptance, shape augmentation below shape 1",
    needs=frozenset({"derivative"}),
    families=("gamma",),
    n_consts=1,
    prepare=prepare,
    reference=reference,
)
