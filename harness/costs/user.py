"""User-written costs: a grid names plain Python functions from the user's own module.

    problem:
      distribution: normal
      cost: {python: "my_costs:quartic", derivative: "my_costs:quartic_prime"}

Each function is a plain Python function of x, or of (x, k) when the cost has a parameter (then
the grid gives ``k`` like for a built-in cost), returning a float, written so that numba can
compile it (arithmetic, ``math`` functions, branches; no Python objects).  ``derivative`` and
``second_derivative`` are optional (without them the estimators that need them are rejected by
``harness.registry.check_combination``).  The grid file's directory is put on the import path
while the module is imported, so ``my_costs.py`` lives next to the grid.

Loading (``load``, via ``harness.registry.get_cost``, once per process) imports the module and
compiles every function with numba for float arguments, so an unknown module or function or a
function numba cannot compile is a one-line ``ConfigError`` (key ``problem.cost``) before
anything runs.  The kernels import the functions from the user's module (the kernel cache
digest includes its source, so editing it recompiles).

A user cost has no closed forms: ``harness.exact`` computes the exact gradient and every
per-sample variance by quadrature over the family's rule (``exact_source: quadrature``), the
gradient as E_q[f s] (s the score, from the family's density).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from numba import njit, types

from ..axes import Cost
from ..errors import ConfigError

SPEC_KEYS = ("python", "derivative", "second_derivative", "path")
ROLES = {"python": "value", "derivative": "derivative", "second_derivative": "second_derivative"}


@dataclass(frozen=True)
class UserFunction:
    """Where the kernel imports a user function from, and whether it takes k."""

    module: str
    name: str
    takes_k: bool


def load(python, derivative=None, second_derivative=None, path=None) -> Cost:
    """The ``Cost`` for a user-cost spec (see the module docstring)."""
    if not python:
        raise ConfigError("a user cost needs 'python: module:function'", key="problem.cost",
                          fix="write cost: {python: 'my_costs:f', derivative: 'my_costs:df'}")
    jitted, origins = {}, {}
    for key, ref in (("python", python), ("derivative", derivative),
                     ("second_derivative", second_derivative)):
        if ref is None:
            continue
        origin, fn = import_function(ref, key, path)
        origins[ROLES[key]] = origin
        jitted[ROLES[key]] = _compiled(fn, origin, ref)
    takes_k = {o.takes_k for o in origins.values()}
    roles = ", ".join(f"{role}={ref}" for role, ref in (
        ("f'", derivative), ("f''", second_derivative)) if ref)
    return Cost(
        name=python,
        params=("k",) if True in takes_k else (),
        value=jitted["value"],
        derivative=jitted.get("derivative"),
        second_derivative=jitted.get("second_derivative"),
        description=f"user cost {python}" + (f" ({roles})" if roles else ""),
        python=origins,
    )


@contextlib.contextmanager
def _on_path(path):
    """``path`` first on sys.path while importing (removed afterwards if we added it)."""
    if path is None:
        yield
        return
    path = str(Path(path).resolve())
    added = path not in sys.path
    if added:
        sys.path.insert(0, path)
    importlib.invalidate_caches()  # the module may have been written after the last import
    try:
        yield
    finally:
        if added:
            sys.path.remove(path)


def module_files(origins) -> tuple[str, ...]:
    """The source files of the (already imported) modules ``origins`` come from (each a
    ``UserFunction``): what a result computed with them depends on, beside the package
    (``harness.provenance.code_digest``'s ``extra_files``)."""
    files = []
    for origin in origins:
        module = sys.modules.get(origin.module)
        file = getattr(module, "__file__", None)
        if file:
            files.append(str(Path(file).resolve()))
    return tuple(dict.fromkeys(files))


def import_function(ref, key, path, where="problem.cost", arities=(1, 2),
                    arguments="x, or x and k", example="my_costs:quartic", what="cost"):
    """Import the plain Python function ``ref`` (``"module:function"``) with the grid's
    directory ``path`` first on the import path: ``(UserFunction, function)``.

    A one-line ``ConfigError`` (key ``where``) if the reference is malformed, the module
    cannot be imported (or is already imported from another directory), the function is
    missing or is not a plain Python function, or its number of arguments is not in
    ``arities`` (``arguments`` says what a ``what`` function takes, ``example`` is a
    well-formed reference).
    Shared by user costs and user ELBO targets (``harness.vi.targets.user``)."""
    def fail(message, fix):
        raise ConfigError(message, key=where, fix=fix)

    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        fail(f"{key}: expected 'module:function', got {ref!r}",
             f"write e.g. {example} ({example.split(':')[0]}.py next to the grid file)")
    module_name, _, fn_name = ref.partition(":")
    local = Path(path).resolve() / f"{module_name.split('.')[0]}.py" if path else None
    loaded = sys.modules.get(module_name)
    if loaded is not None and local is not None and local.exists() and \
            Path(getattr(loaded, "__file__", "") or "").resolve() != local:
        fail(f"module {module_name} is already imported from {loaded.__file__}, not from the "
             f"grid's directory", f"rename {local.name} to a name no other module uses")
    with _on_path(path):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or an error raised by the module's own code
            fail(f"cannot import {module_name} for {key} {ref}: {type(exc).__name__}: {exc}",
                 f"put {module_name}.py next to the grid file (or on PYTHONPATH)")
    if not hasattr(module, fn_name):
        fail(f"{module_name} has no function {fn_name} ({key} {ref})",
             f"define a function {fn_name} of {arguments} in {module_name}")
    fn = getattr(module, fn_name)
    fn = getattr(fn, "py_func", fn)  # an @njit function: its Python source
    if not inspect.isfunction(fn):
        fail(f"{ref} is a {type(fn).__name__}, not a plain Python function ({key})",
             f"wrap it: def {fn_name}({arguments.split(',')[0]}): return ...")
    n_args = len(inspect.signature(fn).parameters)
    if n_args not in arities:
        fail(f"{ref} takes {n_args} arguments", f"a {what} function takes {arguments}")
    return UserFunction(module_name, fn_name, n_args == 2), fn


def _compiled(fn, origin: UserFunction, ref):
    """The function compiled by numba as ``(x, k) -> float`` (k ignored if it takes none)."""
    jit = njit(fn)
    signature = (types.float64, types.float64) if origin.takes_k else (types.float64,)
    try:
        jit.compile(signature)
        result = jit.overloads[signature].signature.return_type
    except Exception as exc:
        raise ConfigError(f"numba cannot compile {ref}: {first_line(exc)}", key="problem.cost",
                          fix="use float arithmetic, math functions and branches only (no "
                              "Python objects)") from None
    if not isinstance(result, (types.Float, types.Integer)):
        raise ConfigError(f"{ref} returns {result}, not a number", key="problem.cost",
                          fix="return a float")
    if origin.takes_k:
        return jit

    @njit
    def with_k(x, k):
        return jit(x)

    return with_k


def first_line(exc) -> str:
    """The informative line of a numba error (not its "Failed in ... pipeline" header), without
    terminal colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Failed in")]
    return lines[0] if lines else type(exc).__name__
