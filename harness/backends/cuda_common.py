"""Helpers shared by the CUDA kernels of both problem kinds (``harness.backends.cuda`` for
the expectation kind, ``harness.vi.cuda`` for the ELBO kind).

``ptx(kernel_function, signature, cc)``: the PTX a GPU of compute capability ``cc`` would
run, compiled on a machine without one (numba-cuda with the CUDA toolkit's NVVM and NVRTC,
e.g. ``pip install 'numba-cuda[cu13]'``; not under the simulator, which compiles nothing).
For inspecting the device code (instruction mix, no atomics) and for a test that the shared
per-sample code compiles for the device.  ``check_ptx_target`` raises the one-line
``BackendError`` first, before anything imports ``numba.cuda``.
"""

from __future__ import annotations

import importlib.util

from ..errors import BackendError


def check_ptx_target() -> None:
    """BackendError unless PTX can be compiled here (numba-cuda, no simulator)."""
    from .cuda import simulator_enabled

    if simulator_enabled():
        raise BackendError("ptx() needs the real CUDA target: unset NUMBA_ENABLE_CUDASIM")
    if importlib.util.find_spec("numba_cuda") is None:
        raise BackendError("ptx() needs numba-cuda (fix: pip install 'harness[cuda]')")


def ptx(kernel_function, signature, cc: tuple[int, int] = (8, 0)) -> str:
    """PTX of the Python kernel function (a ``cuda.jit`` kernel's ``py_func``) for the numba
    ``signature`` and compute capability ``cc``, without a GPU."""
    from types import SimpleNamespace
    from unittest import mock

    check_ptx_target()
    from numba import cuda
    from numba.cuda import dispatcher

    # Device functions (the retargeted @njit callees) take the compute capability from the
    # current device; there is none here, so stand one in while compiling.
    fake = SimpleNamespace(compute_capability=cc)
    with mock.patch.object(dispatcher, "get_current_device", lambda: fake):
        text, _ = cuda.compile_ptx(kernel_function, signature, cc=cc)
    return text
