"""``harness bench``: throughput of the CPU kernel against a NumPy reference, same process.

The workload is the seed-000 problem (q = N(2, 1), f = x^2, gradient wrt mu): score-function
and pathwise estimates with their per-sample variances, for ``n_seeds`` seeds of
``n_samples`` samples each. Both implementations compute the same statistics; the NumPy one
uses ``numpy.random.default_rng`` in chunks of ``CHUNK`` samples (the fastest plain-NumPy way
that does not store N samples). Figures are samples per second (one sample = one draw that
feeds both estimators) and their ratio; speed is never asserted in a test.

:func:`run_report` (``harness bench``) adds, each measured in a fresh process so that
nothing else in this one skews it: the kernel's compile time with an empty cache and its
load time in a second process (with numba's cache hit/miss counters), and the peak RSS at
several N (it must stay flat: kernels never store samples).
:func:`run_scaling` (``harness bench --scaling``) writes time vs N and vs seeds per estimator
as a Parquet table and a PNG.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from .backends import cpu

CHUNK = 1 << 20
MU, SIGMA = 2.0, 1.0
WORKLOAD = ("score_function", "pathwise")


def vector_note() -> str:
    """How wide the kernels' vectors are asked to be (``harness.cpu_tuning``), for the
    report: the kernels' speed depends on it, their numbers do not."""
    from .cpu_tuning import prefer_wide_vectors

    return {"wide": "512-bit vectors (AVX-512; HARNESS_VECTOR_WIDTH=native for numba's)",
            "native": "numba's vector width (HARNESS_VECTOR_WIDTH=native)",
            "no-avx512": "numba's vector width (no AVX-512)",
            "user-features": "CPU features from NUMBA_CPU_FEATURES",
            "too-late": "numba's vector width (numba was set up before harness)",
            }[prefer_wide_vectors()]


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


def _harness_kernel(n_samples: int, seeds, estimators=WORKLOAD):
    est, var = cpu.estimate("normal", "square", list(estimators), ["mu"],
                            {"mu": MU, "sigma": SIGMA}, n_samples,
                            np.asarray(seeds, dtype=np.int64))
    return est[:, :, 0], var[:, :, 0]


def _best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """Least ``clock`` time of ``repeats`` calls. With ``clock=time.process_time`` (CPU time
    of all threads of this process) it hardly changes when other processes compete."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class BenchResult:
    """One in-process measurement at one thread count."""

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
            f"threads      {self.threads} (numba), cores {os.cpu_count()}; {vector_note()}",
            f"harness      {self.harness_rate / 1e6:9.1f} M samples/s  "
            f"({self.harness_seconds:.3f} s)",
            f"numpy        {self.numpy_rate / 1e6:9.1f} M samples/s  "
            f"({self.numpy_seconds:.3f} s)",
            f"ratio        {self.ratio:9.1f} x numpy",
            f"first call   {self.compile_seconds:9.2f} s (compile, or load from the kernel cache)",
            f"peak RSS     {self.peak_rss_mib:9.0f} MiB",
        ])


def run_bench(n_samples: int = 10**7, n_seeds: int = 8, threads: int | None = None,
              repeats: int = 3) -> BenchResult:
    """Time the harness kernel and the NumPy reference on the same workload (one thread
    count, this process only)."""
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


# --- measurements in a fresh process ------------------------------------------------------

def _child(argv: list[str]) -> dict:
    """Entry point of ``python -m harness.bench MODE ...`` (used by :func:`run_report`)."""
    mode = argv[0]
    if mode == "first-call":
        # time the first call (compile or cache load) and read numba's cache counters
        t0 = time.perf_counter()
        _harness_kernel(1000, [0])
        seconds = time.perf_counter() - t0
        kernel = cpu.load_kernel("normal", "square", WORKLOAD, ("mu",))
        stats = kernel.stats
        return {"seconds": seconds, "cache_hits": int(sum(stats.cache_hits.values())),
                "cache_misses": int(sum(stats.cache_misses.values()))}
    if mode in ("rss", "rss-storing"):
        # "rss-storing" is a deliberately wrong implementation that stores its samples, so
        # tests can show that the measurement catches one
        n_samples, n_seeds = int(argv[1]), int(argv[2])
        run = _harness_kernel if mode == "rss" else _storing_kernel
        run(1000, [0])  # imports, kernel load or compile, thread pool start
        # The peak since now: a compile's transient peak (LLVM) must not hide the run's own
        # allocations, so reset the high-water mark where Linux allows it.
        fresh_peak = _reset_peak_rss()
        before = _status_mib("VmRSS") if fresh_peak else peak_rss_mib()
        t0 = time.perf_counter()
        run(n_samples, list(range(n_seeds)))
        return {"seconds": time.perf_counter() - t0, "rss_before_mib": before,
                "peak_rss_mib": _status_mib("VmHWM") if fresh_peak else peak_rss_mib()}
    raise SystemExit(f"unknown mode {mode!r}")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``/proc/self/clear_refs``); False if
    that is not possible here."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mib("VmHWM") > 0
    except (OSError, ValueError):
        return False


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(field)


def _storing_kernel(n_samples: int, seeds):
    """The seed-000 statistics from stored samples (all N normals of a seed as one array):
    the memory use the kernels must not have, for checks of the RSS measurement."""
    from .rng import normals

    est, var = [], []
    for seed in seeds:
        x = MU + SIGMA * normals(int(seed), n_samples)
        terms = np.stack([x * x * (x - MU) / SIGMA ** 2, 2.0 * x])
        est.append(terms.mean(axis=1))
        var.append(terms.var(axis=1, ddof=1))
    return np.array(est), np.array(var)


def rss_growth(n_samples: int, n_seeds: int, storing: bool = False) -> float:
    """MiB by which the peak RSS of a new process grows while it computes the seed-000
    statistics of ``n_seeds`` seeds x ``n_samples`` samples (after a warm-up call that
    loads the kernels); ``storing``: with the deliberately wrong ``_storing_kernel``."""
    r = _in_new_process(["rss-storing" if storing else "rss", n_samples, n_seeds])
    return r["peak_rss_mib"] - r["rss_before_mib"]


def _in_new_process(args: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "harness.bench", *map(str, args)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench subprocess {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class BenchReport:
    """``harness bench``: thread counts, NumPy ratio, compile/cache, RSS vs N."""

    n_samples: int
    n_seeds: int
    numpy_seconds: float
    harness_seconds: dict            # threads -> best seconds
    cpu_seconds: dict = field(default_factory=dict)  # "numpy" / "harness" -> best CPU seconds
    compile: dict | None = None      # first-call in a cold / warm process
    rss: list = field(default_factory=list)   # (n_samples, n_seeds, result dict)

    def rate(self, seconds: float) -> float:
        return self.n_samples * self.n_seeds / seconds

    def __str__(self) -> str:
        lines = [
            f"workload        score_function + pathwise wrt mu, q = N(2, 1), f = x^2, "
            f"{self.n_seeds} seeds x {self.n_samples:.3g} samples",
            f"machine         {os.cpu_count()} cores; numba threading layer "
            f"{numba.threading_layer()}; {vector_note()}",
            f"{'implementation':24} {'M samples/s':>12} {'seconds':>9} {'x numpy':>8}",
            f"{'numpy default_rng':24} {self.rate(self.numpy_seconds) / 1e6:12.1f} "
            f"{self.numpy_seconds:9.3f} {1.0:8.1f}",
        ]
        for threads, seconds in sorted(self.harness_seconds.items()):
            label = f"harness, {threads} thread{'s' if threads > 1 else ''}"
            lines.append(f"{label:24} {self.rate(seconds) / 1e6:12.1f} {seconds:9.3f} "
                         f"{self.numpy_seconds / seconds:8.1f}")
        counts = sorted(self.harness_seconds)
        if len(counts) > 1:
            lo, hi = counts[0], counts[-1]
            speedup = self.harness_seconds[lo] / self.harness_seconds[hi]
            lines.append(f"thread scaling  {hi} vs {lo} threads: {speedup:.2f}x "
                         f"(ideal {hi / lo:.0f}x)")
        if self.cpu_seconds:
            per_cpu = {k: self.rate(v) / 1e6 for k, v in self.cpu_seconds.items()}
            lines.append(f"per CPU-second  harness {per_cpu['harness']:.1f} (1 thread), numpy "
                         f"{per_cpu['numpy']:.1f} M samples (its dot products may use BLAS "
                         f"threads): {per_cpu['harness'] / per_cpu['numpy']:.1f}x; process "
                         f"CPU time, less sensitive to other load than wall time")
        if self.compile:
            cold, warm = self.compile["cold"], self.compile["warm"]
            cached = "yes" if warm["cache_hits"] > 0 and warm["cache_misses"] == 0 else "NO"
            lines.append(f"kernel compile  {cold['seconds']:.2f} s in a new process with an "
                         f"empty cache (numba cache misses {cold['cache_misses']})")
            lines.append(f"kernel cached   {cached}: {warm['seconds']:.2f} s in a second "
                         f"process (cache hits {warm['cache_hits']}, misses "
                         f"{warm['cache_misses']})")
        if self.rss:
            parts = [f"N={n:.0e}: {r['peak_rss_mib']:.0f} MiB "
                     f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.1f} during the run)"
                     for n, _, r in self.rss]
            seeds = self.rss[0][1]
            lines.append(f"peak RSS        new process per N, {seeds} seeds: " + "; ".join(parts))
            peaks = [r["peak_rss_mib"] for _, _, r in self.rss]
            growth = max(peaks) - min(peaks)
            lines.append(f"                spread {growth:.1f} MiB over N "
                         f"{self.rss[0][0]:.0e}..{self.rss[-1][0]:.0e}: "
                         f"{'flat' if growth < 16 else 'GROWS'}")
        return "\n".join(lines)


def run_report(n_samples: int = 10**7, n_seeds: int = 8, threads: int | None = None,
               repeats: int = 5, rss_n=(10**6, 10**8, 10**9), rss_seeds: int = 2,
               cache_check: bool = True, echo=None) -> BenchReport:
    """Everything ``harness bench`` prints. ``threads``: one count, or None for 1 and the
    maximum; ``rss_n``: the N values of the peak-RSS runs (each in a new process);
    ``echo``: optional callable for progress lines."""
    say = echo or (lambda text: None)
    seeds = list(range(n_seeds))
    counts = [threads] if threads is not None else sorted({1, numba.config.NUMBA_NUM_THREADS})
    before = numba.get_num_threads()
    harness_seconds = {}
    try:
        _harness_kernel(1000, seeds[:1])
        for t in counts:
            say(f"timing the harness kernel on {t} thread(s)")
            numba.set_num_threads(t)
            harness_seconds[t] = _best_time(lambda: _harness_kernel(n_samples, seeds), repeats)
    finally:
        numba.set_num_threads(before)
    say("timing the NumPy reference")
    numpy_seconds = _best_time(lambda: numpy_reference(n_samples, seeds), max(1, repeats - 1))
    say("CPU time per sample, 1 thread")
    try:
        numba.set_num_threads(1)
        cpu_seconds = {"harness": _best_time(lambda: _harness_kernel(n_samples, seeds),
                                             repeats, clock=time.process_time),
                       "numpy": _best_time(lambda: numpy_reference(n_samples, seeds), 1,
                                           clock=time.process_time)}
    finally:
        numba.set_num_threads(before)

    compile_info = None
    if cache_check:
        say("compiling in a new process with an empty cache, then loading in another")
        with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
            env = {**os.environ, "HARNESS_KERNEL_DIR": tmp, "NUMBA_CACHE_DIR": tmp}
            cold = _in_new_process(["first-call"], env)
            warm = _in_new_process(["first-call"], env)
        compile_info = {"cold": cold, "warm": warm}
    rss = []
    for n in rss_n:
        say(f"peak RSS at N = {n:.0e} in a new process")
        rss.append((int(n), rss_seeds, _in_new_process(["rss", int(n), rss_seeds])))
    return BenchReport(n_samples=n_samples, n_seeds=n_seeds, numpy_seconds=numpy_seconds,
                       harness_seconds=harness_seconds, cpu_seconds=cpu_seconds,
                       compile=compile_info, rss=rss)


# --- scaling ----------------------------------------------------------------------------

SCALING_SETS = (("score_function",), ("pathwise",), WORKLOAD)


def run_scaling(out_dir, n_values=tuple(10**e for e in range(3, 10)), n_seeds: int = 2,
                seed_values=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                seeds_n: int = 10**5, numpy_max_n: int = 10**8, estimator_sets=SCALING_SETS,
                echo=None) -> tuple[Path, Path]:
    """Time vs N (at ``n_seeds`` seeds) and vs seeds (at N = ``seeds_n``) for each
    estimator alone and both together, plus the NumPy reference up to ``numpy_max_n``.
    Writes ``bench_scaling.parquet`` and ``bench_scaling.png`` to ``out_dir``."""
    import pandas as pd

    say = echo or (lambda text: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = numba.get_num_threads()
    rows = []

    def timed(fn, *args):
        # Best of many for short runs: fixed overheads are what is measured there, and on a
        # shared machine a parallel region can wait a whole scheduler slice for a core.
        times = [_best_time(lambda: fn(*args), 1)]
        while len(times) < 100 and (len(times) < 3 or sum(times) < 0.5) and times[0] < 1.0:
            times.append(_best_time(lambda: fn(*args), 1))
        return min(times), len(times)

    for estimators in estimator_sets:
        label = "+".join(estimators)
        _harness_kernel(1000, [0], estimators)  # compile or load outside the timings
        for n in n_values:
            say(f"{label}: N = {n:.0e}, {n_seeds} seeds")
            seeds = list(range(n_seeds))
            seconds, reps = timed(_harness_kernel, n, seeds, estimators)
            rows.append(("n_samples", "harness", label, n, n_seeds, threads, seconds, reps))
        for s in seed_values:
            say(f"{label}: {s} seeds, N = {seeds_n:.0e}")
            seeds = list(range(s))
            seconds, reps = timed(_harness_kernel, seeds_n, seeds, estimators)
            rows.append(("seeds", "harness", label, seeds_n, s, threads, seconds, reps))
    label = "+".join(WORKLOAD)
    for n in n_values:
        if n <= numpy_max_n:
            say(f"numpy: N = {n:.0e}")
            seconds, reps = timed(numpy_reference, n, list(range(n_seeds)))
            rows.append(("n_samples", "numpy", label, n, n_seeds, 1, seconds, reps))
    df = pd.DataFrame(rows, columns=["sweep", "implementation", "estimators", "n_samples",
                                     "n_seeds", "threads", "seconds", "repeats"])
    df["samples_per_second"] = df["n_samples"] * df["n_seeds"] / df["seconds"]
    table = out_dir / "bench_scaling.parquet"
    df.to_parquet(table, index=False)
    figure = out_dir / "bench_scaling.png"
    plot_scaling(df, figure)
    return table, figure


def plot_scaling(df, path) -> None:
    """Two log-log panels: seconds vs N and seconds vs seeds, one line per estimator set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, sweep, x, xlabel in ((axes[0], "n_samples", "n_samples", "N (samples per seed)"),
                                 (axes[1], "seeds", "n_seeds", "seeds")):
        part = df[df["sweep"] == sweep]
        for (impl, label), g in part.groupby(["implementation", "estimators"], sort=False):
            g = g.sort_values(x)
            style = "--" if impl == "numpy" else "-"
            ax.loglog(g[x], g["seconds"], style, marker="o", ms=3, label=f"{impl}: {label}")
        # linear-cost guide through the largest harness point of the combined workload
        ref = part[(part["implementation"] == "harness")
                   & (part["estimators"] == "+".join(WORKLOAD))].sort_values(x)
        if len(ref):
            xs = np.array([ref[x].min(), ref[x].max()], dtype=float)
            ys = ref["seconds"].iloc[-1] * xs / xs[-1]
            ax.loglog(xs, ys, ":", color="grey", label="linear cost")
        other = "seeds" if sweep == "n_samples" else "N"
        fixed = part["n_seeds"].iloc[0] if sweep == "n_samples" else part["n_samples"].iloc[0]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (best of repeats)")
        ax.set_title(f"time vs {xlabel.split(' ')[0]} ({other} = {fixed:.3g}, "
                     f"{df['threads'].max()} threads)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_child(sys.argv[1:])) + "\n")
