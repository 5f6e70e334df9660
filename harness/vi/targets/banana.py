"""Banana (Haario et al. 1999): z_0 ~ N(0, s^2), z_i - b (z_0^2 - s^2) ~ N(0, 1), i >= 1.

log g(z) = -d/2 log 2pi - log s - z_0^2 / (2 s^2) - 1/2 sum_{i>=1} (z_i - b (z_0^2 - s^2))^2,
normalised.  No closed-form ELBO gradient is provided (exact columns are NaN).  Its
pathwise gradient grows like b z_0^3, so curved bananas are hard for every estimator.
Grid keys: ``dim`` (>= 2, required), ``s`` (default 1.0), ``b`` (default 0.5).
"""

from __future__ import annotations

import numpy as np

from .. import codes
from . import Target, TargetData


def build(params: dict, dim) -> TargetData:
    s, b = float(params.get("s", 1.0)), float(params.get("b", 0.5))
    return TargetData("banana", codes.T_BANANA, int(dim), np.array([s, b]), np.zeros((1, 1)),
                      np.zeros(1, np.int64), info={"s": s, "b": b})


TARGET = Target("banana", codes.T_BANANA, ("dim", "s", "b"), build,
                description="curved Gaussian (Haario et al.): z_1 - b (z_0^2 - s^2) ~ N(0, 1)")
