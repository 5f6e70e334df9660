"""Library entry points for ELBO studies: estimate gradients, exact references, optimise.

>>> from harness.vi.api import Problem, estimate
>>> p = Problem.make("gaussian", "full", {"target_seed": 3}, dim=3)   # q defaults to N(0, I)
>>> est, var, elbo = estimate(p, [("reparam", ()), ("stl", ())], 1000, range(100))

``estimate`` returns float64 arrays ``est[S, E, P]`` (the N-sample gradient estimate per
seed, estimator and component), ``var[S, E, P]`` (within-seed per-sample variance,
divisor N - 1; for accumulated estimators as ``harness.vi.estimators`` defines it) and
``elbo[S]`` (the N-sample mean of f = log g(z) - log q(z)).  ``backend="cuda"`` computes
the same cells with ``harness.vi.cuda`` (same streams and per-sample code).
Estimators are given as names, ``(name, options)`` tuples, ``EstimatorSpec``s or kernel
codes (``harness.vi.estimators.resolve``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernel_cache
from ..backends.cpu import chunking, merge_chunks, run_in_threads
from ..errors import BackendError, HarnessError
from . import references
from .codes import E_SCORE_EXACT_OPTIMAL, E_SCORE_MEAN
from .estimators import ESTIMATORS, Variant, resolve
from .families import FAMILIES, Family
from .targets import TargetData, get, user


def kernels(target: TargetData | None = None):
    """The ELBO kernel module (``harness/vi/kernels.py``), imported through
    ``harness.kernel_cache`` so that its numba cache follows every file it depends on; for
    a user-written target, its generated module (``harness.vi.targets.user.kernels``)."""
    if target is not None and target.user is not None:
        return user.kernels(target.user)
    return kernel_cache.load_module("harness.vi.kernels")


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
        t = get(target)
        dim = t.fixed_dim or dim or (len(params["mean"]) if "mean" in params else None)
        data = t.build(params, dim)
        d = data.dim
        mu = np.zeros(d) if mu is None else np.asarray(mu, float)
        C = np.eye(d) if C is None else np.asarray(C, float)
        return Problem(data, FAMILIES[family], mu, C)

    @property
    def dim(self) -> int:
        return self.target.dim

    @property
    def n_params(self) -> int:
        return self.family.n_params(self.dim)

    def at(self, mu, C) -> Problem:
        return Problem(self.target, self.family, np.asarray(mu, float), np.asarray(C, float))

    def components(self) -> tuple[str, ...]:
        return self.family.components(self.dim)

    def theta(self) -> np.ndarray:
        return self.family.theta(self.mu, self.C)


def _keys(seeds):
    seeds = np.asarray(list(seeds), dtype=np.int64)
    if seeds.ndim != 1 or seeds.size == 0 or (seeds < 0).any():
        raise ValueError("seeds must be a non-empty list of non-negative integers")
    u = seeds.astype(np.uint64)
    return u & np.uint64(0xFFFFFFFF), u >> np.uint64(32)


def layout(variants: list[Variant], n_params: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(codes[E], offsets[E], n_terms): the kernel's estimator codes, where each estimator's
    quantities start, and their total number plus 1 (f, last)."""
    sizes = [n_params * (v.n_moments or 1) for v in variants]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return (np.array([v.code for v in variants], np.int64), offsets, int(sum(sizes)) + 1)


def _per_seed(problem: Problem, n_seeds: int, mus=None, Cs=None):
    d = problem.dim
    if mus is None:
        mus = np.broadcast_to(problem.mu, (n_seeds, d))
        Cs = np.broadcast_to(problem.C, (n_seeds, d, d))
    # writable copies: a read-only (broadcast) array is another numba type, i.e. another
    # compilation of the kernel
    return np.array(mus, dtype=float, order="C"), np.array(Cs, dtype=float, order="C")


def _baselines(problem, variants, P, mus, Cs, per_seed_lambda) -> np.ndarray:
    """baselines[S, E * P]: the exact b*_j of the variants that need them (per seed if the
    seeds have their own lambda), else 0."""
    out = np.zeros((mus.shape[0], max(len(variants) * P, 1)))
    for e, v in enumerate(variants):
        if v.exact_baselines:
            if per_seed_lambda:
                for s in range(mus.shape[0]):
                    out[s, e * P:(e + 1) * P] = references.optimal_baselines(
                        problem.at(mus[s], Cs[s]))
            else:
                out[:, e * P:(e + 1) * P] = references.optimal_baselines(problem)
    return out


def _moments(problem: Problem, variants, n_samples: int, seeds, stream: int = 0, mus=None,
             Cs=None, backend: str = "cpu"):
    """(est[S, E, P], var[S, E, P], elbo[S]) of the resolved ``variants``; ``mus``/``Cs``:
    a lambda per seed (else the problem's), ``stream``: the main stream."""
    n_samples = int(n_samples)
    if n_samples < 2:
        raise ValueError("n_samples must be >= 2")
    k0, k1 = _keys(seeds)
    S = k0.size
    per_seed_lambda = mus is not None
    mus, Cs = _per_seed(problem, S, mus, Cs)
    P = problem.n_params
    codes, offsets, n_terms = layout(variants, P)
    baselines = _baselines(problem, variants, P, mus, Cs, per_seed_lambda)
    t = problem.target
    args = (np.int64(stream), np.int64(t.code), t.ta, t.tm, t.ti, np.int64(problem.family.code),
            np.int64(P), mus, Cs, codes, offsets, baselines)
    if backend == "cpu":
        chunk_pairs, n_chunks = chunking(n_samples)
        chunk = 2 * chunk_pairs        # the 1-D rule counts Box-Muller pairs; here samples
        partials = np.empty((S, n_chunks, 1 + 3 * n_terms))
        call = (k0, k1, np.int64(n_samples), np.int64(chunk), *args, partials)
        module = kernels(t)
        run_in_threads(module.grad_kernel, call, S * n_chunks)
    elif backend == "cuda":
        from ..backends.cuda import require

        if t.user is not None:
            raise BackendError(f"backend cuda does not run user-written targets ({t.name}) "
                               "(fix: use backend: cpu)")
        require()
        from . import cuda

        partials = cuda.partials(kernels(), k0, k1, n_samples, n_terms, *args)
    else:
        raise BackendError(f"backend {backend!r} does not run ELBO problems (fix: use cpu "
                           "or cuda)")
    mean, var = merge_chunks(partials, n_terms)
    est, sample_var = np.empty((S, len(variants), P)), np.empty((S, len(variants), P))
    for e, v in enumerate(variants):
        o = offsets[e]
        if v.n_moments == 0:
            est[:, e], sample_var[:, e] = mean[:, o:o + P], var[:, o:o + P]
        else:
            cols = slice(o, o + v.n_moments * P)
            a, b = v.moments_to_estimate(mean[:, cols].reshape(S * P, v.n_moments),
                              var[:, cols].reshape(S * P, v.n_moments), n_samples, None)
            est[:, e], sample_var[:, e] = a.reshape(S, P), b.reshape(S, P)
    return est, sample_var, mean[:, -1]


def estimate(problem: Problem, estimators, n_samples: int, seeds, backend: str = "cpu"):
    """(est[S, E, P], var[S, E, P], elbo[S]): see the module docstring."""
    return _moments(problem, [resolve(e) for e in estimators], n_samples, seeds,
                    backend=backend)


def quantities_at(problem: Problem, estimators, eps, eps_independent=None, idx=None,
                  idx_independent=None, baselines=None, f_shift: float = 0.0) -> np.ndarray:
    """The kernel's per-sample quantities (``harness.vi.kernels``, layout in its docstring)
    at given base draws eps[n, d]: an array [n, n_terms].  For tests."""
    variants = [resolve(e) for e in estimators]
    P = problem.n_params
    codes, offsets, n_terms = layout(variants, P)
    eps = np.ascontiguousarray(eps, dtype=float)
    n = eps.shape[0]
    batch = max(int(problem.target.ti[0]), 1)

    def rows(x, dtype, width):
        return np.zeros((n, width), dtype) if x is None else np.ascontiguousarray(x, dtype)

    baselines = np.zeros(max(len(variants) * P, 1)) if baselines is None else \
        np.asarray(baselines, float)
    t = problem.target
    return kernels(t).quantities_at(
        np.int64(t.code), t.ta, t.tm, t.ti, np.int64(problem.family.code), np.int64(P),
        problem.mu, problem.C, codes, offsets, baselines, float(f_shift), np.int64(n_terms),
        eps, rows(idx, np.int64, batch), rows(eps_independent, float, problem.dim),
        rows(idx_independent, np.int64, batch))


# ----------------------------------------------------------------------------- references

def exact_bstar_unavailable(target_code: int, dim: int) -> str | None:
    """Why the exact b* (``baseline=exact_optimal``) cannot be computed (None: it can)."""
    return references.unavailable(target_code, dim)


def reference(problem: Problem, estimator) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(exact_grad[P], exact_var[P], grad_source, var_source) for one estimator.

    The gradient: the target's closed form, else (user targets) the quadrature of
    ``harness.vi.references`` (else NaN, "none").  The per-sample variance: the target's
    closed form (``closed_form``); else the independent formulas of
    ``harness.vi.references`` (``quadrature``: the score function on the Gaussian target,
    N -> infinity values for ``baseline=mean`` and ``optimal``; every estimator on a user
    target of dim <= 2); else NaN, ``none``.  Never computed from the kernels.
    """
    v = resolve(estimator)
    t, fam = problem.target, problem.family.code
    nan = np.full(problem.n_params, np.nan)
    grad, gsrc = nan, "none"
    if t.exact_grad is not None:
        grad, gsrc = np.asarray(t.exact_grad(fam, problem.mu, problem.C), float), "closed_form"
    elif references.gradient(problem) is not None:
        grad, gsrc = np.asarray(references.gradient(problem), float), "quadrature"
    var, vsrc = nan, "none"
    closed = t.exact_var(v.code, fam, problem.mu, problem.C) if t.exact_var else None
    if closed is not None:
        var, vsrc = np.asarray(closed, float), "closed_form"
    else:
        quad = references.variance(problem, v.code)
        if quad is not None:
            var, vsrc = np.asarray(quad, float), "quadrature"
    return grad, var, gsrc, vsrc


def exact_elbo(problem: Problem) -> float:
    """The target's closed-form ELBO at q, else (user targets) its quadrature, else NaN."""
    t = problem.target
    if t.exact_elbo is not None:
        return t.exact_elbo(problem.family.code, problem.mu, problem.C)
    value = references.elbo(problem)
    return math.nan if value is None else value


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
    """theta at every record (steps 0, m, 2m, ..., and the end): array [S, R, P].  CPU."""
    v = resolve(estimator)
    if v.code == E_SCORE_MEAN and opt.samples < 2:
        raise ValueError("the leave-one-out baseline needs >= 2 samples per step")
    if v.code == E_SCORE_EXACT_OPTIMAL:
        raise HarnessError("score_function baseline exact_optimal is not available in "
                           "optimisation mode (its exact b* changes with lambda every step)")
    k0, k1 = _keys(seeds)
    t = problem.target
    P = problem.n_params
    _, _, n_terms = layout([v], P)
    rec = np.empty((k0.size, len(record_steps(opt)), P))
    call = (
        k0, k1, np.int64(opt.steps), np.int64(opt.samples), np.int64(t.code), t.ta, t.tm, t.ti,
        np.int64(problem.family.code), np.int64(P), np.int64(problem.dim), np.int64(v.code),
        np.int64(n_terms), problem.theta(), opt.name == "adam", float(opt.lr),
        opt.schedule == "cosine", np.int64(opt.record_every), float(opt.min_diag), rec)
    module = kernels(t)
    run_in_threads(module.opt_kernel, call, k0.size)
    return rec


def record_steps(opt: OptimizerSpec) -> list[int]:
    steps = list(range(0, opt.steps, opt.record_every))
    return steps + [opt.steps]


def trace(problem: Problem, estimator, opt: OptimizerSpec, rec: np.ndarray, seeds) -> dict:
    """Per (seed, record): the ELBO (estimated from ``var_samples`` fresh samples, and exact
    where known), the per-component gradient variance of the estimator at that lambda (mean
    and max over components) and the distance to the optimum (where known, Euclidean in
    theta).  Fresh samples of record r use stream 2 + 2 r (``harness.vi.kernels``; the
    optimal baseline's independent draws its copy 2**31 + 2 + 2 r).  CPU."""
    variant = resolve(estimator)
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
            _, var, elbo = _moments(problem, [variant], opt.var_samples,
                                    np.asarray(seeds)[ok], stream=2 + 2 * r, mus=mus[ok],
                                    Cs=Cs[ok])
            out["elbo"][ok, r] = elbo
            out["grad_var_mean"][ok, r] = var[:, 0].mean(axis=1)
            out["grad_var_max"][ok, r] = var[:, 0].max(axis=1)
        for s in range(S):
            # closed forms only: a user target's quadrature ELBO costs seconds per (seed,
            # record), so its traces record the estimate alone (exact_elbo NaN)
            if ok[s] and problem.target.exact_elbo is not None:
                out["exact_elbo"][s, r] = problem.target.exact_elbo(fam.code, mus[s], Cs[s])
            if ok[s] and opt_theta is not None:
                out["dist_opt"][s, r] = float(np.linalg.norm(rec[s, r] - opt_theta))
    return out


def estimator_names() -> list[str]:
    return list(ESTIMATORS)
