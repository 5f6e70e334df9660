"""Exact references: the gradient and the per-sample variance of each estimator's term.

``reference(estimator, component, family, cost, params) -> (exact_grad, exact_var, source)``;
``estimator`` a registry name, a label (``score_function[baseline=optimal]``) or an
``EstimatorSpec``-like object, ``family`` a registry name, ``cost`` a cost spec (a name or a
user-cost mapping, see ``harness.registry.get_cost``), ``params`` a mapping of every family and
cost parameter.  The variance comes from, in order:

1. a closed form of the cost under the family, ``cost.closed_forms[family].variance[(label,
   component)]``: source ``closed_form``;
2. the variant's ``reference``: a NumPy transcription of the estimator's definition over the
   family's quadrature rule (or, for ``measure_valued``, over the laws of its decomposition),
   documented in its module: source ``quadrature``;
3. otherwise there is none: ``exact_var`` NaN, source ``none``.

References are never computed from the code under test: nothing here calls an estimator's
``per_sample`` (quadrature of the kernel's own term would hand an estimator its own variance
back, right or wrong).  An estimator without a reference gets ``none``, and its variance is
checked another way (``tests/test_estimators.py``: across-seed variance of the estimate
against the mean within-seed variance / N).

Biased estimators (``Estimator.biased``: the Bernoulli relaxations and straight-through) have
an expectation of their own; ``references(...)`` returns it as ``estimator_mean`` (the
results column ``exact_estimator_mean``, so bias = estimator_mean - exact_grad exactly): the
mean of the variant's ``reference``, NaN without one.  For every unbiased estimator it is the
exact gradient (the conformance tests check that each reference integrates to it).

The gradient is the cost's closed form under the family where there is one, else the
quadrature of E_q[f s] (s the family's score, from its density), the score-function identity.
The ``source`` is recorded in the results (``exact_source``) so a reader knows which is which.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Mapping

from . import registry
from .quadrature import values

Reference = namedtuple("Reference", "grad var source estimator_mean")


def reference(estimator, component: str, family, cost, params: Mapping
              ) -> tuple[float, float, str]:
    """Return (exact_grad, exact_var, source) for one estimator term (see the module doc)."""
    return tuple(references(estimator, component, family, cost, params)[:3])


# Results of ``references`` in this process: a run checks every reference when it reads its
# grid, then records each with its cell (1800 quadratures per Mohamed study, ~1 ms each).
# Keyed by the identity of the records (held in the value, so an id is never reused while
# its entry lives): a test that registers another estimator or cost under a known name gets
# its own entries.
_MEMO: dict[tuple, tuple] = {}
_MEMO_SIZE = 1 << 16


def references(estimator, component: str, family, cost, params: Mapping) -> Reference:
    """(grad, var, source, estimator_mean) for one estimator term (see the module doc)."""
    fam, c, est = registry.get_family(family), registry.get_cost(cost), registry.resolve(estimator)
    try:
        key = (id(est), id(c), id(fam), component, tuple(sorted(params.items())))
        hash(key)
    except TypeError:
        return _references(fam, c, est, component, params)
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.clear()
        _MEMO[key] = (est, c, fam, _references(fam, c, est, component, params))
    return _MEMO[key][3]


def _references(fam, c, est, component: str, params: Mapping) -> Reference:
    params = _checked(fam, c, params)
    if component not in fam.params:
        raise ValueError(f"component {component!r} is not a parameter of {fam.name}")
    if not est.supports_component(fam, component):
        registry.check_combination(est.name, fam, c, (component,))   # the one-line error
    forms = c.closed_forms.get(fam.name)
    grad = float(forms.grad(**params)[component]) if forms else gradient(fam, c, component, params)
    closed = forms.variance.get((est.name, component)) if forms else None
    own = est.reference(fam, c, component, params) if est.reference is not None and (
        closed is None or est.biased) else None
    mean = (float(own[0]) if own is not None else math.nan) if est.biased else grad
    if closed is not None:
        return Reference(grad, float(closed(**params)), "closed_form", mean)
    if own is not None:
        return Reference(grad, float(own[1]), "quadrature", mean)
    return Reference(grad, math.nan, "none", mean)


def gradient(family, cost, component: str, params: Mapping) -> float:
    """d/dtheta_c E_q[f] = E_q[f s] by quadrature over the family's rule."""
    theta = family.theta(params)
    x, w = family.rule(theta)
    f = values(cost.value, x, params.get("k", 0.0))
    return float(w @ (f * family.score_at(component, theta, x)))


def objective(family, cost, params: Mapping) -> float:
    """E_q[f] by quadrature over the family's rule (exact for discrete families, Gauss rules
    for continuous ones): the objective that ``mode: optimize`` minimises."""
    family, cost = registry.get_family(family), registry.get_cost(cost)
    params = _checked(family, cost, params)
    theta = family.theta(params)
    x, w = family.rule(theta)
    return float(w @ values(cost.value, x, params.get("k", 0.0)))


def _checked(family, cost, params: Mapping) -> dict:
    """``params`` as a dict of floats with exactly the family's and the cost's parameters."""
    names = family.params + cost.params
    got = set(params)
    if got != set(names):
        raise ValueError(f"parameters {sorted(got)} do not match {family.name} and "
                         f"{cost.name}: {list(names)}")
    return {name: float(params[name]) for name in names}
