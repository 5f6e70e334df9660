"""Counter-based random numbers: Philox4x32-10 and normals, as jitted scalar functions.

Stream plan: the Philox *key* is the seed, the *counter* is
(index low 32 bits, index high 32 bits, stream, 0).  Every draw is a pure function of
(seed, index, stream), so results do not depend on thread count or backend, the first n
draws of a longer run equal the n-draw run (nested N), and every estimator of a cell sees
the same eps for the same (seed, sample) (common random numbers).

- ``philox4x32_10``: the Random123 / cuRAND Philox4_32_10 block function.
- ``uniform_pair``: two doubles in (0, 1), 53-bit resolution, never 0 or 1.
- ``normal_pair``: Box-Muller of ``uniform_pair``.  Stream 0 sample i of a seed is
  ``normal_pair(k0, k1, i // 2, 0)[i % 2]``.

Stream ids (the third counter word, 32 bits):

- ``0``: the main samples of a cell, shared by every estimator (common random numbers).  A
  distribution family draws them with its ``draw_pair`` (the normal family: ``normal_pair``),
  two samples per counter.
- ``1 .. 2**30 - 1``: an estimator's own extra randomness (e.g. ``measure_valued``: 1-3), for
  sample i at counter index i; each estimator module lists its ids (``Estimator.streams``).
- ``s + ATTEMPT_BASE + 2 t`` and ``+ 2 t + 1`` (``ATTEMPT_BASE = 2**30``): attempt t of a
  rejection sampler drawing main stream s (``harness.distributions.gamma``: Marsaglia-Tsang,
  the normal and the acceptance uniform of the pair at counter index pair), so a sample's
  draws never depend on how many attempts other samples needed; an extra uniform (the shape
  < 1 boost) comes from stream s itself.  Estimators' own ids stay below 2**30.
- ``s + INDEPENDENT_STREAM_OFFSET`` (``2**31 + s``): the *independent copy* of main stream s,
  drawn by exactly the rule of stream s (sample i of the copy = sample i of stream s with the
  stream id replaced).  Estimators that estimate a baseline or a control-variate coefficient
  from fresh samples (``score_function[baseline=optimal]``, ``delta_cv[coefficient=
  estimated]``, and the ELBO kind's ``baseline: optimal``) use it, so their coefficient is
  independent of the main samples and the estimate stays unbiased.  Main streams are below
  2**31, so copies collide with no main or estimator stream.  (Before issue 9 the Gaussian
  kind drew this copy from stream 4 with ``normal_at``: numbers of those two estimators
  changed then; every other stream is unchanged.)

The logarithm and sine/cosine are branch-free polynomial versions (``harness.scalar_math``)
so LLVM vectorises loops that call them; libm calls would block that (measured 7x slower).

All integers are uint64 holding 32-bit values: numba has no scalar uint32 arithmetic that
stays uint32, and mixing signed and unsigned integers promotes to float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .scalar_math import log_unit, sincos_2pi

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)  # golden ratio
_W1 = np.uint64(0xBB67AE85)  # sqrt(3) - 1
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SHIFT21 = np.uint64(21)
_TWO_M53 = 2.0**-53

INDEPENDENT_STREAM_OFFSET = 2**31  # stream s + this = the independent copy of stream s
ATTEMPT_BASE = 2**30  # rejection samplers: attempt t of stream s on s + this + 2t, + 2t + 1


@njit(inline="always")
def _round(c0, c1, c2, c3, k0, k1):
    p0 = _M0 * c0  # 32 x 32 -> 64 bits, exact in uint64
    p1 = _M1 * c2
    return (
        ((p1 >> _SHIFT32) ^ c1 ^ k0) & _MASK32,
        p1 & _MASK32,
        ((p0 >> _SHIFT32) ^ c3 ^ k1) & _MASK32,
        p0 & _MASK32,
    )


@njit(inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds: counter (c0..c3) and key (k0, k1), each a 32-bit value in
    a uint64; returns four 32-bit values as uint64."""
    c0, c1, c2, c3 = np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3)
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(9):
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return _round(c0, c1, c2, c3, k0, k1)


@njit(inline="always")
def seed_key(seed):
    """The Philox key (k0, k1) of a non-negative integer seed < 2**64."""
    s = np.uint64(seed)
    return s & _MASK32, s >> _SHIFT32


@njit(inline="always")
def uniform_pair(k0, k1, index, stream):
    """Two uniforms in (0, 1) at counter (index, stream): (j + 0.5) * 2^-53 for 53-bit j."""
    i = np.uint64(index)
    x0, x1, x2, x3 = philox4x32_10(i & _MASK32, i >> _SHIFT32, np.uint64(stream),
                                   np.uint64(0), k0, k1)
    j0 = (x0 << _SHIFT21) ^ (x1 >> np.uint64(11))  # 53 bits
    j1 = (x2 << _SHIFT21) ^ (x3 >> np.uint64(11))
    return (np.float64(j0) + 0.5) * _TWO_M53, (np.float64(j1) + 0.5) * _TWO_M53


@njit(inline="always")
def normal_pair(k0, k1, index, stream):
    """Two independent N(0, 1) draws by Box-Muller: r = sqrt(-2 log u0), angle 2 pi u1."""
    u0, u1 = uniform_pair(k0, k1, index, stream)
    r = math.sqrt(-2.0 * log_unit(u0))
    c, s = sincos_2pi(u1)
    return r * c, r * s


@njit
def _fill_normals(k0, k1, start, stream, out):
    for j in range(out.size):
        i = np.uint64(start + j)
        z0, z1 = normal_pair(k0, k1, i >> np.uint64(1), stream)
        out[j] = z1 if (i & np.uint64(1)) else z0


def normals(seed: int, n: int, stream: int = 0, start: int = 0) -> np.ndarray:
    """Draws ``start .. start + n - 1`` of a seed's normal stream as an array (for tests and
    checks; kernels draw on the fly and never store samples)."""
    if seed < 0 or n < 0 or start < 0 or stream < 0:
        raise ValueError("seed, n, start and stream must be non-negative")
    if seed >= 2**64:
        raise ValueError("seed must be < 2**64")
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    out = np.empty(n)
    _fill_normals(k0, k1, np.uint64(start), np.uint64(stream), out)
    return out


@njit(inline="always")
def normal_at(k0, k1, index, stream):
    """One N(0, 1) draw for counter (index, stream): the cosine half of Box-Muller of
    ``uniform_pair(k0, k1, index, stream)``.  For estimators' own streams (>= 1), where
    sample i simply uses index i (stream 0 packs two samples per counter instead)."""
    u0, u1 = uniform_pair(k0, k1, index, stream)
    return math.sqrt(-2.0 * log_unit(u0)) * sincos_2pi(u1)[0]
