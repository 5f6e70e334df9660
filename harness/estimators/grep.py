"""Generalised reparameterisation gradient (G-REP; Ruiz, Titsias & Blei, NeurIPS 2016) for the
Gamma family.

Estimand:  d/dtheta_c E_q[f(x)], q = Gamma(shape, rate), x = e / rate, e ~ Gamma(shape, 1).
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
Requires:  the gamma family and the cost's derivative; 2 evaluations per sample (f and f').
           Per-sample kind; per-cell constants (psi(a), psi1(a), psi2(a)) from scipy.
Per-sample variance: ``reference``, source "quadrature": E and Var of the formula above over
           the family's rule, written in x with scipy's polygamma, apart from the kernel.
Random streams: 0 (the family's base draw e).
Reference: Ruiz, Titsias & Blei, "The generalized reparameterization gradient", NeurIPS
           2016, Sections 3-4 (Gamma standardisation: Section 4, eq. 12).
"""

import math

import numpy as np
from numba import njit
from scipy import special

from ..axes import Estimator
from ..quadrature import values


@njit
def per_sample(component, s, family, cost, consts):
    rate = s.theta[1]
    if component == 1:
        return -s.df * s.x / rate
    a, e = s.theta[0], s.e
    psi, psi1, psi2 = consts
    centred_log = math.log(e) - psi
    dlog_e = centred_log * psi2 / (2.0 * psi1) + psi1
    correction = centred_log + (a - e) * dlog_e + psi2 / (2.0 * psi1)
    return s.df * s.x * dlog_e + s.f * correction


def prepare(family, cost, component, params):
    """(psi(shape), psi1(shape), psi2(shape))."""
    a = float(params["shape"])
    return (float(special.digamma(a)), float(special.polygamma(1, a)),
            float(special.polygamma(2, a)))


def reference(family, cost, component, params):
    """E and Var of g over the family's rule in x."""
    a, rate, k = float(params["shape"]), float(params["rate"]), params.get("k", 0.0)
    x, w = family.rule(family.theta(params))
    f, df = values(cost.value, x, k), values(cost.derivative, x, k)
    if component == "rate":
        g = -df * x / rate
    else:
        psi, psi1, psi2 = special.digamma(a), special.polygamma(1, a), special.polygamma(2, a)
        e = rate * x
        centred_log = np.log(e) - psi
        dlog_e = centred_log * psi2 / (2.0 * psi1) + psi1
        g = df * x * dlog_e + f * (centred_log + (a - e) * dlog_e + psi2 / (2.0 * psi1))
    mean = float(w @ g)
    return mean, float(w @ ((g - mean) ** 2))


ESTIMATOR = Estimator(
    name="grep",
    per_sample=per_sample,
    evals_per_sample=2,
    description="generalised reparameterisation (Ruiz et al. 2016): f' dx/dtheta at fixed "
                "standardised eps plus the f d log pi(eps) correction",
    needs=frozenset({"derivative"}),
    families=("gamma",),
    n_consts=3,
    prepare=prepare,
    reference=reference,
)
