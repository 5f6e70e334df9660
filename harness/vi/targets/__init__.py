"""ELBO targets log g(z), one module each, registered in ``TARGETS``.

Each module defines ``TARGET`` (a :class:`Target`).  ``Target.build(params, dim)`` turns the
grid's problem parameters into a :class:`TargetData`: the arrays the kernels read
(``ta``, ``tm``, ``ti``) and the exact references the target knows in closed form.

A user-written target (``target: {python: "mod:log_density", gradient: ..., dim: d}``,
``harness.vi.targets.user``) is not in ``TARGETS``: it is named by its log density
(``"mod:log_density"``, the results' ``target`` column) and ``get`` finds its record.
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
    user: object = None          # a user target's harness.vi.targets.user.UserTarget


@dataclass(frozen=True)
class Target:
    name: str
    code: int
    keys: tuple[str, ...]        # problem keys this target reads (besides kind/target/family/q)
    build: Callable              # (params: dict, dim: int | None) -> TargetData
    fixed_dim: int | None = None
    description: str = ""
    has_optimum: bool = False    # its TargetData knows the exact optimum (``q: optimum``)


from . import banana, gaussian, logistic_regression, ripple, user  # noqa: E402

TARGETS = {t.TARGET.name: t.TARGET for t in (gaussian, logistic_regression, ripple, banana)}


def get(name: str) -> Target:
    """The record of a built-in target's name, or of a user target's ``"module:function"``."""
    return user.TARGET if ":" in name else TARGETS[name]
