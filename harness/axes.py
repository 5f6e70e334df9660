"""The three axes of an expectation study, as plain frozen records, and the kernel contract.

A study estimates the gradient of E_q[f(x)] with respect to the parameters theta of a 1-D
distribution q (a *family*: ``Family``), for a cost f (``Cost``), with several gradient
estimators (``Estimator``).  ``harness.registry`` maps names to these records; the CPU
backend generates a draw kernel per (family, cost) and one compiled kernel per (family,
cost, estimator variant, component) (``harness.backends.cpu``).

Kernel contract (all @njit, float64 scalars unless stated)
-----------------------------------------------------------
``theta`` is the tuple of the family's parameters in ``Family.params`` order (normal:
``(mu, sigma)``); ``k`` the cost's parameter (0.0 for costs without one); ``component`` an int,
the index of the gradient component in ``Family.params`` (a constant in the generated kernel).

Family functions (bundled as ``FamilyOps`` for estimators):
    ``draw_pair(key0, key1, pair, stream) -> (e0, e1)``  two base draws (the family's base
        noise, e.g. N(0, 1)) at Philox counter (pair, stream): samples 2 pair and 2 pair + 1
    ``draw_pair_at(theta, key0, key1, pair, stream) -> (e0, e1)``  optional, for samplers
        whose base draws depend on theta (e.g. a Marsaglia-Tsang rejection sampler for a
        Gamma family, with its attempt counters indexed by (sample, attempt) on stream
        ``stream``): the CPU backend's draw kernel calls it instead of ``draw_pair``; it must
        be a pure function of its arguments (a sample's draws never depend on other pairs)
    ``to_x(theta, e) -> x``                 the sample for base draw e
    ``score(component, theta, e)``          d/dtheta_c log q(x) at x = to_x(theta, e)
    ``times_score(component, theta, e, v)`` v * score, in the order the family evaluates it
        (normal: (v * eps) / sigma, as the results before issue 9, so they stay bitwise equal)
    ``dx_dtheta(component, theta, e)``      the pathwise derivative dx/dtheta_c (families that
        are reparameterisable; ``unavailable_3`` otherwise)
    ``antithetic(e)``                       the antithetic base draw (same law as e; normal:
        -e), for families that have one
    ``centred(theta, e)``                   x - E_q[x], computed without cancellation

Cost functions (bundled as ``CostOps``): ``value(x, k)``, ``derivative(x, k)`` (NaN-returning
``unavailable_2`` when the cost has no derivative).

Estimator: ``per_sample(component, s, family, cost, consts)`` where ``s`` is a ``Sample``
(theta, k, e, x = to_x(theta, e), f = value(x, k), df = derivative(x, k) or NaN, e_copy = the
sample's base draw on the independent copy stream and f_copy = value(to_x(theta, e_copy), k)
(both NaN unless the estimator declares ``independent_copy``), key0, key1 (the seed's Philox
key, uint32 values in uint64), index (int64, the sample index), shared = the tuple
``shared_draws(component, key0, key1, index)`` of the estimator, ``()`` if it declares none),
``family`` a ``FamilyOps``, ``cost`` a ``CostOps`` and ``consts`` the tuple of the estimator's
per-cell constants (``()`` if it has none). It returns the sample's term g_i (per-sample kind)
or a tuple of ``n_moments`` floats (accumulated kind). Extra random numbers for sample i come
from the estimator's own streams (``streams``, ids 1 .. 2**29 - 1, counter index i) via
``harness.rng``; see ``harness/rng.py`` for the plan. Numbers that several variants draw alike
(measure_valued's coupled and uncoupled parts) can come from ``shared_draws(component, key0,
key1, index) -> tuple of floats`` (jitted, the same length for every component) instead: the
CPU backend then draws them once per sample for every variant with the same function (a
separate kernel per (function, component)) and hands them over as ``s.shared``; the numbers are
those the function returns, so a variant gives the same results whether or not another variant
shares them.  The kernel calls it for samples 2p and 2p + 1 in one step, so a function that
draws per pair (e.g. both halves of one Box-Muller pair at counter index // 2) has the pair's
work computed once (LLVM merges the two inlined copies).

Two kinds of estimator variant
------------------------------
*per-sample* (``n_moments == 0``): the N-sample estimate is mean(g_i) and the per-sample
    variance the within-seed sample variance of g_i (divisor N - 1).
*accumulated* (``n_moments > 0``): for terms that use other samples of the seed (leave-one-out)
    or the independent copy (estimated coefficients).  The kernel accumulates the moments'
    means in the same single pass and ``moments_to_estimate(means, variances, n, consts) ->
    (estimate, sample_var)`` (NumPy, vectorised over seeds: ``means``/``variances`` of shape
    (n_seeds, n_moments)) turns them into the estimate and the per-sample variance its module
    defines.

Both kinds may take per-cell constants: ``prepare(family, cost, component, params) -> tuple of
n_consts floats`` (Python, once per cell and component; ``family``/``cost`` the records,
``component`` the name, ``params`` a dict of every family and cost parameter).

Exact references (``harness.exact``) never come from ``per_sample``: a cost gives closed forms
per family (``ClosedForms``), an estimator variant a NumPy transcription of its definition
over the family's quadrature rule (``reference``), else there is none.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from numba import njit

# ---- what the kernel hands an estimator ---------------------------------------------------

# ``shared`` defaults to () so code that builds a Sample without shared draws still works
Sample = namedtuple("Sample", "theta k e x f df e_copy f_copy key0 key1 index shared",
                    defaults=((),))
FamilyOps = namedtuple("FamilyOps", "to_x score times_score dx_dtheta antithetic centred")
CostOps = namedtuple("CostOps", "value derivative")


@njit(inline="always")
def unavailable_1(a):
    """Stand-in for a family function the family does not have (1 argument): NaN."""
    return math.nan


@njit(inline="always")
def unavailable_2(a, b):
    """Stand-in for a missing 2-argument function (a cost without a derivative): NaN."""
    return math.nan


@njit(inline="always")
def unavailable_3(a, b, c):
    """Stand-in for a missing 3-argument function (a family without dx/dtheta): NaN."""
    return math.nan


# ---- requirements an estimator may declare (checked by ``registry.check_combination``) ------

NEEDS = {
    "derivative": "the cost's derivative f'",
    "second_derivative": "the cost's second derivative f''",
    "reparameterisation": "a reparameterisable family (dx/dtheta)",
    "antithetic": "a family with an antithetic base draw",
    # relaxed estimators evaluate f (and f') at a relaxed sample in (0, 1), not only at {0, 1}
    "unit_interval": "a cost defined on [0, 1] (the relaxed sample)",
}


@dataclass(frozen=True)
class Family:
    """A 1-D distribution family q(x; theta), sampled as x = to_x(theta, e) from base draws e.

    Kernel functions are listed in the module docstring.  Reference functions are plain NumPy,
    written from the density (not from the kernel functions), for ``harness.exact``:
    ``rule(theta) -> (x, w)`` quadrature nodes and weights with sum_j w_j h(x_j) ~= E_q[h(x)]
    (``base_rule() -> (e, w)``: the same rule over the base draw, for per-cell constants that
    an estimator computes with the kernel functions, ``harness.quadrature.kernel_values``;
    a family whose base law depends on theta, such as gamma, has none and raises);
    ``score_at(component, theta, x)``; ``dx_at(component, theta, x)`` (the pathwise derivative
    as a function of x; None if not reparameterisable); ``antithetic_at(theta, x)`` (the
    antithetic partner of x; None if none); ``mean(theta)`` = E_q[x] and
    ``moment_grads(component, theta) -> (d E[x]/dtheta_c, d Var[x]/dtheta_c)``.
    """

    name: str
    params: tuple[str, ...]            # grid keys, results columns, gradient components
    positive: tuple[str, ...]          # params that must be > 0
    description: str
    draw_pair: Callable
    to_x: Callable
    score: Callable
    times_score: Callable
    centred: Callable
    base_rule: Callable
    rule: Callable
    score_at: Callable
    mean: Callable
    moment_grads: Callable
    dx_dtheta: Callable | None = None
    dx_at: Callable | None = None
    antithetic: Callable | None = None
    antithetic_at: Callable | None = None
    draw_pair_at: Callable | None = None   # theta-dependent sampler (module docstring)

    @property
    def components(self) -> tuple[str, ...]:
        """Gradient components: every parameter, in order."""
        return self.params

    @property
    def base_name(self) -> str:
        """The name without a size: ``categorical`` for ``categorical[K=3]`` (what
        ``Estimator.families`` and ``Estimator.per_sample_by_family`` name)."""
        return self.name.partition("[")[0]

    @property
    def supports(self) -> frozenset:
        """Which of the optional requirements in ``NEEDS`` this family meets."""
        return frozenset(name for name, present in (
            ("reparameterisation", self.dx_dtheta is not None),
            ("antithetic", self.antithetic is not None)) if present)

    def theta(self, params: Mapping) -> tuple[float, ...]:
        """The family's parameters from a mapping of every parameter, in order."""
        return tuple(float(params[p]) for p in self.params)


@dataclass(frozen=True)
class ClosedForms:
    """Exact references of a cost under one family; each function takes the parameters as
    keywords (``mean(mu=.., sigma=.., k=..)``; costs without k accept none).

    ``mean`` -> E_q[f]; ``grad`` -> {component: d E_q[f] / d theta_c}; ``variance[(estimator
    label, component)]`` -> the exact per-sample variance of that estimator's term."""

    mean: Callable
    grad: Callable
    variance: Mapping[tuple[str, str], Callable] = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """A cost f(x; k): jitted ``value(x, k)`` and, where it exists, ``derivative(x, k)``;
    ``second_derivative(x, k)`` (Python or jitted) for estimators that expand f (delta_cv)."""

    name: str
    params: tuple[str, ...]            # () or ("k",)
    value: Callable
    derivative: Callable | None = None
    second_derivative: Callable | None = None
    closed_forms: Mapping[str, ClosedForms] = field(default_factory=dict)  # family -> forms
    positive: tuple[str, ...] = ()     # params that must be > 0 (e.g. exp's k)
    description: str = ""
    # the open interval (lo, hi) where f (and f') is defined; relaxed estimators need it to
    # contain [0, 1] (every built-in cost is defined on the whole line)
    domain: tuple[float, float] = (-math.inf, math.inf)
    # user-written costs (``harness.costs.user``): role -> the function as the kernel imports it
    python: Mapping[str, object] = field(default_factory=dict)

    @property
    def provides(self) -> frozenset:
        """Which of "derivative" and "second_derivative" the cost has (value: always)."""
        return frozenset(name for name in ("derivative", "second_derivative")
                         if getattr(self, name) is not None)

    @property
    def on_unit_interval(self) -> bool:
        """Defined on [0, 1] (the need "unit_interval" of the relaxed estimators)."""
        return self.domain[0] < 0.0 and 1.0 < self.domain[1]


@dataclass(frozen=True)
class Estimator:
    """A gradient estimator variant; see the module docstring for the two kinds.

    ``needs``: keys of ``NEEDS``; ``families``: the families it is defined for (None: any
    family that meets ``needs``); ``streams``: its own Philox stream ids; ``independent_copy``:
    the kernel passes the sample's draw on the independent copy stream as ``s.e_copy`` and
    the cost there as ``s.f_copy`` (the draw kernel evaluates it, so the estimator's term
    kernel does not read the cost and is shared by every cost);
    ``evals_per_sample``: evaluations of f (or f') per sample, for work-normalised variances.
    ``biased``: the estimator's expectation is not the gradient (relaxations, straight-through):
    its ``reference`` mean is its own exact expectation (results column
    ``exact_estimator_mean``), and tests compare its mean with that, not with the gradient.
    ``per_sample_by_family``: per-family kernels (``per_sample_for(family)``).
    ``components``: family base name -> the components it is defined for there (absent: all;
    ``registry.combination_problem(..., components)`` refuses the others).
    ``reference(family, cost, component, params) -> (mean, per-sample variance)``: a NumPy
    transcription of the estimator's definition over ``family.rule`` (never ``per_sample``),
    None if there is none.  ``finite_n(family, cost, component, params, n) -> (E[sample_var],
    n * Var[estimate])`` at sample size n, for accumulated variants whose finite-n values
    differ from the n -> infinity reference (documented in their module).
    """

    name: str
    per_sample: Callable
    evals_per_sample: int
    description: str
    needs: frozenset = frozenset()
    biased: bool = False
    families: tuple[str, ...] | None = None
    streams: tuple[int, ...] = ()
    independent_copy: bool = False
    # option -> allowed values, first = default; e.g. {"baseline": ("none", "mean", ...)}
    options: Mapping[str, tuple] = field(default_factory=dict)
    # (**options) -> the concrete variant (an Estimator named by its label); None: no options
    configure: Callable[..., Estimator] | None = None
    n_moments: int = 0                 # 0: per-sample kind; > 0: accumulated kind
    moments_to_estimate: Callable | None = None
    n_consts: int = 0
    prepare: Callable | None = None
    reference: Callable | None = None
    finite_n: Callable | None = None
    # (component, key0, key1, index) -> tuple of floats, read as ``s.shared`` (module
    # docstring); variants with the same function share the numbers (drawn once per sample)
    shared_draws: Callable | None = None
    n_shared_draws: int = 0            # the length of the tuple ``shared_draws`` returns
    # optional: ``shared_draws`` as one jitted (key0, key1, index) function per component
    # index, returning the same numbers; the CPU's shared-draw kernel of component c then
    # calls entry c and compiles only that component's code
    shared_draws_by_component: tuple = ()
    # family base name -> its own per_sample, for an estimator whose formula differs per
    # family (the relaxations: Bernoulli and categorical); other families use ``per_sample``
    per_sample_by_family: Mapping[str, Callable] = field(default_factory=dict)
    # family base name -> the gradient components the estimator is defined for under that
    # family (absent: every one); measure_valued under gamma: ("rate",), since the shape
    # derivative of the Gamma density has no decomposition c (q+ - q-) of this kind
    components: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def supports_component(self, family: Family, component: str) -> bool:
        """Whether the estimator is defined for ``component`` under ``family``."""
        return component in self.components.get(family.base_name, (component,))

    def per_sample_for(self, family: Family) -> Callable:
        """The per-sample function the kernel of ``family`` runs."""
        return self.per_sample_by_family.get(family.base_name, self.per_sample)

    @property
    def defaults(self) -> dict:
        """The default value of every option."""
        return {key: values[0] for key, values in self.options.items()}

    @property
    def needs_derivative(self) -> bool:
        return "derivative" in self.needs
