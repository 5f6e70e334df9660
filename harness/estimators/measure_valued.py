"""Measure-valued (weak-derivative) estimator for the Gaussian, exponential and Gamma families.

Estimand:  d/dtheta E_q[f(x)] for q = N(mu, sigma^2), theta in {mu, sigma}, for q = Exp(rate),
           theta = rate, and for q = Gamma(shape, rate), theta = rate only
           (``per_sample_by_family``: one estimator, a kernel per family).
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
Requires:  the normal, exponential or gamma family (each with its own decomposition); the cost's
           value only.  2 evaluations of f per sample and component (``evals_per_sample = 2``;
           the exponential's f(x+) is the shared sample's f, so its kernel evaluates f once).
Random streams: mu uses ``uniform_pair(key, i, 1)`` (U, and U- when uncoupled); sigma uses
           ``uniform_pair(key, i, 2)`` (V0, V1) and half i mod 2 (cosine, sine) of
           ``normal_pair(key, i // 2, 3)`` (Z; samples 2p and 2p + 1 share a counter).  Both
           variants read them through ``shared_draws`` (mu: (W+, W-) = the Rayleigh draws
           of U and U-; sigma: (M, V1)), so a study with both draws them once per sample.
Per-sample variance: Var[g] of the term above (per-sample kind, within-seed sample
           variance).  Reference (``reference``, source "quadrature", NumPy): mu: 1-D composite
           Gauss-Legendre over the Rayleigh density (coupled: E[(f(x+) - f(x-))^2]; uncoupled:
           the two parts' moments combined by independence); sigma: Gauss-Hermite over the
           Maxwell density (E_M[h] = E_eps[eps^2 h(eps)]), uncoupled combined with E_q f by
           independence, coupled a 2-D rule (Gauss-Hermite in M x Gauss-Legendre in U').
Exponential family (q = rate e^{-rate x} on x > 0; Mohamed et al. 2020, Table 2):
  rate:    d/drate q(x) = q(x) / rate - x q(x) = (1 / rate) (q(x) - x rate q(x)), and
           x rate q(x) = rate^2 x e^{-rate x} is the Gamma(2, rate) density (the size-biased
           law x q / E x), so c = 1 / rate, q+ = Exp(rate), q- = Gamma(2, rate):
             g = (f(x+) - f(x-)) / rate,   x+ = E1 / rate,  x- = (E1' + E2) / rate,
           E1, E1', E2 ~ Exp(1).  x+ is the family's own sample (E1 = the base draw e of
           stream 0, so f(x+) = s.f).
  coupled (default): E1' = E1: x- = x+ + E2 / rate (a Gamma(2) draw is the sum of two
           exponentials; common random numbers in E1).
  uncoupled: E1' and E2 both new, independent of E1.
Random streams (exponential): ``exponential.draw_pair(key, i, 13)`` (``STREAM_RATE``): two
           Exp(1) draws per sample: coupled uses the first (E2), uncoupled both (E1', E2).
Per-sample variance (exponential), ``reference``, source "quadrature", NumPy over Exp(1)
           nodes in e (the definition above, apart from the kernel): the mean
           (E_Exp f - E_Gamma(2) f) / rate on the family's rule (Gamma(2) weights = Exp(1)
           weights times e); uncoupled: the two parts' moments combined by independence;
           coupled: the 2-D integral E[(f(E1 / rate) - f((E1 + E2) / rate))^2] over (E1, E2),
           its cross term int int e^-(a+b) f(a / rate) f((a+b) / rate) as the iterated
           int e^-s f(s / rate) (int_0^s f(a / rate) da) ds (s = a + b) on the family's
           composite rule, the inner integral per panel by Legendre interpolation
           (``_running_integrals``), f centred by E f(x+) (no cancellation of large E f^2;
           g does not change).  Quadratic cost (x - k)^2, coupled, closed form for
           checking: g = -E2 (2 E1 + E2 - 2 k rate) / rate^3, Var[g] = (48 - 12 c + c^2) /
           rate^6 with c = 2 k rate (tests/test_discrete.py).
Gamma family (q = rate^a x^(a-1) e^{-rate x} / Gamma(a), a = shape; Mohamed et al. 2020,
           Table 2):
  rate:    d/drate q = (a / rate - x) q = (a / rate) (q - (rate x / a) q), and (rate x / a) q
           is the Gamma(a + 1, rate) density (the size-biased law x q / E x), so c = a / rate,
           q+ = Gamma(a, rate), q- = Gamma(a + 1, rate):
             g = (a / rate) (f(x+) - f(x-)),  x+ = G / rate = the family's sample (f(x+) = s.f).
           (At a = 1 this is the exponential's decomposition above.)
  shape:   no decomposition of this form: d/da q = (log(rate x) - psi(a)) q changes sign at
           a point that depends on a, and neither part is a Gamma law, so the estimator
           declares ``components = {"gamma": ("rate",)}`` and the registry refuses shape
           (``registry.combination_problem``: "set wrt: [rate]").
  coupled (default): x- = x+ + E / rate, E ~ Exp(1): a Gamma(a + 1) variate is exactly the
           sum of independent Gamma(a) and Gamma(1) variates, so x- shares the family's base
           draw G (common random numbers, as the exponential's Gamma(2) = Exp + Exp).
  uncoupled: x- = G' / rate, G' ~ Gamma(a + 1, 1) drawn on its own stream, independent of G.
Random streams (gamma): coupled: E = the first of ``exponential.draw_pair(key, i, 13)``
           (``STREAM_RATE``, as the exponential's E2); uncoupled: G' = half i mod 2 of the gamma
           family's Marsaglia-Tsang pair (``gamma.draw_pair_at``, shape a + 1) at pair i // 2
           on stream 14 (``STREAM_GAMMA``; attempts on 14 + 2^30 + 2t, + 2t + 1): a pure
           function of (seed, sample), the pair's other half is drawn and not used.
Per-sample variance (gamma), ``reference``, source "quadrature", NumPy over the Gamma(a, 1)
           rule ``gamma.standard_rule`` (written from the density, apart from the kernel):
           Gamma(a + 1) weights = Gamma(a) weights times e / a; uncoupled: the two parts'
           moments combined by independence; coupled: the cross term E[f(G / rate)
           f((G + E) / rate)] as a 2-D tensor rule over (G, E) (E on a composite
           Gauss-Legendre rule on [0, 80], ``GAMMA_E_PANELS`` x 16 nodes; G-nodes of weight
           below 1e-22 left out), f centred by E f(x+).  Quadratic cost (x - k)^2 in closed
           form for checking (c = 2 k rate): coupled g = -a E (2 G + E - c) / rate^3,
           Var[g] = a^2 (4 a^2 + 24 a - 4 a c + c^2 - 8 c + 20) / rate^6 (tests/test_gamma.py).
Reference: Pflug (1989); Heidergott & Vazquez-Abad (2000); Mohamed et al., JMLR 2020,
           Section 6 and Table 2.
"""

import functools
import math

import numpy as np
from numba import njit

from ..axes import Estimator
from ..distributions import gamma
from ..distributions.exponential import EXP_PANELS
from ..distributions.exponential import draw_pair as exponential_pair
from ..quadrature import composite_legendre, hermite_rule, rayleigh_expect, unit_nodes, values
from ..rng import normal_pair, uniform_pair
from ..scalar_math import log_unit

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
STREAM_MU, STREAM_SIGMA, STREAM_SIGMA_NORMAL = 1, 2, 3
STREAM_RATE = 13   # the exponential family's E2 (and E1' when uncoupled); gamma's coupled E
STREAM_GAMMA = 14  # the gamma family's uncoupled G' ~ Gamma(shape + 1, 1)
GAMMA_E_PANELS = 160   # the coupled gamma reference's rule over E ~ Exp(1): panels on [0, 80]
# the exponential family's rule for the coupled cross term: as its own 1-D rule (EXP_PANELS
# panels of 16 nodes on [0, 80]), with the panel structure the running integral needs
EXP_TOP, EXP_ORDER = 80.0, 16


@njit(inline="always")
def _maxwell(key0, key1, index):
    """(M, V1): a double-sided Maxwell draw and the uniform whose half gave its sign.  Its
    normal Z is half ``index % 2`` of the Box-Muller pair at counter ``index // 2`` of
    stream 3: samples 2p and 2p + 1 share one counter, log and square root (the shared-draw
    kernel computes both samples of a pair in one step, so LLVM computes the pair once)."""
    v0, v1 = uniform_pair(key0, key1, index, STREAM_SIGMA)
    pair = np.uint64(index) >> np.uint64(1)
    z_cos, z_sin = normal_pair(key0, key1, pair, STREAM_SIGMA_NORMAL)
    z = z_sin if np.uint64(index) & np.uint64(1) else z_cos
    r = math.sqrt(-2.0 * log_unit(v0) + z * z)
    return (r if v1 < 0.5 else -r), v1


@njit(inline="always")
def _rayleigh_pair(key0, key1, index):
    """(W+, W-): Rayleigh draws sqrt(-2 log U) of the two uniforms of stream 1 at ``index``
    (the coupled variant uses W+ only)."""
    u0, u1 = uniform_pair(key0, key1, index, STREAM_MU)
    return math.sqrt(-2.0 * log_unit(u0)), math.sqrt(-2.0 * log_unit(u1))


@njit(inline="always")
def shared_draws(component, key0, key1, index):
    """The random numbers of sample ``index`` both variants use: mu: (W+, W-)
    (``_rayleigh_pair``); sigma: (M, V1) (``_maxwell``)."""
    if component == 0:
        return _rayleigh_pair(key0, key1, index)
    return _maxwell(key0, key1, index)


# the same functions per component, for the CPU's shared-draw kernels: numba types and lowers
# both branches of ``shared_draws`` before it inlines it, so a kernel calling the component's
# own function compiles about half the code (mu: 2.1-2.5 s instead of 4.0 s)
SHARED_DRAWS_BY_COMPONENT = (_rayleigh_pair, _maxwell)


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


@njit
def per_sample_exponential_coupled(component, s, family, cost, consts):
    # x+ = s.x = E1 / rate and x- = (E1 + E2) / rate: a Gamma(2, rate) draw sharing E1
    rate = s.theta[0]
    e2, _ = exponential_pair(s.key0, s.key1, s.index, STREAM_RATE)
    return (s.f - cost.value((s.e + e2) / rate, s.k)) / rate


@njit
def per_sample_exponential_independent(component, s, family, cost, consts):
    # x- = (E1' + E2) / rate from the estimator's own stream, independent of x+ = s.x
    rate = s.theta[0]
    e1_new, e2 = exponential_pair(s.key0, s.key1, s.index, STREAM_RATE)
    return (s.f - cost.value((e1_new + e2) / rate, s.k)) / rate


@njit
def per_sample_gamma_coupled(component, s, family, cost, consts):
    # rate only (``components``): x- = x+ + E / rate ~ Gamma(shape + 1, rate), sharing G
    shape, rate = s.theta
    e, _ = exponential_pair(s.key0, s.key1, s.index, STREAM_RATE)
    return (s.f - cost.value((s.e + e) / rate, s.k)) * (shape / rate)


@njit
def per_sample_gamma_independent(component, s, family, cost, consts):
    # rate only: x- = G' / rate, G' ~ Gamma(shape + 1, 1) on the estimator's own stream
    shape, rate = s.theta
    pair = gamma.draw_pair_at((shape + 1.0, 1.0), s.key0, s.key1, np.uint64(s.index >> 1),
                              STREAM_GAMMA)
    g = pair[0] if s.index % 2 == 0 else pair[1]
    return (s.f - cost.value(g / rate, s.k)) * (shape / rate)


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


@functools.lru_cache(maxsize=8)
def _coupled_nodes(mu, sigma):
    """x- = mu + sigma eps u on the (eps, u) tensor rule: the same for every k of a study."""
    eps, _ = hermite_rule()
    u, _ = unit_nodes()
    return mu + sigma * eps[:, None] * u[None, :]


def _sigma_moments(cost, mu, sigma, k, coupled):
    """(mean, variance) of the sigma-term: Gauss-Hermite over the Maxwell law, Gauss-Legendre
    over U' when coupled."""
    eps, w = hermite_rule()
    maxwell_w = w * eps * eps                         # E_M[h(M)] = E_eps[eps^2 h(eps)]
    f_plus = values(cost.value, mu + sigma * eps, k)
    mean = (float(maxwell_w @ f_plus) - float(w @ f_plus)) / sigma
    if coupled:
        _, wu = unit_nodes()
        d = values(cost.value, _coupled_nodes(mu, sigma), k)      # f(x-)
        np.square(np.subtract(f_plus[:, None], d, out=d), out=d)  # (f(x+) - f(x-))^2
        second = float(maxwell_w @ (d @ wu)) / sigma ** 2
    else:
        second = (float(maxwell_w @ f_plus ** 2) - 2.0 * float(maxwell_w @ f_plus)
                  * float(w @ f_plus) + float(w @ f_plus ** 2)) / sigma ** 2
    return mean, max(second - mean * mean, 0.0)


def _running_integrals(top: float, panels: int, order: int):
    """(s, w, cumulative): composite Gauss-Legendre nodes s and weights w on [0, top] and the
    matrix-free map h -> H with H_j = int_0^{s_j} h(a) da for h sampled at the nodes (per
    panel, the integral of the panel's interpolating polynomial up to each node: the
    Legendre "integration matrix"; exact for piecewise polynomials of degree < order)."""
    s, w = composite_legendre(0.0, top, panels, order)
    x, _ = np.polynomial.legendre.leggauss(order)
    to_coefficients = np.linalg.inv(np.polynomial.legendre.legvander(x, order - 1))
    integrals = np.stack([np.polynomial.legendre.legval(x, np.polynomial.legendre.legint(
        np.eye(order)[n], lbnd=-1.0)) for n in range(order)], axis=1)
    within = integrals @ to_coefficients          # [node j, node i] on the panel [-1, 1]
    half = 0.5 * top / panels

    def cumulative(h):
        h = h.reshape(panels, order)
        inside = half * (h @ within.T)            # from the panel's left edge to each node
        before = np.concatenate([[0.0], np.cumsum(half * (h @ _gauss_weights(order)))[:-1]])
        return (before[:, None] + inside).ravel()

    return s, w, cumulative


def _gauss_weights(order):
    return np.polynomial.legendre.leggauss(order)[1]


def _rate_moments(family, cost, rate, k, coupled):
    """(mean, variance) of the exponential family's rate-term (module docstring), written
    in Exp(1) variables from the decomposition, never from the kernel."""
    e, w = family.base_rule()                 # E over E ~ Exp(1)
    f = values(cost.value, e / rate, k)       # f(E / rate) and, weighted by e, f(T / rate)
    w_gamma2 = w * e                          # E over T ~ Gamma(2, 1): density t e^-t
    mean_plus, mean_minus = float(w @ f), float(w_gamma2 @ f)
    mean = (mean_plus - mean_minus) / rate
    if coupled:
        # E[(f(E1 / rate) - f((E1 + E2) / rate))^2] = E f+^2 - 2 E[f+ f-] + E f-^2, f centred
        # (g does not change; no cancellation of large E f^2), and the 2-D cross term
        # int int e^-(a + b) f(a) f(a + b) da db = int e^-s f(s) (int_0^s f(a) da) ds (s = a + b)
        s, ws, cumulative = _running_integrals(EXP_TOP, EXP_PANELS, EXP_ORDER)
        fc = values(cost.value, s / rate, k) - mean_plus
        weight = np.exp(-s) * ws
        cross = float(weight @ (fc * cumulative(fc)))
        second = (float(weight @ fc ** 2) - 2.0 * cross + float((weight * s) @ fc ** 2)) \
            / rate ** 2
    else:
        second = (float(w @ f ** 2) - 2.0 * mean_plus * mean_minus
                  + float(w_gamma2 @ f ** 2)) / rate ** 2
    return mean, max(second - mean * mean, 0.0)


def _gamma_rate_moments(cost, shape, rate, k, coupled):
    """(mean, variance) of the gamma family's rate-term (module docstring), in standard
    Gamma variables from the decomposition, never from the kernel."""
    e, w = gamma.standard_rule(shape)         # E over G ~ Gamma(shape, 1)
    f = values(cost.value, e / rate, k)
    w_next = w * e / shape                    # E over Gamma(shape + 1, 1): density e / shape
    mean_plus, mean_minus = float(w @ f), float(w_next @ f)
    c = shape / rate
    mean = c * (mean_plus - mean_minus)
    if coupled:
        # E[(f(G / rate) - f((G + E) / rate))^2], f centred by E f(x+); the cross term
        # E[f(G / rate) f((G + E) / rate)] on the tensor rule over (G, E)
        t, wt = composite_legendre(0.0, EXP_TOP, GAMMA_E_PANELS, EXP_ORDER)
        wt = wt * np.exp(-t)
        fc = f - mean_plus
        keep = w > 1e-22
        inner = np.empty(int(keep.sum()))
        e_kept = e[keep]
        for start in range(0, e_kept.size, 512):   # blocks of G-nodes: bounded memory
            block = e_kept[start:start + 512]
            inner[start:start + block.size] = (
                values(cost.value, (block[:, None] + t[None, :]).ravel() / rate, k)
                .reshape(block.size, t.size) - mean_plus) @ wt
        cross = float(w[keep] @ (fc[keep] * inner))
        second = c * c * (float(w @ fc ** 2) - 2.0 * cross + float(w_next @ fc ** 2))
    else:
        second = c * c * (float(w @ f ** 2) - 2.0 * mean_plus * mean_minus
                          + float(w_next @ f ** 2))
    return mean, max(second - mean * mean, 0.0)


def _reference(coupled):
    def reference(family, cost, component, params):
        k = params.get("k", 0.0)
        if family.base_name == "exponential":
            return _rate_moments(family, cost, params["rate"], k, coupled)
        if family.base_name == "gamma":
            return _gamma_rate_moments(cost, params["shape"], params["rate"], k, coupled)
        moments = _mu_moments if component == "mu" else _sigma_moments
        return moments(cost, params["mu"], params["sigma"], k, coupled)
    return reference


def configure(coupling):
    return Estimator(
        name="",
        per_sample=per_sample_coupled if coupling else per_sample_independent,
        per_sample_by_family=BY_FAMILY_COUPLED if coupling else BY_FAMILY_INDEPENDENT,
        evals_per_sample=2,
        description=f"weak derivative, {'coupled' if coupling else 'independent'} parts",
        families=FAMILIES,
        streams=STREAMS,
        reference=_reference(bool(coupling)),
        shared_draws=shared_draws,
        shared_draws_by_component=SHARED_DRAWS_BY_COMPONENT,
        components=COMPONENTS,
        n_shared_draws=2,
    )


# Rayleigh / Maxwell decompositions for the Gaussian, Exp / Gamma(2) for the exponential,
# Gamma(a) / Gamma(a + 1) for the gamma family (rate only)
FAMILIES = ("normal", "exponential", "gamma")
COMPONENTS = {"gamma": ("rate",)}
STREAMS = (STREAM_MU, STREAM_SIGMA, STREAM_SIGMA_NORMAL, STREAM_RATE, STREAM_GAMMA)
# the Gaussian's kernels are ``per_sample``; other families' are looked up here
BY_FAMILY_COUPLED = {"exponential": per_sample_exponential_coupled,
                     "gamma": per_sample_gamma_coupled}
BY_FAMILY_INDEPENDENT = {"exponential": per_sample_exponential_independent,
                         "gamma": per_sample_gamma_independent}

ESTIMATOR = Estimator(
    name="measure_valued",
    per_sample=per_sample_coupled,
    per_sample_by_family=BY_FAMILY_COUPLED,
    evals_per_sample=2,
    description="c (f(x+) - f(x-)): weak derivative (Rayleigh / Maxwell; Exp / Gamma(2); "
                "Gamma(a) / Gamma(a + 1), rate only)",
    families=FAMILIES,
    streams=STREAMS,
    reference=_reference(True),
    shared_draws=shared_draws,
    shared_draws_by_component=SHARED_DRAWS_BY_COMPONENT,
    components=COMPONENTS,
    n_shared_draws=2,
    options={"coupling": (True, False)},
    configure=configure,
)
