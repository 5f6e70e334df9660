"""ELBO estimate cells on the CUDA backend (harness.vi.cuda).

Without a GPU these run on numba-cuda's simulator (``tox -e cudasim`` sets
NUMBA_ENABLE_CUDASIM=1): tiny cells (d = 2, N = 64, 2 seeds).  Elsewhere only the tests that
need no CUDA run.  Stated tolerance (harness.vi.cuda): estimates within
``1e-12 * (|est| + sd)`` of the CPU's, sample variances to a relative 1e-10; under the
simulator, which calls the CPU-compiled per-chunk function, bitwise equal.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import CAN_RUN_CUDA as CAN_RUN  # noqa: E402
from helpers import HAS_NUMBA_CUDA, SIMULATOR, needs_cuda, run_grid  # noqa: E402

from harness.backends import cpu
from harness.vi import api
from harness.vi.api import Problem

ALL = [("reparam", ()), ("reparam_sampled_entropy", ()), ("stl", ()), ("score_function", ()),
       ("score_function", (("baseline", "mean"),)),
       ("score_function", (("baseline", "optimal"),)),
       ("score_function", (("baseline", "exact_optimal"),))]
SEEDS = [0, 2**40 + 3]


def gaussian_problem(family):
    C = np.array([[0.8, 0.0], [0.15, 0.7]]) if family == "full" else np.diag([0.8, 0.7])
    return Problem.make("gaussian", family, {"target_seed": 3}, dim=2, mu=[0.4, -0.4], C=C)


def close(gpu, ref) -> bool:
    (eg, vg, fg), (ec, vc, fc) = gpu, ref
    sd = np.sqrt(vc)
    return bool(np.all(np.abs(eg - ec) <= 1e-12 * (np.abs(ec) + sd))
                and np.allclose(vg, vc, rtol=1e-10, atol=0)
                and np.allclose(fg, fc, rtol=1e-12, atol=0))


CELLS = [
    ("diag", ALL),
    ("full", ALL),
    # a batched target: the minibatch streams (and their independent copy) on the device
    ("logistic", [("stl", ()), ("score_function", (("baseline", "optimal"),))]),
]


@needs_cuda
@pytest.mark.parametrize("family, estimators", CELLS)
def test_estimates_match_the_cpu_backend(family, estimators, monkeypatch):
    # small chunks, so that N = 64 spans several chunks (threads) per seed and a ragged last one
    monkeypatch.setattr(cpu, "MIN_CHUNK_PAIRS", 10)
    if family == "logistic":
        p = Problem.make("logistic_regression", "diag", {"batch": 5}, mu=np.full(31, 0.02),
                         C=0.1 * np.eye(31))
    else:
        p = gaussian_problem(family)
    n = 64
    assert cpu.chunking(n)[1] == 4
    gpu = api.estimate(p, estimators, n, SEEDS, backend="cuda")
    ref = api.estimate(p, estimators, n, SEEDS)
    assert gpu[0].shape == (2, len(estimators), p.n_params)
    assert close(gpu, ref)
    if SIMULATOR:    # the simulator runs the CPU-compiled accumulate_chunk: the same bits
        assert all(np.array_equal(g, c) for g, c in zip(gpu, ref))
    # resolution: one sample fewer must fail the same tolerance
    assert not close(gpu, api.estimate(p, estimators, n - 1, SEEDS))


@needs_cuda
def test_reruns_are_bitwise_identical(monkeypatch):
    monkeypatch.setattr(cpu, "MIN_CHUNK_PAIRS", 10)
    p = gaussian_problem("full")
    one = api.estimate(p, ALL[3:6], 50, SEEDS, backend="cuda")
    two = api.estimate(p, ALL[3:6], 50, SEEDS, backend="cuda")
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


def test_kernel_has_no_atomics_and_reuses_the_cpu_chunk_function():
    import harness.vi

    # read, not import: importing numba.cuda without numba-cuda warns (deprecated target)
    text = (pathlib.Path(harness.vi.__file__).parent / "cuda.py").read_text()
    assert "atomic" not in text.replace("no atomics", "").replace("No atomics", "")
    assert "accumulate_chunk(keys0[s]" in text


GRID = textwrap.dedent("""\
    name: tiny_elbo
    problem:
      kind: elbo
      target: gaussian
      target_seed: 3
      dim: 2
      family: full
    estimators: [stl, {name: score_function, baseline: mean}]
    n_samples: [40]
    seeds: 2
    backend: cuda
""")


@needs_cuda
def test_elbo_grid_with_backend_cuda_end_to_end(tmp_path):
    from harness.config import load_grid
    from harness.kinds.elbo import problem_of
    from harness.runner import expand_cells

    _, df = run_grid(tmp_path, GRID)
    assert set(df["backend"]) == {"cuda"} and len(df) == 2 * 2 * 5
    (cell,) = expand_cells(load_grid(tmp_path / "tiny.yaml"))
    est, _, _ = api.estimate(problem_of(cell), [(e.name, e.options) for e in cell.estimators],
                             cell.n_samples, cell.seeds)
    np.testing.assert_allclose(df["estimate"].to_numpy(), est.ravel(), rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(CAN_RUN and not SIMULATOR, reason="a GPU is present")
def test_without_a_gpu_backend_cuda_fails_with_one_line_saying_how(tmp_path):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONWARNINGS"] = "error"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(grid), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: backend 'cuda'"), proc.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in lines[0]
    assert not (tmp_path / "out").exists()


def _nvrtc_available() -> bool:
    if not HAS_NUMBA_CUDA or SIMULATOR:
        return False
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvrtc")
        load_nvidia_dynamic_lib("nvvm")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _nvrtc_available(), reason="needs numba-cuda with NVVM and NVRTC "
                    "(pip install 'numba-cuda[cu13]'), without the simulator")
def test_kernel_compiles_for_a_real_gpu():
    """PTX for sm_80 without a GPU: the shared per-chunk code (no allocation, no objects)
    compiles for the device; no atomic instructions."""
    from harness.vi import cuda

    text = cuda.ptx(api.kernels())
    assert ".entry" in text and "atom." not in text

