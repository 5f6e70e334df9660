"""How fast can a kernel that keeps harness's rules be on this machine?  Issue 10's ceilings.

    python benchmarks/ceiling.py --reference-kernel PATH [--rounds 3]

Part 1: the seed-000 workload (score function + pathwise wrt mu, q = N(2, 1), f = x^2, sums
and sums of squares, 8 seeds x 2.5e7) as ONE fused kernel, like the reference kernel at PATH
(Philox4x32-10, a polynomial Box-Muller, prange over chunks, fastmath=True), but varying one
thing at a time:

- the normals: the reference's (its sibling module ``nbrng``) or harness's own
  (``harness.rng.normal_pair``: 53-bit uniforms, fdlibm-accurate log and sin/cos, the
  numbers every harness result is made of);
- the sums: reassociated by LLVM (``fastmath=True``, as the reference), scalar in a fixed
  order (contract only), or in a fixed order over L lanes (contract only: harness's rule,
  bits independent of the compiler and of the thread count).

Each is reported as its throughput and its ratio to the reference, same process, best of 5
per round.  The best kernel that keeps harness's rules (harness's normals, fixed order) is
the ceiling of the block pipeline's seed-000 kernel (which also writes its draws to a buffer
and reads them back in separate term kernels).

Part 2: the random numbers per sample, 1 thread, CPU ns (best of 30 x 10 calls of 65 536):
one Philox counter (two 53-bit uniforms), a Box-Muller pair, two Rayleigh draws, and what
pathwise and measure_valued need per sample (pathwise: half a normal pair; measure_valued,
mu and sigma: mu two Rayleigh draws from one counter, sigma a counter of uniforms, half a
normal pair, a log and a square root).

The reference kernel is a measuring stick outside the package; pass its path.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

from harness.rng import normal_pair, uniform_pair
from harness.scalar_math import log_unit

M32, S32 = np.uint64(0xFFFFFFFF), np.uint64(32)


def _load_reference(path: Path):
    sys.path.insert(0, str(path.parent))  # the reference imports its sibling nbrng
    spec = importlib.util.spec_from_file_location("reference_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import nbrng

    return module, nbrng


def _over_chunks(chunk_sums, fastmath):
    """The reference's shape: prange over chunks of pairs, ``chunk_sums(k0, k1, lo, hi,
    theta)`` -> (sum sf, sum sf^2, sum pw, sum pw^2) of pairs lo .. hi - 1 of one chunk."""

    @njit(parallel=True, fastmath=fastmath)
    def kernel(seed, n, theta, chunk_pairs):
        n_pairs = n // 2
        n_chunks = (n_pairs + chunk_pairs - 1) // chunk_pairs
        k0, k1 = np.uint64(seed) & M32, np.uint64(seed) >> S32
        part = np.zeros((n_chunks, 4))
        for c in prange(n_chunks):
            lo = c * chunk_pairs
            part[c, 0], part[c, 1], part[c, 2], part[c, 3] = chunk_sums(
                k0, k1, lo, min(n_pairs, lo + chunk_pairs), theta)
        return part

    return kernel


def _scalar_sums(normals, fastmath):
    """The seed-000 workload with four scalar sums (reassociated only if fastmath=True)."""

    @njit(inline="always", fastmath=fastmath)
    def chunk_sums(k0, k1, lo, hi, theta):
        a = b = d = e = 0.0
        for j in range(lo, hi):
            z0, z1 = normals(k0, k1, j)
            for z in (z0, z1):
                x = theta + z
                sf, pw = x * x * z, 2.0 * x
                a += sf
                b += sf * sf
                d += pw
                e += pw * pw
        return a, b, d, e

    return _over_chunks(chunk_sums, fastmath)


def _lane_sums(normals, n_lanes):
    """The same workload, its sums in a fixed order over ``n_lanes`` lanes (pair j adds to
    lane (j - lo) mod n_lanes; contract only): what harness's kernels do."""

    @njit(inline="always", fastmath={"contract"})
    def chunk_sums(k0, k1, lo, hi, theta):
        acc = np.zeros((4, n_lanes))
        lanes = acc.shape[1]  # a run-time trip count keeps the lane loop (vectorised)
        for first in range(lo, hi, n_lanes):
            for lane in range(lanes):
                j = first + lane
                z0, z1 = normals(k0, k1, j)
                x0, x1 = theta + z0, theta + z1
                sf0, sf1 = x0 * x0 * z0, x1 * x1 * z1
                pw0, pw1 = 2.0 * x0, 2.0 * x1
                if j >= hi:
                    sf0 = sf1 = pw0 = pw1 = 0.0
                acc[0, lane] += sf0 + sf1
                acc[1, lane] += sf0 * sf0 + sf1 * sf1
                acc[2, lane] += pw0 + pw1
                acc[3, lane] += pw0 * pw0 + pw1 * pw1
        totals = np.zeros(4)
        for q in range(4):
            for lane in range(n_lanes):
                totals[q] += acc[q, lane]
        return totals[0], totals[1], totals[2], totals[3]

    return _over_chunks(chunk_sums, {"contract"})


def _rate(kernel, n=25_000_000, seeds=8, repeats=5) -> float:
    """Best-of-``repeats`` M samples/s (2.5e7 samples x 8 seeds, like the reference)."""
    kernel(0, 2048, 2.0, 1 << 15)  # compile
    kernel(0, n, 2.0, 1 << 15)  # and one untimed run (threads started, pages touched)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for s in range(seeds):
            kernel(s, n, 2.0, 1 << 15)
        best = min(best, time.perf_counter() - start)
    return n * seeds / best / 1e6


def fused_ceilings(reference, nbrng, rounds: int) -> list[str]:
    @njit(inline="always")
    def harness_normals(k0, k1, j):
        return normal_pair(k0, k1, j, 0)

    @njit(inline="always")
    def reference_normals(k0, k1, j):
        u = np.uint64(j)
        y1, y2 = nbrng.philox4x32_10(u & M32, u >> S32, np.uint64(0), np.uint64(0), k0, k1)
        return nbrng.box_muller_poly(y1, y2)

    kernels = {
        "reference kernel (its normals, fastmath=True)": reference.reference,
        "reference normals, reassociated sums": _scalar_sums(reference_normals, True),
        "reference normals, fixed order, 8 lanes": _lane_sums(reference_normals, 8),
        "reference normals, fixed order, 32 lanes": _lane_sums(reference_normals, 32),
        "harness normals, reassociated sums": _scalar_sums(harness_normals, True),
        "harness normals, fixed order, scalar sums": _scalar_sums(harness_normals,
                                                                  {"contract"}),
        "harness normals, fixed order, 8 lanes": _lane_sums(harness_normals, 8),
        "harness normals, fixed order, 32 lanes": _lane_sums(harness_normals, 32),
    }
    # every kernel computes the same quantity: check the means agree (pathwise sum / n ~ 4)
    for name, kernel in kernels.items():
        mean = kernel(1, 2_000_000, 2.0, 1 << 15).sum(axis=0)[2] / 2_000_000
        if abs(mean - 4.0) > 0.01:
            raise SystemExit(f"{name}: pathwise mean {mean}, expected 4 (+- 0.002)")
    rows = {name: [] for name in kernels}
    for _ in range(rounds):
        rates = {name: _rate(kernel) for name, kernel in kernels.items()}
        for name, rate in rates.items():
            rows[name].append((rate, rate / rates["reference kernel (its normals, fastmath=True)"]))
    lines = [f"{'fused seed-000 kernel':50} {'M samples/s':>14} {'of reference':>14}"]
    for name, values in rows.items():
        lines.append(f"{name:50} {' / '.join(f'{r:.0f}' for r, _ in values):>14} "
                     f"{' / '.join(f'{q:.2f}' for _, q in values):>14}")
    return lines


@njit(fastmath={"contract"}, error_model="numpy")
def _counters(k0, k1, out):
    for i in range(out.size):
        a, b = uniform_pair(k0, k1, i, 1)
        out[i] = a + b


@njit(fastmath={"contract"}, error_model="numpy")
def _normal_pairs(k0, k1, out):
    for i in range(out.size):
        a, b = normal_pair(k0, k1, i, 1)
        out[i] = a + b


@njit(fastmath={"contract"}, error_model="numpy")
def _rayleigh_pairs(k0, k1, out):
    for i in range(out.size):
        a, b = uniform_pair(k0, k1, i, 1)
        out[i] = math.sqrt(-2.0 * log_unit(a)) + math.sqrt(-2.0 * log_unit(b))


@njit(fastmath={"contract"}, error_model="numpy")
def _maxwell(k0, k1, out):
    """measure_valued's sigma draw per sample: V0, V1 (one counter), Z (half a pair)."""
    for p in range(out.size // 2):  # both samples of a pair in one step (no inner loop:
        z0, z1 = normal_pair(k0, k1, p, 3)  # LLVM vectorises innermost loops only)
        v0, v1 = uniform_pair(k0, k1, 2 * p, 2)
        r = math.sqrt(-2.0 * log_unit(v0) + z0 * z0)
        out[2 * p] = r if v1 < 0.5 else -r
        v0, v1 = uniform_pair(k0, k1, 2 * p + 1, 2)
        r = math.sqrt(-2.0 * log_unit(v0) + z1 * z1)
        out[2 * p + 1] = r if v1 < 0.5 else -r


def _ns(function, n=1 << 16) -> float:
    out = np.empty(n)
    k0, k1 = np.uint64(3), np.uint64(0)
    function(k0, k1, out)
    best = math.inf
    for _ in range(30):
        start = time.process_time()
        for _ in range(10):
            function(k0, k1, out)
        best = min(best, (time.process_time() - start) / 10 / n * 1e9)
    return best


def draw_costs() -> list[str]:
    counter, pair = _ns(_counters), _ns(_normal_pairs)
    rayleigh, maxwell = _ns(_rayleigh_pairs), _ns(_maxwell)
    pathwise = pair / 2
    measure_valued = rayleigh + maxwell
    return [
        "random numbers, 1 thread, CPU ns: "
        f"Philox counter {counter:.2f}, normal pair {pair:.2f}, two Rayleigh draws "
        f"{rayleigh:.2f}, Maxwell draw {maxwell:.2f}",
        f"per sample: pathwise (half a normal pair) {pathwise:.2f} ns; measure_valued, mu and "
        f"sigma (two Rayleigh + one Maxwell) {measure_valued:.2f} ns: "
        f"{measure_valued / pathwise:.1f}x in random numbers alone",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-kernel", type=Path, required=True,
                        help="path of the reference kernel (reference_kernel.py)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the fused kernels")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_bench import machine

    print(f"machine: {machine()}", flush=True)
    reference, nbrng = _load_reference(args.reference_kernel)
    print("\n".join(fused_ceilings(reference, nbrng, args.rounds)), flush=True)
    print("\n".join(draw_costs()), flush=True)


if __name__ == "__main__":
    main()
