"""The Gumbel-softmax relaxation of a categorical variable, shared by ``gumbel_softmax``,
``straight_through`` and ``rebar`` on the categorical family (their modules hold the
estimators; ``rebar`` also uses the sector quadrature, ``weighted_sectors`` and ``relaxed``,
for its own reference).

Noise:     K Gumbel draws per sample, G_k = -log(-log u_k), u_k = element k % 2 of
           ``uniform_pair`` at counter (sample index i, stream ``first_stream + k // 2``):
           each estimator owns 4 streams (K <= 8), independent of the family's u (stream 0).
Relaxation: with d = logits + G, the relaxed one-hot z = softmax(d / tau), the *soft index*
           y = sum_k k z_k in (0, K - 1) and the hard index b = argmax_k d_k (a categorical
           sample: the Gumbel-max trick).  A cost is a function of the category index, so on
           the relaxed simplex it is evaluated at y: a cost must be defined on [0, K - 1]
           (every built-in cost is defined on the whole line).
Jacobian:  dy/dlogit_j = sum_k k dz_k/dlogit_j = z_j (j - y) / tau.
Estimators: gumbel_softmax g_j = f'(y) z_j (j - y) / tau; straight_through g_j = f'(b) z_j
           (j - y) / tau (the hard sample forward, the soft index's Jacobian backward).  For
           K = 2 both are the Bernoulli family's estimators at logit = l_1 - l_0 (in law).
Exact expectation and variance (``moments``, NumPy, written from the definition above apart
           from the kernel): g depends on the differences a_k = G_k - G_0 (k >= 1) only, whose
           joint density for i.i.d. standard Gumbels is (K - 1)! exp(-sum a_k) / (1 + sum
           e^{-a_k})^K (logistic for K = 2).  The integral is split into the K sectors where
           category j wins (the hard index is constant there), each written in coordinates
           that are the winner's margins, with Gauss-Legendre panels graded towards the
           sector edges (where the relaxation's features of width tau sit): K = 2 (1-D) and
           K = 3 (2-D).  Larger K: none (``moments`` returns None: ``exact_source: none``).
"""

import math
from functools import cache, lru_cache

import numpy as np
from numba import njit
from scipy.special import gammaln

from ..quadrature import values
from ..rng import uniform_pair

HALF_WIDTH = 40.0     # |a_k| beyond this has probability < e^-39
ORDER = 8             # Gauss-Legendre nodes per panel
FAR_WIDTH = 2.0       # panel width away from the sector edges (the density's scale is 1)


@njit(inline="always")
def uniform_k(key0, key1, index, first_stream, k):
    """Uniform draw k of sample ``index``: element k % 2 of the pair on stream first + k // 2."""
    return uniform_pair(key0, key1, index, first_stream + k // 2)[k % 2]


@njit(inline="always")
def gumbel(key0, key1, index, first_stream, k):
    """Gumbel draw k of sample ``index`` (module docstring)."""
    return -math.log(-math.log(uniform_k(key0, key1, index, first_stream, k)))


@njit(inline="always")
def relaxed_index(theta, tau, key0, key1, index, first_stream, component):
    """(y, z_component, b) for one sample: the soft index, the relaxed one-hot's entry
    ``component`` and the hard index (a float), in one pass over the K Gumbels with a
    running maximum (online softmax: no array, and exp never overflows)."""
    top = -math.inf
    total = 0.0
    weighted = 0.0
    a_component = 0.0
    hard = 0
    for j in range(len(theta)):
        a = (theta[j] + gumbel(key0, key1, index, first_stream, j)) / tau
        if j == component:
            a_component = a
        if a > top:   # a new maximum: rescale the sums to it
            scale = math.exp(top - a)
            total = total * scale + 1.0
            weighted = weighted * scale + j
            top = a
            hard = j
        else:
            w = math.exp(a - top)
            total += w
            weighted += j * w
    return weighted / total, math.exp(a_component - top) / total, float(hard)


# ---- exact references (NumPy) ----------------------------------------------------------------

@cache
def _axis(tau: float, sign: float, width: float = HALF_WIDTH):
    """Nodes and weights on (0, sign * width) (a margin), panels graded from tau / 64 next to
    0 up to 8 tau, then of width at most FAR_WIDTH."""
    near = tau * 2.0 ** np.arange(-6, 4)
    far = np.linspace(near[-1], width, int(np.ceil((width - near[-1]) / FAR_WIDTH)) + 1)
    edges = np.concatenate([[0.0], near, far[1:]])
    x, w = np.polynomial.legendre.leggauss(ORDER)
    half, mid = 0.5 * np.diff(edges), 0.5 * (edges[1:] + edges[:-1])
    return sign * (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def _log_density(a: np.ndarray) -> np.ndarray:
    """log of the density of (G_1 - G_0, ..., G_{K-1} - G_0), a of shape (n, K - 1)."""
    k = a.shape[1] + 1
    log_sum = np.zeros(a.shape[0])            # log(1 + sum_k e^{-a_k}), term by term
    for j in range(a.shape[1]):
        log_sum = np.logaddexp(log_sum, -a[:, j])
    return gammaln(k) - a.sum(axis=1) - k * log_sum


def _sectors(k: int, tau: float, width: float):
    """Per winning category j: d (n, K) with d_0 = 0 written in the winner's margins (d_j - the
    others, all > 0 except d_0 fixed) and the rule's weights (Jacobian 1: shears); margins
    up to ``width``."""
    pos, w_pos = _axis(tau, 1.0, width)
    neg, w_neg = _axis(tau, -1.0, width)
    if k == 2:   # d_1 > 0 (category 1 wins) or < 0 (category 0 wins)
        return [(0, np.stack([np.zeros_like(neg), neg], 1), w_neg),
                (1, np.stack([np.zeros_like(pos), pos], 1), w_pos)]
    if k != 3:
        raise ValueError("exact relaxed references for K = 2 and 3 only")
    out = []
    for j in range(3):
        if j == 0:   # d_1 < 0, d_2 < 0
            p, q = np.meshgrid(neg, neg, indexing="ij")
            d = np.stack([np.zeros(p.size), p.ravel(), q.ravel()], 1)
            w = np.outer(w_neg, w_neg).ravel()
        else:        # d_j = s > 0 = d_0; the third category l: d_l = s + t, t < 0
            s, t = np.meshgrid(pos, neg, indexing="ij")
            d = np.zeros((s.size, 3))
            d[:, j] = s.ravel()
            d[:, 3 - j] = (s + t).ravel()
            w = np.outer(w_pos, w_neg).ravel()
        out.append((j, d, w))
    return out


def moments(logits, tau: float, component: int, derivative, k_cost: float, hard: bool):
    """(E[g], Var[g]) of g = f'(y or b) z_c (c - y) / tau over the Gumbel noise (module
    docstring), ``derivative`` the cost's jitted f'(x, k); None if K > 3.  One quadrature
    gives every component: cached per (logits, tau, cost, k, hard)."""
    if len(logits) > 3:
        return None
    means, variances = _moments(tuple(float(x) for x in logits), float(tau), derivative,
                                float(k_cost), bool(hard))
    return float(means[component]), float(variances[component])


def weighted_sectors(logits: np.ndarray, tau: float):
    """Per winning category b: (b, d, weight), d (n, K) the differences d_k = (l_k + G_k) -
    (l_0 + G_0) on the sector where b wins (the hard index is b there) and weight the rule's
    weights times the Gumbel differences' density (K = 2 and 3)."""
    delta = logits[1:] - logits[0]
    # d = a + delta: the margins must reach HALF_WIDTH beyond the logits' spread (in steps
    # of 8, so few distinct rules are built and cached)
    width = HALF_WIDTH + 8.0 * math.ceil(float(np.max(np.abs(delta))) / 8.0)
    for winner, d, w in _sectors(logits.size, tau, width):
        yield winner, d, w * np.exp(_log_density(d[:, 1:] - delta))   # a_k = d_k - delta_k


def relaxed(d: np.ndarray, tau: float):
    """(z, y): the relaxed one-hot softmax(d / tau) (rows) and the soft index z @ (0..K-1)."""
    scaled = d / tau
    z = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    z /= z.sum(axis=1, keepdims=True)
    return z, z @ np.arange(d.shape[1])


@lru_cache(maxsize=256)
def _moments(logits: tuple, tau: float, derivative, k_cost: float, hard: bool):
    logits = np.asarray(logits)
    k = logits.size
    first = np.zeros(k)
    second = np.zeros(k)
    for winner, d, weight in weighted_sectors(logits, tau):
        z, y = relaxed(d, tau)
        at = np.full(y.shape, float(winner)) if hard else y
        slope = values(derivative, at, k_cost) / tau
        for c in range(k):
            g = slope * z[:, c] * (c - y)
            first[c] += float(weight @ g)
            second[c] += float(weight @ (g * g))
    return first, np.maximum(second - first * first, 0.0)
