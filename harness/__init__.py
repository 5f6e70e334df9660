"""harness: exact, reproducible variance studies of Monte Carlo gradient estimators."""

__version__ = "0.1.0"

# before any harness module defines a jitted function: numba fixes its CPU features then
from .cpu_tuning import prefer_wide_vectors  # noqa: E402

prefer_wide_vectors()
