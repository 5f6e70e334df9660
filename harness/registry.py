"""Plain registries: name -> record.  Adding a family, cost or estimator is one module and one
line here.

Tests loop over every entry, so a new estimator or cost is checked against exact references
without further changes.

- ``FAMILIES``: distribution families (``harness.axes.Family``); ``DISTRIBUTIONS`` is the same
  table under the name the grid key ``distribution`` uses.
- ``COSTS``: built-in costs (``harness.axes.Cost``).  ``get_cost(spec)`` also loads user-written
  costs from a grid's ``cost: {python: "module:function", ...}`` (``harness.costs.user``).
- ``ESTIMATORS``: estimators (``harness.axes.Estimator``); those with options are resolved to
  concrete variants by :func:`resolve`, keyed by their label
  (``score_function[baseline=optimal]``), the key of kernels and results.
- ``check_combination(estimator, family, cost)``: one-line ``ConfigError`` when an estimator
  needs something the family or cost lacks, before anything runs.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from functools import cache

from .axes import NEEDS, Cost, Estimator, Family
from .costs import cos, exp, quadratic, square, user
from .distributions import bernoulli, beta, categorical, exponential, gamma, normal
from .errors import ConfigError
from .estimators import (
    antithetic_pathwise,
    arm,
    delta_cv,
    disarm,
    grep,
    gumbel_softmax,
    measure_valued,
    pathwise,
    rebar,
    rsvi,
    score_function,
    straight_through,
)

FAMILIES = {
    normal.FAMILY.name: normal.FAMILY,
    bernoulli.FAMILY.name: bernoulli.FAMILY,
    exponential.FAMILY.name: exponential.FAMILY,
    gamma.FAMILY.name: gamma.FAMILY,
    beta.FAMILY.name: beta.FAMILY,
}
DISTRIBUTIONS = FAMILIES  # the grid key is ``problem.distribution``
# families with a record per size, created when a grid names it: grid name -> module with
# ``family(K)`` (record named ``name(K)``, e.g. ``categorical[K=3]``), ``parse_name``, ``MAX_K``
# and ``COLUMNS`` (the parameter columns of every size)
FAMILY_FACTORIES = {categorical.NAME: categorical}

COSTS = {
    square.COST.name: square.COST,
    quadratic.COST.name: quadratic.COST,
    exp.COST.name: exp.COST,
    cos.COST.name: cos.COST,
}

ESTIMATORS = {
    score_function.ESTIMATOR.name: score_function.ESTIMATOR,
    pathwise.ESTIMATOR.name: pathwise.ESTIMATOR,
    delta_cv.ESTIMATOR.name: delta_cv.ESTIMATOR,
    measure_valued.ESTIMATOR.name: measure_valued.ESTIMATOR,
    antithetic_pathwise.ESTIMATOR.name: antithetic_pathwise.ESTIMATOR,
    arm.ESTIMATOR.name: arm.ESTIMATOR,
    disarm.ESTIMATOR.name: disarm.ESTIMATOR,
    gumbel_softmax.ESTIMATOR.name: gumbel_softmax.ESTIMATOR,
    straight_through.ESTIMATOR.name: straight_through.ESTIMATOR,
    rebar.ESTIMATOR.name: rebar.ESTIMATOR,
    grep.ESTIMATOR.name: grep.ESTIMATOR,
    rsvi.ESTIMATOR.name: rsvi.ESTIMATOR,
}

BACKENDS = ("cpu", "cuda")  # modules harness.backends.<name>, each with estimate()


# ---- families and costs ---------------------------------------------------------------------

def get_family(name) -> Family:
    """The family record for a registered name, or for a sized family's name
    (``categorical[K=3]``: ``FAMILY_FACTORIES``); a record passes through."""
    if isinstance(name, Family):
        return name
    if name in FAMILIES:
        return FAMILIES[name]
    for factory in FAMILY_FACTORIES.values():
        size = factory.parse_name(name) if isinstance(name, str) else None
        if size is not None and 2 <= size <= factory.MAX_K:
            return factory.family(size)
    raise ConfigError(f"unknown distribution {name!r}", key="problem.distribution",
                      fix=f"use one of {sorted(FAMILIES) + sorted(FAMILY_FACTORIES)}")


def family_parameters() -> tuple[str, ...]:
    """Every parameter name of every family (sized families: every size's), in order."""
    names = [p for fam in FAMILIES.values() for p in fam.params]
    names += [p for factory in FAMILY_FACTORIES.values() for p in factory.COLUMNS]
    return tuple(dict.fromkeys(names))


def get_cost(spec) -> Cost:
    """The cost record for a built-in name, or for a user-cost mapping ``{"python":
    "module:function", "derivative": "module:function" or None, "second_derivative": ... or
    None, "path": "/abs/dir/of/the/grid/file"}`` (loaded once per process, compile-checked
    with numba: see ``harness.costs.user``).  A record passes through."""
    if isinstance(spec, Cost):
        return spec
    if isinstance(spec, str):
        if spec not in COSTS:
            raise ConfigError(f"unknown cost {spec!r}", key="problem.cost",
                              fix=f"use one of {sorted(COSTS)}, or {{python: "
                              f"'module:function', derivative: 'module:function'}}")
        return COSTS[spec]
    if isinstance(spec, Mapping):
        return _user_cost(cost_key(spec))
    raise ConfigError(f"a cost is a name or a mapping, got {type(spec).__name__}",
                      key="problem.cost", fix=f"use one of {sorted(COSTS)}")


def cost_key(spec):
    """A hashable key of a cost spec: the name, or the user mapping as sorted (key, value)
    pairs (missing roles as None)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Cost):
        return spec.name
    unknown = set(spec) - set(user.SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in a user cost", key="problem.cost",
                          fix=f"use {', '.join(user.SPEC_KEYS)}")
    return tuple((key, spec.get(key)) for key in user.SPEC_KEYS)


@cache
def _user_cost(key: tuple) -> Cost:
    return user.load(**dict(key))


# ---- estimators ------------------------------------------------------------------------------

def label(name: str, options=()) -> str:
    """``name`` or ``name[opt=value,...]`` with options sorted by name (as ``EstimatorSpec``)."""
    options = sorted(dict(options).items())
    if not options:
        return name
    return f"{name}[{','.join(f'{k}={option_text(v)}' for k, v in options)}]"


def option_text(value) -> str:
    """An option value as written in YAML and labels: ``true``/``false`` for booleans."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_label(text: str) -> tuple[str, tuple]:
    """``"score_function[baseline=optimal]"`` -> ``("score_function", (("baseline", "optimal"),))``.

    Option values are matched to the registered values by their text, so ``coupling=False``
    gives the bool False.  Raises ConfigError for unknown names, options or values.
    """
    name, _, rest = text.partition("[")
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}", key="estimators",
                          fix=f"use one of {sorted(ESTIMATORS)}")
    if not rest:
        return name, ()
    if not rest.endswith("]"):
        raise ConfigError(f"malformed estimator label {text!r}", key="estimators",
                          fix="write name[option=value,...]")
    allowed = ESTIMATORS[name].options
    options = []
    for item in filter(None, rest[:-1].split(",")):
        key, _, value = item.partition("=")
        matches = [v for v in allowed.get(key, ()) if option_text(v) == value]
        if not matches:
            raise ConfigError(f"invalid option {item!r} for estimator {name}", key="estimators",
                              fix=f"options: {dict(allowed) or 'none'}")
        options.append((key, matches[0]))
    return name, tuple(sorted(options))


def resolve(estimator) -> Estimator:
    """The concrete variant for a name, a label, or an ``EstimatorSpec``-like object (with
    ``name`` and ``options``), named by its label.  Unknown names/options raise ConfigError."""
    if isinstance(estimator, str):
        name, options = parse_label(estimator)
    else:
        name, options = estimator.name, tuple(sorted(dict(estimator.options).items()))
    return _resolve(name, options)


@cache
def _resolve(name: str, options: tuple):
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}", key="estimators",
                          fix=f"use one of {sorted(ESTIMATORS)}")
    entry = ESTIMATORS[name]  # the registered estimator, with every option at its default
    values = {key: allowed[0] for key, allowed in entry.options.items()}
    for key, value in options:
        if key not in entry.options or value not in entry.options[key] or isinstance(value, bool) \
                != any(isinstance(v, bool) and v == value for v in entry.options[key]):
            raise ConfigError(f"invalid option {key}={value!r} for estimator {name}",
                              key="estimators", fix=f"options: {dict(entry.options) or 'none'}")
        values[key] = value
    variant = entry.configure(**values) if entry.configure is not None else entry
    return dataclasses.replace(variant, name=label(name, options), options={}, configure=None)


def variants(name: str) -> list[str]:
    """Labels of every option combination of a registered estimator (for tests and docs); the
    default combination is the plain name."""
    entry = ESTIMATORS[name]
    keys = sorted(entry.options)
    defaults = entry.defaults
    return [label(name, [(k, v) for k, v in zip(keys, values) if v != defaults[k]
                         or isinstance(v, bool) != isinstance(defaults[k], bool)])
            for values in itertools.product(*(entry.options[k] for k in keys))] or [name]


# ---- which combinations can work -----------------------------------------------------------

def supported_components(estimator, family, components) -> tuple[str, ...]:
    """The members of ``components`` that ``estimator`` is defined for under ``family``
    (``Estimator.components``; every one for most estimators)."""
    est, fam = resolve(estimator), get_family(family)
    return tuple(c for c in components if est.supports_component(fam, c))


def combination_problem(estimator, family, cost_spec, components=()) -> tuple[str, str] | None:
    """``(why, fix)`` if ``estimator`` cannot run on (family, cost), or not for one of the
    gradient ``components``, one sentence each, else None (see :func:`check_combination`)."""
    reason = _missing(estimator, family, cost_spec)
    if reason is None:
        est, fam = resolve(estimator), get_family(family)
        unsupported = [c for c in components if not est.supports_component(fam, c)]
        if not unsupported:
            return None
        allowed = est.components[fam.base_name]
        return (f"{est.name} is defined wrt {', '.join(allowed)} only under the {fam.name} "
                f"family, not wrt {', '.join(unsupported)}",
                f"set wrt: [{', '.join(allowed)}], or use another estimator for "
                f"{', '.join(unsupported)}")
    usable = [name for name in ESTIMATORS if _missing(name, family, cost_spec) is None]
    cost_needs = resolve(estimator).needs & {"derivative", "second_derivative", "unit_interval"}
    fix = f"use {', '.join(usable) or 'another estimator'}"
    if cost_needs:
        costs = [name for name, c in COSTS.items()
                 if cost_needs - {"unit_interval"} <= c.provides
                 and (c.on_unit_interval or "unit_interval" not in cost_needs)]
        fix += f", or a cost that has what it needs ({', '.join(costs)})"
    return reason, fix


def check_combination(estimator, family, cost_spec, components=()) -> None:
    """Raise a one-line ``ConfigError`` (key ``estimators``) if ``estimator`` needs something
    the family or the cost lacks (a derivative, a second derivative, a reparameterisation, an
    antithetic draw), is not defined for the family, or not for one of ``components``."""
    problem = combination_problem(estimator, family, cost_spec, components)
    if problem is not None:
        raise ConfigError(problem[0], key="estimators", fix=problem[1])


def _missing(estimator, family, cost_spec) -> str | None:
    est, fam, cost = resolve(estimator), get_family(family), get_cost(cost_spec)
    if est.families is not None and fam.base_name not in est.families:
        return (f"{est.name} is defined for the {' or '.join(est.families)} family only, "
                f"not {fam.name}")
    # relaxed samples live in [0, 1] (Bernoulli) or [0, K - 1] (the categorical's soft index)
    relaxed_top = float(len(fam.params) - 1) if fam.base_name == "categorical" else 1.0
    on_relaxed_range = cost.domain[0] < 0.0 and relaxed_top < cost.domain[1]
    available = fam.supports | cost.provides | ({"unit_interval"} if on_relaxed_range
                                                 else set())
    for need in NEEDS:  # a fixed order, so the message is reproducible
        if need not in est.needs or need in available:
            continue
        if need == "derivative":
            return (f"{est.name} needs the derivative of the cost, but cost {cost.name} is "
                    f"not differentiable")
        if need == "unit_interval":
            return (f"{est.name} evaluates the cost at a relaxed sample in [0, "
                    f"{relaxed_top:g}], but cost {cost.name} is defined on {list(cost.domain)} "
                    f"only")
        if need == "second_derivative":
            return (f"{est.name} needs the second derivative of the cost, but cost {cost.name} "
                    f"has none")
        return f"{est.name} needs {NEEDS[need]}, which family {fam.name} is not"
    return None
