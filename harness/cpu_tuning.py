"""Let LLVM use 512-bit vectors on CPUs with AVX-512 (numba's default there is 256).

LLVM tunes every Intel core with AVX-512 since Skylake-X to *prefer* 256-bit vectors (the
``prefer-256-bit`` tuning flag), because heavy 512-bit instructions once lowered the clock.
The harness's kernels are integer-heavy (Philox4x32-10: ten rounds of 32 x 32 -> 64-bit
multiplies per counter) and vectorise over 8 lanes, so on this project's Emerald Rapids VM
they run faster with 512-bit vectors: the stream-0 uniforms 2.4 ns instead of 4.5-5.2 ns
per Philox call, the whole Mohamed et al. study cell 108 instead of 126 ns of CPU per sample
(docs/performance.md).

Numbers do not change: the kernels' sums are in a fixed lane order and only "contract" is
allowed, so the vector width decides how many lanes run at once, never the arithmetic of a
lane (the study cell was checked bitwise equal at both widths).

How: numba reads its CPU features once, when its CPU target is first used (the first
``@njit``), from ``numba.core.config.CPU_FEATURES`` (``$NUMBA_CPU_FEATURES``) or else from
the host.  ``prefer_wide_vectors`` (called by ``harness/__init__.py``, before any harness
module defines a jitted function) sets that to the host's features plus ``-prefer-256-bit``
when the host has AVX-512F, unless

- ``$HARNESS_VECTOR_WIDTH`` is ``native`` (keep numba's choice),
- ``$NUMBA_CPU_FEATURES`` is set (the user chose the features), or
- numba's CPU target was already initialised in this process (e.g. the user jitted and
  called a function before importing harness): then it is too late and nothing changes.

The setting is process-wide: other numba code of the same process also gets 512-bit
vectors (its results change only if it lets LLVM reassociate, i.e. ``fastmath=True``).
Helper processes inherit it through the environment, and numba's cache keys compiled code
by the features, so kernels compiled under either setting are never mixed up.
"""

from __future__ import annotations

import os
import sys

ENV = "HARNESS_VECTOR_WIDTH"
_WIDE = ",-prefer-256-bit"  # appended to the host's features
_state = {"result": None}


def prefer_wide_vectors() -> str:
    """Apply the setting above (once per process); returns what happened: ``"wide"``,
    ``"native"`` (opted out), ``"no-avx512"``, ``"user-features"`` or ``"too-late"``."""
    if _state["result"] is None:
        _state["result"] = _apply()
    return _state["result"]


def _apply() -> str:
    if os.environ.get(ENV, "").strip().lower() == "native":
        if os.environ.get("NUMBA_CPU_FEATURES", "").endswith(_WIDE) and "numba" not in sys.modules:
            del os.environ["NUMBA_CPU_FEATURES"]  # inherited from a harness parent: undo it
        return "native"
    if os.environ.get("NUMBA_CPU_FEATURES"):
        # a harness parent process's setting (helper and bench processes inherit it)
        return "wide" if os.environ["NUMBA_CPU_FEATURES"].endswith(_WIDE) else "user-features"
    import llvmlite.binding as ll

    try:
        features = ll.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot read this host's features: leave numba's default
        return "no-avx512"
    if "+avx512f" not in features.split(","):
        return "no-avx512"
    wide = features + _WIDE
    if "numba" in sys.modules:
        from numba.core import config
        from numba.core.registry import cpu_target

        if getattr(cpu_target, "_toplevel_target_context", None) is not None:
            return "too-late"
        config.CPU_FEATURES = wide
    # numba re-reads its configuration from the environment (``reload_config``), and helper
    # processes inherit it: the environment is where the setting must live
    os.environ["NUMBA_CPU_FEATURES"] = wide
    return "wide"
