"""The three axes of a Gaussian gradient study, as plain frozen records.

A *distribution* q(x; theta) has named parameters and gradient components; a *cost* f(x; k)
supplies jitted ``value``/``derivative`` functions and its exact references; an *estimator*
supplies one jitted per-sample function.  The registry (``harness.registry``) maps names to
these records; the CPU backend wires them into one fused, compiled kernel per combination.

Jitted function signatures (all float64 scalars unless stated):

``cost.value(x, k) -> f``          the cost at x (every cost takes one shape parameter k,
                                   ignored by costs that have none)
``cost.derivative(x, k) -> df/dx`` None when the cost is not differentiable
``estimator.per_sample(component, cost, k, mu, sigma, eps, f, df, key0, key1, index) -> g``
    the per-sample gradient term for ``component`` (0 = mu, 1 = sigma; a compile-time
    constant in the generated kernel) at x = mu + sigma * eps, where f = cost.value(x, k)
    and df = cost.derivative(x, k) (0.0 when the cost has no derivative).  ``cost`` is the
    cost's ``value`` dispatcher, for estimators that evaluate f elsewhere.  ``key0, key1``
    (uint32 as uint64) are the seed's Philox key and ``index`` (int64) the sample index,
    for estimators that need extra random numbers: draw them from a stream id >= 1 (stream 0
    is the shared normal eps).

Estimators with options (``score_function`` ``baseline``, ``measure_valued`` ``coupling``,
...) are *families*: ``Estimator.options`` maps each option to its allowed values (the first
is the default) and ``Estimator.configure(**options)`` returns the concrete variant, a plain
``Estimator`` whose ``name`` is the label (``score_function[baseline=optimal]``).  The label is
the key of kernels and results; ``harness.registry.resolve`` turns names, labels and
``EstimatorSpec``-like objects into variants.

A variant is one of two kinds:

*per-sample* (``n_moments == 0``): ``per_sample`` returns the term g_i; the N-sample estimate
    is mean(g_i) and the per-sample variance the within-seed sample variance of g_i.
*accumulated* (``n_moments > 0``): for estimators whose term uses other samples of the seed
    (a leave-one-out baseline) or an independent stream (an estimated optimal baseline or
    control-variate coefficient).  ``per_sample`` returns a tuple of ``n_moments`` floats per
    sample; the kernel accumulates their means in the same single fused pass (memory
    independent of N, same lane/chunk order, so just as reproducible), and
    ``finalize(means, variances, n, consts) -> (estimate, sample_var)`` (NumPy, vectorised
    over seeds: ``means``/``variances`` have shape (n_seeds, n_moments)) turns them into the
    estimate and the within-seed per-sample variance, as the module docstring defines it.

Both kinds may take per-cell constants: if ``n_consts > 0``, ``prepare(cost, component, mu,
sigma, k) -> tuple of n_consts floats`` is called once per cell and component (in Python;
e.g. an exact optimal baseline, or f and its derivatives at mu) and ``per_sample`` receives
them as a 12th argument, a tuple of floats.

``exact_moments(cost, component, mu, sigma, k) -> (mean, per-sample variance, source)``, if
given, supplies the exact references of estimators the generic quadrature over eps cannot
handle (extra randomness, accumulated estimators).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Distribution:
    """A reparameterisable scalar distribution x = loc + scale * eps, eps ~ base."""

    name: str
    params: tuple[str, ...]            # e.g. ("mu", "sigma"), in this order everywhere
    components: tuple[str, ...]        # gradient components, e.g. ("mu", "sigma")
    positive: tuple[str, ...]          # params that must be > 0
    description: str


@dataclass(frozen=True)
class Cost:
    """A cost f(x; k) with exact references under q = N(mu, sigma^2).

    ``exact_mean(mu, sigma, k)`` -> E_q[f];
    ``exact_grad(mu, sigma, k)`` -> {"mu": .., "sigma": ..};
    ``exact_variance[(estimator, component)](mu, sigma, k)`` -> the exact per-sample variance of
    that estimator's term, where a closed form is derived (others fall back to quadrature,
    see ``harness.exact``).
    """

    name: str
    params: tuple[str, ...]            # () or ("k",)
    value: Callable                    # @njit (x, k) -> float
    derivative: Callable | None     # @njit (x, k) -> float, or None if not differentiable
    exact_mean: Callable
    exact_grad: Callable
    exact_variance: Mapping[tuple[str, str], Callable] = field(default_factory=dict)
    description: str = ""
    # f''(x, k) (plain Python or jitted), for estimators that expand f around mu (delta_cv)
    second_derivative: Callable | None = None
    positive: tuple[str, ...] = ()     # params that must be > 0 (e.g. exp's k)


@dataclass(frozen=True)
class Estimator:
    """A per-sample gradient estimator; the N-sample estimate is the mean of its terms."""

    name: str
    per_sample: Callable               # @njit, signature in the module docstring above
    needs_derivative: bool             # pathwise-type estimators need cost.derivative
    evals_per_sample: int              # cost evaluations per sample (work normalisation)
    description: str
    # True if the term uses random numbers beyond eps (then the quadrature over eps in
    # ``harness.exact`` cannot give its variance; the cost must supply a closed form).
    extra_randomness: bool = False
    # option -> allowed values, first = default; e.g. {"baseline": ("none", "mean", ...)}
    options: Mapping[str, tuple] = field(default_factory=dict)
    # (**options) -> the concrete variant (an Estimator named by its label); None: no options
    configure: Callable[..., Estimator] | None = None
    n_moments: int = 0                 # 0: per-sample kind; > 0: accumulated kind
    finalize: Callable | None = None
    n_consts: int = 0
    prepare: Callable | None = None
    exact_moments: Callable | None = None

    @property
    def defaults(self) -> dict:
        """The default value of every option."""
        return {key: values[0] for key, values in self.options.items()}
