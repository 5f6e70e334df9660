"""Issue 10's measurements in one command: the Mohamed et al. studies cold and warm against
their NumPy versions, the VI examples, per-estimator throughput and the seed-000 kernel
against a compute-ceiling reference kernel.

    python benchmarks/study_bench.py [--reference-kernel PATH] [--costs quadratic exp cos]
                                     [--no-vi] [--no-throughput] [--examples] [--out DIR]

- *cold*: ``harness run GRID --force`` in a new process with empty kernel and numba cache
  directories (everything compiled); *warm*: the same command again (kernels loaded from
  the caches).  Wall times of the whole command, as a user sees them; *compile*: cold
  minus warm, the time a first run spends compiling (issue 10's "compiles in <= 20 s").
- *numpy*: ``benchmarks/numpy_study.py`` on the same grid, in this process, and the
  largest |z| between its means over seeds and the harness's (per k, estimator and
  component; z in standard errors of the difference, expected below 5).
- *examples* (``--examples``): cold and warm times of every other bundled example.
- *throughput*: each estimator variant alone, 8 seeds x 10^7 samples, wrt mu and sigma,
  f = (x - 0.5)^2 (the quadratic cost, k = 0.5), warm, best of 3, and its ratio to pathwise.
- *ceiling*: the seed-000 kernel (score function + pathwise wrt mu, f = x^2, q = N(2, 1))
  against the reference kernel at ``--reference-kernel`` (a Philox4x32-10 + polynomial
  Box-Muller kernel with fastmath; not part of this repository), same process, same
  workload size (8 seeds x 2.5e7).

Prints one table per part; nothing is asserted (speed stays out of the tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy_study  # noqa: E402

STUDY_LABELS = numpy_study.LABELS
VI_EXAMPLES = ("vi_gaussian", "vi_logistic_regression", "vi_ripple")


def say(line: str) -> str:
    """Print a result line as soon as it is measured (and return it)."""
    print(line, flush=True)
    return line


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), "?")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() \
        else ["?"]
    return f"{model}, {os.cpu_count()} cores, load average {' '.join(load)}"


def harness_run(grid: Path, out: Path, caches: Path) -> float:
    """Wall seconds of ``harness run GRID --out OUT --force`` in a new process whose kernel
    and numba caches are under ``caches``."""
    env = {**os.environ, "HARNESS_KERNEL_DIR": str(caches / "kernels"),
           "NUMBA_CACHE_DIR": str(caches / "numba"), "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(grid), "--out",
                           str(out), "--force"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"harness run {grid} failed:\n{proc.stderr}")
    return seconds


def max_z(results_dir: Path, numpy_out: dict, ks: np.ndarray) -> tuple[float, int]:
    """Largest |z| and the number of comparisons: harness vs NumPy means over seeds (where
    both have no variance but rounding, equal to 1e-9 relative counts as z = 0, else inf)."""
    import pandas as pd

    df = pd.read_parquet(results_dir)
    worst, count = 0.0, 0
    for (label, comp), (est, _) in numpy_out.items():
        part = df[(df["estimator"] == label) & (df["param"] == comp)]
        for i, k in enumerate(ks):
            h = part[np.isclose(part["k"], k)]["estimate"].to_numpy()
            se = np.sqrt(est[i].var(ddof=1) / est.shape[1] + h.var(ddof=1) / h.size)
            diff, scale = abs(h.mean() - est[i].mean()), 1e-9 * (1.0 + abs(est[i].mean()))
            if se < scale:  # no variance but rounding (delta_cv on quadratic f): equal?
                worst = max(worst, 0.0 if diff < scale else float("inf"))
            else:
                worst = max(worst, diff / se)
            count += 1
    return worst, count


def studies(costs, tmp: Path) -> list[str]:
    lines = [say(f"{'study':28} {'cold s':>8} {'warm s':>8} {'compile s':>9} {'numpy s':>8} "
                 f"{'numpy/warm':>10} {'max |z| (n)':>14}")]
    for cost in costs:
        grid = ROOT / "examples" / f"mohamed_section3_{cost}.yaml"
        caches, out = tmp / f"caches_{cost}", tmp / f"runs_{cost}"
        cold = harness_run(grid, out, caches)
        warm = harness_run(grid, out, caches)
        ks = numpy_study.grid_ks(cost)
        t0 = time.perf_counter()
        numpy_out = numpy_study.study(cost, ks)
        numpy_seconds = time.perf_counter() - t0
        z, n = max_z(out / "results", numpy_out, ks)
        lines.append(say(f"{grid.stem:28} {cold:8.1f} {warm:8.1f} {cold - warm:9.1f} "
                         f"{numpy_seconds:8.1f} {numpy_seconds / warm:10.1f} {z:8.2f} ({n})"))
    return lines


def vi_examples(tmp: Path) -> list[str]:
    lines = [say(f"{'example':28} {'cold s':>8} {'warm s':>8}")]
    for name in VI_EXAMPLES:
        grid = ROOT / "examples" / f"{name}.yaml"
        caches, out = tmp / f"caches_{name}", tmp / f"runs_{name}"
        cold = harness_run(grid, out, caches)
        warm = harness_run(grid, out, caches)
        lines.append(say(f"{name:28} {cold:8.1f} {warm:8.1f}"))
    return lines


def other_examples(tmp: Path) -> list[str]:
    """Cold and warm ``harness run`` of every other bundled example (no NumPy versions)."""
    done = {f"mohamed_section3_{cost}" for cost in ("quadratic", "exp", "cos")} | \
        set(VI_EXAMPLES)
    lines = [say(f"{'example':28} {'cold s':>8} {'warm s':>8}")]
    for grid in sorted((ROOT / "examples").glob("*.yaml")):
        if grid.stem in done:
            continue
        caches, out = tmp / f"caches_{grid.stem}", tmp / f"runs_{grid.stem}"
        cold = harness_run(grid, out, caches)
        warm = harness_run(grid, out, caches)
        lines.append(say(f"{grid.stem:28} {cold:8.1f} {warm:8.1f}"))
    return lines


def _best(fn, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(n: int = 10**7, seeds: int = 8) -> list[str]:
    from harness import registry
    from harness.backends import cpu

    params = {"mu": 1.0, "sigma": 1.0, "k": 0.5}
    labels = [label for name in registry.ESTIMATORS for label in registry.variants(name)
              if registry.combination_problem(label, "normal", "quadratic") is None]
    rates = {}
    for label in labels:
        def run(label=label, n=n):
            cpu.estimate("normal", "quadratic", [label], ["mu", "sigma"], params, n,
                         np.arange(seeds))
        run(n=1000)  # compile or load
        rates[label] = n * seeds / _best(run) / 1e6
    lines = [f"{'estimator (alone, wrt mu and sigma)':44} {'M samples/s':>12} "
             f"{'pathwise / it':>14}"]
    for label, rate in rates.items():
        lines.append(f"{label:44} {rate:12.1f} {rates['pathwise'] / rate:14.2f}")
    return lines


def ceiling(path: Path, n: int = 25_000_000, seeds: int = 8) -> list[str]:
    from harness.backends import cpu

    sys.path.insert(0, str(path.parent))  # the reference imports its sibling nbrng
    spec = importlib.util.spec_from_file_location("reference_kernel", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    reference.throughput(n=10**7, seeds=1, repeats=1)  # compile (and its own check of the means)

    def seed000():
        cpu.estimate("normal", "square", ["score_function", "pathwise"], ["mu"],
                     {"mu": 2.0, "sigma": 1.0}, n, np.arange(seeds))

    seed000()
    harness_rate = n * seeds / _best(seed000, 5) / 1e6
    reference_rate = reference.throughput(n=n, seeds=seeds, repeats=5) / 1e6
    return [f"seed-000 kernel {harness_rate:.0f} M samples/s, reference kernel "
            f"{reference_rate:.0f} M samples/s: {harness_rate / reference_rate:.2f} of the "
            f"reference ({seeds} seeds x {n:.2g})"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-kernel", type=Path, default=None,
                        help="path of the reference kernel (reference_kernel.py)")
    parser.add_argument("--costs", nargs="*", default=["quadratic", "exp", "cos"])
    parser.add_argument("--no-vi", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--examples", action="store_true",
                        help="also every other bundled example, cold and warm")
    parser.add_argument("--out", type=Path, default=None, help="keep runs and caches here")
    args = parser.parse_args(argv)
    print("machine:", machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="harness-study-bench-") as tmp:
        tmp = args.out or Path(tmp)
        studies(args.costs, tmp)
        if not args.no_vi:
            vi_examples(tmp)
        if args.examples:
            other_examples(tmp)
    if not args.no_throughput:
        print("\n".join(throughput()), flush=True)
    if args.reference_kernel is not None:
        print("\n".join(ceiling(args.reference_kernel)), flush=True)
    print("machine at the end:", machine())


if __name__ == "__main__":
    main()
