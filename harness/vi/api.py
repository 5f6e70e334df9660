"""Library entry points for ELBO studies: estimate gradients, exact references, optimise.

>>> from harness.vi.api import Problem, estimate
>>> p = Problem.make("gaussian", "full", {"target_seed": 3}, dim=3)   # q defaults to N(0, I)
>>> est, var, elbo = estimate(p, [("reparam", ()), ("stl", ())], 1000, range(100))

``estimate`` returns float64 arrays ``est[S, E, P]`` (the N-sample gradient estimate per
seed, estimator and component), ``var[S, E, P]`` (within-seed per-sample variance,
divisor N - 1) and ``elbo[S]`` (the N-sample mean of f = log g(z) - log q(z)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..backends.cpu import merge_chunks
from ..errors import HarnessError
from ..kernel_cache import compile_once
from . import kernels
from .estimators import ESTIMATORS, code_of
from .families import FAMILIES, Family
from .targets import TARGETS, TargetData

MAX_CHUNKS = 64
MIN_CHUNK = 1024           # samples per chunk
QUAD_NODES = 5             # tensor Gauss-Hermite: exact for the Gaussian target's terms
QUAD_MAX_POINTS = 2_000_000


@dataclass(frozen=True)
class Problem:
    """One ELBO problem at one point lambda: a target, a family and q's (mu, C)."""

    target: TargetData
    family: Family
    mu: np.ndarray
    C: np.ndarray

    @staticmethod
    def make(target: str, family: str, params: dict | None = None, dim=None, mu=None, C=None):
        params = dict(params or {})
        t = TARGETS[target]
        dim = t.fixed_dim or dim or (len(params["mean"]) if "mean" in params else None)
        data = t.build(params, dim)
        d = data.dim
        mu = np.zeros(d) if mu is None else np.asarray(mu, float)
        C = np.eye(d) if C is None else np.asarray(C, float)
        return Problem(data, FAMILIES[family], mu, C)

    @property
    def dim(self) -> int:
        return self.target.dim

    def at(self, mu, C) -> Problem:
        return Problem(self.target, self.family, np.asarray(mu, float), np.asarray(C, float))

    def components(self) -> tuple[str, ...]:
        return self.family.components(self.dim)

    def theta(self) -> np.ndarray:
        return self.family.theta(self.mu, self.C)


def _run(kernel, *args):
    """Call a kernel, compiling it first under the cross-process compile lock
    (``harness.kernel_cache.compile_once``: processes needing it at once compile it once)."""
    compile_once(kernel, args)
    return kernel(*args)


def chunking(n_samples: int) -> tuple[int, int]:
    """(chunk, n_chunks): a function of N only, never of the thread count."""
    n_chunks = max(1, min(MAX_CHUNKS, math.ceil(n_samples / MIN_CHUNK)))
    chunk = math.ceil(n_samples / n_chunks)
    return chunk, math.ceil(n_samples / chunk)


def _keys(seeds):
    seeds = np.asarray(list(seeds), dtype=np.int64)
    if seeds.ndim != 1 or seeds.size == 0 or (seeds < 0).any():
        raise ValueError("seeds must be a non-empty list of non-negative integers")
    u = seeds.astype(np.uint64)
    return u & np.uint64(0xFFFFFFFF), u >> np.uint64(32)


def _codes(estimators) -> np.ndarray:
    out = []
    for e in estimators:
        if isinstance(e, (int, np.integer)):
            out.append(int(e))
        elif isinstance(e, str):
            out.append(code_of(e))
        else:
            name, options = e
            out.append(code_of(name, options))
    return np.asarray(out, dtype=np.int64)


def _per_seed(problem: Problem, n_seeds: int, mus=None, Cs=None):
    d = problem.dim
    if mus is None:
        mus = np.broadcast_to(problem.mu, (n_seeds, d))
        Cs = np.broadcast_to(problem.C, (n_seeds, d, d))
    # writable C copies: a read-only (broadcast) array is another numba type, i.e. another
    # compilation of the kernel
    return np.array(mus, dtype=float, order="C"), np.array(Cs, dtype=float, order="C")


def raw_moments(problem: Problem, codes, n_samples: int, seeds, stream: int = 0,
                mus=None, Cs=None):
    """(mean[S, T], var[S, T]) of the T = E * P + 1 per-sample terms (last: f)."""
    n_samples = int(n_samples)
    if n_samples < 2:
        raise ValueError("n_samples must be >= 2")
    k0, k1 = _keys(seeds)
    S = k0.size
    t = problem.target
    per_seed_lambda = mus is not None
    mus, Cs = _per_seed(problem, S, mus, Cs)
    codes = np.asarray(codes, dtype=np.int64)
    chunk, n_chunks = chunking(n_samples)
    fam = problem.family.code
    P = problem.family.n_params(problem.dim)
    f_sums = np.zeros(S)
    bases = np.zeros((S, max(codes.size * P, 1)))
    opt = codes == kernels.E_SCORE_OPT
    if opt.any():
        # pre-pass on the independent baseline stream: b^_p = sum f s_p^2 / sum s_p^2
        bc = np.array([kernels.E_BSTAR_NUM, kernels.E_BSTAR_DEN], np.int64)
        part = np.empty((S, n_chunks, 1 + 3 * (2 * P + 1)))
        _run(kernels.grad_kernel, k0, k1, np.int64(n_samples), np.int64(chunk),
                            np.int64(stream + kernels.STREAM_BASELINE), np.int64(t.code),
                            t.ta, t.tm, t.ti, np.int64(fam), mus, Cs, bc, f_sums,
                            np.zeros((S, 2 * P)), part)
        m, _ = merge_chunks(part, 2 * P + 1)
        b_hat = m[:, :P] / m[:, P:2 * P]
        for e in np.flatnonzero(opt):
            bases[:, e * P:(e + 1) * P] = b_hat
    for e in np.flatnonzero(codes == kernels.E_SCORE_EXACT_OPT):
        if not per_seed_lambda:
            bases[:, e * P:(e + 1) * P] = exact_bstar(problem)
        else:
            for s in range(S):
                bases[s, e * P:(e + 1) * P] = exact_bstar(problem.at(mus[s], Cs[s]))
    if (codes == kernels.E_SCORE_LOO).any():
        # first pass: the sum of f over the seed's N samples (same draws, same order)
        part = np.empty((S, n_chunks, 4))
        _run(kernels.grad_kernel, k0, k1, np.int64(n_samples), np.int64(chunk), np.int64(stream),
                            np.int64(t.code), t.ta, t.tm, t.ti, np.int64(fam), mus, Cs,
                            codes[:0], f_sums, bases, part)
        m, _ = merge_chunks(part, 1)
        f_sums = m[:, 0] * n_samples
    T = codes.size * P + 1
    part = np.empty((S, n_chunks, 1 + 3 * T))
    _run(kernels.grad_kernel, k0, k1, np.int64(n_samples), np.int64(chunk), np.int64(stream),
                        np.int64(t.code), t.ta, t.tm, t.ti, np.int64(fam), mus, Cs, codes,
                        f_sums, bases, part)
    return merge_chunks(part, T)


def estimate(problem: Problem, estimators, n_samples: int, seeds):
    """(est[S, E, P], var[S, E, P], elbo[S]): see the module docstring."""
    codes = _codes(estimators)
    mean, var = raw_moments(problem, codes, n_samples, seeds)
    P = problem.family.n_params(problem.dim)
    S, E = mean.shape[0], codes.size
    return (mean[:, :-1].reshape(S, E, P), var[:, :-1].reshape(S, E, P), mean[:, -1])


# ----------------------------------------------------------------------------- references

@cache
def _gh(n: int):
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def quadrature(problem: Problem, codes, baseline: float = 0.0, nodes: int = QUAD_NODES,
               bases=None):
    """(E[t], Var[t]) of every term (E * P + 1, last f) by tensor Gauss-Hermite quadrature
    with a fixed score-function baseline (``baseline``: the leave-one-out code's scalar;
    ``bases[E * P]``: the per-component baselines of the optimal codes); None if nodes**d
    exceeds QUAD_MAX_POINTS.
    Evaluates the kernels' own per-sample function (``kernels.terms_at``) in blocks."""
    d = problem.dim
    total = nodes ** d
    if total > QUAD_MAX_POINTS:
        return None
    t = problem.target
    x, w = _gh(nodes)
    codes = np.asarray(codes, np.int64)
    P = problem.family.n_params(d)
    bases = np.zeros(max(codes.size * P, 1)) if bases is None else np.asarray(bases, float)
    m1 = m2 = 0.0
    block = 20_000
    for start in range(0, total, block):
        flat = np.arange(start, min(start + block, total))
        digits = (flat[:, None] // nodes ** np.arange(d)) % nodes
        eps = np.ascontiguousarray(x[digits])
        weight = w[digits].prod(axis=1)
        terms = kernels.terms_at(t.code, t.ta, t.tm, t.ti, problem.family.code, problem.mu,
                                 problem.C, codes, float(baseline), bases, eps,
                                 np.zeros((flat.size, 1), np.int64))
        m1 = m1 + weight @ terms
        m2 = m2 + weight @ (terms * terms)
    return m1, np.maximum(m2 - m1 * m1, 0.0)


def exact_bstar(problem: Problem) -> np.ndarray:
    """The exact per-component optimal score-function baselines b*_p = E[f s_p^2] / E[s_p^2]
    by tensor Gauss-Hermite quadrature (exact on the Gaussian target); HarnessError where
    the quadrature is not exact (other targets) or infeasible (5**d > QUAD_MAX_POINTS)."""
    why = exact_bstar_unavailable(problem.target.code, problem.dim)
    if why:
        raise HarnessError(f"score_function baseline exact_optimal: {why}")
    P = problem.family.n_params(problem.dim)
    m1, _ = quadrature(problem, [kernels.E_BSTAR_NUM, kernels.E_BSTAR_DEN])
    return m1[:P] / m1[P:2 * P]


def exact_bstar_unavailable(target_code: int, dim: int) -> str | None:
    """Why the exact b* cannot be computed for this target and dimension (None: it can)."""
    if target_code != kernels.T_GAUSSIAN:
        return "the exact b* needs exact quadrature, available for the gaussian target only"
    if QUAD_NODES ** dim > QUAD_MAX_POINTS:
        return (f"the exact b* quadrature needs {QUAD_NODES}^{dim} points, more than "
                f"{QUAD_MAX_POINTS:,} (d <= 9)")
    return None


def reference(problem: Problem, estimator) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(exact_grad[P], exact_var[P], grad_source, var_source) for one estimator.

    The gradient: the target's closed form (else NaN, "none").  The per-sample variance:
    the target's closed form; else, on the Gaussian target (where every term is a
    polynomial in eps), exact tensor Gauss-Hermite quadrature of the estimator's own
    formula ("quadrature"; for ``score_function[baseline=mean]`` with the baseline fixed at
    the exact ELBO, the N -> infinity limit of the leave-one-out baseline; for
    ``baseline=optimal`` and ``exact_optimal`` with the baselines fixed at the exact b*_p,
    Var[(f - b*_p) s_p], the exact variance of exact_optimal and the N -> infinity limit of
    optimal's); else NaN.
    """
    code = int(_codes([estimator])[0])
    t, fam = problem.target, problem.family.code
    P = problem.family.n_params(problem.dim)
    nan = np.full(P, np.nan)
    grad, gsrc = nan, "none"
    if t.exact_grad is not None:
        grad, gsrc = np.asarray(t.exact_grad(fam, problem.mu, problem.C), float), "closed_form"
    var, vsrc = nan, "none"
    closed = t.exact_var(code, fam, problem.mu, problem.C) if t.exact_var else None
    if closed is not None:
        var, vsrc = np.asarray(closed, float), "closed_form"
    elif t.code == kernels.T_GAUSSIAN:
        base = t.exact_elbo(fam, problem.mu, problem.C) if code == kernels.E_SCORE_LOO else 0.0
        bases = None
        if code in (kernels.E_SCORE_OPT, kernels.E_SCORE_EXACT_OPT) \
                and exact_bstar_unavailable(t.code, problem.dim) is None:
            bases = exact_bstar(problem)
        q = quadrature(problem, [code], base, bases=bases)
        if code in (kernels.E_SCORE_OPT, kernels.E_SCORE_EXACT_OPT) and bases is None:
            q = None
        if q is not None:
            var, vsrc = q[1][:P], "quadrature"
    return grad, var, gsrc, vsrc


def exact_elbo(problem: Problem) -> float:
    t = problem.target
    return math.nan if t.exact_elbo is None else t.exact_elbo(problem.family.code, problem.mu,
                                                              problem.C)


# ----------------------------------------------------------------------------- optimisation

@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adam"          # adam | sgd
    lr: float = 1e-2
    steps: int = 1000
    samples: int = 10           # samples per step
    schedule: str = "constant"  # constant | cosine
    record_every: int = 10
    var_samples: int = 1000     # fresh samples for the recorded gradient variance and ELBO
    min_diag: float = 1e-6      # projection of L's diagonal (full family)


def optimize(problem: Problem, estimator, opt: OptimizerSpec, seeds) -> np.ndarray:
    """theta at every record (steps 0, m, 2m, ..., and the end): array [S, R, P]."""
    code = int(_codes([estimator])[0])
    if code == kernels.E_SCORE_LOO and opt.samples < 2:
        raise ValueError("the leave-one-out baseline needs >= 2 samples per step")
    if code == kernels.E_SCORE_EXACT_OPT:
        raise HarnessError("score_function baseline exact_optimal is not available in "
                           "optimisation mode (its exact b* changes with lambda every step)")
    k0, k1 = _keys(seeds)
    t = problem.target
    n_rec = len(record_steps(opt))
    rec = np.empty((k0.size, n_rec, problem.family.n_params(problem.dim)))
    _run(kernels.opt_kernel, k0, k1, np.int64(opt.steps), np.int64(opt.samples), np.int64(t.code),
                       t.ta, t.tm, t.ti, np.int64(problem.family.code), np.int64(problem.dim),
                       np.int64(code), problem.theta(), opt.name == "adam", float(opt.lr),
                       opt.schedule == "cosine", np.int64(opt.record_every),
                       float(opt.min_diag), rec)
    return rec


def record_steps(opt: OptimizerSpec) -> list[int]:
    steps = list(range(0, opt.steps, opt.record_every))
    return steps + [opt.steps]


def trace(problem: Problem, estimator, opt: OptimizerSpec, rec: np.ndarray, seeds) -> dict:
    """Per (seed, record): the ELBO (estimated from ``var_samples`` fresh samples, and exact
    where known), the per-component gradient variance of the estimator at that lambda (mean
    and max over components) and the distance to the optimum (where known, Euclidean in
    theta).  Fresh samples of record r use stream 2 + 2 r (``harness.vi.kernels``; the
    optimal baseline's independent draws stream 2**31 + 2 + 2 r)."""
    code = _codes([estimator])
    S, R, P = rec.shape
    fam = problem.family
    out = {k: np.full((S, R), np.nan) for k in
           ("elbo", "exact_elbo", "grad_var_mean", "grad_var_max", "dist_opt")}
    opt_theta = None
    if problem.target.optimum is not None:
        opt_theta = fam.theta(*problem.target.optimum(fam.code))
    for r in range(R):
        lams = [fam.unpack(rec[s, r]) for s in range(S)]
        mus = np.stack([m for m, _ in lams])
        Cs = np.stack([C for _, C in lams])
        # a diverged trajectory (inf/NaN) gets NaN trace values, the others are recorded
        ok = np.isfinite(rec[:, r]).all(axis=1) & (np.diagonal(Cs, axis1=1, axis2=2) > 0).all(1)
        if ok.any():
            mean, var = raw_moments(problem, code, opt.var_samples, np.asarray(seeds)[ok],
                                    stream=2 + 2 * r, mus=mus[ok], Cs=Cs[ok])
            out["elbo"][ok, r] = mean[:, -1]
            out["grad_var_mean"][ok, r] = var[:, :P].mean(axis=1)
            out["grad_var_max"][ok, r] = var[:, :P].max(axis=1)
        for s in range(S):
            if ok[s] and problem.target.exact_elbo is not None:
                out["exact_elbo"][s, r] = problem.target.exact_elbo(fam.code, mus[s], Cs[s])
            if ok[s] and opt_theta is not None:
                out["dist_opt"][s, r] = float(np.linalg.norm(rec[s, r] - opt_theta))
    return out


def estimator_names() -> list[str]:
    return list(ESTIMATORS)
