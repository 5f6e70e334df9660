"""The Mohamed et al. (2020, Section 3) variance study in plain NumPy: the yardstick for
``harness run examples/mohamed_section3_{quadratic,exp,cos}.yaml`` (benchmarks/study_bench.py).

Idiomatic, vectorised NumPy: for each value of k, one (seeds, N) array per random stream
(``numpy.random.default_rng``), every estimator of the grid as whole-array expressions, the
per-seed estimate and within-seed sample variance as reductions over the sample axis.  The
same 9 estimator variants x 2 components (mu, sigma) as the example grids, with the
definitions of their modules in ``harness/estimators/`` (its own random numbers: the numbers
differ from the harness's, the estimands and variances do not).

    python benchmarks/numpy_study.py [quadratic|exp|cos] [--ks 5]    # prints seconds

``study(cost, ks, n, seeds)`` returns {(label, component): (estimate, sample_var)}, each of
shape (len(ks), seeds).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

MU, SIGMA = 1.0, 1.0
LABELS = ("score_function", "score_function[baseline=mean]", "score_function[baseline=optimal]",
          "score_function[baseline=exact_optimal]", "pathwise", "delta_cv",
          "delta_cv[coefficient=estimated]", "measure_valued", "measure_valued[coupling=false]")
COMPONENTS = ("mu", "sigma")


def costs(name: str, k: float):
    """(f, f', f'') of the example's cost at parameter k, as NumPy ufunc expressions."""
    if name == "quadratic":
        return (lambda x: (x - k) ** 2, lambda x: 2.0 * (x - k), lambda x: 2.0 + 0.0 * x)
    if name == "exp":
        return (lambda x: np.exp(-k * x * x), lambda x: -2.0 * k * x * np.exp(-k * x * x),
                lambda x: (4.0 * k * k * x * x - 2.0 * k) * np.exp(-k * x * x))
    if name == "cos":
        return (lambda x: np.cos(k * x), lambda x: -k * np.sin(k * x),
                lambda x: -k * k * np.cos(k * x))
    raise ValueError(name)


def _hermite(n=200):
    e, w = np.polynomial.hermite_e.hermegauss(n)
    return e, w / w.sum()


def _mean_var(g):
    """Per-seed mean and sample variance (divisor N - 1) over the sample axis."""
    return g.mean(axis=1), g.var(axis=1, ddof=1)


def one_k(cost: str, k: float, n: int, seeds: int, rng) -> dict:
    f, df, d2f = costs(cost, k)
    eps = rng.standard_normal((seeds, n))          # main samples, shared by every estimator
    eps2 = rng.standard_normal((seeds, n))         # independent copy (estimated b*, beta*)
    x = MU + SIGMA * eps
    fx = f(x)
    score = {"mu": eps / SIGMA, "sigma": (eps * eps - 1.0) / SIGMA}
    x2 = MU + SIGMA * eps2
    f2 = f(x2)
    score2 = {"mu": eps2 / SIGMA, "sigma": (eps2 * eps2 - 1.0) / SIGMA}
    he, hw = _hermite()
    f0, f1, f2m = (float(np.asarray(g(np.array(MU)))) for g in (f, df, d2f))

    def taylor(e):
        d = SIGMA * e
        return f0 + d * (f1 + 0.5 * f2m * d)

    h = taylor(eps)
    out = {}
    for c in COMPONENTS:
        s = score[c]
        out["score_function", c] = _mean_var(fx * s)
        # leave-one-out mean of f as the baseline
        loo = (fx.sum(axis=1, keepdims=True) - fx) / (n - 1)
        out["score_function[baseline=mean]", c] = _mean_var((fx - loo) * s)
        # b^ = sum f' s'^2 / sum s'^2 over the independent copy
        s2 = score2[c]
        b = (f2 * s2 * s2).sum(axis=1, keepdims=True) / (s2 * s2).sum(axis=1, keepdims=True)
        out["score_function[baseline=optimal]", c] = _mean_var((fx - b) * s)
        # b* exactly, by Gauss-Hermite quadrature
        sq = he / SIGMA if c == "mu" else (he * he - 1.0) / SIGMA
        fq = f(MU + SIGMA * he)
        b_star = (hw * fq * sq * sq).sum() / (hw * sq * sq).sum()
        out["score_function[baseline=exact_optimal]", c] = _mean_var((fx - b_star) * s)
        out["pathwise", c] = _mean_var(df(x) * (1.0 if c == "mu" else eps))
        # delta method: h = 2nd-order Taylor expansion of f around the mean, E h exact
        g_h = f1 if c == "mu" else f2m * SIGMA
        out["delta_cv", c] = _mean_var((fx - h) * s + g_h)
        a2, b2 = (f2 - taylor(eps2)) * s2, taylor(eps2) * s2 - g_h
        a2c, b2c = a2 - a2.mean(axis=1, keepdims=True), b2 - b2.mean(axis=1, keepdims=True)
        beta = 1.0 + (a2c * b2c).sum(axis=1, keepdims=True) / (b2c * b2c).sum(axis=1,
                                                                           keepdims=True)
        out["delta_cv[coefficient=estimated]", c] = _mean_var(fx * s - beta * (h * s - g_h))
    # measure-valued: Rayleigh (mu) and double-sided Maxwell (sigma) weak derivatives
    u = rng.random((3, seeds, n))
    w = np.sqrt(-2.0 * np.log1p(-u[0]))
    c_mu = 1.0 / (SIGMA * math.sqrt(2.0 * math.pi))
    out["measure_valued", "mu"] = _mean_var(c_mu * (f(MU + SIGMA * w) - f(MU - SIGMA * w)))
    w_minus = np.sqrt(-2.0 * np.log1p(-u[1]))
    out["measure_valued[coupling=false]", "mu"] = _mean_var(
        c_mu * (f(MU + SIGMA * w) - f(MU - SIGMA * w_minus)))
    z = rng.standard_normal((seeds, n))
    m = np.sqrt(-2.0 * np.log1p(-u[2]) + z * z) * np.where(u[1] < 0.5, 1.0, -1.0)
    u_prime = np.mod(2.0 * u[1], 1.0)              # independent of the sign
    f_m = f(MU + SIGMA * m)
    out["measure_valued", "sigma"] = _mean_var((f_m - f(MU + SIGMA * m * u_prime)) / SIGMA)
    out["measure_valued[coupling=false]", "sigma"] = _mean_var((f_m - fx) / SIGMA)
    return out


def study(cost: str, ks, n: int = 20_000, seeds: int = 60, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_k = [one_k(cost, float(k), n, seeds, rng) for k in ks]
    return {key: (np.stack([r[key][0] for r in per_k]), np.stack([r[key][1] for r in per_k]))
            for key in per_k[0]}


def grid_ks(cost: str) -> np.ndarray:
    """The 100 values of k of ``examples/mohamed_section3_<cost>.yaml``."""
    from pathlib import Path

    from ruamel.yaml import YAML

    path = Path(__file__).resolve().parent.parent / "examples" / f"mohamed_section3_{cost}.yaml"
    return np.array(YAML(typ="safe").load(path.read_text())["problem"]["k"], dtype=float)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cost", nargs="?", default="quadratic")
    parser.add_argument("--ks", type=int, default=None, help="first K values of k only")
    args = parser.parse_args()
    ks = grid_ks(args.cost)[:args.ks]
    t0 = time.perf_counter()
    study(args.cost, ks)
    print(f"numpy study ({args.cost}, {len(ks)} values of k, 9 estimators x 2 components, "
          f"N = 20000, 60 seeds): {time.perf_counter() - t0:.2f} s")
