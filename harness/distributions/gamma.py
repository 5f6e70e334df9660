"""The Gamma family q(x; shape, rate) = rate^shape x^(shape-1) exp(-rate x) / Gamma(shape) on
x > 0, params ("shape", "rate"), both > 0; gradient components shape and rate.

Base draw: e ~ Gamma(shape, 1), the standard Gamma variate itself; x = e / rate.  Its law
           depends on theta (on shape), so the family samples through the theta-dependent
           hook ``draw_pair_at`` (``harness.axes``), which only the CPU backend calls; the
           grid reader rejects ``backend: cuda`` for gamma.
Sampler:   Marsaglia & Tsang (2000), on the shared Philox streams, every attempt at its own
           counter, so a sample's draws are a pure function of (seed, pair, stream) and never
           of threads, chunks or the other samples (bitwise reproducible).  For main stream s
           (0, or 2**31 for the independent copy) and pair p (samples 2p and 2p + 1):
             attempt t (t = 0, 1, ...) of sample 2p + j: z = normal_pair(p, s + ATTEMPT_BASE
               + 2 t)[j], u = uniform_pair(p, s + ATTEMPT_BASE + 2 t + 1)[j];
             with d = a - 1/3, c = 1 / sqrt(9 d), v = (1 + c z)^3, accept d v if v > 0 and
               (u < 1 - 0.0331 z^4 or log u < z^2 / 2 + d (1 - v + log v));
             a = shape for shape >= 1; for shape < 1, a = shape + 1 and the boost
               e = e' * w^(1 / shape) with w = uniform_pair(p, s)[j] (the family's own stream).
           Acceptance is >= 95% for every shape (one attempt on average: ~1.03 per sample).
           ATTEMPT_BASE = 2**30 (estimators' own streams are small ids; ``harness.rng``).
           Shapes below ~0.05 can underflow x to 0 (w^(1/shape) < 1e-308).
Score:     d/dshape log q = log(rate x) - digamma(shape) = log e - digamma(shape);
           d/drate log q = shape / rate - x = (shape - e) / rate.
Pathwise:  implicit reparameterisation (Figurnov, Mohamed & Mnih 2018): with P(a, e) the
           regularised lower incomplete gamma function (the Gamma(a, 1) CDF) and p(e) its
           density, de/dshape = -(dP/da)(shape, e) / p(e), so dx/dshape = de/dshape / rate;
           dx/drate = -x / rate exactly.  dP/da / p is computed in one piece
           (``shape_derivative``): the series P = e^a exp(-e) / Gamma(a + 1) sum_n e^n /
           ((a+1)...(a+n)) for e < a + 1 and the continued fraction of Q = 1 - P (Lentz,
           differentiated in a alongside, forward mode) above; the density's prefactor
           cancels analytically (e / a, resp. e), so nothing underflows in the tails.
           Relative accuracy ~1e-13 (tests/test_gamma.py, against scipy).
Moments:   E x = shape / rate, Var x = shape / rate^2; d/dshape: (1 / rate, 1 / rate^2),
           d/drate: (-shape / rate^2, -2 shape / rate^3).
References (NumPy, in x, from the density; never the kernel functions): ``rule`` is a
           composite Gauss-Legendre rule for Gamma(shape, 1) in two parts: e in (0, c] in
           log e (the density e^shape exp(-e) in y = log e is smooth, and integrands with
           log e are polynomials in y), e in [c, c + 80 + 20 sqrt(shape)] linear
           (c = max(shape, 1)), scaled by 1 / rate.  ``score_at`` uses scipy's digamma,
           ``dx_at`` scipy's ``gammainc`` / ``gammaincc`` differentiated in a by Richardson-
           extrapolated central differences (independent of ``shape_derivative``).
Shapes:    scalars per sample; ``draw_pair_at`` returns the two samples of a pair.
"""

import math

import numpy as np
from numba import njit
from scipy import special

from ..axes import Family
from ..quadrature import composite_legendre
from ..rng import ATTEMPT_BASE, normal_pair, uniform_pair

LOG_PANELS = 400         # reference rule: panels over log e in (y_min, log c]
LINEAR_PANELS = 400      # and over e in [c, e_max]

# ---- special functions (@njit) ----------------------------------------------------------------


@njit(inline="always")
def digamma(x):
    """psi(x) for x > 0: recurrence up to x >= 12, then the asymptotic series (~1e-15)."""
    result = 0.0
    while x < 12.0:
        result -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132))))
    return result + math.log(x) - 0.5 / x - series


@njit
def _series(a, x):
    """(S, dS/da) for P(a, x) = x^a exp(-x) / Gamma(a + 1) * S, S = sum_n x^n / ((a+1)..(a+n))
    (converges for all x; used for x < a + 1, where the terms shrink geometrically)."""
    term, total, d_total, harmonic = 1.0, 1.0, 0.0, 0.0
    n = 0
    while n < 100_000:
        n += 1
        term *= x / (a + n)
        harmonic += 1.0 / (a + n)          # d log(term) / da = -harmonic
        total += term
        d_total -= term * harmonic
        if term < 1e-17 * total and term * harmonic < 1e-17 * abs(d_total):
            break
    return total, d_total


@njit
def _continued_fraction(a, x):
    """(h, dh/da) for Q(a, x) = x^a exp(-x) / Gamma(a) * h, the continued fraction
    1 / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / (x + 5 - a - ...))) by modified
    Lentz, with the derivative in a carried along (forward mode); for x >= a + 1."""
    tiny = 1e-300
    b, db = x + 1.0 - a, -1.0
    c, dc = 1.0 / tiny, 0.0
    d = 1.0 / b
    dd = -db * d * d
    h, dh = d, dd
    for i in range(1, 100_000):
        an, dan = -i * (i - a), float(i)
        b += 2.0                           # db stays -1
        den = an * d + b
        dden = dan * d + an * dd + db
        if abs(den) < tiny:
            den = tiny
        d = 1.0 / den
        dd = -dden * d * d
        c_new = b + an / c
        dc = db + (dan * c - an * dc) / (c * c)
        c = c_new if abs(c_new) >= tiny else tiny
        delta, ddelta = d * c, dd * c + d * dc
        dh = dh * delta + h * ddelta
        h *= delta
        if abs(delta - 1.0) < 1e-16 and abs(h * ddelta) <= 1e-16 * abs(dh):
            break
    return h, dh


@njit
def shape_derivative(a, e):
    """de/da = -(dP/da)(a, e) / p(e; a) for e ~ Gamma(a, 1): the implicit reparameterisation
    gradient of the standard Gamma variate (module docstring)."""
    if e < a + 1.0:
        s, ds = _series(a, e)
        # P = F S with F / p = e / a: de/da = -(e / a) ((log e - psi(a + 1)) S + S')
        return -(e / a) * ((math.log(e) - digamma(a + 1.0)) * s + ds)
    h, dh = _continued_fraction(a, e)
    # Q = G h with G / p = e: de/da = dQ/da / p = e ((log e - psi(a)) h + h')
    return e * ((math.log(e) - digamma(a)) * h + dh)


@njit
def incomplete_gamma_da(a, x):
    """d/da P(a, x), the derivative of the regularised lower incomplete gamma function."""
    if x < a + 1.0:
        s, ds = _series(a, x)
        f = math.exp(a * math.log(x) - x - math.lgamma(a + 1.0))
        return f * ((math.log(x) - digamma(a + 1.0)) * s + ds)
    h, dh = _continued_fraction(a, x)
    g = math.exp(a * math.log(x) - x - math.lgamma(a))
    return -g * ((math.log(x) - digamma(a)) * h + dh)


# ---- kernel functions (@njit; theta = (shape, rate), e ~ Gamma(shape, 1)) --------------------


@njit(inline="always")
def draw_pair(key0, key1, pair, stream):
    """Not a sampler: the base draw depends on theta (``draw_pair_at``; also the Beta
    family's).  NaN, so a kernel that bypassed the hook could not return plausible numbers."""
    return math.nan, math.nan


@njit
def draw_pair_at(theta, key0, key1, pair, stream):
    """Two Gamma(shape, 1) draws at Philox counter (pair, stream) (module docstring)."""
    shape = theta[0]
    a = shape if shape >= 1.0 else shape + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    base = np.uint64(stream) + np.uint64(ATTEMPT_BASE)
    out0, out1 = -1.0, -1.0
    t = 0
    while out0 < 0.0 or out1 < 0.0:   # both halves of an attempt's counters share one call
        z0, z1 = normal_pair(key0, key1, pair, base + np.uint64(2 * t))
        u0, u1 = uniform_pair(key0, key1, pair, base + np.uint64(2 * t + 1))
        if out0 < 0.0:
            out0 = _marsaglia_tsang(d, c, z0, u0)
        if out1 < 0.0:
            out1 = _marsaglia_tsang(d, c, z1, u1)
        t += 1
    if shape < 1.0:
        w0, w1 = uniform_pair(key0, key1, pair, stream)
        out0 *= math.exp(math.log(w0) / shape)
        out1 *= math.exp(math.log(w1) / shape)
    return out0, out1


@njit(inline="always")
def _marsaglia_tsang(d, c, z, u):
    """d v if the attempt (z, u) is accepted, else -1."""
    v = 1.0 + c * z
    if v <= 0.0:
        return -1.0
    v = v * v * v
    z2 = z * z
    if u < 1.0 - 0.0331 * z2 * z2 or math.log(u) < 0.5 * z2 + d * (1.0 - v + math.log(v)):
        return d * v
    return -1.0


@njit(inline="always")
def to_x(theta, e):
    return e / theta[1]


@njit(inline="always")
def score(component, theta, e):
    if component == 0:
        return math.log(e) - digamma(theta[0])
    return (theta[0] - e) / theta[1]


@njit(inline="always")
def times_score(component, theta, e, v):
    return v * score(component, theta, e)


@njit(inline="always")
def dx_dtheta(component, theta, e):
    if component == 0:
        return shape_derivative(theta[0], e) / theta[1]
    return -e / (theta[1] * theta[1])


@njit(inline="always")
def centred(theta, e):
    return (e - theta[0]) / theta[1]


# ---- reference functions (NumPy / scipy, in x, from the density) ------------------------------

def standard_rule(shape, panels=(LOG_PANELS, LINEAR_PANELS)):
    """(e, w): sum_j w_j h(e_j) ~= E[h(e)], e ~ Gamma(shape, 1) (module docstring); ``panels``
    (log part, linear part): fewer for the factors of a 2-D tensor rule."""
    c = max(shape, 1.0)
    log_norm = special.gammaln(shape)
    y_min = -(60.0 + 40.0 * max(0.0, -math.log(shape))) / shape  # e^shape below e^-60
    y, wy = composite_legendre(y_min, math.log(c), panels[0], 16)
    e_low = np.exp(y)
    w_low = wy * np.exp(shape * y - e_low - log_norm)      # density in y = log e
    e_high, wl = composite_legendre(c, c + 80.0 + 20.0 * math.sqrt(shape), panels[1], 16)
    w_high = wl * np.exp((shape - 1.0) * np.log(e_high) - e_high - log_norm)
    e, w = np.concatenate([e_low, e_high]), np.concatenate([w_low, w_high])
    keep = w > 1e-280   # nodes whose density underflows carry no mass (and would give 0 / 0)
    return e[keep], w[keep]


def base_rule():
    """The base draw's law depends on shape, so there is no theta-free rule: use
    ``standard_rule(shape)``."""
    raise NotImplementedError("gamma: the base law depends on shape; use standard_rule(shape)")


def rule(theta):
    e, w = standard_rule(theta[0])
    return e / theta[1], w


def score_at(component, theta, x):
    shape, rate = theta
    x = np.asarray(x, dtype=np.float64)
    if component == "shape":
        return np.log(rate * x) - special.digamma(shape)
    return shape / rate - x


def cdf_shape_derivative(shape, e):
    """dP/da (shape, e) by Richardson-extrapolated central differences of scipy's gammainc
    (below the mean) and -gammaincc (above, where P is near 1 and Q keeps its digits)."""
    e = np.asarray(e, dtype=np.float64)
    upper = e > shape

    def central(h):
        lower_diff = special.gammainc(shape + h, e) - special.gammainc(shape - h, e)
        upper_diff = special.gammaincc(shape - h, e) - special.gammaincc(shape + h, e)
        return np.where(upper, upper_diff, lower_diff) / (2.0 * h)

    h = 1e-3 * min(shape, 1.0)   # truncation grows with |log e|, rounding with 1 / h
    return (4.0 * central(h / 2.0) - central(h)) / 3.0


def dx_at(component, theta, x):
    shape, rate = theta
    x = np.asarray(x, dtype=np.float64)
    if component == "shape":
        e = rate * x
        log_density = (shape - 1.0) * np.log(e) - e - special.gammaln(shape)
        return -cdf_shape_derivative(shape, e) / np.exp(log_density) / rate
    return -x / rate


def mean(theta):
    return theta[0] / theta[1]


def moment_grads(component, theta):
    shape, rate = theta
    if component == "shape":
        return 1.0 / rate, 1.0 / rate ** 2
    return -shape / rate ** 2, -2.0 * shape / rate ** 3


FAMILY = Family(
    name="gamma",
    params=("shape", "rate"),
    positive=("shape", "rate"),
    description="Gamma(shape, rate), Marsaglia-Tsang on Philox, implicit reparameterisation",
    draw_pair=draw_pair, draw_pair_at=draw_pair_at, to_x=to_x, score=score,
    times_score=times_score, centred=centred, dx_dtheta=dx_dtheta,
    base_rule=base_rule, rule=rule, score_at=score_at, dx_at=dx_at,
    mean=mean, moment_grads=moment_grads,
)
