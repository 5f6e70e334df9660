"""CUDA backend: the cells of the CPU backend, computed by ``numba.cuda`` kernels.

Needs the ``cuda`` extra (the maintained ``numba-cuda`` package; numba's built-in CUDA
target is deprecated) and an NVIDIA GPU, or the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
which runs the kernels on the CPU: slow, for tests on tiny grids). Without either,
:func:`require` raises a one-line :class:`~harness.errors.BackendError` saying so.

Same numbers as the CPU backend
    The kernel (``harness.backends._cuda_kernels.make_cell_kernel``) calls the very same
    jitted functions as the CPU kernel: ``harness.rng``'s Philox4x32-10 and Box-Muller
    (``harness.scalar_math``'s branch-free log and sin/cos, whose bit casts are
    target-independent LLVM ``bitcast`` instructions), the family's ``draw_pair`` and the
    ``sample_terms`` function of the CPU backend's cell module (``cpu.cell_module``, which
    calls the CPU term kernels' per-sample functions) for the cell type (family, cost and
    estimators); numba-cuda compiles those ``@njit`` functions for the GPU.
    So a (seed, N, cell) draws bitwise the same Philox integers and the same sample indices
    (stream 0 and its independent copy, counter = pair index) on both backends. The
    floating-point results agree to round-off only: the GPU compiler contracts multiply-adds
    differently (numba-cuda#118) and the sums are added in another fixed order. Stated
    tolerance (tested):
    ``|est_gpu - est_cpu| <= 1e-12 * (|est_cpu| + sd)`` with ``sd`` the within-seed standard
    deviation of the term, and ``sample_var`` to a relative ``1e-10``.

Launch configuration (all fixed: a function of N only, never of the device)
    - one block of ``THREADS = 128`` threads per (seed, chunk); a 1-D grid of
      ``n_seeds * n_chunks`` blocks. A chunk is a contiguous range of Box-Muller pairs;
      ``chunking(N)`` gives at least ``MIN_CHUNK_PAIRS`` pairs per chunk and at most
      ``MAX_CHUNKS`` chunks per seed, so 8 seeds x 1e7 samples launch 8 x 512 blocks.
    - thread t of a block takes pairs ``first + t, first + t + THREADS, ...`` of its chunk
      and keeps, in registers, shifted sums and sums of squares of every term (shift = the
      terms of the chunk's first sample, as on the CPU).
    - stage 1 (device): a fixed binary tree over the block's threads in shared memory
      (``2 * n_terms * THREADS`` doubles: 2 KiB per term), then thread 0 writes the
      chunk's (count, shift, sum, sum of squares), the CPU backend's partials layout.
    - stage 2 (host): the chunks of a seed are merged in chunk order with Chan's update
      (``harness.backends.cpu.merge_chunks``). No atomics anywhere, so reruns are bitwise
      identical on the same device and software.
    - compiled on first launch, once per process and cell type (numba-cuda's on-disk cache
      is not used: it would need module-level kernels, and is unchecked on a real GPU).

See ``docs/performance.md`` for the expected throughput on paper.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import warnings

import numpy as np

from .. import registry
from ..errors import BackendError
from . import cpu

THREADS = 128            # threads per block (a power of two: the tree reduction halves it)
MIN_CHUNK_PAIRS = 4096   # Box-Muller pairs per block, at least (32 per thread)
MAX_CHUNKS = 512         # blocks per seed, at most: 8 seeds fill a large GPU several times

SIMULATOR_HINT = ("set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the CPU simulator "
                  "(slow: tiny grids only), or use backend: cpu")


def simulator_enabled() -> bool:
    """True if numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba.core import config

    return bool(getattr(config, "ENABLE_CUDASIM", 0)) or \
        os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def require():
    """Return the ``numba.cuda`` module if CUDA kernels can run here (a GPU or the
    simulator), else raise a one-line :class:`BackendError` saying why and what to do."""
    if importlib.util.find_spec("numba_cuda") is None:
        # Importing numba.cuda without numba-cuda would load numba's deprecated built-in
        # target (and warn): refuse before that.
        raise BackendError("backend 'cuda' needs the numba-cuda package (fix: pip install "
                           "'harness[cuda]'; then run on an NVIDIA GPU, or "
                           + SIMULATOR_HINT + ")")
    with warnings.catch_warnings():
        # numba-cuda 0.30 calls np.timedelta64("nat") at import, which NumPy >= 2.5 deprecates:
        # not ours to fix, and it must not become an error where warnings are errors.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"numba[._]cuda")
        from numba import cuda

    if simulator_enabled():
        return cuda
    try:
        available = cuda.is_available()
    except Exception:       # a broken driver install: treat as no GPU
        available = False
    if not available:
        raise BackendError("backend 'cuda': no CUDA GPU or driver found on this machine "
                           "(fix: " + SIMULATOR_HINT + ")")
    return cuda


def chunking(n_samples: int) -> tuple[int, int]:
    """(chunk_pairs, n_chunks) for N samples: a function of N only (as on the CPU, with the
    GPU's own constants)."""
    n_pairs = (n_samples + 1) // 2
    target = max(1, min(MAX_CHUNKS, math.ceil(n_pairs / MIN_CHUNK_PAIRS)))
    chunk_pairs = math.ceil(n_pairs / target)
    return chunk_pairs, math.ceil(n_pairs / chunk_pairs)


_loaded: dict[tuple, object] = {}
_lock = threading.Lock()


def load_kernel(family, cost, estimators: tuple[str, ...], components: tuple[str, ...]):
    """The CUDA kernel of this cell type (compiled on first launch, once per process).

    It wraps the ``sample_terms`` function of the CPU backend's cell module for the same
    combination (``cpu.cell_module``: it calls the CPU term kernels' per-sample functions),
    so both backends evaluate the very same family, cost and estimator code."""
    require()
    return _kernel(family, cost, cpu._labels(estimators), tuple(components))


def _kernel(family, cost, estimators: tuple[str, ...], components: tuple[str, ...]):
    from . import _cuda_kernels

    key = (registry.get_family(family).name, registry.cost_key(cost), estimators, components)
    with _lock:
        if key not in _loaded:
            module = cpu.cell_module(family, cost, estimators, components)
            _loaded[key] = _cuda_kernels.make_cell_kernel(module, THREADS)
        return _loaded[key]


def ptx(family, cost, estimators, components, cc: tuple[int, int] = (8, 0)) -> str:
    """PTX of the cell's kernel for compute capability ``cc``, without a GPU (needs the CUDA
    toolkit's NVVM, e.g. ``pip install 'numba-cuda[cu13]'``). For inspecting the code the
    GPU would run (instruction mix, no float atomics) on a machine without one."""
    from numba import types

    from . import cuda_common

    cuda_common.check_ptx_target()
    kernel = _kernel(family, cost, cpu._labels(estimators), tuple(components))
    u64 = types.Array(types.uint64, 1, "C")
    f64 = types.Array(types.float64, 1, "C")
    sig = types.void(u64, u64, types.int64, types.int64, f64, f64,
                     types.Array(types.float64, 3, "C"))
    return cuda_common.ptx(kernel.py_func, sig, cc)


def estimate(family, cost, estimators, components, params, n_samples: int, seeds, *,
             parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`harness.backends.cpu.estimate`, on the GPU (or the simulator); ``parallel``
    is accepted for the same signature and ignored (the GPU kernel is always parallel).

    Returns ``(estimate, sample_var)`` of shape ``(n_seeds, n_estimators, n_components)``.
    """
    if registry.get_family(family).draw_pair_at is not None:
        # the kernels draw with the theta-free ``draw_pair``; grids are rejected earlier
        raise BackendError(f"backend 'cuda' does not run distribution "
                           f"{registry.get_family(family).name} (a theta-dependent sampler; "
                           "fix: use backend cpu)")
    cuda = require()
    components = tuple(components)
    estimators = cpu._labels(estimators)  # names, labels or EstimatorSpecs -> labels
    seeds, params = cpu.validate(family, cost, estimators, components, params, n_samples,
                                 seeds)
    kernel = load_kernel(family, cost, estimators, components)
    _, _, n_terms, _ = cpu._layout(estimators, components)
    consts = cpu.constants(family, cost, estimators, components, params)
    chunk_pairs, n_chunks = chunking(int(n_samples))
    seeds_u = seeds.astype(np.uint64)
    keys0 = seeds_u & np.uint64(0xFFFFFFFF)
    keys1 = seeds_u >> np.uint64(32)
    d_partials = cuda.device_array((seeds.size, n_chunks, 1 + 3 * n_terms), dtype=np.float64)
    kernel[seeds.size * n_chunks, THREADS](
        cuda.to_device(keys0), cuda.to_device(keys1), np.int64(n_samples),
        np.int64(chunk_pairs), cuda.to_device(cpu.param_vector(family, cost, params)),
        cuda.to_device(consts), d_partials)
    partials = d_partials.copy_to_host()
    return cpu.reduce_partials(estimators, components, partials, int(n_samples), consts)


# --- raw streams, for tests and checks ---------------------------------------------------

def _stream_kernel(which: str):
    require()
    from . import _cuda_kernels

    return _cuda_kernels.philox_kernel if which == "philox" else _cuda_kernels.normal_kernel


def _keys(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError("seed must be in [0, 2**64)")
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


def philox_blocks(seed: int, n: int, stream: int = 0) -> np.ndarray:
    """Philox4x32-10 outputs for counters (i, 0, stream, 0), i < n, computed on the device:
    an (n, 4) uint64 array (32-bit values), bitwise equal to ``harness.rng.philox4x32_10``."""
    cuda = require()
    k0, k1 = _keys(seed)
    out = cuda.device_array((n, 4), dtype=np.uint64)
    _stream_kernel("philox")[max(1, math.ceil(n / THREADS)), THREADS](
        k0, k1, np.uint64(stream), out)
    return out.copy_to_host()


def normal_pairs(seed: int, n_pairs: int, stream: int = 0) -> np.ndarray:
    """Box-Muller pairs 0 .. n_pairs - 1 of a seed's stream computed on the device:
    ``(n_pairs, 2)`` float64; row i equals ``harness.rng.normal_pair(k0, k1, i, stream)``
    to float64 round-off (bitwise under the simulator)."""
    cuda = require()
    k0, k1 = _keys(seed)
    out = cuda.device_array((n_pairs, 2), dtype=np.float64)
    _stream_kernel("normal")[max(1, math.ceil(n_pairs / THREADS)), THREADS](
        k0, k1, np.uint64(stream), out)
    return out.copy_to_host()
