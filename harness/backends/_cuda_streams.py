"""Raw-stream CUDA kernels (Philox integers, normal pairs) for tests and checks.

Imported only by :mod:`harness.backends.cuda` after ``require()`` succeeded: importing
``numba.cuda`` without numba-cuda would load numba's deprecated built-in target.
"""

import numpy as np
from numba import cuda

from ..rng import normal_pair, philox4x32_10

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


@cuda.jit
def philox_kernel(k0, k1, stream, out):
    """out[i] = philox4x32_10(counter (i lo, i hi, stream, 0), key (k0, k1))."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        c = np.uint64(i)
        x0, x1, x2, x3 = philox4x32_10(c & _MASK32, c >> _SHIFT32, stream, np.uint64(0), k0, k1)
        out[i, 0] = x0
        out[i, 1] = x1
        out[i, 2] = x2
        out[i, 3] = x3


@cuda.jit
def normal_kernel(k0, k1, stream, out):
    """out[i] = normal_pair(k0, k1, i, stream)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        z0, z1 = normal_pair(k0, k1, i, stream)
        out[i, 0] = z0
        out[i, 1] = z1
