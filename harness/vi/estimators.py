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
- ``score_function``: (f - b) grad_lambda log q(z), f = log g(z) - log q(z) (seed 001);
  option ``baseline``: ``none`` (b = 0) or ``loo`` (b = mean of the other N - 1 samples'
  f, computed in a first streaming pass over the same draws, so the estimate is unbiased).
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

    def code(self, options=()) -> int:
        opts = dict(options)
        key = tuple(opts.get(k, allowed[0]) for k, allowed in self.options.items())
        return self.codes[key]


ESTIMATORS = {
    "reparam": VIEstimator("reparam", {(): kernels.E_REPARAM},
                           description="G dz/dlambda + analytic grad log|det C|"),
    "reparam_sampled_entropy": VIEstimator(
        "reparam_sampled_entropy", {(): kernels.E_REPARAM_SAMPLED_ENTROPY},
        description="total derivative of log g(z) - log q(z) on the sample"),
    "stl": VIEstimator("stl", {(): kernels.E_STL},
                       description="sticking the landing: path derivative, score term dropped"),
    "score_function": VIEstimator(
        "score_function", {("none",): kernels.E_SCORE, ("loo",): kernels.E_SCORE_LOO},
        options={"baseline": ("none", "loo")}, needs_gradient=False,
        evals_per_sample=1,    # 2 with baseline=loo (a first pass for the sum of f)
        description="(f - b) grad log q; baseline none | loo (leave-one-out mean)"),
}


def code_of(name: str, options=()) -> int:
    return ESTIMATORS[name].code(options)
