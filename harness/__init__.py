"""harness: exact, reproducible variance studies of Monte Carlo gradient estimators."""

__version__ = "0.1.0"

# before any harness module defines a jitted function: numba fixes its CPU features then
from .cpu_tuning import prefer_wide_vectors  # noqa: E402

prefer_wide_vectors()

# numba's inliner copies a callee's IR block by block, each with the whole scope: one copy
from .numba_inline import apply as _one_copy_inline  # noqa: E402

_one_copy_inline()
