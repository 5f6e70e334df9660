"""CPU backend: a block pipeline of small, separately compiled and cached numba kernels.

Why generated source: a kernel built in a Python factory that closes over other jitted
functions never hits numba's on-disk cache and can even share a wrong cache entry (numba
keys its cache by the function's source location, which every closure of a factory
shares). So each kernel is a small, readable module written to the kernel cache directory
and imported. Its name carries a digest of the harness sources it is built from, so editing
any of them (or a user's cost module) gives a new kernel instead of a stale cached one;
within one source version the second process loads the compiled kernel from disk.

Work decomposition (independent of the thread count, hence bitwise reproducible)
---------------------------------------------------------------------------------
The N samples of a seed are pairs of base draws (one Philox counter per pair); the pairs are
split into a fixed number of chunks that depends on N only (``chunking``).  A *job* is one
(seed, chunk).  Each job's pairs are processed in *blocks* of ``block_pairs`` pairs, a few
jobs at a time (``block_plan``: long blocks, a multiple of ``LANES``, with the draw buffers
of the block's jobs near ``BLOCK_BYTES`` so they stay in cache; it never changes the bits):

1. ``draw_block``, one kernel per (family, cost) (``draw_source``): for every job and
   sample 2 p + h of the block's pairs p = first + block_first + i, ``draws[job, :, h, i]``
   = (e, x, f(x), f'(x)) with e the base draw on the main stream 0, and, when an estimator
   of the cell uses it, e on the independent copy (stream ``INDEPENDENT_STREAM_OFFSET``):
   shape (jobs, 4 or 5, 2, block_pairs).  So f is evaluated once per sample, whatever the
   number of estimators.  The family draws with ``draw_pair(key0, key1, pair, stream)``, or with
   ``draw_pair_at(theta, key0, key1, pair, stream)`` if it has one (a sampler that depends
   on theta, e.g. a rejection sampler; ``harness.axes.Family``).
2. ``accumulate``, one kernel per (family, estimator variant, component), and per cost
   only if the variant evaluates the cost itself (``reads_cost``: measure_valued, arm,
   a copy-stream baseline, ...; most read f and f' from the block, so a grid or a test
   over several costs compiles their kernels once) (``term_source``): reads the block,
   evaluates the estimator's per-sample term(s) (its
   ``per_sample``, unchanged contract: ``harness.axes``; extra streams such as
   measure_valued's are drawn there, vectorised over the lanes) and adds them to persistent per-job
   lane sums ``acc[job, sum | sum of squares, term, lane]`` with lane = (pair - first) %
   LANES, sample 2p before 2p + 1 and pairs in order: the order of every addition is fixed
   by the source.  Terms are shifted by those of the chunk's first sample (computed at
   block 0 without fastmath from the block's e, x, f and f', kept in ``shift[job,
   term]``) against cancellation.
3. One call per thread of ``block_driver.run_group`` (compiled, cached once per machine)
   loops over the thread's blocks and calls the kernels above through their addresses: no
   Python dispatch, and no GIL hand-over between two threads, per kernel call
   (``$HARNESS_BLOCK_LOOP=python``: the same calls from a Python loop, the same bits).
   ``estimate`` then adds each job's lanes in lane order and merges the chunks in chunk
   order with Chan's update (``merge_chunks``).

So compile cost grows with the estimators, not their combinations: adding or removing an
estimator or a component compiles only its own kernel, and every cell and grid that uses a
(variant, component) (with its cost, if it reads it) shares it; new kernels are compiled by
several processes side by side (``compile_workers``). The summation order is that of the
former fused kernel (one kernel per cell type): its sums are reproduced bitwise for many
terms and to 1-3 ulp for others (multiply-adds contracted differently once the terms are
compiled apart). Memory is O(BLOCK_BYTES + jobs x terms x LANES), independent of N.

Threads: the kernels are compiled serially (``nogil``, ``error_model="numpy"``: a
division's Python-style zero check would stop LLVM vectorising) and the jobs are split into
contiguous groups, one Python thread per group, each with its own draw buffers.  A job's
numbers never depend on its group, so the bits are the same for any thread count.

Public: ``estimate(family, cost, estimators, components, params, n_samples, seeds)``;
``reduce_partials`` (chunk merge + each estimator's ``moments_to_estimate``, shared with the
CUDA backend); ``validate``, ``constants``, ``load_kernel`` (a cell type's kernels),
``load_draw_kernel``, ``load_term_kernel``, ``cell_module`` (every term of a cell as one
per-sample function, for the CUDA backend), ``chunking``, ``block_plan``, ``merge_chunks``,
``vector_width``.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
from numba.core.dispatcher import Dispatcher

from .. import __version__, kernel_cache, registry
from ..errors import ConfigError
from ..rng import INDEPENDENT_STREAM_OFFSET

MAX_CHUNKS = 64          # per seed; bounds the partial-sum memory
MIN_CHUNK_PAIRS = 4096   # base-draw pairs per chunk, so chunk overhead stays negligible
LANES = 8                # partial sums per term: the sample loop vectorises without reassoc
BLOCK_BYTES = 1 << 20    # the draw buffer's target size: L2-resident (2 MiB per core here)
MAX_BLOCK_PAIRS = 2048   # pairs per job and block, at most

FAMILY_FUNCTIONS = ("to_x", "score", "times_score", "dx_dtheta", "antithetic", "centred")
_UNAVAILABLE = {"dx_dtheta": "unavailable_3", "antithetic": "unavailable_1"}

# The part of a term module that evaluates samples (also imported by the CUDA cell module).
_PRELUDE = '''\
import math

import numpy as np
from numba import njit

from harness.axes import CostOps, FamilyOps, Sample, unavailable_1, unavailable_2, unavailable_3
{imports}

# Functions the sample body calls directly are re-jitted with inline="always", so the whole
# body is one function LLVM can vectorise (and because numba cannot cache a kernel that calls
# a separately compiled function which itself inlines the Philox code: "dynamic globals").
# Estimators reach the family's and the cost's functions through the FamilyOps/CostOps tuples
# instead, i.e. as separately compiled functions that keep their own fastmath flags: they
# carry the kernel's ("contract"), so every expression is rounded as if written inline.
FUSED = {{"inline": "always", "fastmath": {{"contract"}}}}
{rejit}


@njit(inline="always")
def fused_family():
    return FamilyOps({fused_family})


@njit(inline="always")
def fused_cost():
    return CostOps(cost_value, cost_derivative)
'''

_TERM_TEMPLATE = '''\
"""Generated by harness.backends.cpu (harness {version}); do not edit.

family: {family}; cost: {cost}; per-sample function: {estimator}; component: {component}
"""
{prelude}

N_TERMS = {n_terms}  # accumulated quantities: 1 (per-sample kind) or n_moments (accumulated)
LANES = {lanes}
USES_COPY = {uses_copy}  # reads the base draws of the independent copy stream


@njit(inline="always")
def sample_terms_given(theta, k, e, x, f, df, e_copy, f_copy, key0, key1, index, consts,
                       shared):
    """The accumulated quantities of one sample with base draw e, x = to_x(theta, e),
    f = f(x) and df = f'(x) as the draw kernel computed them (e_copy: its draw on the copy
    stream, f_copy = f(to_x(theta, e_copy))); consts: the estimator's per-cell constants for
    this component; shared: the estimator's shared draws of the sample (``()`` if none)."""
    family = fused_family()
    cost = fused_cost()
{body}


@njit(inline="always")
def constants_tuple(consts):
    """The term's per-cell constants as a tuple of scalars (``()`` if it has none)."""
    return ({consts_tuple})


# The summation order is fixed by this source (per lane: pairs in order, sample 2p then
# 2p + 1), so the bits depend neither on how LLVM vectorises nor on the thread count. Only
# "contract" (fused multiply-add) is allowed: never "reassoc" (it would let LLVM reorder the
# sums) nor "nnan"/"ninf" (they break NaN checks).
@njit(cache=True, nogil=True, error_model="numpy", fastmath={{"contract"}})
def accumulate(keys0, keys1, n_samples, n_chunks, chunk_pairs, jobs, block_first, params,
               consts_array, draws, shared, shift, acc):
    """Add the terms of pairs first + block_first + i (i < block_pairs) of jobs
    (seed, chunk) ``jobs[0] <= job < jobs[1]``, minus ``shift[job, term]``, to
    ``acc[job, sum | sum of squares, term, lane]``; at block 0 first store the terms of the
    chunk's first sample in ``shift[job, term]``.  ``draws``: the block's base draws of
    these jobs from ``draw_block``, (jobs, streams, 2, block_pairs); ``shared``: the
    estimator's shared draws from ``draw_shared`` (jobs, numbers, 2, block_pairs), unread
    if it has none."""
    block_pairs = draws.shape[3]
    n_pairs = (n_samples + 1) // 2  # an odd N uses the first draw of its last pair
    # LANES as a run-time value: with a constant 8 LLVM unrolls a small sample body fully
    # and then leaves it scalar (numba turns the SLP vectoriser off); a run-time trip count
    # keeps the lane loop, which the loop vectoriser vectorises (measured 1.5-3x)
    lanes = acc.shape[3]
    theta = ({theta},)
    k = {k}
    consts = constants_tuple(consts_array)  # scalars, so the hot loop never reads the array
    # the job's lane sums, local in the loop; allocated once per call, not once per job (an
    # allocation per job and block cost more than the samples of a small block)
    sums = np.empty((2, N_TERMS, LANES))
    for job in range(jobs[0], jobs[1]):
        row = job - jobs[0]
        s = job // n_chunks
        first = (job - s * n_chunks) * chunk_pairs
        last = min(first + chunk_pairs, n_pairs)
        start = first + block_first
        if start < last:  # else every sample would add exactly 0.0
            key0 = keys0[s]
            key1 = keys1[s]
            # Block 0 makes two passes of the loop below.  Pass 0 runs the chunk's first sample
            # alone from zero sums and a zero shift: lane 0 then holds its terms (0.0 + t is t),
            # the chunk's shift (which keeps the sums of squares from cancelling).  Pass 1, and
            # every later block's only pass, adds every sample minus that shift.  One call site
            # of the inlined sample body: a separately compiled copy for the shift cost a third
            # of each term kernel's compile time.
            n_passes = 2 if block_first == 0 else 1
            for pass_ in range(n_passes):
                shifting = pass_ < n_passes - 1
                if shifting:  # pair ``first`` only, and of it sample 2 first only
                    stop, n_blocks, n_used = first + 1, 1, 2 * first + 1
                    sums[:] = 0.0
                else:
                    stop, n_blocks, n_used = last, block_pairs // LANES, n_samples
                    for j in range(N_TERMS):
                        for lane in range(LANES):
                            sums[0, j, lane] = acc[job, 0, j, lane]
                            sums[1, j, lane] = acc[job, 1, j, lane]
{load_shift}
                # Sample 2p + h of pair p = start + b * LANES + lane.  The lane loop is
                # innermost (LLVM vectorises innermost loops only) and the inlined sample body
                # has one call site.  Past ``stop`` (or ``n_used``) a sample adds exactly 0.0.
                for b in range(n_blocks):
                    for h in range(2):
                        for lane in range(lanes):
                            i = b * LANES + lane
                            p = start + i  # int64: mixing in uint64 would give floats
                            use = p < stop and (h == 0 or 2 * p + 1 < n_used)
                            t = sample_terms_given(theta, k, draws[row, 0, h, i],
                                                   draws[row, 1, h, i], draws[row, 2, h, i],
                                                   draws[row, 3, h, i], {copy_arg}, key0,
                                                   key1, 2 * p + h, consts, {shared_arg})
{accumulate}
                for j in range(N_TERMS):
                    if shifting:
                        shift[job, j] = sums[0, j, 0]
                    else:
                        for lane in range(LANES):
                            acc[job, 0, j, lane] = sums[0, j, lane]
                            acc[job, 1, j, lane] = sums[1, j, lane]
'''

_DRAW_TEMPLATE = '''\
"""Generated by harness.backends.cpu (harness {version}); do not edit.

family: {family}; cost: {cost}: the samples of one block of pairs of every (seed, chunk) job.
"""
{prelude}

ROWS = ("e", "x", "f", "df", "e_copy", "f_copy")  # draws[job, row] (the copies: if drawn)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={{"contract"}})
def draw_block(keys0, keys1, n_samples, n_chunks, chunk_pairs, jobs, block_first, params,
               copy_stream, draws):
    """For jobs (seed, chunk) ``jobs[0] <= job < jobs[1]`` and sample 2p + h of pair
    p = first + block_first + i (first: the chunk's first pair), in row job - jobs[0] of
    ``draws``: [0, h, i] the base draw e on stream 0, [1, h, i] x = to_x(theta, e),
    [2, h, i] f(x), [3, h, i] f'(x) (NaN if the cost has none) and, if draws.shape[1] == 6,
    [4, h, i] the base draw on stream ``copy_stream`` and [5, h, i] f at its x.  Every term
    kernel reads them, so f is evaluated once per sample.  Pairs past the chunk's end are
    left as they are."""
    n_rows, block_pairs = draws.shape[1], draws.shape[3]
    n_pairs = (n_samples + 1) // 2
    theta = ({theta},)
    k = {k}
    family = fused_family()
    for job in range(jobs[0], jobs[1]):
        row = job - jobs[0]
        s = job // n_chunks
        first = (job - s * n_chunks) * chunk_pairs
        start = first + block_first
        stop = min(block_pairs, min(first + chunk_pairs, n_pairs) - start)
        key0 = keys0[s]
        key1 = keys1[s]
        for i in range(stop):  # a loop per stream and quantity: LLVM vectorises each
            draws[row, 0, 0, i], draws[row, 0, 1, i] = family_draw({draw_args}start + i, 0)
        for h in range(2):
            for i in range(stop):
                x = family.to_x(theta, draws[row, 0, h, i])
                draws[row, 1, h, i] = x
                draws[row, 2, h, i] = cost_value(x, k)
                draws[row, 3, h, i] = cost_derivative(x, k)
        if n_rows == 6:
            for i in range(stop):
                draws[row, 4, 0, i], draws[row, 4, 1, i] = family_draw({draw_args}start + i,
                                                                   copy_stream)
            for h in range(2):
                for i in range(stop):
                    draws[row, 5, h, i] = cost_value(family.to_x(theta, draws[row, 4, h, i]), k)
'''

_SHARED_TEMPLATE = '''\
"""Generated by harness.backends.cpu (harness {version}); do not edit.

shared draws: {function}, component {component}: the numbers of one block of pairs of every
(seed, chunk) job that the estimator variants with this function read (``s.shared``).
"""
from numba import njit

{imports}

shared_draws = njit(inline="always", fastmath={{"contract"}})(_shared_draws.py_func)
N_DRAWS = {n}


@njit(cache=True, nogil=True, error_model="numpy", fastmath={{"contract"}})
def draw_shared(keys0, keys1, n_samples, n_chunks, chunk_pairs, jobs, block_first, draws):
    """``draws[job - jobs[0], d, h, i]`` = number d of ``shared_draws(component, key0, key1,
    2p + h)`` for pair p = first + block_first + i of job (seed, chunk): sample 2p + h, as
    the term kernels number it.  Pairs past the chunk's end are left as they are."""
    block_pairs = draws.shape[3]
    n_pairs = (n_samples + 1) // 2
    for job in range(jobs[0], jobs[1]):
        row = job - jobs[0]
        s = job // n_chunks
        first = (job - s * n_chunks) * chunk_pairs
        start = first + block_first
        stop = min(block_pairs, min(first + chunk_pairs, n_pairs) - start)
        key0 = keys0[s]
        key1 = keys1[s]
        # both samples of a pair in one step: a function that draws per pair (one Philox
        # counter for samples 2p and 2p + 1) is then computed once per pair (LLVM merges the
        # two inlined copies), and the loop over i still vectorises
        for i in range(stop):  # no inner loop over h: LLVM vectorises innermost loops only
            t = shared_draws({component_arg}key0, key1, 2 * (start + i))
            u = shared_draws({component_arg}key0, key1, 2 * (start + i) + 1)
{stores}
'''

# Every term of a cell as one per-sample function, for the CUDA backend (not compiled on
# the CPU): it computes x, f and f' with the draw module's functions and calls the term
# modules' ``sample_terms_given``, so both backends run the same code.
_CELL_TEMPLATE = '''\
"""Generated by harness.backends.cpu (harness {version}); do not edit.

family: {family}; cost: {cost}; terms (estimator, component): {labels}
Every term of the cell as one per-sample function (for the CUDA backend).
"""
import math

from numba import njit

{imports}

family_draw_pair = njit(inline="always")(_family_draw_pair.py_func)

N_TERMS = {n_terms}
COPY_STREAM = {copy_stream}  # the independent copy of stream 0 (-1: no estimator uses it)


@njit(inline="always")
def unpack(params):
    """(theta, k): the family's parameters as a tuple and the cost's parameter (0.0 if none)."""
    return ({theta},), {k}


@njit(inline="always")
def constants_tuple(consts):
    """The per-cell constants (``harness.backends.cpu.constants``) as a tuple of scalars."""
    return ({cell_consts},)


@njit(inline="always")
def sample_terms(theta, k, e, e_copy, key0, key1, index, cell_consts):
{body}
'''


def _import_line(fn, alias: str) -> str:
    """``from module import name as alias`` for a module-level function (jitted or plain)."""
    py = getattr(fn, "py_func", fn)
    if "<locals>" in py.__qualname__:
        raise TypeError(f"{py.__qualname__} must be defined at module level to be used in a "
                        f"kernel")
    return f"from {py.__module__} import {py.__qualname__} as {alias}"


def _source_digest(functions) -> str:
    """Digest of the source files a kernel is built from: the random numbers, the records,
    this module's templates and the files defining the family, cost and estimator functions
    it calls (which may be plug-ins outside harness, e.g. a user's cost module). numba's
    cache does not notice edits to callees, so any edit to these must give a new name."""
    from .. import axes, rng, scalar_math

    files = {Path(m.__file__).resolve() for m in (axes, rng, scalar_math, sys.modules[__name__])}
    # the functions' own files and, transitively, those of the jitted helpers they call
    # (e.g. delta_cv calls its taylor)
    seen, stack = set(), [getattr(f, "py_func", f) for f in functions]
    while stack:
        py = stack.pop()
        if id(py) in seen:
            continue
        seen.add(id(py))
        files.add(Path(inspect.getfile(py)).resolve())
        names = py.__code__.co_names
        stack.extend(g.py_func for g in py.__globals__.values()
                     if isinstance(g, Dispatcher) and g.py_func.__name__ in names)
    h = hashlib.sha256(__version__.encode())
    for path in sorted(files):
        h.update(path.as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def kernel_dir() -> Path:
    """Where generated kernels (and numba's cache of them) live: $HARNESS_KERNEL_DIR, else
    ~/.cache/harness/kernels; a temporary one if that is not writable (kernel_cache)."""
    return kernel_cache.kernel_dir()


def _layout(estimators: tuple[str, ...], components: tuple[str, ...]):
    """The resolved variants and, per (variant, component) in C order, (quantity offset,
    quantity count, consts offset): the partials' columns and constant slots."""
    variants = [registry.resolve(e) for e in estimators]
    slots, q, c = [], 0, 0
    for v in variants:
        for _ in components:
            n_q = v.n_moments or 1
            slots.append((q, n_q, c))
            q += n_q
            c += v.n_consts
    return variants, slots, q, c


def _cost_functions(cost) -> tuple[list[str], list[str], list]:
    """(import lines, definitions, the functions called) for the cost's ``cost_value`` and
    ``_cost_derivative``: separately compiled functions (the value is called as such, as
    before issue 9).  Each kernel module compiles its own copies (a built-in cost's functions
    re-jitted from their Python source, a user's plain functions wrapped to the (x, k)
    signature): a jitted function shared between kernels made a kernel's bits depend on
    which kernels the process had compiled before (seen: 1 ulp), so helper processes and
    other compile orders would not reproduce them."""
    imports, defs, called = [], [], []
    for role, name in (("value", "cost_value"), ("derivative", "_cost_derivative")):
        fn = getattr(cost, role)
        if fn is None:
            continue
        origin = cost.python.get(role)
        if origin is None:
            imports.append(_import_line(fn, f"_builtin_{role}"))
            defs += [f"{name} = njit(_builtin_{role}.py_func)"]
            called.append(fn)
            continue
        module = sys.modules[origin.module]
        imports.append(f"from {origin.module} import {origin.name} as _user_{role}")
        args = "x, k" if origin.takes_k else "x"
        defs += [f"_user_{role}_jit = njit(getattr(_user_{role}, 'py_func', _user_{role}))",
                 "", "", "@njit", f"def {name}(x, k):", f"    return _user_{role}_jit({args})",
                 "", ""]
        called.append(getattr(module, origin.name))
    return imports, defs, called


def _family_draw(fam) -> tuple[Callable, bool]:
    """(the family's draw function, whether it takes theta first: ``draw_pair_at``)."""
    at = getattr(fam, "draw_pair_at", None)
    return (at, True) if at is not None else (fam.draw_pair, False)


def _theta_source(fam, c) -> tuple[str, str]:
    """Source of theta's elements and of k, read from the kernels' ``params`` array
    (``c`` None: a cost-free term kernel, which reads k if the array has it)."""
    n_theta = len(fam.params)
    theta = "".join(f"params[{j}], " for j in range(n_theta)).rstrip(" ,")
    if c is None:
        return theta, f"params[{n_theta}] if params.shape[0] > {n_theta} else 0.0"
    return theta, (f"params[{n_theta}]" if c.params else "0.0")


@functools.cache
def reads_cost(per_sample) -> bool:
    """Whether an estimator's ``per_sample(component, s, family, cost, consts)`` reads its
    ``cost`` argument at all.  One that does not evaluates the cost only through s.f and
    s.df, which the draw kernel stored: its term kernel is the same for every cost, so it is
    compiled once per (family, variant, component).  Read from the bytecode: the argument
    is never loaded (nor captured by an inner function), so no cost function can be called.
    An estimator that evaluates f elsewhere (measure_valued, arm, a copy-stream baseline)
    loads it and keeps a kernel per cost."""
    code = getattr(per_sample, "py_func", per_sample).__code__
    name = code.co_varnames[3]  # (component, s, family, cost, consts)
    if name in code.co_cellvars:
        return True
    for instruction in dis.get_instructions(code):
        if "LOAD" in instruction.opname:
            value = instruction.argval
            if value == name or (isinstance(value, tuple) and name in value):
                return True  # LOAD_FAST, or 3.13's LOAD_FAST_LOAD_FAST (a pair of names)
    return False


# The cost functions of a cost-free term kernel: NaN stand-ins, never called (``reads_cost``)
_NO_COST = "cost_value = cost_derivative = _cost_derivative = unavailable_2"


def _prelude(fam, c, per_sample=None) -> str:
    """The sample-evaluating part of a term module (and of a draw module, without an
    estimator): imports and re-jitted functions (``c`` None: no cost functions)."""
    imports = [_import_line(getattr(fam, name), f"_family_{name}") for name in FAMILY_FUNCTIONS
               if getattr(fam, name) is not None]
    cost_imports, cost_defs, _ = _cost_functions(c) if c is not None else ([], [_NO_COST], [])
    imports += cost_imports
    if per_sample is not None:
        imports.append(_import_line(per_sample, "_estimator"))
    rejit, fused = list(cost_defs), []
    for name in FAMILY_FUNCTIONS:
        if getattr(fam, name) is None:
            fused.append(_UNAVAILABLE[name])
            continue
        rejit.append(f"family_{name} = njit(**FUSED)(_family_{name}.py_func)")
        fused.append(f"family_{name}")
    if c is None:
        pass
    elif c.derivative is not None:
        rejit.append("cost_derivative = njit(**FUSED)(_cost_derivative.py_func)")
    else:
        rejit.append("cost_derivative = _cost_derivative = unavailable_2")
    if per_sample is not None:
        rejit.append('estimator = njit(inline="always")(_estimator.py_func)')
    return _PRELUDE.format(imports="\n".join(imports), rejit="\n".join(rejit),
                           fused_family=",\n                     ".join(fused))


def _accumulate(n_terms: int, indent: str) -> str:
    """Source lines adding the sample's shifted terms to lane ``lane`` of ``sums``."""
    lines = []
    for j in range(n_terms):
        lines += [f"d = t[{j}] - shift_{j} if use else 0.0", f"sums[0, {j}, lane] += d",
                  f"sums[1, {j}, lane] += d * d"]
    return "\n".join(indent + line for line in lines)


def _code_name(per_sample) -> str:
    """The per-sample function's qualified name: a term module's header names the code it
    runs, not the variant's options, so variants that differ only in per-cell constants
    (a temperature, eta, a fixed coefficient) generate the same source and share one
    compiled kernel."""
    return f"{per_sample.__module__}.{per_sample.__qualname__}"


def term_source(family, cost, estimator, component: str) -> str:
    """The Python source of the term kernel of one (family, cost, estimator variant,
    component): ``family`` a registry name, ``cost`` a cost spec, ``estimator`` a name or
    label.  If the variant does not read the cost (``reads_cost``) the source does not
    depend on ``cost`` (it may then be None)."""
    fam, v = registry.get_family(family), registry.resolve(estimator)
    c = registry.get_cost(cost) if reads_cost(v.per_sample_for(fam)) else None
    n_terms = v.n_moments or 1
    consts = "(" + "".join(f"consts[{j}], " for j in range(v.n_consts)) + ")"
    call = f"estimator({fam.params.index(component)}, s, family, cost, {consts})"
    result = f"    return {call}" if v.n_moments else f"    return ({call},)"
    sample = "    s = Sample(theta, k, e, x, f, df, e_copy, f_copy, key0, key1, index, shared)"
    theta, k = _theta_source(fam, c)
    return _TERM_TEMPLATE.format(
        version=__version__, family=fam.name,
        cost=c.name if c is not None else "any (f and f' from the draw kernel)",
        estimator=_code_name(v.per_sample_for(fam)),
        component=component, prelude=_prelude(fam, c, v.per_sample_for(fam)), n_terms=n_terms,
        lanes=LANES, uses_copy=bool(v.independent_copy),
        body="\n".join([sample, result]),
        consts_tuple="".join(f"consts[{j}], " for j in range(v.n_consts)).rstrip(" "),
        theta=theta, k=k,
        load_shift="\n".join(f"                shift_{j} = 0.0 if shifting else shift[job, {j}]"
                             for j in range(n_terms)),
        copy_arg="draws[row, 4, h, i],\n" + " " * 51 + "draws[row, 5, h, i]"
        if v.independent_copy else "math.nan, math.nan",
        shared_arg=_shared_tuple(v, "shared[row, {d}, h, i]"),
        accumulate=_accumulate(n_terms, " " * 28),
    )


def n_shared(variant) -> int:
    """How many shared draws (``Estimator.shared_draws``) a variant reads (0: none)."""
    return 0 if variant.shared_draws is None else variant.n_shared_draws


def _shared_tuple(variant, element: str) -> str:
    """Source of the tuple of a variant's shared draws from the buffer (``()`` if none)."""
    n = n_shared(variant)
    return "(" + "".join(element.format(d=d) + ", " for d in range(n)).rstrip(" ") + ")"


def _shared_function(variant, component: int):
    """The jitted function the shared-draw kernel of (variant, component index) calls, and
    whether it takes the component as its first argument: the component's own function
    (``Estimator.shared_draws_by_component``) where the estimator has one, else
    ``shared_draws`` itself."""
    if variant.shared_draws_by_component:
        return variant.shared_draws_by_component[component], False
    return variant.shared_draws, True


def shared_source(variant, component: int) -> str:
    """The Python source of the shared-draw kernel of (``variant.shared_draws``, component)."""
    (shared_draws, takes_component), n = _shared_function(variant, component), n_shared(variant)
    py = shared_draws.py_func
    return _SHARED_TEMPLATE.format(
        version=__version__, function=f"{py.__module__}.{py.__qualname__}",
        component=component, n=n, imports=_import_line(shared_draws, "_shared_draws"),
        component_arg=f"{component}, " if takes_component else "",
        stores="\n".join(f"            draws[row, {d}, 0, i] = t[{d}]\n"
                         f"            draws[row, {d}, 1, i] = u[{d}]" for d in range(n)))


def draw_source(family, cost) -> str:
    """The Python source of the draw kernel of (family, cost)."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    draw, takes_theta = _family_draw(fam)
    theta, k = _theta_source(fam, c)
    prelude = _prelude(fam, c).replace(
        "\nFUSED = ", f"\n{_import_line(draw, '_family_draw')}\n\nFUSED = ", 1)
    return _DRAW_TEMPLATE.format(
        version=__version__, family=fam.name, cost=c.name,
        prelude=prelude + '\n\nfamily_draw = njit(inline="always")(_family_draw.py_func)\n',
        theta=theta, k=k, draw_args="theta, key0, key1, " if takes_theta else "key0, key1, ",
    )


def cell_source(family, cost, estimators: tuple[str, ...], components: tuple[str, ...],
                term_modules: list[str], draw_module: str) -> str:
    """The Python source of the cell module (``_CELL_TEMPLATE``) over the term modules named
    ``term_modules`` (one per (variant, component) in C order) and the draw module of
    (family, cost) (x, f and f' as the CPU's draw kernel computes them)."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    variants, slots, n_terms, n_consts = _layout(tuple(estimators), tuple(components))
    imports = [_import_line(fam.draw_pair, "_family_draw_pair"),
               f"from {draw_module} import cost_derivative, cost_value, family_to_x"]
    lines = ["    x = family_to_x(theta, e)", "    f = cost_value(x, k)",
             "    df = cost_derivative(x, k)",
             "    f_copy = cost_value(family_to_x(theta, e_copy), k)"
             if any(v.independent_copy for v in variants) else "    f_copy = math.nan"]
    names = []
    for j, (module, (_, n_q, c0), v) in enumerate(zip(term_modules, slots, (
            v for v in variants for _ in components))):
        imports.append(f"from {module} import sample_terms_given as terms_{j}")
        consts = "(" + "".join(f"cell_consts[{c0 + i}], " for i in range(v.n_consts)) + ")"
        shared = "()"
        if v.shared_draws is not None:
            imports.append(_import_line(v.shared_draws, f"shared_draws_{j}"))
            shared = f"shared_draws_{j}({fam.params.index(components[j % len(components)])}, " \
                     "key0, key1, index)"
        lines.append(f"    t{j} = terms_{j}(theta, k, e, x, f, df, e_copy, f_copy, key0, key1, "
                     f"index, {consts}, {shared})")
        names += [f"t{j}[{i}]" for i in range(n_q)]
    theta, k = _theta_source(fam, c)
    return _CELL_TEMPLATE.format(
        version=__version__, family=fam.name, cost=c.name,
        labels=", ".join(f"({v.name}, {comp})" for v in variants for comp in components),
        imports="\n".join(imports), n_terms=n_terms,
        copy_stream=INDEPENDENT_STREAM_OFFSET if any(v.independent_copy for v in variants)
        else -1,
        theta=theta, k=k,
        cell_consts=", ".join(f"consts[{j}]" for j in range(max(n_consts, 1))),
        body="\n".join(lines + [f"    return ({', '.join(names)},)"]))


_loaded: dict[tuple, object] = {}   # key -> compiled kernel (dispatcher) or cell module
_lock = threading.RLock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(n_threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``n_threads`` threads (created once per size)."""
    with _lock:
        if n_threads not in _pools:
            _pools[n_threads] = ThreadPoolExecutor(n_threads, thread_name_prefix="harness-cpu")
        return _pools[n_threads]


def run_in_threads(kernel, args: tuple, n_jobs: int) -> None:
    """Call ``kernel(*args[:-1], jobs, args[-1])`` (a ``nogil`` numba function whose last
    argument is its output) for jobs ``0 <= job < n_jobs``, split into one contiguous range
    ``jobs = [first, last)`` (int64) per thread, ``numba.get_num_threads()`` threads.  The
    kernel must write each job's results to the job's own place, so any split gives the
    same bits.  Compiled first, once across processes (``kernel_cache.compile_once``)."""
    *inputs, out = args
    n_threads = max(1, min(numba.get_num_threads(), n_jobs))
    bounds = [n_jobs * t // n_threads for t in range(n_threads + 1)]
    ranges = [np.array(bounds[t:t + 2], dtype=np.int64) for t in range(n_threads)]
    kernel_cache.compile_once(kernel, (*inputs, ranges[0], out))
    if n_threads == 1:
        kernel(*inputs, ranges[0], out)
        return
    futures = [_pool(n_threads).submit(kernel, *inputs, jobs, out) for jobs in ranges]
    for future in futures:
        future.result()           # re-raises a kernel's error here


def _import_generated(source: str, called) -> object:
    """Write ``source`` to the kernel directory (atomically, named after a digest of it and
    of the files of the functions it calls) unless it is there, and import it."""
    name = "harness_kernel_" + hashlib.sha256(
        (_source_digest(called) + source).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    directory = kernel_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    fresh = not path.exists()
    if fresh or path.read_text() != source:
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(source)
        os.replace(tmp, path)  # atomic: concurrent processes never import half a file
    kernel_cache.ensure_numba_cache()   # numba picks its cache dir at definition
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.WRITTEN_NOW = fresh  # a new kernel: nobody compiled it with this kernel directory
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _term_module(family, cost, estimator, component: str):
    """The term module of (family, cost, variant, component); one for every cost if the
    variant does not read the cost (``reads_cost``)."""
    fam, v = registry.get_family(family), registry.resolve(estimator)
    per_cost = reads_cost(v.per_sample_for(fam))
    key = ("term", fam.name, registry.cost_key(cost) if per_cost else None, v.name, component)
    with _lock:
        if key not in _loaded:
            called = [getattr(fam, n) for n in FAMILY_FUNCTIONS if getattr(fam, n) is not None]
            if per_cost:
                called += _cost_functions(registry.get_cost(cost))[2]
            called.append(v.per_sample_for(fam))
            _loaded[key] = _import_generated(
                term_source(fam, cost if per_cost else None, v.name, component),
                called).accumulate
        return sys.modules[_loaded[key].py_func.__module__]


def load_term_kernel(family, cost, estimator, component: str):
    """The ``accumulate`` kernel of one (family, cost, estimator variant, component)."""
    return _term_module(family, cost, estimator, component).accumulate


def load_draw_kernel(family, cost):
    """The ``draw_block`` kernel of (family, cost)."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    key = ("draw", fam.name, registry.cost_key(cost))
    with _lock:
        if key not in _loaded:
            called = [_family_draw(fam)[0]] + [getattr(fam, n) for n in FAMILY_FUNCTIONS
                                               if getattr(fam, n) is not None]
            _loaded[key] = _import_generated(draw_source(fam, c),
                                             called + _cost_functions(c)[2]).draw_block
        return _loaded[key]


def load_shared_kernel(variant, component: int):
    """The ``draw_shared`` kernel of (a variant's ``shared_draws``, component index)."""
    function = _shared_function(variant, component)[0]
    py = function.py_func
    key = ("shared", py.__module__, py.__qualname__, component)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _import_generated(shared_source(variant, component),
                                             [function]).draw_shared
        return _loaded[key]


@dataclass(frozen=True)
class CellKernels:
    """The kernels one cell type runs: the family's draw kernel, one term kernel per
    (variant, component) in C order and, per term, the index in ``shared`` of the kernel
    drawing its shared draws (-1: none; variants with the same ``shared_draws`` share one
    per component).  ``stats``: numba's cache counters summed over them
    (``cache_hits``/``cache_misses`` as dicts, like a dispatcher's)."""

    draw: object
    terms: tuple
    shared: tuple = ()
    shared_of_term: tuple = ()

    @property
    def dispatchers(self) -> tuple:
        return (self.draw, *self.shared, *self.terms)

    @property
    def stats(self):
        hits = sum(sum(d.stats.cache_hits.values()) for d in self.dispatchers)
        misses = sum(sum(d.stats.cache_misses.values()) for d in self.dispatchers)
        return SimpleNamespace(cache_hits={"all": hits}, cache_misses={"all": misses})


def load_kernel(family, cost, estimators, components) -> CellKernels:
    """Import (writing them first if needed) the kernels of a cell type."""
    labels = _labels(estimators)
    fam = registry.get_family(family)
    shared, shared_of_term = [], []
    for e in labels:
        v = registry.resolve(e)
        for comp in components:
            kernel = None if v.shared_draws is None else load_shared_kernel(
                v, fam.params.index(comp))
            if kernel is not None and kernel not in shared:
                shared.append(kernel)
            shared_of_term.append(-1 if kernel is None else shared.index(kernel))
    return CellKernels(
        draw=load_draw_kernel(family, cost),
        terms=tuple(load_term_kernel(family, cost, e, comp)
                    for e in labels for comp in components),
        shared=tuple(shared), shared_of_term=tuple(shared_of_term))


def cell_module(family, cost, estimators, components):
    """The cell module (every term of the cell as one per-sample function ``sample_terms``,
    plus ``unpack``, ``constants_tuple``, ``N_TERMS``, ``COPY_STREAM``) for the CUDA backend;
    nothing in it is compiled for the CPU."""
    labels, components = _labels(estimators), tuple(components)
    fam, c = registry.get_family(family), registry.get_cost(cost)
    key = ("cell", fam.name, registry.cost_key(cost), labels, components)
    with _lock:
        if key not in _loaded:
            terms = [_term_module(fam, cost, e, comp).__name__ for e in labels
                     for comp in components]
            draw = load_draw_kernel(fam, cost).py_func.__module__
            _loaded[key] = _import_generated(
                cell_source(fam, c, labels, components, terms, draw), [])
        return _loaded[key]


def _example_args(variant=None, n_params: int = 3) -> tuple:
    """Arguments of the types ``estimate`` passes to the draw kernel (``variant`` None) or
    to the term kernel of ``variant``: what a kernel is compiled for."""
    keys = np.zeros(1, dtype=np.uint64)
    head = (keys, keys, np.int64(2), np.int64(1), np.int64(1), np.array([0, 1]), np.int64(0),
            np.zeros(n_params))
    draws = np.zeros((1, 6, 2, LANES))  # e, x, f, df, e_copy, f_copy
    if variant is None:
        return (*head, np.int64(INDEPENDENT_STREAM_OFFSET), draws)
    n_q = variant.n_moments or 1
    return (*head, np.zeros(variant.n_consts), draws, draws, np.zeros((1, n_q)),
            np.zeros((1, 2, n_q, LANES)))


def _shared_example_args() -> tuple:
    """Arguments of the types ``estimate`` passes to a shared-draw kernel."""
    keys = np.zeros(1, dtype=np.uint64)
    return (keys, keys, np.int64(2), np.int64(1), np.int64(1), np.array([0, 1]), np.int64(0),
            np.zeros((1, 2, 2, LANES)))


def compile_workers() -> int:
    """Processes that compile a cell's new kernels side by side: ``$HARNESS_COMPILE_WORKERS``
    if set (1: compile in this process only), else the number of cores (numba compiles under
    a process-wide lock, so more processes are the only way to use more cores)."""
    value = os.environ.get("HARNESS_COMPILE_WORKERS", "").strip()
    return max(1, int(value)) if value.isdigit() else max(1, os.cpu_count() or 1)


def _compile(family, cost, labels, components, kernels: CellKernels) -> None:
    """Compile (or load from numba's cache) every kernel of the cell, each under a file lock
    (``kernel_cache.compile_once``: processes needing the same new kernel compile it once).

    Kernels whose source file this process has just written are new to the kernel
    directory, so nobody has compiled them.  With several of them and
    ``compile_workers() > 1``, helper processes (``python -m harness.backends.cpu``) share
    the work with this one, taking the kernels from one list as they go: each process walks
    the list from its own starting point and compiles every kernel whose lock is free
    (``kernel_cache.try_compile_once``), skipping those another process holds.  The list
    starts with the costly kernels (shared draws, the draw kernel: each inlines Philox), so
    nobody is left with one at the end.  This process then loads what the helpers compiled
    (numba's cache: the same machine code) and reaps them."""
    if all(d.overloads for d in kernels.dispatchers if hasattr(d, "overloads")):
        return  # every kernel has its one signature already (typeof of the example args
        #         costs ~1 ms per cell: mode: optimize calls a cell's kernels every step)
    fam, c = registry.get_family(family), registry.get_cost(cost)
    n_params = len(fam.params) + len(c.params)
    variants = [registry.resolve(e) for e in labels]
    # every kernel as (dispatcher, example args, what a helper needs to find it); costly first
    todo = [(load_shared_kernel(v, fam.params.index(comp)), _shared_example_args(),
             ["shared", v.name, fam.params.index(comp)])
            for v in variants if v.shared_draws is not None for comp in components]
    todo.append((kernels.draw, _example_args(None, n_params), ["draw"]))
    terms = [(v, comp) for v in variants for comp in components]
    todo += [(kernel, _example_args(v, n_params), ["term", v.name, comp])
             for kernel, (v, comp) in zip(kernels.terms, terms)]
    todo = list({id(job[0]): job for job in todo}.values())  # variants may share a kernel
    new = [job for job in todo if not job[0].overloads and
           getattr(sys.modules[job[0].py_func.__module__], "WRITTEN_NOW", False)]
    workers = min(compile_workers(), len(new))
    helpers = []
    if workers > 1 and isinstance(cost, (str, Mapping)):
        env = {**os.environ, "HARNESS_KERNEL_DIR": str(kernel_dir()),
               "HARNESS_COMPILE_WORKERS": "1"}
        from numba.core import config

        if getattr(config, "CACHE_DIR", ""):
            env["NUMBA_CACHE_DIR"] = str(config.CACHE_DIR)
        for w in range(1, workers):
            start = w * len(new) // workers  # helper w starts part-way along the list
            spec = {"family": fam.name, "cost": cost if isinstance(cost, str) else dict(cost),
                    "kernels": [job[2] for job in new[start:] + new[:start]]}
            helpers.append(subprocess.Popen(
                [sys.executable, "-m", "harness.backends.cpu", json.dumps(spec)], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for kernel, args, _ in new:  # ours: every one nobody else has taken yet
            kernel_cache.try_compile_once(kernel, args)
    for kernel, args, _ in todo:  # the rest: waits for a helper still compiling one
        kernel_cache.compile_once(kernel, args)
    for proc in helpers:
        _, err = proc.communicate()
        if proc.returncode != 0:  # whatever it left undone, this process compiled above
            print(f"note: a kernel compile helper failed: {err.strip()[-300:]}",
                  file=sys.stderr)


def _compile_main(argv: list[str]) -> None:
    """``python -m harness.backends.cpu SPEC``: compile (into numba's on-disk cache) the
    kernels named by the JSON ``SPEC`` (family, cost, kernels: ["draw"], ["term", label,
    component] or ["shared", label, component index]), in that order, skipping any that
    another process is compiling (``kernel_cache.try_compile_once``)."""
    spec = json.loads(argv[0])
    fam, c = registry.get_family(spec["family"]), registry.get_cost(spec["cost"])
    n_params = len(fam.params) + len(c.params)
    for kind, *names in spec["kernels"]:
        if kind == "draw":
            kernel, args = load_draw_kernel(fam, spec["cost"]), _example_args(None, n_params)
        elif kind == "shared":
            kernel = load_shared_kernel(registry.resolve(names[0]), int(names[1]))
            args = _shared_example_args()
        else:
            kernel = load_term_kernel(fam, spec["cost"], names[0], names[1])
            args = _example_args(registry.resolve(names[0]), n_params)
        kernel_cache.try_compile_once(kernel, args)


def chunking(n_samples: int) -> tuple[int, int]:
    """(chunk_pairs, n_chunks) for N samples: a function of N only, never of threads."""
    n_pairs = (n_samples + 1) // 2
    target = max(1, min(MAX_CHUNKS, math.ceil(n_pairs / MIN_CHUNK_PAIRS)))
    chunk_pairs = math.ceil(n_pairs / target)
    return chunk_pairs, math.ceil(n_pairs / chunk_pairs)


def block_plan(n_rows: int, chunk_pairs: int) -> tuple[int, int]:
    """(pairs per job and block, jobs per block): the draw buffers of a block (jobs x rows x
    2 x pairs doubles, ``n_rows`` = every row of the draw and shared buffers) stay near
    ``BLOCK_BYTES``, blocks are as long as possible (at most ``MAX_BLOCK_PAIRS``, a multiple of
    LANES, the chunk cut into equal blocks) and a block holds as many jobs as then fit.  Long
    blocks matter: a kernel's per-job work (loading and storing its lane sums, setting up the
    vectorised lane loop) is paid once per job and block, and with the former plan (every job
    of a thread in one buffer: 32 pairs per block in the Mohamed et al. study) it cost more
    than the samples of a simple term.  Any plan gives the same bits (lanes are fixed by the
    pair index, jobs are independent); it only trades call overhead against cache misses."""
    fit = BLOCK_BYTES // (n_rows * 2 * 8)  # pairs of one job that fit the buffer
    longest = max(LANES, min(MAX_BLOCK_PAIRS, fit // LANES * LANES))
    # equal blocks: capping the length after cutting the chunk would leave a short last block
    # whose kernels still run (and discard) a full block's samples
    n_blocks = math.ceil(chunk_pairs / longest)
    pairs = math.ceil(math.ceil(chunk_pairs / n_blocks) / LANES) * LANES
    return pairs, max(1, BLOCK_BYTES // (n_rows * 2 * 8 * pairs))


def merge_chunks(partials: np.ndarray, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-chunk shifted sums in chunk order (Chan et al.'s pairwise update).

    partials: (n_seeds, n_chunks, 1 + 3 * n_terms) as written by the kernel.
    Returns (mean, sample_var), each (n_seeds, n_terms); sample_var has divisor N - 1.
    """
    count = partials[:, :, 0]
    shift = partials[:, :, 1:1 + n_terms]
    total = partials[:, :, 1 + n_terms:1 + 2 * n_terms]
    total_sq = partials[:, :, 1 + 2 * n_terms:]
    n_chunk = count[:, :, None]
    chunk_mean = shift + total / n_chunk
    chunk_m2 = np.maximum(total_sq - total * total / n_chunk, 0.0)
    n = n_chunk[:, 0]
    mean = chunk_mean[:, 0].copy()
    m2 = chunk_m2[:, 0].copy()
    for c in range(1, partials.shape[1]):
        nb = n_chunk[:, c]
        delta = chunk_mean[:, c] - mean
        n_new = n + nb
        mean = mean + delta * (nb / n_new)
        m2 = m2 + chunk_m2[:, c] + delta * delta * (n * nb / n_new)
        n = n_new
    return mean, m2 / (n - 1.0)


def _labels(estimators) -> tuple[str, ...]:
    """Estimator names, labels (``score_function[baseline=mean]``) or ``EstimatorSpec``-like
    objects (``name`` and ``options``) -> labels, each checked against the registry."""
    return tuple(registry.resolve(e).name for e in estimators)


def param_vector(family, cost, params: Mapping) -> np.ndarray:
    """The kernel's ``params`` array: the family's parameters, then the cost's, in order."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    return np.array([float(params[p]) for p in fam.params + c.params], dtype=np.float64)


def constants(family, cost, estimators, components, params: Mapping) -> np.ndarray:
    """The per-cell constants of every (variant, component) in kernel slot order."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    variants, slots, _, n_consts = _layout(tuple(estimators), tuple(components))
    consts = np.zeros(max(n_consts, 1))
    slot = iter(slots)
    for v in variants:
        for comp in components:
            _, _, c0 = next(slot)
            if v.n_consts:
                values = tuple(float(x) for x in v.prepare(fam, c, comp, dict(params)))
                if len(values) != v.n_consts:
                    raise ValueError(f"{v.name}.prepare returned {len(values)} constants, "
                                     f"expected {v.n_consts}")
                consts[c0:c0 + v.n_consts] = values
    return consts


def block_loop() -> str:
    """``compiled`` (default: ``block_driver.run_group`` makes a thread's kernel calls) or
    ``python`` (``$HARNESS_BLOCK_LOOP=python``: the same calls from the Python loop; the
    same bits, slower; for checking and debugging)."""
    value = os.environ.get("HARNESS_BLOCK_LOOP", "").strip().lower()
    return "python" if value == "python" else "compiled"


def _driver(kernels: CellKernels):
    """The cell's kernels as ``block_driver.run_group`` calls them (addresses), or None
    where the Python loop must call them: ``block_loop() == "python"``, or a kernel not
    compiled for exactly the argument types the driver passes (its call would not match the
    machine code)."""
    from numba import types

    if block_loop() == "python":
        return None
    from . import block_driver  # imported when first used: it defines a cached function
    f8, i8 = types.float64, types.int64
    keys = types.Array(types.uint64, 1, "C")
    head = (keys, keys, i8, i8, i8, types.Array(i8, 1, "C"), i8)
    block, vector = types.Array(f8, 4, "C"), types.Array(f8, 1, "C")
    want = {"draw": (*head, vector, i8, block), "shared": (*head, block),
            "term": (*head, vector, vector, block, block, types.Array(f8, 2, "C"), block)}
    checks = [(kernels.draw, "draw")] + [(k, "shared") for k in kernels.shared] + \
             [(k, "term") for k in kernels.terms]
    for kernel, kind in checks:
        if len(kernel.signatures) != 1 or tuple(kernel.signatures[0]) != want[kind]:
            return None
    return SimpleNamespace(
        run_group=block_driver.run_group, draw=np.int64(_address(kernels.draw)),
        shared=np.array([_address(k) for k in kernels.shared], dtype=np.int64),
        terms=np.array([_address(k) for k in kernels.terms], dtype=np.int64),
        term_shared=np.array(kernels.shared_of_term, dtype=np.int64))


_addresses: dict = {}


def _address(kernel) -> int:
    """A compiled kernel's address, once per kernel (kept alive by ``_loaded``)."""
    from .block_driver import kernel_address

    key = id(kernel)
    if key not in _addresses:
        _addresses[key] = (kernel, kernel_address(kernel))
    return _addresses[key][1]


def estimate(family, cost, estimators, components, params: Mapping, n_samples: int, seeds, *,
             parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run every estimator term of one cell for every seed.

    ``family``: a registry name (``"normal"``); ``cost``: a cost spec (a built-in name or a
    user-cost mapping, ``harness.registry.get_cost``); ``estimators``: registry names, labels
    (``"score_function[baseline=optimal]"``) or ``EstimatorSpec``-like objects with ``name``
    and ``options``; ``components``: a tuple of the family's parameter names; ``params``: a
    mapping of every family and cost parameter to a float (``{"mu": 2.0, "sigma": 1.0}``, plus
    ``"k"`` for costs that take one); ``seeds``: a 1-D array of non-negative integers.
    Returns ``(estimate, sample_var)``, float64 arrays of shape
    ``(n_seeds, n_estimators, n_components)``: the N-sample estimate of each estimator and
    its within-seed per-sample variance (divisor N - 1; for accumulated estimators as
    defined in their module). Validates its inputs (the config layer normally has already)
    so library users get a clear error, not a numba crash.
    ``parallel=False`` runs on one thread (the same kernels and bits); otherwise the jobs are
    split among ``numba.get_num_threads()`` threads (``NUMBA_NUM_THREADS``,
    ``numba.set_num_threads``).
    """
    components = tuple(components)
    labels = _labels(estimators)
    seeds, params = validate(family, cost, labels, components, params, n_samples, seeds)
    n_samples = int(n_samples)
    kernels = load_kernel(family, cost, labels, components)
    variants, slots, n_terms, _ = _layout(labels, components)
    consts = constants(family, cost, labels, components, params)
    chunk_pairs, n_chunks = chunking(n_samples)
    n_jobs = seeds.size * n_chunks
    seeds_u = seeds.astype(np.uint64)
    keys0 = seeds_u & np.uint64(0xFFFFFFFF)
    keys1 = seeds_u >> np.uint64(32)
    n_rows = 4 + 2 * any(v.independent_copy for v in variants)  # e, x, f, df (, e_copy, f_copy)
    shared_rows = [kernel.py_func.__globals__["N_DRAWS"] for kernel in kernels.shared]
    params_v = param_vector(family, cost, params)
    head = (keys0, keys1, np.int64(n_samples), np.int64(n_chunks), np.int64(chunk_pairs))
    terms = []  # per (variant, component): kernel, slot, constants, shift[job], acc[job],
    #             index of its shared-draw buffer (-1: none)
    term_variants = [v for v in variants for _ in components]
    n_quantities = np.array([v.n_moments or 1 for v in term_variants], dtype=np.int64)
    # every term's constants, shifts and lane sums as views of three flat buffers, which
    # the compiled block loop (``block_driver``) takes as they are
    const_offsets = np.concatenate([[0], np.cumsum([v.n_consts for v in term_variants])])
    consts_flat = np.zeros(int(const_offsets[-1]))
    shifts_flat = np.zeros(n_jobs * int(n_quantities.sum()))
    accs_flat = np.zeros(n_jobs * 2 * int(n_quantities.sum()) * LANES)
    shift_at = acc_at = 0
    for t, (kernel, (q, n_q, c0), v, shared) in enumerate(zip(
            kernels.terms, slots, term_variants, kernels.shared_of_term)):
        term_consts = consts_flat[const_offsets[t]:const_offsets[t + 1]]
        term_consts[:] = consts[c0:c0 + v.n_consts]
        shift = shifts_flat[shift_at:shift_at + n_jobs * n_q].reshape(n_jobs, n_q)
        acc = accs_flat[acc_at:acc_at + n_jobs * 2 * n_q * LANES].reshape(n_jobs, 2, n_q, LANES)
        shift_at, acc_at = shift_at + shift.size, acc_at + acc.size
        terms.append((kernel, q, n_q, term_consts, shift, acc, shared))

    n_threads = 1 if not parallel else max(1, min(numba.get_num_threads(), n_jobs))
    bounds = [n_jobs * t // n_threads for t in range(n_threads + 1)]
    groups = [(bounds[t], bounds[t + 1]) for t in range(n_threads)]
    pairs, jobs_per_block = block_plan(n_rows + sum(shared_rows), chunk_pairs)

    _compile(family, cost, labels, components, kernels)  # before the threads start
    driver = _driver(kernels)

    def run(group):
        """Every block of the jobs group[0] <= job < group[1], ``jobs_per_block`` jobs at a
        time, with the thread's own draw buffers.  Zeros, not empty: a term kernel computes
        (and discards) samples past a chunk's end from whatever the buffer holds, and
        garbage bits could be slow subnormals."""
        width = min(jobs_per_block, group[1] - group[0])
        draws = np.zeros((width, n_rows, 2, pairs))
        draw_tail = (params_v, np.int64(INDEPENDENT_STREAM_OFFSET), draws)
        shared_flat = np.zeros(width * sum(shared_rows) * 2 * pairs)
        shared, at = [], 0  # shared-draw kernel j's buffer: a view of the flat one
        for rows in shared_rows:
            shared.append(shared_flat[at:at + width * rows * 2 * pairs].reshape(
                width, rows, 2, pairs))
            at += shared[-1].size
        unread = np.zeros((1, 1, 2, LANES))  # the ``shared`` of a term without shared draws
        if driver is not None:  # the same calls from compiled code (``block_driver``)
            driver.run_group(
                *head, np.int64(group[0]), np.int64(group[1]), np.int64(width),
                np.int64(pairs), driver.draw, *draw_tail, driver.shared,
                np.array(shared_rows, dtype=np.int64), shared_flat, driver.terms,
                driver.term_shared, n_quantities, const_offsets, consts_flat, shifts_flat,
                accs_flat, np.int64(LANES), unread)
            return
        for first_job in range(group[0], group[1], width):
            jobs = np.array([first_job, min(first_job + width, group[1])], dtype=np.int64)
            for block_first in range(0, chunk_pairs, pairs):
                block = np.int64(block_first)
                kernels.draw(*head, jobs, block, *draw_tail)
                for kernel, buffer in zip(kernels.shared, shared):
                    kernel(*head, jobs, block, buffer)
                for kernel, _, _, term_consts, shift, acc, j in terms:
                    kernel(*head, jobs, block, params_v, term_consts, draws,
                           shared[j] if j >= 0 else unread, shift, acc)

    if n_threads == 1:
        run(groups[0])
    else:  # the kernels release the GIL (nogil): one Python thread per group of jobs
        list(_pool(n_threads).map(run, groups))

    # partials[seed, chunk] = (count, shift, sum, sum of squares) as ``merge_chunks`` reads
    partials = np.empty((n_jobs, 1 + 3 * n_terms))
    pair0 = np.arange(n_jobs) % n_chunks * chunk_pairs
    last = np.minimum(pair0 + chunk_pairs, (n_samples + 1) // 2)
    partials[:, 0] = np.minimum(2 * last, n_samples) - 2 * pair0
    for _, q, n_q, _, shift, acc, _ in terms:
        total = np.zeros((n_jobs, 2, n_q))
        for lane in range(LANES):  # lanes added in lane order
            total += acc[:, :, :, lane]
        partials[:, 1 + q:1 + q + n_q] = shift
        partials[:, 1 + n_terms + q:1 + n_terms + q + n_q] = total[:, 0]
        partials[:, 1 + 2 * n_terms + q:1 + 2 * n_terms + q + n_q] = total[:, 1]
    partials = partials.reshape(seeds.size, n_chunks, 1 + 3 * n_terms)
    return reduce_partials(labels, components, partials, n_samples, consts)


def reduce_partials(labels, components, partials: np.ndarray, n_samples: int,
                    consts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge a kernel's per-chunk partials (any backend) and turn each estimator's
    accumulated moments into its estimate: ``(estimate, sample_var)`` of shape
    ``(n_seeds, n_estimators, n_components)``."""
    variants, slots, n_terms, _ = _layout(tuple(labels), tuple(components))
    mean, var = merge_chunks(partials, n_terms)
    shape = (partials.shape[0], len(variants), len(components))
    est_out, var_out = np.empty(shape), np.empty(shape)
    slot = iter(slots)
    for i, v in enumerate(variants):
        for j, _ in enumerate(components):
            q, n_q, c0 = next(slot)
            if v.n_moments:
                est_out[:, i, j], var_out[:, i, j] = v.moments_to_estimate(
                    mean[:, q:q + n_q], var[:, q:q + n_q], n_samples,
                    consts[c0:c0 + v.n_consts])
            else:
                est_out[:, i, j], var_out[:, i, j] = mean[:, q], var[:, q]
    return est_out, var_out


def validate(family, cost, estimators, components, params: Mapping, n_samples, seeds
             ) -> tuple[np.ndarray, dict]:
    """Check one cell's inputs (shared by the backends); returns ``(seeds as an array,
    params as a dict of floats)``.  Raises :class:`ConfigError` with the offending key."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    if not components or len(set(components)) != len(components) or \
            any(comp not in fam.params for comp in components):
        raise ConfigError(f"components {tuple(components)} not in {fam.params}", key="wrt")
    for e in _labels(estimators):
        registry.check_combination(e, fam, c, tuple(components))
    names = fam.params + c.params
    if not isinstance(params, Mapping) or set(params) != set(names):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ConfigError(f"parameters {got} do not match {fam.name} and cost {c.name}: "
                          f"{list(names)}", key="problem")
    try:
        values = {p: float(params[p]) for p in names}
    except (TypeError, ValueError):
        raise ConfigError(f"parameters must be numbers, got {dict(params)}",
                          key="problem") from None
    for p, x in values.items():
        if not math.isfinite(x):
            raise ConfigError(f"{p} must be finite, got {x}", key=f"problem.{p}")
        if p in fam.positive + c.positive and not x > 0:
            raise ConfigError(f"{p} must be > 0, got {x}", key=f"problem.{p}")
    if int(n_samples) != n_samples or n_samples < 2:
        raise ConfigError(f"n_samples must be an integer >= 2, got {n_samples}", key="n_samples")
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or seeds.size == 0 or seeds.dtype.kind not in "iu" or (seeds < 0).any():
        raise ConfigError("seeds must be a non-empty 1-D array of non-negative integers",
                          key="seeds")
    return seeds, values


def vector_width(family, cost, estimators, components) -> int:
    """The narrowest, over the cell's kernels (draw and terms), of the widest ``<N x double>``
    vector LLVM emitted in a kernel (1 if some hot loop was not
    vectorised). Compiles uncached copies, since numba cannot inspect code loaded from its
    cache. Used by a test so a refactor cannot silently lose SIMD."""
    from numba import njit

    labels, components = _labels(estimators), tuple(components)
    fam, c = registry.get_family(family), registry.get_cost(cost)
    variants, _, _, _ = _layout(labels, components)
    kernels = load_kernel(fam, cost, labels, components)
    rows = 4 + any(v.independent_copy for v in variants)
    key = np.zeros(1, dtype=np.uint64)
    head = (key, key, np.int64(16), np.int64(1), np.int64(8), np.array([0, 1]), np.int64(0))
    params = np.ones(len(fam.params) + len(c.params))
    draws = np.zeros((1, rows, 2, LANES))
    calls = [(kernels.draw, (*head, params, np.int64(INDEPENDENT_STREAM_OFFSET), draws))]
    calls += [(kernel, (*head, np.zeros((1, kernel.py_func.__globals__["N_DRAWS"], 2, LANES))))
              for kernel in kernels.shared]
    for kernel, v in zip(kernels.terms, [v for v in variants for _ in components]):
        n_q = v.n_moments or 1
        calls.append((kernel, (*head, params, np.ones(v.n_consts), draws,
                               np.zeros((1, max(n_shared(v), 1), 2, LANES)), np.zeros((1, n_q)),
                               np.zeros((1, 2, n_q, LANES)))))
    widths = []
    for kernel, args in calls:
        fresh = njit(nogil=True, error_model="numpy", fastmath={"contract"})(kernel.py_func)
        fresh(*args)
        widths.append(_widest_vector(fresh.overloads[fresh.signatures[0]].library))
    return min(widths)


def _widest_vector(library) -> int:
    """Widest ``<N x double>`` in a compiled library and the libraries linked into it."""
    import re

    seen, stack, widths = set(), [library], [1]
    while stack:
        lib = stack.pop()
        if id(lib) in seen:
            continue
        seen.add(id(lib))
        stack.extend(getattr(lib, "_linking_libraries", ()))
        widths += [int(w) for w in re.findall(r"<(\d+) x double>", lib.get_llvm_str())]
    return max(widths)


if __name__ == "__main__":
    _compile_main(sys.argv[1:])
