"""ELBO estimate cells on the CUDA backend (``backend: cuda``, ``mode: estimate``).

Imported only after ``harness.backends.cuda.require()`` succeeded (a GPU, or the simulator
``NUMBA_ENABLE_CUDASIM=1``): importing ``numba.cuda`` without numba-cuda would load numba's
deprecated built-in target.

Same numbers as the CPU
    The kernel is one GPU thread per (seed, chunk), with the CPU kernel's chunking
    (``harness.backends.cpu.chunking``, a function of N only), and each thread runs the CPU
    kernel's own per-chunk function ``accumulate_chunk`` (``harness.vi.kernels``, which
    allocates nothing), compiled by numba-cuda for the device: the same Philox streams and
    counters, the same per-sample code and the same summation order within a chunk.  The
    chunks are merged on the host in chunk order (``merge_chunks``), as on the CPU.  So
    under the simulator (which calls the CPU-compiled functions) the results are bitwise
    those of the CPU; on a GPU they agree to round-off (the GPU compiler contracts
    multiply-adds differently: numba-cuda#118).  No atomics and no shared memory anywhere:
    reruns are bitwise identical.
Memory
    Per thread a scratch row of ``work_size(d, P, T)`` doubles and 2 max(batch, 1) int64
    indices in global memory (the per-sample scratch has run-time sizes, which CUDA local
    arrays cannot have), plus the partials (1 + 3 T doubles per chunk).
Throughput
    Not tuned: at most 64 chunks per seed (the CPU's rule), i.e. 64 x seeds threads, which
    fills a GPU only for many seeds; a block-per-chunk decomposition with a tree reduction
    (as ``harness.backends.cuda`` does for the 1-D kind) would need the per-sample scratch in
    registers, i.e. sizes fixed at compile time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..backends.cpu import chunking
from ..backends.cuda import simulator_enabled

THREADS = 64          # threads per block; thread = one (seed, chunk) job

_kernels: dict = {}


def _make_kernel(accumulate_chunk):
    """The CUDA kernel around the CPU kernel module's ``accumulate_chunk``."""

    def kernel(keys0, keys1, n_samples, chunk, stream, tid, ta, tm, ti, family, n_params, mus,
               Cs, codes, offsets, baselines, work, idx_work, out):
        job = cuda.grid(1)
        n_seeds, n_chunks = out.shape[0], out.shape[1]
        if job < n_seeds * n_chunks:
            s = job // n_chunks
            c = job - s * n_chunks
            first = c * chunk
            accumulate_chunk(keys0[s], keys1[s], first, min(first + chunk, n_samples), stream,
                             tid, ta, tm, ti, family, n_params, mus[s], Cs[s], codes, offsets,
                             baselines[s], work[job], idx_work[job], out[s, c])

    if not simulator_enabled():
        return cuda.jit(kernel)

    def simulated(*args):
        # The simulator runs the kernel as Python and hands it its own array wrappers, which
        # the CPU-compiled accumulate_chunk cannot unbox: unwrap them into NumPy views.
        kernel(*[np.asarray(a) if hasattr(a, "shape") and not np.isscalar(a) else a
                 for a in args])

    return cuda.jit(simulated)


def load_kernel(module):
    """The CUDA kernel of the loaded ELBO kernel module (compiled on first launch, once per
    process; keyed by the module's digest name)."""
    key = (module.__name__, simulator_enabled())
    if key not in _kernels:
        _kernels[key] = _make_kernel(module.accumulate_chunk)
    return _kernels[key]


def partials(module, keys0, keys1, n_samples: int, n_terms: int, stream, tid, ta, tm, ti,
             family, n_params, mus, Cs, codes, offsets, baselines) -> np.ndarray:
    """The (seed, chunk) partial sums of the CPU kernel (``grad_kernel``'s ``out``), computed
    on the device: an array [S, n_chunks, 1 + 3 n_terms] for ``merge_chunks``."""
    chunk_pairs, n_chunks = chunking(int(n_samples))
    chunk = 2 * chunk_pairs
    n_seeds = keys0.size
    jobs = n_seeds * n_chunks
    d = mus.shape[1]
    width = int(module.work_size(d, int(n_params), n_terms))
    batch = max(int(ti[0]), 1)
    out = cuda.device_array((n_seeds, n_chunks, 1 + 3 * n_terms), dtype=np.float64)
    work = cuda.device_array((jobs, width), dtype=np.float64)
    idx_work = cuda.to_device(np.zeros((jobs, 2 * batch), dtype=np.int64))
    load_kernel(module)[math.ceil(jobs / THREADS), THREADS](
        cuda.to_device(keys0), cuda.to_device(keys1), np.int64(n_samples), np.int64(chunk),
        stream, tid, cuda.to_device(ta), cuda.to_device(tm), cuda.to_device(ti), family,
        n_params, cuda.to_device(mus), cuda.to_device(Cs), cuda.to_device(codes),
        cuda.to_device(offsets), cuda.to_device(baselines), work, idx_work, out)
    return out.copy_to_host()


def ptx(module, cc: tuple[int, int] = (8, 0)) -> str:
    """PTX of the ELBO kernel for compute capability ``cc``, without a GPU (needs the CUDA
    toolkit's NVVM and NVRTC, e.g. ``pip install 'numba-cuda[cu13]'``; not under the
    simulator): checks that the shared per-chunk code compiles for the device."""
    from numba import types

    from ..backends import cuda_common

    cuda_common.check_ptx_target()

    def array(dtype, ndim):
        return types.Array(dtype, ndim, "C")

    i64, f64 = types.int64, types.float64
    sig = types.void(array(types.uint64, 1), array(types.uint64, 1), i64, i64, i64, i64,
                     array(f64, 1), array(f64, 2), array(i64, 1), i64, i64, array(f64, 2),
                     array(f64, 3), array(i64, 1), array(i64, 1), array(f64, 2), array(f64, 2),
                     array(i64, 2), array(f64, 3))
    return cuda_common.ptx(load_kernel(module).py_func, sig, cc)
