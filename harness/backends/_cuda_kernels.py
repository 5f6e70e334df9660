"""The CUDA kernels: raw streams (Philox integers, normal pairs) and the cell kernel.

Imported only by :mod:`harness.backends.cuda` after ``require()`` succeeded: importing
``numba.cuda`` without numba-cuda would load numba's deprecated built-in target.
"""

import math

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


def make_cell_kernel(module, threads: int):
    """The CUDA kernel of one cell type around ``module.sample_terms``, the CPU backend's
    generated per-sample function (so both backends evaluate the very same family, cost and
    estimator code; ``module`` is ``harness.backends.cpu.cell_module`` of the cell).

    Block b = (seed, chunk): ``out[seed, chunk, :] = (count, shift[n_terms], sum[n_terms],
    sum_sq[n_terms])`` of the chunk's terms shifted by the terms of its first sample, the CPU
    backend's partials layout. Thread t takes pairs first + t, first + t + threads, ...; a
    fixed binary tree over the block's threads then adds the per-thread sums (no atomics).
    """
    from .cuda import simulator_enabled

    n_terms = module.N_TERMS
    two_n = 2 * n_terms
    copy_stream = module.COPY_STREAM  # -1: no estimator of the cell uses the independent copy
    sample_terms, draw_pair = module.sample_terms, module.family_draw_pair
    unpack, constants_tuple = module.unpack, module.constants_tuple
    if simulator_enabled():
        # The simulator runs the kernel as Python with its own array type, which a CPU-jitted
        # function cannot unbox: call the plain Python functions that take arrays there.
        unpack, constants_tuple = unpack.py_func, constants_tuple.py_func

    def kernel(keys0, keys1, n_samples, chunk_pairs, params, consts, out):
        n_chunks = out.shape[1]
        theta, k = unpack(params)
        cell_consts = constants_tuple(consts)  # the estimators' constants, as on the CPU
        b = cuda.blockIdx.x
        s = b // n_chunks
        c = b - s * n_chunks
        t = cuda.threadIdx.x
        key0 = keys0[s]
        key1 = keys1[s]
        n_pairs = (n_samples + 1) // 2
        first = c * chunk_pairs
        last = min(first + chunk_pairs, n_pairs)
        e0, e1 = draw_pair(key0, key1, first, 0)
        c0, c1 = math.nan, math.nan
        if copy_stream >= 0:
            c0, c1 = draw_pair(key0, key1, first, copy_stream)
        shift = sample_terms(theta, k, e0, c0, key0, key1, 2 * first, cell_consts)
        acc = cuda.local.array(two_n, np.float64)  # [sums | sums of squares], registers
        for j in range(two_n):
            acc[j] = 0.0
        for p in range(first + t, last, threads):
            e0, e1 = draw_pair(key0, key1, p, 0)
            if copy_stream >= 0:
                c0, c1 = draw_pair(key0, key1, p, copy_stream)
            v = sample_terms(theta, k, e0, c0, key0, key1, 2 * p, cell_consts)
            for j in range(n_terms):
                d = v[j] - shift[j]
                acc[j] += d
                acc[n_terms + j] += d * d
            if 2 * p + 1 < n_samples:  # an odd N uses only the first draw of its last pair
                v = sample_terms(theta, k, e1, c1, key0, key1, 2 * p + 1, cell_consts)
                for j in range(n_terms):
                    d = v[j] - shift[j]
                    acc[j] += d
                    acc[n_terms + j] += d * d
        buf = cuda.shared.array((two_n, threads), np.float64)
        for j in range(two_n):
            buf[j, t] = acc[j]
        cuda.syncthreads()
        width = threads // 2
        while width > 0:  # fixed binary tree: the same order on every run and device
            if t < width:
                for j in range(two_n):
                    buf[j, t] += buf[j, t + width]
            cuda.syncthreads()
            width //= 2
        if t == 0:
            out[s, c, 0] = min(2 * last, n_samples) - 2 * first
            for j in range(n_terms):
                out[s, c, 1 + j] = shift[j]
                out[s, c, 1 + n_terms + j] = buf[j, 0]
                out[s, c, 1 + 2 * n_terms + j] = buf[n_terms + j, 0]

    return cuda.jit(kernel)
