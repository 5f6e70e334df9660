"""Throughput of the gamma family: its Marsaglia-Tsang sampler against the normal draws, and
whole cells (draw + estimator terms + accumulation) of the CPU backend per estimator.

    python benchmarks/gamma_bench.py [--threads T]

Prints M samples/s, best of 3 after a warm-up (compiles excluded).  The numbers in
docs/performance.md come from this script."""

import argparse
import time

import numba
import numpy as np
from numba import njit

from harness.backends import cpu
from harness.distributions import gamma
from harness.rng import normal_pair


@njit
def _gamma_sum(shape, n):
    total = 0.0
    for p in range(n // 2):
        e0, e1 = gamma.draw_pair_at((shape, 1.0), np.uint64(7), np.uint64(0), np.uint64(p),
                                    np.uint64(0))
        total += e0 + e1
    return total


@njit
def _normal_sum(n):
    total = 0.0
    for p in range(n // 2):
        z0, z1 = normal_pair(np.uint64(7), np.uint64(0), np.uint64(p), np.uint64(0))
        total += z0 + z1
    return total


def best(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    n = 4_000_000
    print("sampler, one thread, M draws/s")
    print(f"  normal (Box-Muller)   {n / best(lambda: _normal_sum(n)) / 1e6:7.1f}")
    for shape in (0.3, 1.0, 4.5):
        rate = n / best(lambda shape=shape: _gamma_sum(shape, n)) / 1e6
        print(f"  gamma shape {shape:<4}      {rate:7.1f}")
    n, seeds = 1_000_000, np.arange(8)
    print(f"cells (cost cos, N = {n}, 8 seeds, {numba.get_num_threads()} threads), M samples/s "
          "(all components of the family)")
    cases = [("normal", {"mu": 0.3, "sigma": 1.2, "k": 1.0}, ["score_function", "pathwise"]),
             ("gamma", {"shape": 0.3, "rate": 1.0, "k": 1.0},
              ["score_function", "pathwise", "grep"]),
             ("gamma", {"shape": 4.5, "rate": 1.0, "k": 1.0},
              ["score_function", "pathwise", "grep"])]
    for family, params, estimators in cases:
        comps = [p for p in params if p != "k"]
        for label in estimators:
            t = best(lambda f=family, e=label, c=comps, p=params:
                     cpu.estimate(f, "cos", [e], c, p, n, seeds))
            print(f"  {family:<7} {str(params):<42} {label:<16} {n * seeds.size / t / 1e6:7.1f}")


if __name__ == "__main__":
    main()
