"""Plain registries: name -> record.  Adding a variant is one module and one line here.

Tests loop over every entry, so a new estimator or cost is checked against exact references
without further changes.
"""

from __future__ import annotations

from .costs import quadratic, square
from .distributions import normal
from .estimators import pathwise, score_function

DISTRIBUTIONS = {
    normal.DISTRIBUTION.name: normal.DISTRIBUTION,
}

COSTS = {
    square.COST.name: square.COST,
    quadratic.COST.name: quadratic.COST,
}

ESTIMATORS = {
    score_function.ESTIMATOR.name: score_function.ESTIMATOR,
    pathwise.ESTIMATOR.name: pathwise.ESTIMATOR,
}

BACKENDS = ("cpu", "cuda")  # modules harness.backends.<name>, each with estimate()
