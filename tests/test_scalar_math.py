"""The branch-free log and sin/cos against libm, over their whole input range, compiled with
the same fastmath flags as the kernels (inline="always" functions take the caller's flags)."""

import math

import numpy as np
from numba import njit

from harness.backends.cpu import vector_width
from harness.scalar_math import log_unit, sincos_2pi

KERNEL_FLAGS = {"contract"}  # as in the generated kernels


@njit(fastmath=KERNEL_FLAGS)
def _logs(u, out):
    for i in range(u.size):
        out[i] = log_unit(u[i])


@njit(fastmath=KERNEL_FLAGS)
def _sincos(v, c, s):
    for i in range(v.size):
        c[i], s[i] = sincos_2pi(v[i])


def test_log_relative_error_below_two_ulp_over_the_uniform_range():
    rng = np.random.default_rng(0)
    # every binade the uniforms reach (2^-54 .. 1), plus the reduction boundaries
    u = np.ldexp(rng.uniform(1.0, 2.0, 400_000), rng.integers(-55, 0, 400_000))
    edges = np.array([1.0, 0.5, math.sqrt(0.5), np.nextafter(math.sqrt(0.5), 1),
                      np.nextafter(math.sqrt(0.5), 0), np.nextafter(1.0, 0), 2.0**-54])
    u = np.concatenate([u, edges])
    got = np.empty_like(u)
    _logs(u, got)
    want = np.array([math.log(x) for x in u])
    nonzero = want != 0
    rel = np.abs(got[nonzero] - want[nonzero]) / np.abs(want[nonzero])
    assert rel.max() < 2.3e-16, rel.max()
    assert got[u == 1.0][0] == 0.0


def test_sincos_absolute_error_below_1e_15_over_a_full_turn():
    v = np.concatenate([np.linspace(0.0, 1.0, 1_000_001, endpoint=False),
                        np.array([0.125, 0.375, 0.625, 0.875, np.nextafter(1.0, 0)])])
    c, s = np.empty_like(v), np.empty_like(v)
    _sincos(v, c, s)
    # reference in extended precision via the exact reduction 2*pi*v = pi/2 * (4v)
    want_c = np.cos(2 * np.pi * v.astype(np.longdouble)).astype(float)
    want_s = np.sin(2 * np.pi * v.astype(np.longdouble)).astype(float)
    assert np.abs(c - want_c).max() < 1e-15
    assert np.abs(s - want_s).max() < 1e-15
    assert np.abs(c * c + s * s - 1).max() < 6.7e-16  # 3 ulp: the check itself rounds twice


def test_log_tolerance_resolves_a_few_ulp_error():
    # resolution check: an implementation 4 ulp off must fail the tolerance used above
    u = np.array([0.3, 0.9, 2.0**-40])
    got = np.empty_like(u)
    _logs(u, got)
    off_by_4_ulp = got + 4 * np.spacing(got)
    rel = np.abs(off_by_4_ulp - np.log(u)) / np.abs(np.log(u))
    assert rel.max() > 2.3e-16


def test_hot_loop_is_vectorised():
    # LLVM emits <N x double> only when every call in the loop body was inlined and
    # branch-free; losing that costs ~7x (measured: libm calls block vectorisation).
    assert vector_width("normal", "quadratic", ["score_function", "pathwise"],
                        ["mu", "sigma"]) >= 2


def test_hot_loop_stays_vectorised_with_extra_streams_and_accumulated_estimators():
    # measure_valued draws from streams 1-3, the optimal baseline from the independent copy
    # of stream 0 and accumulates moments (delta_cv[coefficient=estimated] is built the same
    # way); cos needs the branch-free cos/sin
    assert vector_width("normal", "cos", ["score_function[baseline=optimal]",
                                          "measure_valued[coupling=false]"], ["mu", "sigma"]) >= 2


def test_branch_free_exp_cos_sin_of_the_costs():
    from harness.scalar_math import cos_any, exp_clamped, sin_any

    @njit(fastmath=KERNEL_FLAGS)
    def _eval(x, e, c, s):
        for i in range(x.size):
            e[i], c[i], s[i] = exp_clamped(x[i]), cos_any(x[i]), sin_any(x[i])

    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-700.0, 700.0, 400_001), rng.uniform(-60, 60, 200_000),
                        np.array([0.0, -0.0, 1e-300, -1e-300, -2 * math.pi, 2 * math.pi])])
    e, c, s = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    _eval(x, e, c, s)
    assert (np.abs(e - np.exp(x)) / np.exp(x)).max() < 2.3e-16     # ~1 ulp
    small = np.abs(x) < 100                                        # the costs' range of k x
    assert np.abs(c[small] - np.cos(x[small])).max() < 2e-14
    assert np.abs(s[small] - np.sin(x[small])).max() < 2e-14
    below = np.array([-800.0, -1e4])                               # clamped, documented
    e2, c2, s2 = np.empty(2), np.empty(2), np.empty(2)
    _eval(below, e2, c2, s2)
    assert np.all(e2 == exp_clamped(-700.0)) and np.all(e2 < 1e-303)
