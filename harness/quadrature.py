"""Deterministic quadrature rules for the exact references (``harness.exact`` and the
estimators' ``reference`` functions).  Plain NumPy; no registry imports, so estimator modules can
use it.

- ``normal_expect(h)``: E[h(eps)], eps ~ N(0, 1), by ``GH_NODES``-point Gauss-Hermite
  (probabilists', from scipy's ``roots_hermitenorm``).  Exact for polynomials of degree
  < 2 * GH_NODES; for the smooth costs here it converges geometrically.  400 nodes (spacing
  ~0.16 near 0) resolve exp(-k x^2) up to k = 10 to ~1e-9 relative (checked against the
  closed forms in tests/test_estimators.py).
- ``rayleigh_expect(h)``: E[h(W)], W ~ Rayleigh(1) = Weibull(2, sqrt 2) (density w e^{-w^2/2}
  on w > 0), by composite Gauss-Legendre on [0, 14] (the mass beyond 14 is e^{-98}).
- ``unit_nodes()``: composite Gauss-Legendre on [0, 1], for E over U ~ Uniform(0, 1).
- ``split_unit_rule(breaks)``: Gauss-Legendre on [0, 1] split at ``breaks``, for E over U of
  functions that are polynomial between the breaks (ARM, DisARM): exact there.
- ``logistic_rule(breaks)``: E over L ~ Logistic(0, 1) (density sigmoid(l) sigmoid(-l)) by
  composite Gauss-Legendre on [-LOGISTIC_HALF_WIDTH, LOGISTIC_HALF_WIDTH] (outside: mass
  2 e^-40) with panels split at ``breaks``, for the relaxed Bernoulli estimators (their
  integrands are smooth in l between the breaks, with features of width ~ the temperature).
- ``hermite_tensor(nodes, dim)``: E over eps ~ N(0, I_dim) by the tensor product of the
  ``nodes``-point rule, in blocks (the ELBO references, ``harness.vi.references``).
- ``values(fn, x, k)``: a jitted scalar cost evaluated on an array (``value_at``: at one
  point); for the built-in costs by a loop kept in numba's on-disk cache.
- ``kernel_values(fn, theta, e, component=None)``: a family's jitted kernel function
  (``to_x(theta, e)`` or ``score(component, theta, e)``) evaluated on an array of base draws,
  for per-cell constants that must be computed exactly as the kernel computes (never for
  references: those are written apart from the kernel).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import njit
from scipy.special import roots_hermitenorm

GH_NODES = 400


@cache
def hermite_rule(n: int = GH_NODES):
    # scipy's rule stays finite for large n (numpy's hermegauss overflows beyond ~180 nodes)
    nodes, weights = roots_hermitenorm(n)
    return nodes, weights / math.sqrt(2.0 * math.pi)


@cache
def composite_legendre(a: float, b: float, panels: int, order: int):
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(a, b, panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    nodes = (mid[:, None] + half[:, None] * x[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    return nodes, weights


def normal_expect(h) -> float:
    nodes, weights = hermite_rule()
    return float(weights @ h(nodes))


def rayleigh_expect(h) -> float:
    w_nodes, w_weights = composite_legendre(0.0, 14.0, 280, 16)
    return float((w_weights * w_nodes * np.exp(-0.5 * w_nodes ** 2)) @ h(w_nodes))


def unit_nodes():
    return composite_legendre(0.0, 1.0, 64, 12)


def split_unit_rule(breaks=(), order: int = 8):
    """(u, w): an ``order``-point Gauss-Legendre rule on each piece of [0, 1] cut at
    ``breaks`` (points outside (0, 1) are ignored); exact for piecewise polynomials of degree
    < 2 * order with those breaks."""
    edges = np.unique(np.clip(np.concatenate([[0.0, 1.0], np.asarray(breaks, float)]), 0, 1))
    x, w = np.polynomial.legendre.leggauss(order)
    half, mid = 0.5 * np.diff(edges), 0.5 * (edges[1:] + edges[:-1])
    return ((mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel())


LOGISTIC_HALF_WIDTH = 40.0
LOGISTIC_PANELS = 2000      # panel width 0.04: resolves relaxations down to temperature ~0.02


def logistic_rule(breaks=(), panels: int = LOGISTIC_PANELS, order: int = 12):
    """(l, w): nodes and weights with sum w h(l) ~= E[h(L)], L ~ Logistic(0, 1), the weights
    including the density sigmoid(l) sigmoid(-l); composite Gauss-Legendre on [-40, 40] with
    the panel edges ``breaks`` added (h may jump there)."""
    a = LOGISTIC_HALF_WIDTH
    edges = np.unique(np.concatenate([np.linspace(-a, a, panels + 1),
                                      [b for b in breaks if -a < b < a]]))
    x, w = np.polynomial.legendre.leggauss(order)
    half, mid = 0.5 * np.diff(edges), 0.5 * (edges[1:] + edges[:-1])
    nodes = (mid[:, None] + half[:, None] * x).ravel()
    density = 0.25 / np.cosh(0.5 * nodes) ** 2   # sigmoid(l) sigmoid(-l)
    return nodes, (half[:, None] * w).ravel() * density


def hermite_tensor(nodes: int, dim: int, block: int = 20_000):
    """The tensor-product Gauss-Hermite rule for E[h(eps)], eps ~ N(0, I_dim): yields
    ``(eps, weights)`` blocks, ``eps`` of shape (b, dim), ``weights`` (b,), over all
    ``nodes ** dim`` points (weights sum to 1).  Exact when h is a polynomial of degree
    < 2 * nodes in each coordinate.  Point k has coordinate j at node (k // nodes**j) % nodes.
    """
    x, w = hermite_rule(nodes)
    total = nodes ** dim
    powers = nodes ** np.arange(dim)
    for start in range(0, total, block):
        flat = np.arange(start, min(start + block, total))
        digits = (flat[:, None] // powers) % nodes
        yield np.ascontiguousarray(x[digits]), w[digits].prod(axis=1)


@njit
def _apply(fn, x, k, out):
    for i in range(x.size):
        out.flat[i] = fn(x.flat[i], k)


def values(fn, x, k) -> np.ndarray:
    """``fn(x, k)`` elementwise for a jitted scalar ``fn`` (any array shape).

    A function defined at module level in this package (the built-in costs) is applied by
    a loop compiled once per function and kept in numba's on-disk cache (``_cached_apply``);
    any other (a user's cost) by ``_apply``, compiled in each process.  Both call ``fn``'s
    own compiled code on each element: the numbers are the same."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    apply = _cached_apply(fn)
    if apply is None:
        _apply(fn, x, float(k), out)
    else:
        apply(x.reshape(-1), float(k), out.reshape(-1))
    return out


def value_at(fn, x: float, k) -> float:
    """``fn(x, k)`` for one number, through ``values``: a per-cell constant computed by the
    cached loop compiles nothing in a warm process (a direct call compiles ``fn``)."""
    return float(values(fn, np.array([x], dtype=np.float64), k)[0])


_APPLY_SOURCE = '''"""``values`` of {module}.{name}, generated by harness.quadrature."""
from numba import njit
from {module} import {name} as _original

# a copy compiled with the loop (the NumPy error model: no zero check on a division, which
# would keep LLVM from vectorising the loop; the same arithmetic, the same numbers)
_fn = njit(error_model="numpy")(_original.py_func)


@njit(cache=True, error_model="numpy")
def apply(x, k, out):
    for i in range(x.size):
        out[i] = _fn(x[i], k)
'''
_appliers: dict = {}


def _cached_apply(fn):
    """The cached elementwise loop of a jitted function defined at module level in this
    package, or None (another function).  It is imported from a module written to the
    kernel cache under a digest of its source, of ``fn``'s module and of every package file
    that module imports (``harness.kernel_cache.load_source``), so an edit to the cost or
    to a helper it calls (``harness.scalar_math``) compiles a new loop instead of loading a
    stale one from numba's cache."""
    key = id(fn)
    if key in _appliers and _appliers[key][0] is fn:
        return _appliers[key][1]
    import sys

    from . import kernel_cache

    py = getattr(fn, "py_func", None)
    module = sys.modules.get(getattr(py, "__module__", None) or "")
    apply = None
    if (py is not None and module is not None and module.__name__.startswith(__package__ + ".")
            and getattr(module, py.__name__, None) is fn and "<" not in py.__qualname__):
        source = _APPLY_SOURCE.format(module=module.__name__, name=py.__name__)
        kernel_cache.ensure_numba_cache()      # numba picks its cache dir at definition
        apply = kernel_cache.load_source("harness_values", source,
                                         kernel_cache.package_dependencies(source)).apply
        example = np.zeros(1)
        kernel_cache.compile_once(apply, (example, 0.0, example))
    _appliers[key] = (fn, apply)
    return apply


@njit
def _apply_theta(fn, theta, e, out):
    for i in range(e.size):
        out[i] = fn(theta, e[i])


@njit
def _apply_component(fn, component, theta, e, out):
    for i in range(e.size):
        out[i] = fn(component, theta, e[i])


def kernel_values(fn, theta, e, component=None) -> np.ndarray:
    """``fn(theta, e)`` (or ``fn(component, theta, e)`` for an int ``component``) elementwise
    over a 1-D array of base draws ``e``, for a family's jitted kernel function."""
    e = np.ascontiguousarray(e, dtype=np.float64)
    out = np.empty_like(e)
    theta = tuple(float(t) for t in theta)
    if component is None:
        _apply_theta(fn, theta, e, out)
    else:
        _apply_component(fn, int(component), theta, e, out)
    return out
