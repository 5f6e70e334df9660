"""The CUDA backend.

Without a GPU these run on numba-cuda's simulator (``tox -e cudasim`` sets
NUMBA_ENABLE_CUDASIM=1; tiny grids: the simulator runs one Python thread per CUDA thread).
Elsewhere only the "no GPU" error test runs. On a machine with a GPU and numba-cuda, run
this file without the simulator to check the real device against the same tolerances.

Stated tolerance (also in harness.backends.cuda): Philox integers bitwise equal; normals to
1e-15 absolute (they are |z| < 9); estimates to ``1e-12 * (|est| + sd)``, sample variances
to a relative 1e-10 (the GPU contracts multiply-adds differently and sums in another order).
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import CAN_RUN_CUDA as CAN_RUN  # noqa: E402
from helpers import SIMULATOR, needs_cuda, run_grid  # noqa: E402

from harness import rng
from harness.backends import cpu

GRID = textwrap.dedent("""\
    name: tiny
    problem:
      distribution: normal
      cost: quadratic
      mu: 1.5
      sigma: 0.8
      k: 0.5
    wrt: [mu, sigma]
    estimators: [score_function, pathwise]
    n_samples: [3, 301]
    seeds: 3
    backend: cuda
""")


def _env_without_simulator():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONWARNINGS"] = "error"
    return env


@pytest.mark.skipif(CAN_RUN and not SIMULATOR, reason="a GPU is present")
def test_without_a_gpu_backend_cuda_fails_with_one_line_saying_how(tmp_path):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(grid), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          env=_env_without_simulator())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: backend 'cuda'"), proc.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in lines[0]
    assert not (tmp_path / "out").exists()  # failed before creating anything


@needs_cuda
def test_philox_integers_bitwise_equal_to_the_cpu():
    from harness.backends import cuda

    for seed, stream in ((0, 0), (2**40 + 3, 0), (2**64 - 1, 5)):
        got = cuda.philox_blocks(seed, 300, stream)
        k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
        want = np.array([rng.philox4x32_10(np.uint64(i), np.uint64(0), np.uint64(stream),
                                           np.uint64(0), k0, k1) for i in range(300)],
                        dtype=np.uint64)
        assert got.dtype == np.uint64 and np.array_equal(got, want)


@needs_cuda
def test_normals_equal_to_the_cpu_stream():
    from harness.backends import cuda

    z = cuda.normal_pairs(11, 500)
    want = rng.normals(11, 1000).reshape(500, 2)
    np.testing.assert_allclose(z, want, rtol=0, atol=1e-15)
    if SIMULATOR:  # the simulator runs the CPU-compiled functions: bitwise
        assert np.array_equal(z, want)


def _close(gpu, ref):
    (eg, vg), (ec, vc) = gpu, ref
    sd = np.sqrt(vc)
    return (np.all(np.abs(eg - ec) <= 1e-12 * (np.abs(ec) + sd))
            and np.allclose(vg, vc, rtol=1e-10, atol=0))


CELLS = [
    ("square", ["score_function", "pathwise"], ["mu"]),
    ("quadratic", ["score_function", "pathwise"], ["mu", "sigma"]),
    ("quadratic", ["pathwise"], ["sigma"]),
    # the independent copy stream, an accumulated estimator and extra streams
    ("quadratic", ["score_function[baseline=optimal]", "measure_valued"], ["sigma"]),
]


@needs_cuda
@pytest.mark.parametrize("cost, estimators, components", CELLS)
def test_estimates_match_the_cpu_backend_within_the_stated_tolerance(
        cost, estimators, components, monkeypatch):
    from harness.backends import cuda

    seeds = np.array([0, 7, 2**40 + 3])
    # small chunks so that a tiny N still spans many blocks and a ragged last block
    monkeypatch.setattr(cuda, "MIN_CHUNK_PAIRS", 64)
    params = {"mu": 0.7, "sigma": 1.3, **({"k": -0.4} if cost == "quadratic" else {})}
    for n in (2, 3, 1001):
        args = ("normal", cost, estimators, components, params, n, seeds)
        gpu = cuda.estimate(*args)
        assert gpu[0].shape == (3, len(estimators), len(components))
        assert _close(gpu, cpu.estimate(*args)), n
        # resolution: one sample more or less must fail the same tolerance
        if n > 3:
            other = ("normal", cost, estimators, components, params, n - 1, seeds)
            assert not _close(gpu, cpu.estimate(*other))


@needs_cuda
def test_reruns_are_bitwise_identical(monkeypatch):
    from harness.backends import cuda

    monkeypatch.setattr(cuda, "MIN_CHUNK_PAIRS", 128)  # 4 chunks per seed, the last ragged
    args = ("normal", "square", ["score_function"], ["mu"], {"mu": 2.0, "sigma": 1.0}, 777,
            np.arange(2))
    one, two = cuda.estimate(*args), cuda.estimate(*args)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_gpu_chunking_depends_on_n_only_and_covers_every_pair():
    from harness.backends import cuda

    for n in [2, 3, 8191, 8192, 10**6 + 1, 10**9, 10**12]:
        chunk_pairs, n_chunks = cuda.chunking(n)
        assert 0 < n_chunks <= cuda.MAX_CHUNKS
        assert (n_chunks - 1) * chunk_pairs < (n + 1) // 2 <= n_chunks * chunk_pairs


def test_cell_kernel_has_no_atomics_and_a_fixed_tree():
    import harness.backends

    # read, not import: importing numba.cuda without numba-cuda warns (deprecated target)
    src = (pathlib.Path(harness.backends.__file__).parent / "_cuda_kernels.py").read_text()
    assert "cuda.atomic" not in src and "cuda.syncthreads()" in src


@needs_cuda
def test_run_grid_with_backend_cuda_end_to_end(tmp_path):
    _, df = run_grid(tmp_path, GRID)
    assert set(df["backend"]) == {"cuda"} and len(df) == 2 * 3 * 2 * 2
    assert np.isfinite(df["estimate"]).all()


def test_elbo_grids_reject_backend_cuda_in_optimisation_mode(tmp_path):
    """ELBO optimisation runs on the CPU only: backend: cuda with mode: optimize is a
    one-line config error (never a CPU run labelled cuda); estimate mode accepts it
    (tests/test_vi_cuda.py)."""
    from harness.config import load_grid
    from harness.errors import ConfigError

    example = pathlib.Path(__file__).resolve().parents[1] / "examples" / "vi_gaussian.yaml"
    text = example.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("backend:")]
    grid = tmp_path / "vi.yaml"
    grid.write_text("\n".join(lines + ["backend: cuda"]) + "\n")
    with pytest.raises(ConfigError, match="backend: .*mode estimate only") as err:
        load_grid(grid)
    assert "\n" not in str(err.value) and "(fix: use backend: cpu" in str(err.value)
    lines = [line for line in lines if not line.startswith(("optimizer", "            record"))]
    grid.write_text("\n".join(lines + ["backend: cuda"]).replace(
        "mode: [estimate, optimize]", "mode: estimate") + "\n")
    assert load_grid(grid).backend == "cuda"
