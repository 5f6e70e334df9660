"""``harness.quadrature.values``: the built-in costs through the loop kept in numba's on-disk
cache give the numbers of the cost's own compiled function; other functions (a user's cost)
still work, through the loop compiled in each process."""

import numpy as np
import pytest
from numba import njit

from harness import kernel_cache, registry
from harness.quadrature import _cached_apply, value_at, values

POINTS = np.concatenate([np.linspace(-30.0, 30.0, 1201), [0.0, -0.0, 1e-300, 7.5e3, -2e4]])


def scalar(fn, x, k):
    """``fn`` called on each element from Python: its own scalar entry point."""
    return np.array([fn(float(v), k) for v in np.ravel(x)]).reshape(np.shape(x))


def same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


@pytest.mark.parametrize("cost", ["square", "quadratic", "exp", "cos"])
@pytest.mark.parametrize("role", ["value", "derivative"])
def test_cached_loop_gives_the_cost_functions_own_numbers(cost, role):
    """Bitwise equal to the function's own compiled code, on a 1-D and a 2-D array and at
    one point; the same check rejects the numbers one ulp away (the wrong variant)."""
    fn = getattr(registry.get_cost(cost), role)
    assert _cached_apply(fn) is not None                  # the cached path is the one tested
    k = 0.7
    expected = scalar(fn, POINTS, k)
    got = values(fn, POINTS, k)
    assert same_bits(got, expected)
    grid = POINTS[:1200].reshape(40, 30)
    assert same_bits(values(fn, grid, k), expected[:1200].reshape(40, 30))
    assert same_bits(np.array([value_at(fn, 0.3, k)]), np.array([fn(0.3, k)]))
    wrong = np.nextafter(got, np.inf)
    assert not same_bits(wrong, expected), "the check must reject numbers 1 ulp away"


def test_the_cached_loop_is_named_after_the_costs_dependencies(monkeypatch):
    """exp's loop depends on harness/scalar_math.py (its exp): an edit there gives another
    module (a stale loop is never loaded from numba's cache).  Wrong variant: without that
    file among the dependencies the name would not change."""
    fn = registry.get_cost("exp").value
    source = "from harness.costs.exp import value as _original\n"
    files = kernel_cache.package_dependencies(source)
    assert any(p.name == "scalar_math.py" for p in files)
    with_it = kernel_cache.source_digest(source, files)
    without = kernel_cache.source_digest(source, [p for p in files
                                                  if p.name != "scalar_math.py"])
    assert with_it != without
    module = _cached_apply(fn).py_func.__module__
    assert module.startswith("harness_values_")


def test_functions_outside_the_package_use_the_per_process_loop():
    """A jitted function that is not a module-level function of the package (a user's cost
    is wrapped like this) is applied by ``_apply``: same numbers as its own calls."""
    @njit
    def quartic(x, k):
        return (x - k) ** 4

    assert _cached_apply(quartic) is None
    x = POINTS[:300].reshape(3, 100)
    assert same_bits(values(quartic, x, 0.5), scalar(quartic, x, 0.5))
