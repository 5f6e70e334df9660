"""The categorical family q(b; logits): b in {0, ..., K-1}, P(b = j) = p_j = softmax(logits)_j,
K >= 2; one ``Family`` record per K (``family(K)``, named ``categorical[K=3]``), created when a
grid names K logits.

Grid:      ``distribution: categorical`` with ``logits: [l_0, ..., l_{K-1}]`` (K >= 2 finite
           numbers; an element that is itself a list is a sweep axis, like any problem value).
Params:    ``logits[0]``, ..., ``logits[K-1]``: the gradient components and the results
           columns (``COLUMNS``: ``logits[0]`` .. ``logits[MAX_K - 1]``, NaN beyond K), so
           K <= ``MAX_K``.
Sample:    the category index b, carried through the pipeline as the scalar x = b (a float).
Sampler:   base draw u ~ Uniform(0, 1) on the shared Philox streams
           (``harness.rng.uniform_pair``: two draws per counter), b by the inverse CDF of
           softmax(logits): the least j with u * sum_i e^(l_i - m) < sum_{i <= j} e^(l_i - m)
           (m = max l: no overflow), K - 1 if rounding leaves none.
Score:     d/dlogit_j log q(b) = 1{b = j} - p_j.
Pathwise:  none (b is a step function of the logits): ``pathwise`` and the other
           reparameterisation estimators are rejected by the registry.
Moments:   m = E b = sum_j j p_j, v = Var b; d/dlogit_j: (p_j (j - m), p_j ((j - m)^2 - v)).
References: the exact K-point rule b in {0..K-1} with weights softmax(logits) (``rule``,
           written from the pmf with ``scipy.special.softmax``): every expectation of a
           function of b, hence the exact gradient E[f(b) (1{b = j} - p_j)] and every
           score-function variant's per-sample variance, is a finite sum.  ``base_rule`` is
           Gauss-Legendre over u (as for the Bernoulli family: nothing integrates b over it).
Shapes:    theta is the tuple of the K logits (a numba UniTuple), e, x scalars.
"""

from functools import cache

import numpy as np
from numba import njit
from scipy.special import softmax

from ..axes import Family
from ..quadrature import unit_nodes
from ..rng import uniform_pair

NAME = "categorical"
GRID_KEY = "logits"  # the grid key of the list of K logits
DESCRIPTION = "Categorical(softmax(logits)), b = inverse CDF of the softmax at u"
MAX_K = 8          # results columns logits[0] .. logits[MAX_K - 1]
COLUMNS = tuple(f"logits[{j}]" for j in range(MAX_K))

# ---- kernel functions (@njit; theta = (logit_0, ..., logit_{K-1}), e = u) --------------------

draw_pair = uniform_pair  # (key0, key1, pair, stream) -> two Uniform(0, 1) draws


@njit(inline="always")
def largest(theta):
    """max_j theta_j (the shift that keeps exp from overflowing)."""
    m = theta[0]
    for j in range(1, len(theta)):
        m = max(m, theta[j])
    return m


@njit(inline="always")
def probability(component, theta):
    """softmax(theta)_component."""
    m = largest(theta)
    total = 0.0
    for j in range(len(theta)):
        total += np.exp(theta[j] - m)
    return np.exp(theta[component] - m) / total


@njit(inline="always")
def to_x(theta, e):
    """The category index b (as a float) of base draw e: inverse CDF of softmax(theta)."""
    m = largest(theta)
    total = 0.0
    for j in range(len(theta)):
        total += np.exp(theta[j] - m)
    target = e * total
    cumulative = 0.0
    for j in range(len(theta) - 1):
        cumulative += np.exp(theta[j] - m)
        if target < cumulative:
            return float(j)
    return float(len(theta) - 1)


@njit(inline="always")
def score(component, theta, e):
    return (1.0 if to_x(theta, e) == component else 0.0) - probability(component, theta)


@njit(inline="always")
def times_score(component, theta, e, v):
    return v * score(component, theta, e)


@njit(inline="always")
def centred(theta, e):
    m = 0.0
    for j in range(1, len(theta)):
        m += j * probability(j, theta)
    return to_x(theta, e) - m


# ---- reference functions (NumPy, in b, from the probability mass function) -------------------

def probabilities(theta) -> np.ndarray:
    return softmax(np.asarray(theta, dtype=np.float64))


def base_rule():
    return unit_nodes()


def rule(theta):
    return np.arange(len(theta), dtype=np.float64), probabilities(theta)


def index(component: str) -> int:
    """j of the component ``logits[j]`` (reference functions take components by name)."""
    return COLUMNS.index(component)


def score_at(component, theta, x):
    j = index(component)
    return (np.asarray(x) == j).astype(np.float64) - probabilities(theta)[j]


def mean(theta):
    return float(np.arange(len(theta)) @ probabilities(theta))


def moment_grads(component, theta):
    p, j = probabilities(theta), index(component)
    b = np.arange(len(theta))
    m = float(b @ p)
    v = float(((b - m) ** 2) @ p)
    return float(p[j] * (j - m)), float(p[j] * ((j - m) ** 2 - v))


# ---- one family record per K -------------------------------------------------------------------

def name(k: int) -> str:
    """The registry name of the K-category family: ``categorical[K=3]``."""
    return f"{NAME}[K={k}]"


def parse_name(text: str) -> int | None:
    """K from ``categorical[K=3]``; None if ``text`` is not such a name."""
    prefix = f"{NAME}[K="
    if not (text.startswith(prefix) and text.endswith("]")):
        return None
    digits = text[len(prefix):-1]
    return int(digits) if digits.isdigit() else None


@cache
def family(k: int) -> Family:
    """The categorical family with K = k categories (2 <= k <= MAX_K)."""
    if not 2 <= k <= MAX_K:
        raise ValueError(f"a categorical family has 2 to {MAX_K} categories, not {k}")
    return Family(
        name=name(k),
        params=COLUMNS[:k],
        positive=(),
        description=f"Categorical(softmax(logits)), K = {k}, b = inverse CDF at u",
        draw_pair=draw_pair, to_x=to_x, score=score, times_score=times_score,
        centred=centred, base_rule=base_rule, rule=rule, score_at=score_at, mean=mean,
        moment_grads=moment_grads,
    )
