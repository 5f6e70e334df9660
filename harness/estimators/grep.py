"""Generalised reparameterisation gradient (G-REP; Ruiz, Titsias & Blei, NeurIPS 2016) for the
Gamma and the Beta family.

Estimand:  d/dtheta_c E_q[f(x)], q = Gamma(shape, rate), x = e / rate, e ~ Gamma(shape, 1);
           or q = Beta(a, b), x = G1 / (G1 + G2), G1 ~ Gamma(a, 1), G2 ~ Gamma(b, 1)
           independent (``per_sample_by_family``: one estimator, a kernel per family).
Standardisation (the paper's choice for the Gamma): eps = (log e - psi(a)) / sqrt(psi1(a)),
           a = shape, psi, psi1, psi2 the digamma, trigamma and tetragamma functions, i.e.
           x = T(eps; theta) = exp(eps sqrt(psi1(a)) + psi(a)) / rate.  The law pi(eps; a) of
           eps still depends on a (only weakly: its first two moments do not), never on rate.
Formula:   g = g_rep + g_corr, with, at fixed eps,
             L      = d log e / da = (log e - psi(a)) psi2(a) / (2 psi1(a)) + psi1(a)
             g_rep  = f'(x) dx/da = f'(x) x L
             g_corr = f(x) d/da log pi(eps; a)
                    = f(x) (log e - psi(a) + (a - e) L + psi2(a) / (2 psi1(a)))
           (log pi(eps; a) = a log e - e - log Gamma(a) + log psi1(a) / 2 + const with
           log e = eps sqrt(psi1(a)) + psi(a)).  Rate: x = exp(...) / rate, so dx/drate =
           -x / rate and g_corr = 0: g = -f'(x) x / rate (the exact reparameterisation).
Beta (Ruiz et al. 2016, Section 4: the Beta through its two Gamma variates): each G_j is
           standardised as above with its own shape (G1: a, G2: b) and only G1 moves with a,
           only G2 with b; chained through x = G1 / (G1 + G2), dx/dG1 = x (1 - x) / G1 and
           dx/dG2 = -x (1 - x) / G2, so with L and the correction of the standard Gamma above
           evaluated at (shape, e) = (a, G1) resp. (b, G2):
             g_a = f'(x) x (1 - x) L(a, G1) + f(x) corr(a, G1),
             g_b = -f'(x) x (1 - x) L(b, G2) + f(x) corr(b, G2),
           corr(s, G) = log G - psi(s) + (s - G) L(s, G) + psi2(s) / (2 psi1(s)).
           (pi of eps1 and eps2 factorises, so the correction of a is eps1's alone.)
Requires:  the gamma or beta family and the cost's derivative; 2 evaluations per sample (f and
           f').  Per-sample kind; per-cell constants (psi, psi1, psi2 of the component's
           shape: a = shape for gamma; a or b for beta) from scipy.
Random streams: 0 (the family's base draw).  The beta kernel needs the sample's G1 (component
           a) or G2 (component b), which the draw buffer does not carry (it holds e = log G1 -
           log G2): it draws it again, bitwise as the family did, with the gamma family's
           ``draw_pair_at`` at the sample's pair on stream 0 (G1) or SECOND_VARIATE_OFFSET
           (G2), a pure function of (seed, pair, stream) (``harness.rng``); the other beta
           estimators' draw kernel and buffer are unchanged (no cost to them), this kernel
           runs one Marsaglia-Tsang pair per sample.
Per-sample variance: ``reference``, source "quadrature".  Gamma: E and Var of the formula
           above over the family's rule, written in x with scipy's polygamma, apart from the
           kernel.  Beta: a 2-D tensor rule over (G1, G2) (``gamma.standard_rule`` of a and of
           b with ``BETA_PANELS`` panels each, nodes of weight below 1e-22 left out) of the
           formula in NumPy / scipy (checked in tests/test_beta.py against a tensor rule in
           the other variables (x, S = G1 + G2), x ~ Beta(a, b) independent of S ~
           Gamma(a + b), G1 = x S, G2 = (1 - x) S).
Reference: Ruiz, Titsias & Blei, "The generalized reparameterization gradient", NeurIPS
           2016, Sections 3-4 (Gamma standardisation: Section 4, eq. 12; Beta and Dirichlet
           through Gamma variates: Section 4).
"""

import math

import numpy as np
from numba import njit
from scipy import special

from ..axes import Estimator
from ..distributions import gamma
from ..quadrature import values
from ..rng import SECOND_VARIATE_OFFSET

BETA_PANELS = (60, 60)   # the beta reference's rule per Gamma variate (log part, linear part)


@njit(inline="always")
def _shape_terms(a, e, psi, psi1, psi2):
    """(L, corr): d log e / da at fixed eps and d/da log pi(eps; a) (module docstring)."""
    centred_log = math.log(e) - psi
    dlog_e = centred_log * psi2 / (2.0 * psi1) + psi1
    return dlog_e, centred_log + (a - e) * dlog_e + psi2 / (2.0 * psi1)


@njit
def per_sample(component, s, family, cost, consts):
    rate = s.theta[1]
    if component == 1:
        return -s.df * s.x / rate
    psi, psi1, psi2 = consts
    dlog_e, correction = _shape_terms(s.theta[0], s.e, psi, psi1, psi2)
    return s.df * s.x * dlog_e + s.f * correction


@njit
def per_sample_beta(component, s, family, cost, consts):
    shape = s.theta[component]
    stream = np.uint64(0) if component == 0 else np.uint64(SECOND_VARIATE_OFFSET)
    pair = gamma.draw_pair_at((shape, 1.0), s.key0, s.key1, np.uint64(s.index >> 1), stream)
    g = pair[0] if s.index % 2 == 0 else pair[1]
    psi, psi1, psi2 = consts
    dlog_g, correction = _shape_terms(shape, g, psi, psi1, psi2)
    slope = s.x / (1.0 + math.exp(s.e))          # x (1 - x), 1 - x from the logit e
    sign = 1.0 if component == 0 else -1.0
    return sign * s.df * slope * dlog_g + s.f * correction


def prepare(family, cost, component, params):
    """(psi, psi1, psi2) of the component's shape (gamma: shape; beta: a or b)."""
    a = float(params["shape" if family.base_name == "gamma" else component])
    return (float(special.digamma(a)), float(special.polygamma(1, a)),
            float(special.polygamma(2, a)))


def shape_terms(shape, e):
    """(L, corr) of the module docstring in NumPy / scipy (references)."""
    psi, psi1, psi2 = (special.digamma(shape), special.polygamma(1, shape),
                       special.polygamma(2, shape))
    centred_log = np.log(e) - psi
    dlog_e = centred_log * psi2 / (2.0 * psi1) + psi1
    return dlog_e, centred_log + (shape - e) * dlog_e + psi2 / (2.0 * psi1)


def beta_term(component, a, b, g1, g2, cost, k):
    """g of the beta family at the Gamma variates (g1, g2) (arrays), in NumPy."""
    x = g1 / (g1 + g2)
    f, df = values(cost.value, x, k), values(cost.derivative, x, k)
    slope = g1 * g2 / (g1 + g2) ** 2               # x (1 - x)
    if component == "a":
        dlog, corr = shape_terms(a, g1)
        return df * slope * dlog + f * corr
    dlog, corr = shape_terms(b, g2)
    return -df * slope * dlog + f * corr


def _beta_reference(cost, component, params):
    """E and Var of g over the tensor rule in (G1, G2) (module docstring)."""
    a, b, k = float(params["a"]), float(params["b"]), params.get("k", 0.0)
    g1, w1 = gamma.standard_rule(a, BETA_PANELS)
    g2, w2 = gamma.standard_rule(b, BETA_PANELS)
    keep1, keep2 = w1 > 1e-22, w2 > 1e-22
    g1, w1, g2, w2 = g1[keep1], w1[keep1], g2[keep2], w2[keep2]
    first = second = 0.0
    for start in range(0, g1.size, 256):   # blocks of G1-nodes: bounded memory
        block = slice(start, start + 256)
        g = beta_term(component, a, b, g1[block, None], g2[None, :], cost, k)
        weights = w1[block, None] * w2[None, :]
        first += float(np.sum(weights * g))
        second += float(np.sum(weights * g * g))
    return first, max(second - first * first, 0.0)


def reference(family, cost, component, params):
    """E and Var of g: gamma over the family's rule in x, beta over (G1, G2)."""
    if family.base_name == "beta":
        return _beta_reference(cost, component, params)
    a, rate, k = float(params["shape"]), float(params["rate"]), params.get("k", 0.0)
    x, w = family.rule(family.theta(params))
    f, df = values(cost.value, x, k), values(cost.derivative, x, k)
    if component == "rate":
        g = -df * x / rate
    else:
        dlog_e, correction = shape_terms(a, rate * x)
        g = df * x * dlog_e + f * correction
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


ESTIMATOR = Estimator(
    name="grep",
    per_sample=per_sample,
    per_sample_by_family={"beta": per_sample_beta},
    evals_per_sample=2,
    description="generalised reparameterisation (Ruiz et al. 2016): f' dx/dtheta at fixed "
                "standardised eps plus the f d log pi(eps) correction (Beta: through G1, G2)",
    needs=frozenset({"derivative"}),
    families=("gamma", "beta"),
    n_consts=3,
    prepare=prepare,
    reference=reference,
)
