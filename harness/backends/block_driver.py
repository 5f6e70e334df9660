"""The CPU backend's block loop in compiled code: one call per thread, not one per kernel.

``cpu.estimate`` runs, for every block of a thread's jobs, the draw kernel, the shared-draw
kernels and every term kernel (``harness.backends.cpu``, module docstring).  Called from
Python, each of those calls costs a dispatch (~2 us: typing 13 arguments) and, with two
threads, often a hand-over of the GIL (the kernels release it): measured on a 2-core Zen 3
VM, cutting the calls 3x (3 jobs per block instead of 1) took the Mohamed et al. study cell
from 75-89 to 52-58 ns per sample (wall, 2 threads).  ``run_group`` makes the same calls,
in the same order with the same arguments, from compiled code: the kernels are the same
compiled functions (their machine code, called through their addresses), so the bits are
those of the Python loop (tested: ``tests/test_kernel.py``).

How: a kernel's compiled function (numba's native calling convention: a return-value
pointer, an exception-info pointer, then each argument's data model, e.g. an array as its
struct fields) is called by address with ``call_compiled(address, (args...))``, an intrinsic
that builds that call for the argument types of the call site.  The addresses come from
numba's compile result of the kernel's one signature (``kernel_address``), also for kernels
loaded from numba's on-disk cache.  The caller must pass arguments of exactly the types the
kernel was compiled for: ``cpu`` checks each kernel's signature before it uses this module
(``cpu._driver_plan``) and otherwise keeps the Python loop.

``run_group`` is compiled once per machine (numba's cache): it takes the kernels as
addresses and their per-term arrays as views of flat buffers, so it does not depend on the
cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..kernel_cache import ensure_numba_cache

# numba picks where to cache ``run_group`` when it is defined: a writable place first.
ensure_numba_cache(Path(__file__).parent)


@intrinsic
def call_compiled(typingctx, address, args):
    """Call the numba-compiled function at ``address`` (an int64) with the tuple ``args``,
    whose types must be the function's signature; it returns nothing.  An exception raised
    inside (e.g. a failed allocation) propagates to the caller."""
    arg_types = tuple(args.types)

    def codegen(context, builder, signature, llargs):
        address_value, packed = llargs
        values = [builder.extract_value(packed, i) for i in range(len(arg_types))]
        function_type = context.call_conv.get_function_type(types.none, arg_types)
        function = builder.inttoptr(address_value, function_type.as_pointer())
        status, _ = context.call_conv.call_function(builder, function, types.none,
                                                    arg_types, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, args), codegen


def kernel_address(kernel) -> int:
    """The address of a compiled kernel's native function (its one signature)."""
    result = kernel.overloads[kernel.signatures[0]]
    return result.library.get_pointer_to_function(result.fndesc.llvm_func_name)


@njit(cache=True, nogil=True)
def run_group(keys0, keys1, n_samples, n_chunks, chunk_pairs, group_first, group_last,
              width, pairs, draw_address, params, copy_stream, draws, shared_addresses,
              shared_rows, shared_flat, term_addresses, term_shared, n_quantities,
              const_offsets, consts_flat, shifts_flat, accs_flat, lanes, unread):
    """Every block of the jobs ``group_first <= job < group_last``, ``width`` jobs and
    ``pairs`` pairs at a time: the calls, and their order, of ``cpu.estimate``'s Python
    loop.  The draw kernel fills ``draws``; shared-draw kernel j fills its buffer, of
    shape (width, ``shared_rows[j]``, 2, pairs), the j-th in ``shared_flat``; term kernel t
    reads the buffer ``term_shared[t]`` (``unread`` if -1) and its constants
    ``consts_flat[const_offsets[t]:const_offsets[t + 1]]``, and adds to its shifts and lane
    sums, of shapes (n_jobs, q) and (n_jobs, 2, q, lanes) with q = ``n_quantities[t]``,
    the t-th in ``shifts_flat`` and ``accs_flat`` (n_jobs = n_seeds x n_chunks).  Flat
    buffers and views, not lists: a typed list costs a compile per process."""
    n_jobs = keys0.shape[0] * n_chunks
    jobs = np.empty(2, dtype=np.int64)
    for first_job in range(group_first, group_last, width):
        jobs[0] = first_job
        jobs[1] = min(first_job + width, group_last)
        for block_first in range(0, chunk_pairs, pairs):
            call_compiled(draw_address, (keys0, keys1, n_samples, n_chunks, chunk_pairs, jobs,
                                         block_first, params, copy_stream, draws))
            offset = 0
            for j in range(len(shared_addresses)):
                size = width * shared_rows[j] * 2 * pairs
                buffer = shared_flat[offset:offset + size].reshape(
                    (width, shared_rows[j], 2, pairs))
                call_compiled(shared_addresses[j], (keys0, keys1, n_samples, n_chunks,
                                                    chunk_pairs, jobs, block_first, buffer))
                offset += size
            shift_offset = 0
            acc_offset = 0
            for t in range(len(term_addresses)):
                q = n_quantities[t]
                shared = unread
                if term_shared[t] >= 0:
                    offset = 0
                    for j in range(term_shared[t]):
                        offset += width * shared_rows[j] * 2 * pairs
                    rows = shared_rows[term_shared[t]]
                    shared = shared_flat[offset:offset + width * rows * 2 * pairs].reshape(
                        (width, rows, 2, pairs))
                shift = shifts_flat[shift_offset:shift_offset + n_jobs * q].reshape((n_jobs, q))
                acc = accs_flat[acc_offset:acc_offset + n_jobs * 2 * q * lanes].reshape(
                    (n_jobs, 2, q, lanes))
                call_compiled(term_addresses[t], (keys0, keys1, n_samples, n_chunks,
                                                  chunk_pairs, jobs, block_first, params,
                                                  consts_flat[const_offsets[t]:
                                                              const_offsets[t + 1]],
                                                  draws, shared, shift, acc))
                shift_offset += n_jobs * q
                acc_offset += n_jobs * 2 * q * lanes
