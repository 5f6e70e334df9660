"""ELBO gradient estimators (registry).  With z = mu + C eps (``harness.vi.families``),
G = grad_z log g(z), f = log g(z) - log q(z) and the score s = grad_lambda log q(z; lambda),
the per-sample terms (computed by ``harness.vi.kernels.sample_quantities`` from the families'
``pathwise``, ``score`` and ``add_entropy_gradient``) are:

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
- ``score_function``: (f - b) s (seed 001), s:  mu: C^-T eps;  L[i,j]: (C^-T eps)_i eps_j -
  [i=j]/L_ii;  log_sigma[i]: eps_i^2 - 1.  Since E[s] = 0, any baseline b independent of
  sample i keeps the estimate unbiased.  Option ``baseline``: the names, definitions and
  algebra of the 1-D study (``harness.estimators.score_function``), per component j:

  ``none``           b = 0.  1 evaluation of log g per sample.  Per-sample variance Var[f s_j].
  ``mean``           b_i = mean of f over the *other* N - 1 samples of the seed (leave-one-out),
                     independent of sample i, so unbiased.  The estimate is the sample
                     covariance of f and s_j, formed from moments accumulated in the same
                     single pass (``estimate_mean``).  1 evaluation per sample.  The per-sample
                     variance column is the within-seed sample variance of g_i = (f_i - b_i)
                     s_ij; its reference ``exact_var`` is the N -> infinity limit
                     V_j = Var[(f - E f) s_j]; finite N adds O(1/N) (exactly:
                     ``harness.vi.references``).
  ``optimal``        b_j = b^_j = sum f(z'_k) s_j(eps'_k)^2 / sum s_j(eps'_k)^2 over N
                     independent draws eps'_k (and minibatches), those of the independent copy
                     of the main stream (``harness.rng.INDEPENDENT_STREAM_OFFSET``: see
                     ``harness.vi.kernels``), drawn in the same pass: the sample version of the
                     variance-minimising b*_j = E[f s_j^2] / E[s_j^2]; independent of the main
                     draws, so unbiased (``estimate_optimal``).  2 evaluations per sample (the N
                     extra draws are counted).  Reference ``exact_var``: the N -> infinity limit
                     V*_j = Var[(f - b*_j) s_j]; E[sample var] = N Var[estimate]
                     = V*_j + E[(b^_j - b*_j)^2] E[s_j^2] = V*_j + O(1/N).
  ``exact_optimal``  b_j = b*_j computed exactly once per cell (``harness.vi.references``)
                     and passed to the kernel: an oracle for studies, not an algorithm.
                     1 evaluation per sample.  Per-sample variance V*_j exactly.  Only where
                     the exact b* exists (Gaussian target, 5**d <= 2,000,000, i.e. d <= 9);
                     elsewhere it is an error; not in optimisation mode (b* would change
                     with lambda at every step).

Exact references (``exact_var``, ``harness.vi.api.reference``): the target's closed forms
(``reparam``, ``reparam_sampled_entropy``, ``stl`` on the Gaussian target), else the
formulas of ``harness.vi.references`` (the score function on the Gaussian target), else NaN
with ``exact_source`` none.

Registry records: ``ESTIMATORS`` (plain dict) name -> :class:`VIEstimator`, whose
``variant(options)`` is the concrete :class:`Variant` (kernel code, kind, evaluations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..estimators.score_function import estimate_mean, estimate_optimal
from ..registry import label as make_label
from . import codes


@dataclass(frozen=True)
class Variant:
    """One concrete estimator: what the kernel computes and how the results combine.

    ``n_moments == 0``: per-sample kind, the kernel's P terms are the g_p (estimate = mean,
    per-sample variance = within-seed sample variance).  ``n_moments > 0``: accumulated
    kind, the kernel accumulates ``n_moments`` quantities per component and
    ``moments_to_estimate(means, variances, n, consts)`` (rows = seeds x components) gives the
    estimate and the per-sample variance, as for the 1-D accumulated estimators
    (``harness.base``).
    """

    label: str
    code: int
    n_moments: int = 0
    moments_to_estimate: Callable | None = None
    evals_per_sample: int = 1        # evaluations of log g per sample (work normalisation)
    exact_baselines: bool = False    # needs the exact b*_j per cell (kernel baselines)


@dataclass(frozen=True)
class VIEstimator:
    name: str
    variants: dict                 # option value tuple -> Variant
    options: dict = field(default_factory=dict)   # option -> allowed values (first: default)
    needs_gradient: bool = True                   # needs grad_z log g
    description: str = ""

    def key(self, options=()) -> tuple:
        opts = dict(options)
        return tuple(opts.get(k, allowed[0]) for k, allowed in self.options.items())

    def variant(self, options=()) -> Variant:
        return self.variants[self.key(options)]


def _score_function() -> VIEstimator:
    def label(baseline):
        return make_label("score_function", () if baseline == "none" else
                          (("baseline", baseline),))

    return VIEstimator(
        "score_function",
        {("none",): Variant(label("none"), codes.E_SCORE),
         ("mean",): Variant(label("mean"), codes.E_SCORE_MEAN, 6, estimate_mean),
         ("optimal",): Variant(label("optimal"), codes.E_SCORE_OPTIMAL, 7, estimate_optimal,
                               evals_per_sample=2),
         ("exact_optimal",): Variant(label("exact_optimal"), codes.E_SCORE_EXACT_OPTIMAL,
                                     exact_baselines=True)},
        options={"baseline": ("none", "mean", "optimal", "exact_optimal")},
        needs_gradient=False,
        description="(f - b) grad log q; baseline none | mean (leave-one-out) | optimal "
                    "(b*_j from an independent stream) | exact_optimal (oracle b*_j)")


ESTIMATORS = {
    "reparam": VIEstimator("reparam", {(): Variant("reparam", codes.E_REPARAM)},
                           description="G dz/dlambda + analytic grad log|det C|"),
    "reparam_sampled_entropy": VIEstimator(
        "reparam_sampled_entropy",
        {(): Variant("reparam_sampled_entropy", codes.E_REPARAM_SAMPLED_ENTROPY)},
        description="total derivative of log g(z) - log q(z) on the sample"),
    "stl": VIEstimator("stl", {(): Variant("stl", codes.E_STL)},
                       description="sticking the landing: path derivative, score term dropped"),
    "score_function": _score_function(),
}

# Deliberately wrong kernel variants, reachable only by their code (tests show that the
# conformance checks reject them).
WRONG = {
    codes.E_WRONG_NO_ENTROPY: Variant("wrong_no_entropy", codes.E_WRONG_NO_ENTROPY),
    codes.E_WRONG_BASELINE_INDEX: Variant("wrong_baseline_index", codes.E_WRONG_BASELINE_INDEX,
                                          exact_baselines=True),
}


def resolve(estimator) -> Variant:
    """A registry name, ``(name, options)``, an ``EstimatorSpec``-like object (``name``,
    ``options``) or a kernel code (int, incl. the tests-only ``WRONG`` ones) -> Variant."""
    if isinstance(estimator, (int, np.integer)):
        code = int(estimator)
        for est in ESTIMATORS.values():
            for v in est.variants.values():
                if v.code == code:
                    return v
        return WRONG[code]
    if isinstance(estimator, str):
        return ESTIMATORS[estimator].variant()
    if isinstance(estimator, tuple):
        name, options = estimator
    else:
        name, options = estimator.name, estimator.options
    return ESTIMATORS[name].variant(options)


def code_of(name: str, options=()) -> int:
    return ESTIMATORS[name].variant(options).code


def evals_of(name: str, options=()) -> int:
    """Evaluations of log g per sample (extra independent draws counted)."""
    return ESTIMATORS[name].variant(options).evals_per_sample
