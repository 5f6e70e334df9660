"""ELBO targets log g(z), one module each, registered in ``TARGETS``.

Each module defines ``TARGET`` (a :class:`Target`).  ``Target.build(params, dim)`` turns the
grid's problem parameters into a :class:`TargetData`: the arrays the kernels read
(``ta``, ``tm``, ``ti``) and the exact references the target knows in closed form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TargetData:
    name: str
    code: int
    dim: int
    ta: np.ndarray               # float64 1-D
    tm: np.ndarray               # float64 2-D
    ti: np.ndarray               # int64 1-D: ti[0] = minibatch size (0: none)
    # closed forms (None where unknown): f(family, mu, C) -> value / theta-shaped vector
    exact_elbo: Callable | None = None
    exact_grad: Callable | None = None
    exact_var: Callable | None = None     # (estimator code, family, mu, C) -> vector|None
    optimum: Callable | None = None       # family -> (mu, C)
    info: dict = field(default_factory=dict)  # resolved parameters, for metadata


@dataclass(frozen=True)
class Target:
    name: str
    code: int
    keys: tuple[str, ...]        # problem keys this target reads (besides kind/target/family/q)
    build: Callable              # (params: dict, dim: int | None) -> TargetData
    fixed_dim: int | None = None
    description: str = ""
    has_optimum: bool = False    # its TargetData knows the exact optimum (``q: optimum``)


from . import banana, gaussian, logistic_regression, ripple  # noqa: E402

TARGETS = {t.TARGET.name: t.TARGET for t in (gaussian, logistic_regression, ripple, banana)}
