"""harness: exact, reproducible variance studies of Monte Carlo gradient estimators."""

__version__ = "0.1.0"
