"""User-written ELBO targets: log g(z) and its gradient from the user's own module.

    problem:
      kind: elbo
      target: {python: "my_targets:log_density", gradient: "my_targets:grad_log_density",
               dim: 2}
      family: [diag, full]

``python`` names log g (unnormalised is fine) and ``gradient`` grad_z log g: plain Python
functions of one argument, ``z``, a float64 array of shape (dim,), returning a float and a
float64 array of shape (dim,) respectively, written so that numba can compile them
(arithmetic, ``math`` and NumPy array functions, loops, branches; no Python objects).  The
grid file's directory is on the import path while the module is imported, as for user costs
(the import and its one-line errors are ``harness.costs.user.import_function``).

Loading (``load``, once per process and spec): imports both functions and compiles them with
numba for a 1-D float64 array; ``check`` (``harness validate``, at every problem point's q)
calls them at the family mean z = mu and requires a finite float and a finite array of shape
(dim,).  Each failure is one ``ConfigError`` line with key ``problem.target``.

Kernels (``kernels``): the ELBO kernel module ``harness/vi/kernels.py`` with a definition of
``user_log_target`` appended that calls the user's functions (replacing the placeholder the
built-in targets never reach), imported by ``harness.kernel_cache.load_source``: the
module's name carries a digest of the kernel sources and of the user's module file, so
editing the user's module gives a new, recompiled kernel, and an unchanged one loads from
numba's cache in the next process.  CPU only (the user's gradient allocates its result
array, which a CUDA kernel cannot): ``backend: cuda`` is a one-line error.

Exact references (``harness.vi.references``, nothing from the kernels): for dim <=
``references.USER_MAX_DIM`` (2) the ELBO E_q[log g - log q], its gradient E_q[f s] (the
score-function identity: it needs only log g, so a wrong user gradient shows up as biased
pathwise estimators) and every estimator's per-sample variance, by tensor Gauss-Hermite
quadrature over q of NumPy transcriptions of the estimators' definitions, evaluated on the
user's log g and gradient; each reference is kept only where two rules (``USER_NODES``)
agree to ``USER_RTOL``, else NaN with ``exact_source`` none.  Above dim 2: none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numba import njit, types

from ... import kernel_cache
from ...costs.user import UserFunction, first_line, import_function
from ...errors import ConfigError
from .. import codes
from . import Target, TargetData

SPEC_KEYS = ("python", "gradient", "dim", "path")
MAX_DIM = 200
WHERE = "problem.target"
Z_TYPE = types.Array(types.float64, 1, "C")

# Appended to harness/vi/kernels.py's source for a user target (see the module docstring).
KERNEL_TAIL = '''

# ------------------------------------------------------------------ user target (generated)
# Appended by harness.vi.targets.user for {python} and {gradient}; replaces the placeholder
# user_log_target above (numba resolves globals when a function is first compiled).
from {log_module} import {log_name} as _user_log_density_source
from {grad_module} import {grad_name} as _user_grad_log_density_source

_user_log_density = njit(getattr(_user_log_density_source, "py_func",
                                 _user_log_density_source))
_user_grad_log_density = njit(getattr(_user_grad_log_density_source, "py_func",
                                      _user_grad_log_density_source))


@njit(cache=True)
def user_log_target(z, grad):  # noqa: F811
    g = _user_grad_log_density(z)
    for i in range(z.size):
        grad[i] = g[i]
    return _user_log_density(z)
'''


@dataclass(frozen=True)
class UserTarget:
    """A loaded user target: where its functions come from and their numba compilations."""

    python: str                 # "module:function" of log g
    gradient: str               # "module:function" of grad_z log g
    dim: int
    origins: tuple[UserFunction, UserFunction]
    files: tuple[Path, ...]     # the user's module files (in the kernel digest)
    log_density: object         # numba dispatchers of the user's functions
    grad_log_density: object

    def density(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log g[n], grad[n, d]) at the rows of z[n, d]: the user's functions, row by row
        (for the references: the target's definition, not the estimators')."""
        z = np.ascontiguousarray(z, dtype=float)
        log_g, grad = np.empty(z.shape[0]), np.empty(z.shape)
        _rows(self.log_density, self.grad_log_density, z, log_g, grad)
        return log_g, grad


@njit
def _rows(log_density, grad_log_density, z, log_g, grad):
    for r in range(z.shape[0]):
        log_g[r] = log_density(z[r])
        g = grad_log_density(z[r])
        for i in range(z.shape[1]):
            grad[r, i] = g[i]


def spec_key(spec) -> tuple:
    """A hashable key of a user-target spec (mapping with ``SPEC_KEYS``)."""
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in a user target", key=WHERE,
                          fix=f"use {', '.join(SPEC_KEYS)}")
    return tuple((key, spec.get(key)) for key in SPEC_KEYS)


def load(spec) -> UserTarget:
    """The ``UserTarget`` of a spec ``{python, gradient, dim, path}`` (loaded once)."""
    return _load(spec_key(spec))


@cache
def _load(key: tuple) -> UserTarget:
    spec = dict(key)
    python, gradient, dim, path = (spec[k] for k in SPEC_KEYS)
    for role, ref in (("python", python), ("gradient", gradient)):
        if not ref:
            raise ConfigError(f"a user target needs '{role}: module:function'", key=WHERE,
                              fix="write target: {python: 'my_targets:log_density', gradient: "
                                  "'my_targets:grad_log_density', dim: 2}")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIM:
        raise ConfigError(f"a user target needs dim, a whole number in 1..{MAX_DIM}, got "
                          f"{dim!r}", key=WHERE, fix="add dim: <the dimension of z>")
    origins, jitted, files = [], [], []
    for role, ref in (("python", python), ("gradient", gradient)):
        origin, fn = import_function(ref, role, path, where=WHERE, arities=(1,),
                                     arguments="z (a 1-D float array)",
                                     example="my_targets:log_density", what="target")
        origins.append(origin)
        files.append(Path(fn.__code__.co_filename).resolve())
        jitted.append(_compiled(fn, ref))
    return UserTarget(python, gradient, dim, tuple(origins), tuple(dict.fromkeys(files)),
                      *jitted)


def _compiled(fn, ref):
    jit = njit(fn)
    try:
        jit.compile((Z_TYPE,))
    except Exception as exc:
        raise ConfigError(f"numba cannot compile {ref} for a 1-D float64 array z: "
                          f"{first_line(exc)}", key=WHERE,
                          fix="use float arithmetic, math/NumPy functions, loops and branches "
                              "only (no Python objects)") from None
    return jit


def check(target: UserTarget, mu) -> None:
    """Call both functions at z = mu (the family mean): log g must be one finite number and
    the gradient a finite float array of shape (dim,)."""
    z = np.array(mu, dtype=float)
    try:
        log_g = target.log_density(z)
        grad = target.grad_log_density(z)
    except Exception as exc:
        raise ConfigError(f"{target.python} / {target.gradient} fail at z = mu = "
                          f"{_show(z)}: {type(exc).__name__}: {first_line(exc)}", key=WHERE,
                          fix="make both functions work for every z") from None
    if not isinstance(log_g, (float, int, np.floating, np.integer)) or \
            not math.isfinite(float(log_g)):
        raise ConfigError(f"{target.python} returns {log_g!r} at z = mu = {_show(z)}, not a "
                          "finite number", key=WHERE, fix="return log g(z) as a float")
    if not isinstance(grad, np.ndarray) or grad.shape != (target.dim,) or \
            grad.dtype.kind not in "fi":
        got = f"shape {grad.shape}, dtype {grad.dtype}" if isinstance(grad, np.ndarray) \
            else type(grad).__name__
        raise ConfigError(f"{target.gradient} returns {got} at z = mu, not a float array of "
                          f"shape ({target.dim},)", key=WHERE,
                          fix=f"return np.array([...]) with the {target.dim} partial "
                              "derivatives (dim in the grid is the length of z)")
    if not np.isfinite(grad).all():
        raise ConfigError(f"{target.gradient} is not finite at z = mu = {_show(z)}: "
                          f"{_show(grad)}", key=WHERE, fix="return a finite gradient")


def _show(x) -> str:
    return "[" + ", ".join(f"{v:g}" for v in np.asarray(x).ravel()) + "]"


def kernels(target: UserTarget):
    """The ELBO kernel module for this user target (see the module docstring)."""
    base = kernel_cache.package_root() / "vi" / "kernels.py"
    (log_origin, grad_origin) = target.origins
    source = base.read_text() + KERNEL_TAIL.format(
        python=target.python, gradient=target.gradient,
        log_module=log_origin.module, log_name=log_origin.name,
        grad_module=grad_origin.module, grad_name=grad_origin.name)
    dependencies = kernel_cache.package_dependencies(source) + list(target.files)
    return kernel_cache.load_source("harness_vi_kernels_user", source, dependencies)


def build(params: dict, dim) -> TargetData:
    """``params``: the spec's ``python``, ``gradient`` and ``path``; ``dim`` its dimension."""
    target = load({"python": params["python"], "gradient": params["gradient"],
                   "dim": int(dim), "path": params.get("path")})
    return TargetData(target.python, codes.T_USER, target.dim, np.zeros(1), np.zeros((1, 1)),
                      np.zeros(1, np.int64), info={"python": target.python,
                                                  "gradient": target.gradient},
                      user=target)


TARGET = Target("python", codes.T_USER, ("python", "gradient", "path"), build,
                description="your own log g: target: {python: 'mod:log_density', gradient: "
                            "'mod:grad_log_density', dim: d}")
