"""Plain registries: name -> record.  Adding a variant is one module and one line here.

Tests loop over every entry, so a new estimator or cost is checked against exact references
without further changes.

Estimators with options are resolved to concrete variants by :func:`resolve`, keyed by their
label (``score_function[baseline=optimal]``), the key of kernels and results.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import cache

from .base import Estimator
from .costs import cos, exp, quadratic, square
from .distributions import normal
from .errors import ConfigError
from .estimators import delta_cv, measure_valued, pathwise, score_function

DISTRIBUTIONS = {
    normal.DISTRIBUTION.name: normal.DISTRIBUTION,
}

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
}

BACKENDS = ("cpu", "cuda")  # modules harness.backends.<name>, each with estimate()


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
    base = ESTIMATORS[name]
    values = base.defaults
    for key, value in options:
        if key not in base.options or value not in base.options[key] or isinstance(value, bool) \
                != any(isinstance(v, bool) and v == value for v in base.options[key]):
            raise ConfigError(f"invalid option {key}={value!r} for estimator {name}",
                              key="estimators", fix=f"options: {dict(base.options) or 'none'}")
        values[key] = value
    variant = base.configure(**values) if base.configure is not None else base
    return dataclasses.replace(variant, name=label(name, options), options={}, configure=None)


def variants(name: str) -> list[str]:
    """Labels of every option combination of a registered estimator (for tests and docs); the
    default combination is the plain name."""
    base = ESTIMATORS[name]
    keys = sorted(base.options)
    defaults = base.defaults
    return [label(name, [(k, v) for k, v in zip(keys, values) if v != defaults[k]
                         or isinstance(v, bool) != isinstance(defaults[k], bool)])
            for values in itertools.product(*(base.options[k] for k in keys))] or [name]
