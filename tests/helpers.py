"""Shared test helpers: expectation grids built in code, a stand-in for the expectation
kind's kernel (``harness.backends.cpu``), so pipeline tests run without compiling anything,
and a grid file run through the command line (``run_grid``, any kind).

The backend's and ``harness.exact``'s call signatures are known in two places only:
:func:`kernel_call` (reads a backend ``estimate(family, cost, estimators, components, params,
n_samples, seeds)`` call by name) and :func:`exact_reference`.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.exact import reference
from harness.kinds.expectation import ExpectationProblem
from harness.model import EstimatorSpec, Grid

# the built-in costs as documented (README), in plain Python for scipy: apart from the
# registry's jitted functions, and fast to call from quad
PLAIN_COSTS = {"square": lambda x, k: x * x, "quadratic": lambda x, k: (x - k) ** 2,
               "exp": lambda x, k: math.exp(-k * x * x), "cos": lambda x, k: math.cos(k * x)}

QUADRATIC = (("mu", (2.0,)), ("sigma", (1.0,)), ("k", (-3.0, 0.0)))


def expectation_grid(name="unit", distribution="normal", cost="quadratic", params=QUADRATIC,
                     wrt=("mu", "sigma"), estimators=("score_function", "pathwise"),
                     n_samples=(10, 100), seeds=tuple(range(20)), backend="cpu",
                     source_text=None) -> Grid:
    """An expectation-kind ``Grid`` as ``harness.config`` would build it (``params`` in
    family-then-cost order, each with its tuple of values)."""
    return Grid(
        kind="expectation", name=name, path=Path(f"{name}.yaml"),
        source_text=source_text if source_text is not None else f"name: {name}\n# test grid\n",
        problem=ExpectationProblem(distribution, cost, tuple(params), tuple(wrt)),
        estimators=tuple(e if isinstance(e, EstimatorSpec) else EstimatorSpec(e)
                         for e in estimators),
        n_samples=tuple(n_samples), seeds=tuple(seeds), backend=backend,
    )


def run_grid(directory: Path, text: str, name: str = "tiny.yaml"):
    """Write grid ``text`` to ``directory/name``, ``harness run`` it through the command line
    into ``directory/out`` (it must succeed): ``(the command's output, the results as a
    DataFrame)``."""
    import pandas as pd
    from click.testing import CliRunner

    from harness.cli import main

    grid = Path(directory) / name
    grid.write_text(text)
    result = CliRunner().invoke(main, ["run", str(grid), "--out", str(Path(directory) / "out")])
    assert result.exit_code == 0, result.output
    return result.output, pd.read_parquet(Path(directory) / "out" / "results")


# ------------------------------------------------------------------- the kernel's interface

def _estimate_signature(family, cost, estimators, components, params, n_samples, seeds):
    """The backend's ``estimate`` signature."""


@dataclass(frozen=True)
class KernelCall:
    """One backend ``estimate`` call, by name."""

    family: str
    cost: str
    estimators: tuple          # EstimatorSpec-like
    components: tuple
    params: dict               # problem parameters, e.g. {"mu": 2.0, "sigma": 1.0, "k": 0.5}
    n_samples: int
    seeds: np.ndarray


def kernel_call(*args, **kwargs) -> KernelCall:
    """Read a backend ``estimate(...)`` call's arguments by name."""
    a = inspect.signature(_estimate_signature).bind(*args, **kwargs).arguments
    return KernelCall(a["family"], a["cost"], tuple(a["estimators"]),
                      tuple(a["components"]), dict(a["params"]), a["n_samples"], a["seeds"])


def exact_reference(estimator, component, family, cost, params) -> tuple[float, float, str]:
    """``harness.exact.reference``: (exact_grad, exact_var, source) at a problem point."""
    return reference(estimator, component, family, cost, params)


# ------------------------------------------------------------------------------ the fake

def fake_estimate(call: KernelCall) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in kernel: deterministic per (seed, N), right mean and variance on average.

    Returns ``(estimate, sample_var)`` of shape (seeds, estimators, components) like the real
    kernel: estimate ~ exact + sqrt(exact_var / N) z, sample_var ~ exact_var chi2_{N-1}/(N-1).
    """
    n = int(call.n_samples)
    shape = (len(call.seeds), len(call.estimators), len(call.components))
    exact = np.array([[exact_reference(e, c, call.family, call.cost, call.params)[:2]
                       for c in call.components] for e in call.estimators])   # (E, C, 2)
    est, var = np.empty(shape), np.empty(shape)
    for i, seed in enumerate(np.asarray(call.seeds)):
        rng = np.random.default_rng([int(seed), n])
        z = rng.standard_normal(shape[1:])
        chi2 = rng.chisquare(n - 1, shape[1:]) / (n - 1)
        est[i] = exact[..., 0] + np.sqrt(exact[..., 1] / n) * z
        var[i] = exact[..., 1] * chi2
    return est, var


def fake_backend(delay=0.0, calls=None, kernel=fake_estimate) -> types.ModuleType:
    """A module to install as ``sys.modules["harness.backends.cpu"]``.

    ``calls`` (a list) records every call as a :class:`KernelCall`; ``kernel(call)`` returns
    the arrays; ``delay`` seconds are slept per call (for interruption tests).
    """
    module = types.ModuleType("harness.backends.cpu")

    def estimate(*args, **kwargs):
        call = kernel_call(*args, **kwargs)
        if calls is not None:
            calls.append(call)
        time.sleep(delay)
        return kernel(call)

    module.estimate = estimate
    return module


# ------------------------------------------------------------------- CUDA (numba-cuda) tests

HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _gpu_available() -> bool:
    if not HAS_NUMBA_CUDA or SIMULATOR:
        return False
    out = subprocess.run([sys.executable, "-c", "from harness.backends.cuda import require; "
                          "print(require().is_available())"], capture_output=True, text=True)
    return out.stdout.strip() == "True"


CAN_RUN_CUDA = HAS_NUMBA_CUDA and (SIMULATOR or _gpu_available())
needs_cuda = pytest.mark.skipif(not CAN_RUN_CUDA, reason="needs numba-cuda and a GPU or "
                                "NUMBA_ENABLE_CUDASIM=1 (tox -e cudasim)")
