"""Scale figures of the Dask executor (docs/performance.md, "Dask"): per-cell overhead,
the driver's peak memory on a 10,000-cell grid, speed-up of a study-sized grid, cold and warm
cluster start.

Every run is a new process (``drive``) running ``runner.run_grid`` into a new directory and
printing one JSON line: wall seconds, cells computed and the driver's peak RSS (the driver
alone: Dask workers are other processes).  Run from the repository root::

    python benchmarks/dask_scale.py overhead     # tiny cells: serial vs Dask, per cell
    python benchmarks/dask_scale.py memory       # 1,000 and 10,000 cells: driver peak RSS
    python benchmarks/dask_scale.py speedup      # examples/mohamed_section3_quadratic.yaml
    python benchmarks/dask_scale.py cold         # empty kernel caches vs warm, serial and Dask

Set HARNESS_KERNEL_DIR and NUMBA_CACHE_DIR to scratch directories first: ``cold`` empties
copies of them.  Numbers depend on the machine and its load; nothing here asserts speed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "examples" / "mohamed_section3_quadratic.yaml"


def tiny_grid(cells: int) -> str:
    """``cells`` cells of 1 seed x N = 10 (the work per cell is negligible: its overhead)."""
    ks = ", ".join(f"{0.001 * i:.3f}" for i in range(cells))
    return (f"name: tiny{cells}\nproblem: {{distribution: normal, cost: quadratic, mu: 1.0, "
            f"sigma: 1.0, k: [{ks}]}}\nestimators: [score_function, pathwise]\n"
            "n_samples: [10]\nseeds: 1\n")


def drive(grid_path: str, out: str, executor: str, workers: str, threads: str) -> None:
    """In this process: run the grid, print {seconds, computed, peak_rss_mib}."""
    from harness.config import load_grid
    from harness.executors import DaskExecutor
    from harness.runner import run_grid

    grid = load_grid(Path(grid_path))
    started = time.perf_counter()
    if executor == "serial":
        summary = run_grid(grid, out, progress=False)
        shape = None
    else:
        with DaskExecutor(workers=int(workers) or None, threads=int(threads) or None) as ex:
            summary = run_grid(grid, out, progress=False, executor=ex)
            shape = ex.shape
    seconds = time.perf_counter() - started
    me = resource.getrusage(resource.RUSAGE_SELF)
    # the workers' CPU time too: they are descendants, waited for when the cluster closed
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    print(json.dumps({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                      "computed": summary.computed, "peak_rss_mib": round(me.ru_maxrss / 1024, 1),
                      "shape": shape}))


def run(grid_text_or_path, executor="serial", workers=0, threads=0, env=None) -> dict:
    """One ``drive`` in a new process, into a new directory."""
    with tempfile.TemporaryDirectory(prefix="harness-dask-bench-") as tmp:
        if isinstance(grid_text_or_path, Path):
            grid = grid_text_or_path
        else:
            grid = Path(tmp) / "grid.yaml"
            grid.write_text(grid_text_or_path)
        command = [sys.executable, __file__, "drive", str(grid), str(Path(tmp) / "out"),
                   executor, str(workers), str(threads)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        return json.loads(result.stdout.strip().splitlines()[-1])


def overhead() -> None:
    """Per cell: the difference between a 1,000- and a 200-cell run (start-up cancels)."""
    small, large = 200, 1000
    for label, kwargs in (("serial", {}),
                          ("dask 1 worker", {"executor": "dask", "workers": 1, "threads": 1}),
                          ("dask 2 workers", {"executor": "dask", "workers": 2, "threads": 1})):
        a, b = run(tiny_grid(small), **kwargs), run(tiny_grid(large), **kwargs)
        wall = (b["seconds"] - a["seconds"]) / (large - small)
        cpu = (b["cpu_seconds"] - a["cpu_seconds"]) / (large - small)
        print(f"{label:15} {small} cells {a['seconds']:.2f} s, {large} cells "
              f"{b['seconds']:.2f} s: {1000 * wall:.1f} ms wall, {1000 * cpu:.1f} ms CPU "
              f"(all processes) per cell", flush=True)


def memory() -> None:
    for label, cells, kwargs in (
            ("serial", 1000, {}),
            ("dask 2 workers", 1000, {"executor": "dask", "workers": 2, "threads": 1}),
            ("dask 2 workers", 10000, {"executor": "dask", "workers": 2, "threads": 1})):
        r = run(tiny_grid(cells), **kwargs)
        print(f"{label:15} {cells:6} cells: {r['seconds']:.1f} s, driver peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB", flush=True)


def speedup(repeats: int = 2) -> None:
    """The study grid, warm caches; the configurations alternate (the machine's load
    drifts), each run printed with the load average before it."""
    run(STUDY)                            # warm the kernel cache
    for i in range(repeats):
        for label, kwargs in (("serial (2 numba threads)", {}),
                              ("dask 2 workers x 1 thread", {"executor": "dask"}),
                              ("dask 1 worker x 2 threads", {"executor": "dask", "workers": 1})):
            load = os.getloadavg()[0]
            r = run(STUDY, **kwargs)
            print(f"run {i + 1}: {label:26} {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s "
                  f"CPU ({r['computed']} cells; load average {load:.1f} before)", flush=True)


def cold() -> None:
    for label, kwargs in (("serial", {}), ("dask 2 workers x 1 thread", {"executor": "dask"})):
        with tempfile.TemporaryDirectory(prefix="harness-cold-") as tmp:
            env = {"HARNESS_KERNEL_DIR": f"{tmp}/kernels", "NUMBA_CACHE_DIR": f"{tmp}/numba"}
            load = os.getloadavg()[0]
            first = run(STUDY, env=env, **kwargs)
            second = run(STUDY, env=env, **kwargs)
        print(f"{label:26} cold {first['seconds']:.1f} s, warm {second['seconds']:.1f} s "
              f"(load average {load:.1f} before)", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "drive":
        drive(*sys.argv[2:7])
    elif what in {"overhead", "memory", "speedup", "cold"}:
        globals()[what]()
    else:
        raise SystemExit(__doc__)
