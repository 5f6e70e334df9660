"""``harness bench``: throughput of the CPU kernel against a NumPy reference, same process.

The workload is the seed-000 problem (q = N(2, 1), f = x^2, gradient wrt mu): score-function
and pathwise estimates with their per-sample variances, for ``n_seeds`` seeds of
``n_samples`` samples each. Both implementations compute the same statistics; the NumPy one
uses ``numpy.random.default_rng`` in chunks of ``CHUNK`` samples (the fastest plain-NumPy way
that does not store N samples). Figures are samples per second (one sample = one draw that
feeds both estimators) and their ratio; speed is never asserted in a test.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import numba
import numpy as np

from .backends import cpu

CHUNK = 1 << 20
MU, SIGMA = 2.0, 1.0


def numpy_reference(n_samples: int, seeds) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, sample_var), each (n_seeds, 2): score function and pathwise wrt mu."""
    est = np.empty((len(seeds), 2))
    var = np.empty((len(seeds), 2))
    for s, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        total = np.zeros(2)
        total_sq = np.zeros(2)
        done = 0
        while done < n_samples:
            m = min(CHUNK, n_samples - done)
            eps = rng.standard_normal(m)
            x = MU + SIGMA * eps
            sf = x * x * eps / SIGMA
            pw = 2.0 * x
            total += (sf.sum(), pw.sum())
            total_sq += (sf @ sf, pw @ pw)
            done += m
        mean = total / n_samples
        est[s] = mean
        var[s] = (total_sq - n_samples * mean * mean) / (n_samples - 1)
    return est, var


def _harness_kernel(n_samples: int, seeds):
    est, var = cpu.estimate("normal", "square", ["score_function", "pathwise"], ["mu"],
                            MU, SIGMA, 0.0, n_samples, np.asarray(seeds, dtype=np.int64))
    return est[:, :, 0], var[:, :, 0]


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class BenchResult:
    n_samples: int
    n_seeds: int
    threads: int
    compile_seconds: float
    harness_seconds: float
    numpy_seconds: float
    peak_rss_mib: float

    @property
    def harness_rate(self) -> float:
        return self.n_samples * self.n_seeds / self.harness_seconds

    @property
    def numpy_rate(self) -> float:
        return self.n_samples * self.n_seeds / self.numpy_seconds

    @property
    def ratio(self) -> float:
        return self.numpy_seconds / self.harness_seconds

    def __str__(self) -> str:
        return "\n".join([
            f"workload     score_function + pathwise, q=N(2,1), f=x^2, "
            f"{self.n_seeds} seeds x {self.n_samples:.3g} samples",
            f"threads      {self.threads} (numba), cores {os.cpu_count()}",
            f"harness      {self.harness_rate / 1e6:9.1f} M samples/s  "
            f"({self.harness_seconds:.3f} s)",
            f"numpy        {self.numpy_rate / 1e6:9.1f} M samples/s  ({self.numpy_seconds:.3f} s)",
            f"ratio        {self.ratio:9.1f} x numpy",
            f"first call   {self.compile_seconds:9.2f} s (compile, or load from the kernel cache)",
            f"peak RSS     {self.peak_rss_mib:9.0f} MiB",
        ])


def run_bench(n_samples: int = 10**7, n_seeds: int = 8, threads: int | None = None,
              repeats: int = 3) -> BenchResult:
    """Time the harness kernel and the NumPy reference on the same workload."""
    if threads is not None:
        numba.set_num_threads(threads)
    seeds = list(range(n_seeds))
    t0 = time.perf_counter()
    _harness_kernel(1000, seeds[:1])
    compile_seconds = time.perf_counter() - t0
    harness_seconds = _best_time(lambda: _harness_kernel(n_samples, seeds), repeats)
    numpy_seconds = _best_time(lambda: numpy_reference(n_samples, seeds), max(1, repeats - 1))
    return BenchResult(
        n_samples=n_samples, n_seeds=n_seeds, threads=numba.get_num_threads(),
        compile_seconds=compile_seconds, harness_seconds=harness_seconds,
        numpy_seconds=numpy_seconds, peak_rss_mib=peak_rss_mib(),
    )
