"""Branch-free log and sin/cos for Box-Muller, accurate to about 1 ulp, that LLVM vectorises.

Scalar libm calls inside a loop stop LLVM from vectorising it (measured 7x slower for the
normal transform); these polynomial versions compile to straight-line arithmetic.

- ``log_unit(u)``: natural log for u in (0, 1] (normal doubles), the fdlibm algorithm
  (e_log.c): u = 2^e * m with m in [sqrt(2)/2, sqrt(2)), log m by the minimax polynomial in
  s = (m - 1) / (m + 1).
- ``sincos_2pi(v)``: (cos 2 pi v, sin 2 pi v) for v in [0, 1): exact reduction to
  r in [-1/8, 1/8] turns, then fdlibm's kernel polynomials on [-pi/4, pi/4].

Both are checked against ``math.log`` / ``math.sin`` / ``math.cos`` over their whole input
range in ``tests/test_scalar_math.py``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic


@intrinsic
def _bits_of(typingctx, x):
    """Reinterpret a float64 as int64 (no conversion)."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _float_of(typingctx, n):
    """Reinterpret an int64 as float64 (no conversion)."""
    if n != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# fdlibm e_log.c
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_MANTISSA = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)
_SQRT2 = 1.4142135623730951


@njit(inline="always")
def log_unit(u):
    """log(u) for a normal double u > 0 (no NaN/inf/subnormal handling: the callers never
    pass them)."""
    bits = _bits_of(u)
    e = (bits >> np.int64(52)) - np.int64(1023)
    m = _float_of((bits & _MANTISSA) | _ONE_BITS)  # in [1, 2)
    big = m > _SQRT2
    m = 0.5 * m if big else m
    dk = np.float64(e) + (1.0 if big else 0.0)
    f = m - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)


# fdlibm k_sin.c / k_cos.c, valid on [-pi/4, pi/4]
_S1 = -1.66666666666666324348e-01
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11
_HALF_PI = 1.5707963267948966


@njit(inline="always")
def sincos_2pi(v):
    """(cos(2 pi v), sin(2 pi v)) for v in [0, 1)."""
    t = 4.0 * v                      # quarter turns, exact
    quadrant = np.int64(t + 0.5)     # nearest quadrant 0..4 (truncation = floor: t >= 0)
    q = np.float64(quadrant)
    x = (t - q) * _HALF_PI           # t - q exact, x in [-pi/4, pi/4]
    z = x * x
    sin_x = x + x * z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    cos_x = 1.0 - 0.5 * z + z * z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
    # Rotate (cos x, sin x) by `quadrant` quarter turns without branches (LLVM turns the
    # two conditional expressions into selects; the signs are exact multiplications).
    swap = (quadrant & 1) == 1
    cos_sign = 1.0 - 2.0 * np.float64(((quadrant + 1) >> 1) & 1)
    sin_sign = 1.0 - 2.0 * np.float64((quadrant >> 1) & 1)
    c = sin_x if swap else cos_x
    s = cos_x if swap else sin_x
    return cos_sign * c, sin_sign * s


@njit(inline="always")
def floor_small(t):
    """floor(t) for |t| < 2^62, branch-free and without ``np.floor`` (which numba-cuda lacks):
    truncate, then step down where truncation rounded a negative value up."""
    f = np.float64(np.int64(t))
    return f - 1.0 if f > t else f


# fdlibm e_exp.c, without the special cases (see ``exp_clamped``)
_INV_LN2 = 1.44269504088896338700e+00
_EXP_P1 = 1.66666666666666019037e-01
_EXP_P2 = -2.77777777770155933842e-03
_EXP_P3 = 6.61375632143793436117e-05
_EXP_P4 = -1.65339022054652515390e-06
_EXP_P5 = 4.13813679705723846039e-08
_EXP_LO = -700.0   # exp(-700) ~ 9.9e-305: the smallest result, so 2^n stays a normal double
_EXP_HI = 700.0


@njit(inline="always")
def exp_clamped(x):
    """exp(x) for x clamped to [-700, 700], branch-free so LLVM vectorises loops calling it
    (a libm ``exp`` call blocks that).  About 1 ulp (fdlibm's reduction x = n ln2 + r and its
    rational approximation on |r| <= ln2/2).  Inputs below -700 give exp(-700) ~ 1e-304
    instead of a smaller number or 0 (absolute error < 1e-304); NaN is not propagated
    reliably (the callers never pass it)."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    n = floor_small(x * _INV_LN2 + 0.5)
    hi = x - n * _LN2_HI          # exact: n has <= 11 bits and _LN2_HI has 32 trailing zeros
    lo = n * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_EXP_P1 + t * (_EXP_P2 + t * (_EXP_P3 + t * (_EXP_P4 + t * _EXP_P5))))
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    scale = _float_of((np.int64(n) + np.int64(1023)) << np.int64(52))  # 2^n, n in [-1010, 1010]
    return y * scale


_INV_2PI = 0.15915494309189535


@njit(inline="always")
def cos_any(x):
    """cos(x) for finite x, branch-free: reduce to turns v = frac(x / 2 pi) and use
    ``sincos_2pi``.  The reduction rounds x / 2 pi, so the absolute error grows like
    |x| * 1e-16 (below 1e-14 for |x| < 100, the costs' range); not for huge arguments."""
    t = x * _INV_2PI
    v = t - floor_small(t)
    v = v if v < 1.0 else 0.0       # t a tiny negative number: 1 - tiny rounds to 1
    return sincos_2pi(v)[0]


@njit(inline="always")
def sin_any(x):
    """sin(x) for finite x, branch-free; the same reduction and error bound as ``cos_any``."""
    t = x * _INV_2PI
    v = t - floor_small(t)
    v = v if v < 1.0 else 0.0
    return sincos_2pi(v)[1]
