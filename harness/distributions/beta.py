"""The Beta family q(x; a, b) = x^(a-1) (1-x)^(b-1) / B(a, b) on 0 < x < 1, params ("a", "b"),
both > 0; gradient components a and b.

Base draw: e = log G1 - log G2 = logit x, with G1 ~ Gamma(a, 1) and G2 ~ Gamma(b, 1)
           independent, so x = G1 / (G1 + G2) = 1 / (1 + exp(-e)).  The logit, not x, is
           carried because log x = -softplus(-e) and log(1 - x) = -softplus(e) keep their
           digits next to 0 and 1 (the score needs both; 1 - x would round to 0 first).  Its
           law depends on theta, so the family samples through the theta-dependent hook
           ``draw_pair_at`` (``harness.axes``), which only the CPU backend calls; the grid
           reader rejects ``backend: cuda`` for beta.
Sampler:   two Marsaglia-Tsang gammas (``harness.distributions.gamma.draw_pair_at``) on the
           shared Philox streams.  For main stream s (0, or 2**31 for the independent copy)
           and pair p (samples 2p and 2p + 1):
             G1 = the gamma family's draws of shape a on stream s (attempt t on streams
               s + ATTEMPT_BASE + 2 t and + 2 t + 1, the shape < 1 boost on s itself);
             G2 = the same rule with shape b on stream s + SECOND_VARIATE_OFFSET (= s + 2**29:
               attempts on s + 2**29 + ATTEMPT_BASE + 2 t, + 2 t + 1, boost on s + 2**29).
           G1 of a beta sample is bitwise the gamma family's draw of shape a and rate 1, and
           each sample is a pure function of (seed, pair, stream): bitwise reproducible for
           any thread count (``harness.rng`` has the whole plan).  Parameters below ~0.05 can
           underflow a gamma draw to 0 (then e = -inf or +inf), as for the gamma family.
Score:     d/da log q = log x - psi(a) + psi(a + b),  d/db log q = log(1 - x) - psi(b)
           + psi(a + b), psi the digamma function.
Pathwise:  implicit reparameterisation (Figurnov, Mohamed & Mnih 2018): with I_x(a, b) the
           regularised incomplete beta function (the CDF), dx/da = -(dI_x/da) / q(x) and
           dx/db = -(dI_x/db) / q(x).  ``parameter_derivatives`` computes both from the
           continued fraction I_x(a, b) = x^a (1-x)^b / (a B(a, b)) h(a, b, x) (modified
           Lentz, with dh/da and dh/db carried along in forward mode; Boik & Robison-Cox
           1998) for x < (a + 1) / (a + b + 2), and from I_x(a, b) = 1 - I_(1-x)(b, a) above,
           where that fraction converges fast.  The prefactor over the density is x (1 - x) / a
           (resp. / b), so nothing underflows in the tails:
             dx/da = -(x (1-x) / a) ((log x - 1/a - psi(a) + psi(a+b)) h + dh/da),
             dx/db = -(x (1-x) / a) ((log(1-x) - psi(b) + psi(a+b)) h + dh/db)
           (direct branch; the reflected branch swaps the roles, see the code).  Relative
           accuracy ~1e-13 (1.4e-13 at worst against mpmath at 40 digits, measured over
           (a, b) from (0.1, 3) to (100, 120) at quantiles 1e-8 .. 1 - 1e-6; tests/test_beta.py
           checks 1e-9 against Richardson-extrapolated differences of scipy's betainc).
Moments:   E x = a / (a + b), Var x = a b / ((a + b)^2 (a + b + 1)); d/da: (b / (a + b)^2,
           Var x (1/a - 2/(a+b) - 1/(a+b+1))), d/db: (-a / (a + b)^2, Var x (1/b - 2/(a+b)
           - 1/(a+b+1))).
References (NumPy / scipy, in x, from the density; never the kernel functions): ``rule`` is
           composite Gauss-Legendre in y = logit x (the density in y, x^a (1-x)^b / B(a, b),
           is smooth and decays like exp(a y) and exp(-b y); integrands with log x and
           log(1 - x) are nearly polynomial in y) on [-(90 + 2 |log a|) / a, (90 + 2 |log b|)
           / b], with the nodes where float64 x rounds to 1 left out: references miss the mass
           with 1 - x < 2^-53, about 2^(-53 b) / (b B(a, b)) (6e-9 at a = b = 0.5; below 1e-8
           relative for b >= 0.5, growing for smaller b).  ``score_at`` uses scipy's digamma;
           ``dx_at`` differentiates scipy's ``betaincinv`` at fixed u = I_x(a, b) (above the
           median: the reflected Beta(b, a) at fixed 1 - u) by Richardson-extrapolated central
           differences (independent of ``parameter_derivatives``).
Shapes:    scalars per sample; ``draw_pair_at`` returns the two samples of a pair.
"""

import math

import numpy as np
from numba import njit
from scipy import special

from ..axes import Family
from ..quadrature import composite_legendre
from ..rng import SECOND_VARIATE_OFFSET
from .gamma import digamma, draw_pair  # draw_pair: NaN, the base draw needs theta
from .gamma import draw_pair_at as gamma_pair_at

PANELS = 800             # reference rule: panels over y = logit x

# ---- the derivative of the regularised incomplete beta function (@njit) ----------------------


@njit(inline="always")
def softplus(t):
    """log(1 + exp(t)) without overflow or loss of digits."""
    return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


@njit(inline="always")
def _lentz_step(alpha, alpha_a, alpha_b, c, c_a, c_b, d, d_a, d_b):
    """One step of modified Lentz for 1 / (1 + alpha_1 / (1 + alpha_2 / ...)) with the
    tangents of (c, d) wrt a and b: returns the new (c, d), their tangents and the factor
    delta = c d by which h is multiplied, with its tangents."""
    tiny = 1e-300
    den = 1.0 + alpha * d
    den_a = alpha_a * d + alpha * d_a
    den_b = alpha_b * d + alpha * d_b
    if abs(den) < tiny:
        den = tiny
    d = 1.0 / den
    d_a, d_b = -den_a * d * d, -den_b * d * d
    c_new = 1.0 + alpha / c
    c_a = alpha_a / c - alpha * c_a / (c * c)
    c_b = alpha_b / c - alpha * c_b / (c * c)
    c = c_new if abs(c_new) >= tiny else tiny
    return c, c_a, c_b, d, d_a, d_b, c * d, c_a * d + c * d_a, c_b * d + c * d_b


@njit(inline="always")
def _converged(h, h_a, h_b, de, do, de_a, do_a, de_b, do_b):
    """Whether the last level (factors de, do and their derivatives) changed h, h_a and h_b
    by rounding only.  The derivatives' changes are measured against |h_a| + |h| (and
    |h_b| + |h|), not |h_a| alone: where a derivative is 0 analytically (h_a of I_y(2, 1)),
    its value is rounding noise (~1e-18) that a relative test never passes once the
    kernel's contracted multiply-adds leave the updates an ulp off zero, and the fraction
    then ran all 100 000 levels (~3 ms per sample: pathwise on Beta(1, 2) took minutes).
    Changes below 1e-16 |h| are below the rounding of dx/d(a, b), which adds h_a to O(h)."""
    return (abs(de - 1.0) + abs(do - 1.0) < 1e-16
            and abs(h * de_a) + abs(h * do_a) <= 1e-16 * (abs(h_a) + abs(h))
            and abs(h * de_b) + abs(h * do_b) <= 1e-16 * (abs(h_b) + abs(h)))


@njit
def continued_fraction(a, b, x):
    """(h, dh/da, dh/db) for I_x(a, b) = x^a (1-x)^b / (a B(a, b)) h, with
    h = 1 / (1 + d_1 / (1 + d_2 / (1 + ...))),
      d_(2m+1) = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),
      d_(2m)   = m (b - m) x / ((a + 2m - 1)(a + 2m))
    (Numerical Recipes' betacf), converging fast for x < (a + 1) / (a + b + 2)."""
    # the first level (Numerical Recipes' start): c = 1, d = h = 1 / (1 + d_1)
    alpha = -(a + b) * x / (a + 1.0)
    alpha_a = alpha * (1.0 / (a + b) - 1.0 / (a + 1.0))
    alpha_b = -x / (a + 1.0)
    c, c_a, c_b = 1.0, 0.0, 0.0
    d = 1.0 / (1.0 + alpha)
    d_a, d_b = -alpha_a * d * d, -alpha_b * d * d
    h, h_a, h_b = d, d_a, d_b
    for m in range(1, 100_000):
        # even coefficient d_(2m)
        p, q = a + 2.0 * m - 1.0, a + 2.0 * m
        alpha = m * (b - m) * x / (p * q)
        alpha_a = -alpha * (1.0 / p + 1.0 / q)
        alpha_b = m * x / (p * q)
        c, c_a, c_b, d, d_a, d_b, de, de_a, de_b = _lentz_step(
            alpha, alpha_a, alpha_b, c, c_a, c_b, d, d_a, d_b)
        h_a, h_b = h_a * de + h * de_a, h_b * de + h * de_b
        h *= de
        # odd coefficient d_(2m+1)
        p, q = a + 2.0 * m, a + 2.0 * m + 1.0
        alpha = -(a + m) * (a + b + m) * x / (p * q)
        alpha_a = alpha * (1.0 / (a + m) + 1.0 / (a + b + m) - 1.0 / p - 1.0 / q)
        alpha_b = -(a + m) * x / (p * q)
        c, c_a, c_b, d, d_a, d_b, do, do_a, do_b = _lentz_step(
            alpha, alpha_a, alpha_b, c, c_a, c_b, d, d_a, d_b)
        h_a, h_b = h_a * do + h * do_a, h_b * do + h * do_b
        h *= do
        if _converged(h, h_a, h_b, de, do, de_a, do_a, de_b, do_b):
            break
    return h, h_a, h_b


@njit
def parameter_derivatives(a, b, e):
    """(dx/da, dx/db) at x = 1 / (1 + exp(-e)) ~ Beta(a, b): -(dI_x/da, dI_x/db) / q(x), the
    implicit reparameterisation gradients (module docstring)."""
    log_x, log_y = -softplus(-e), -softplus(e)        # log x, log(1 - x)
    x, y = math.exp(log_x), math.exp(log_y)
    psi_ab = digamma(a + b)
    if x < (a + 1.0) / (a + b + 2.0):
        h, h_a, h_b = continued_fraction(a, b, x)
        # I = K h with K / q = x y / a, dlog K/da = log x - 1/a - psi(a) + psi(a + b),
        # dlog K/db = log y - psi(b) + psi(a + b)
        scale = -x * y / a
        return (scale * ((log_x - 1.0 / a - digamma(a) + psi_ab) * h + h_a),
                scale * ((log_y - digamma(b) + psi_ab) * h + h_b))
    # I_x(a, b) = 1 - I_y(b, a), I_y(b, a) = K' h' with h' = h(b, a, y), K' / q = x y / b
    h, h_b, h_a = continued_fraction(b, a, y)          # its first parameter is b
    scale = x * y / b
    return (scale * ((log_x - digamma(a) + psi_ab) * h + h_a),
            scale * ((log_y - 1.0 / b - digamma(b) + psi_ab) * h + h_b))


@njit
def incomplete_beta_derivatives(a, b, x):
    """(dI_x/da, dI_x/db), the derivatives of the regularised incomplete beta function, for
    0 < x < 1 (tests; the kernel uses ``parameter_derivatives``, which never forms q(x))."""
    y = 1.0 - x
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    log_q = (a - 1.0) * math.log(x) + (b - 1.0) * math.log(y) - log_beta
    e = math.log(x) - math.log(y)
    dx_da, dx_db = parameter_derivatives(a, b, e)
    q = math.exp(log_q)
    return -dx_da * q, -dx_db * q


# ---- kernel functions (@njit; theta = (a, b), e = logit x) -----------------------------------


@njit
def draw_pair_at(theta, key0, key1, pair, stream):
    """Two base draws e = log G1 - log G2 at Philox counter (pair, stream) (module
    docstring)."""
    g1_0, g1_1 = gamma_pair_at((theta[0], 1.0), key0, key1, pair, stream)
    second = np.uint64(stream) + np.uint64(SECOND_VARIATE_OFFSET)
    g2_0, g2_1 = gamma_pair_at((theta[1], 1.0), key0, key1, pair, second)
    return math.log(g1_0) - math.log(g2_0), math.log(g1_1) - math.log(g2_1)


@njit(inline="always")
def to_x(theta, e):
    return 1.0 / (1.0 + math.exp(-e))


@njit(inline="always")
def score(component, theta, e):
    a, b = theta
    if component == 0:
        return digamma(a + b) - digamma(a) - softplus(-e)
    return digamma(a + b) - digamma(b) - softplus(e)


@njit(inline="always")
def times_score(component, theta, e, v):
    return v * score(component, theta, e)


@njit(inline="always")
def dx_dtheta(component, theta, e):
    return parameter_derivatives(theta[0], theta[1], e)[component]


@njit(inline="always")
def centred(theta, e):
    a, b = theta
    # x - a / (a + b) = (b x - a (1 - x)) / (a + b), both terms from e without 1 - x
    return (b / (1.0 + math.exp(-e)) - a / (1.0 + math.exp(e))) / (a + b)


# ---- reference functions (NumPy / scipy, in x, from the density) ------------------------------

def rule(theta):
    """(x, w): sum_j w_j h(x_j) ~= E[h(x)], x ~ Beta(a, b) (module docstring)."""
    a, b = theta
    lo = -(90.0 + 2.0 * abs(math.log(a))) / a
    hi = (90.0 + 2.0 * abs(math.log(b))) / b
    y, wy = composite_legendre(lo, hi, PANELS, 16)
    log_x, log_y = -np.logaddexp(0.0, -y), -np.logaddexp(0.0, y)
    w = wy * np.exp(a * log_x + b * log_y - special.betaln(a, b))   # the density in y
    x = special.expit(y)
    keep = (w > 1e-280) & (x < 1.0)   # nodes without mass, or where x rounds to 1 (docstring)
    return x[keep], w[keep]


def base_rule():
    """The base draw's law depends on (a, b), so there is no theta-free rule."""
    raise NotImplementedError("beta: the base law depends on (a, b); use rule(theta)")


def score_at(component, theta, x):
    a, b = theta
    x = np.asarray(x, dtype=np.float64)
    if component == "a":
        return np.log(x) - special.digamma(a) + special.digamma(a + b)
    return np.log1p(-x) - special.digamma(b) + special.digamma(a + b)


def _richardson(fn, h):
    """(4 D(h / 2) - D(h)) / 3 for the central difference D(h) = (fn(h) - fn(-h)) / (2 h)."""
    def central(step):
        return (fn(step) - fn(-step)) / (2.0 * step)
    return (4.0 * central(h / 2.0) - central(h)) / 3.0


def dx_at(component, theta, x):
    """dx/dtheta at fixed u = I_x(a, b): differences of scipy's betaincinv (module doc)."""
    a, b = theta
    x = np.asarray(x, dtype=np.float64)
    lower = x <= a / (a + b)
    u = special.betainc(a, b, x)          # x below the mean: x(theta) = betaincinv(a, b, u)
    v = special.betainc(b, a, 1.0 - x)    # above: 1 - x(theta) = betaincinv(b, a, v)
    h = 1e-3 * min(a if component == "a" else b, 1.0)

    def shifted(step):
        da, db = (step, 0.0) if component == "a" else (0.0, step)
        below = special.betaincinv(a + da, b + db, u)
        above = -special.betaincinv(b + db, a + da, v)
        return np.where(lower, below, above)

    return _richardson(shifted, h)


def mean(theta):
    return theta[0] / (theta[0] + theta[1])


def moment_grads(component, theta):
    a, b = theta
    s = a + b
    var = a * b / (s * s * (s + 1.0))
    if component == "a":
        return b / s ** 2, var * (1.0 / a - 2.0 / s - 1.0 / (s + 1.0))
    return -a / s ** 2, var * (1.0 / b - 2.0 / s - 1.0 / (s + 1.0))


FAMILY = Family(
    name="beta",
    params=("a", "b"),
    positive=("a", "b"),
    description="Beta(a, b), a ratio of two Marsaglia-Tsang gammas on Philox, implicit "
                "reparameterisation",
    draw_pair=draw_pair, draw_pair_at=draw_pair_at, to_x=to_x, score=score,
    times_score=times_score, centred=centred, dx_dtheta=dx_dtheta,
    base_rule=base_rule, rule=rule, score_at=score_at, dx_at=dx_at,
    mean=mean, moment_grads=moment_grads,
)
