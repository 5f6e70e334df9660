"""ELBO gradient estimators (registry).  The per-sample formulas live in
``harness.vi.kernels.sample_terms``; with z = mu + C eps, G = grad_z log g(z):

- ``reparam``: generalised reparameterisation (seed 002): G dz/dlambda + grad log|det C|
  (analytic entropy).  mu: G;  L[i,j]: G_i eps_j + [i=j]/L_ii;  log_sigma[i]:
  G_i eps_i sigma_i + 1.
- ``reparam_sampled_entropy``: the total derivative of log g(z) - log q(z; lambda) with
  log q evaluated on the sample, computed literally as autodiff would: path term
  (G - grad_z log q) dz/dlambda plus the score term -d/dlambda log q at fixed z.  For any
  location-scale family the two extra pieces sum to grad log|det C| exactly, so this equals
  ``reparam`` up to float rounding (Roeder et al. 2017, Sec. 3): the study shows it.
- ``stl``: sticking the landing (Roeder et al. 2017): the path term only,
  (G - grad_z log q(z)) dz/dlambda; zero variance when q equals the target.
- ``score_function``: (f - b) grad_lambda log q(z), f = log g(z) - log q(z) (seed 001), with
  the score s = grad_lambda log q:  mu: C^-T eps;  L[i,j]: (C^-T eps)_i eps_j - [i=j]/L_ii;
  log_sigma[i]: eps_i^2 - 1.  Since E[s] = 0, any baseline b independent of sample i keeps
  the estimate unbiased.  Option ``baseline`` (the names and definitions of issue 4's
  Gaussian-cost study, ``harness.estimators.score_function``):

  ``none``           b = 0.  1 evaluation of log g per sample.  Per-sample variance:
                     Var[f s_j]; reference by exact tensor Gauss-Hermite quadrature (below).
  ``mean``           b_i = mean of f over the *other* N - 1 samples of the same seed
                     (leave-one-out), computed from the sum of f in a first streaming pass
                     over the same draws; b_i is independent of sample i, so unbiased.
                     2 evaluations per sample (the two passes).  The per-sample variance
                     column is the within-seed sample variance of g_i = (f_i - b_i) s_i;
                     its reference is the N -> infinity limit Var[(f - E f) s_j]
                     (quadrature); finite N adds an O(1/N) relative excess.
  ``optimal``        b_j = b^_j = sum f(z'_k) s_j(eps'_k)^2 / sum s_j(eps'_k)^2 over N
                     independent draws eps'_k (and minibatches) of the baseline stream of the
                     same seed (``kernels.STREAM_BASELINE`` = 2**31 + the main stream: see
                     the random-number plan in ``harness.vi.kernels``), drawn in a pre-pass:
                     the sample version of the per-component variance-minimising scalar
                     b*_j = E[f s_j^2] / E[s_j^2]; independent of the main draws, so the
                     estimate is unbiased.  2 evaluations per sample (the N extra draws are
                     counted in ``evals_per_sample``).  The per-sample variance column is the
                     within-seed sample variance of g_i = (f_i - b^_j) s_ij; its reference
                     ``exact_var`` is the N -> infinity limit V*_j = Var[(f - b*_j) s_j]
                     (quadrature).  Exactly, E[sample var] = V*_j + E[(b^_j - b*_j)^2] E[s_j^2]
                     and N Var[estimate] = the same: an O(1/N) relative excess.
  ``exact_optimal``  b_j = b*_j computed exactly by the quadrature once per cell and passed to
                     the kernel as per-cell constants: an oracle for studies, not an
                     algorithm.  1 evaluation per sample.  Per-sample variance V*_j exactly.
                     Only where the quadrature is exact and feasible (Gaussian target,
                     5**d <= 2,000,000, i.e. d <= 9); elsewhere it is an error; not in
                     optimisation mode (b* would change with lambda at every step).

  The quadrature reference: tensor Gauss-Hermite with 5 nodes per coordinate on the kernels'
  own per-sample formula (``harness.vi.api.quadrature``), exact on the Gaussian target (f is
  quadratic, s_j has degree <= 2 in eps, so f s_j^2 and ((f - b) s_j)^2 have degree <= 8);
  for other targets or d > 9 ``exact_var`` is NaN with ``exact_source`` none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import kernels


@dataclass(frozen=True)
class VIEstimator:
    name: str
    codes: dict            # option value tuple -> kernel code
    options: dict = field(default_factory=dict)   # option -> allowed values (first: default)
    needs_gradient: bool = True                   # needs grad_z log g
    evals_per_sample: int = 1
    description: str = ""
    evals: dict = field(default_factory=dict)     # option value tuple -> evals if not default

    def key(self, options=()) -> tuple:
        opts = dict(options)
        return tuple(opts.get(k, allowed[0]) for k, allowed in self.options.items())

    def code(self, options=()) -> int:
        return self.codes[self.key(options)]

    def evals_of(self, options=()) -> int:
        """Evaluations of log g per sample (pre-passes and extra draws counted)."""
        return self.evals.get(self.key(options), self.evals_per_sample)


ESTIMATORS = {
    "reparam": VIEstimator("reparam", {(): kernels.E_REPARAM},
                           description="G dz/dlambda + analytic grad log|det C|"),
    "reparam_sampled_entropy": VIEstimator(
        "reparam_sampled_entropy", {(): kernels.E_REPARAM_SAMPLED_ENTROPY},
        description="total derivative of log g(z) - log q(z) on the sample"),
    "stl": VIEstimator("stl", {(): kernels.E_STL},
                       description="sticking the landing: path derivative, score term dropped"),
    "score_function": VIEstimator(
        "score_function",
        {("none",): kernels.E_SCORE, ("mean",): kernels.E_SCORE_LOO,
         ("optimal",): kernels.E_SCORE_OPT, ("exact_optimal",): kernels.E_SCORE_EXACT_OPT},
        options={"baseline": ("none", "mean", "optimal", "exact_optimal")},
        needs_gradient=False, evals_per_sample=1,
        evals={("mean",): 2, ("optimal",): 2},   # a first pass / N independent extra draws
        description="(f - b) grad log q; baseline none | mean (leave-one-out) | optimal "
                    "(b*_j from an independent stream) | exact_optimal (oracle b*_j)"),
}


def code_of(name: str, options=()) -> int:
    return ESTIMATORS[name].code(options)


def evals_of(name: str, options=()) -> int:
    return ESTIMATORS[name].evals_of(options)
