"""Grid files: YAML in, a frozen, fully validated :class:`Grid` out.

A grid file looks like this (``examples/reparam_trick.yaml``)::

    name: reparam_trick          # optional, default: the file's stem
    problem:
      distribution: normal
      cost: square
      mu: 2.0                    # any scalar here may be a list: the grid is their product
      sigma: 1.0
    wrt: [mu]                    # optional, default: every component of the distribution
    estimators: [score_function, pathwise]
    n_samples: [10, 100, 1000]
    seeds: 1000                  # R -> seeds 0..R-1, or a list of non-negative ints
    backend: cpu                 # optional, default cpu

Everything a user can get wrong raises :class:`~harness.errors.ConfigError` with one line
naming the file, the line, the key and the fix.  We parse with ruamel.yaml (YAML 1.2, round-trip
mode) rather than PyYAML because it reads ``1e6`` as a number, rejects duplicate keys and
records the line of every key and value, which is what makes those messages possible.

Valid names and parameters are read from :mod:`harness.registry` at call time, so a new
distribution, cost, estimator or estimator option needs no change here.
"""

from __future__ import annotations

import difflib
import math
import pathlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from . import registry
from .errors import ConfigError

__all__ = ["EstimatorSpec", "Grid", "load_grid", "parse_grid"]

# n_samples and seeds end up in int64 arrays and Parquet columns.
MAX_INT64 = 2**63 - 1
# ``seeds: R`` expands to a tuple of R ints; a typo such as ``seeds: 1e12`` must fail fast
# instead of exhausting memory.
MAX_SEED_COUNT = 10_000_000

EXAMPLE = "examples/reparam_trick.yaml"


# --------------------------------------------------------------------------- data classes

@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator by registry name, with its options sorted by option name."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """``"score_function"`` or ``"score_function[baseline=loo]"`` (results column)."""
        return registry.label(self.name, self.options)


@dataclass(frozen=True)
class Grid:
    """A validated grid file.  See ``docs/architecture.md`` for the field contract."""

    name: str
    path: pathlib.Path
    source_text: str
    distribution: str
    cost: str
    params: tuple[tuple[str, tuple[float, ...]], ...]
    wrt: tuple[str, ...]
    estimators: tuple[EstimatorSpec, ...]
    n_samples: tuple[int, ...]
    seeds: tuple[int, ...]
    backend: str


# --------------------------------------------------------------------------- entry points

def load_grid(path) -> Grid:
    """Read and validate the grid file at ``path``; raise ConfigError on any problem."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=path,
                          fix=f"check the path, or start from {EXAMPLE}") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a grid file", file=path,
                          fix="pass the path of a .yaml file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text (byte {err.start})", file=path,
                          fix="save the file as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", file=path) from None
    return parse_grid(text, path)


def parse_grid(text: str, path="<string>") -> Grid:
    """Validate grid YAML ``text``; ``path`` names it in errors and gives the default name."""
    path = pathlib.Path(path)
    reader = _Reader(path)
    doc = _load_yaml(text, reader)
    if doc is None:
        reader.fail("the file is empty", None, None,
                    fix=f"write a grid; see {EXAMPLE}")
    if not isinstance(doc, CommentedMap):
        reader.fail("the top level must be a mapping (name:, problem:, ...), "
                    f"got {_describe(doc)}", _first_content_line(text), None,
                    fix=f"see {EXAMPLE} for the format")

    problem = doc.get("problem")
    if isinstance(problem, CommentedMap) and "kind" in problem:
        # ELBO problems (issue 5) have their own format: harness.vi.config
        kind = reader.choice(reader.entry(problem, "kind", "problem"), ("elbo",), "problem kind")
        if kind == "elbo":
            from .vi.config import parse_elbo
            return parse_elbo(doc, reader, text, path)

    fields: dict[str, Any] = {"path": path, "source_text": text}
    top = _Value(doc, 1, "")
    reader.reject_unknown(doc, "", _TOP_LEVEL)
    # In table order: the problem comes first because wrt and estimators are checked
    # against the distribution and cost it names.
    for key, (read, default) in _TOP_LEVEL.items():
        if key in doc:
            fields.update(read(reader, reader.entry(doc, key, ""), fields))
        elif default is _REQUIRED:
            reader.missing(top, key)
        else:
            fields.update(default(reader, fields))
    return Grid(**fields)


# --------------------------------------------------------------------------- YAML loading

def _load_yaml(text: str, reader: _Reader):
    """Parse YAML 1.2 with line numbers; turn ruamel's multi-line errors into one line."""
    try:
        return YAML(typ="rt").load(text)
    except DuplicateKeyError as err:
        key, first = _duplicate_key(text, err)
        reader.fail("duplicate key", err.problem_mark.line + 1, key,
                    fix=f"keep only one (the first is on line {first})" if first
                    else "keep only one")
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "cannot parse"
        reader.fail(f"malformed YAML: {_one_line(problem)}",
                    mark.line + 1 if mark else None, None,
                    fix="check the indentation, colons, quotes and brackets near this line")
    except YAMLError as err:        # e.g. a non-printable character: no line attached
        reader.fail(f"malformed YAML: {_one_line(str(err))}", None, None,
                    fix="check the file is a plain-text YAML mapping")


def _duplicate_key(text: str, err: DuplicateKeyError) -> tuple[str | None, int | None]:
    """(dotted key, line of its first occurrence) for a DuplicateKeyError.

    ruamel names only the bare key and marks the start of the enclosing mapping; reloading
    with duplicates allowed lets us find that mapping and give the full path.
    """
    found = re.search(r'found duplicate key "(.*?)" with value', err.problem or "")
    name = found.group(1) if found else None
    try:
        loose = YAML(typ="rt")
        loose.allow_duplicate_keys = True
        doc = loose.load(text)
    except YAMLError:
        return name, None
    mark = err.context_mark
    for prefix, mapping in _mappings(doc, ""):
        if mark is not None and (mapping.lc.line, mapping.lc.col) == (mark.line, mark.column):
            first = None
            for k in mapping:
                if str(k) == name:
                    first = mapping.lc.key(k)[0] + 1
            return _join(prefix, name), first
    return name, None


def _mappings(node, prefix: str):
    """Yield (dotted path, mapping) for every mapping in a loaded document."""
    if isinstance(node, CommentedMap):
        yield prefix, node
        for key, value in node.items():
            yield from _mappings(value, _join(prefix, str(key)))
    elif isinstance(node, CommentedSeq):
        for i, value in enumerate(node):
            yield from _mappings(value, f"{prefix}[{i}]")


# --------------------------------------------------------------------------- reading helpers

class _Value(NamedTuple):
    """A YAML value with where it came from: its 1-based line and its dotted key."""

    value: Any
    line: int | None
    key: str


_REQUIRED = object()


class _Reader:
    """Error reporting and small typed readers bound to one file."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def fail(self, message: str, line: int | None, key: str | None,
             fix: str | None = None):
        raise ConfigError(message, file=self.path, line=line, key=key or None, fix=fix)

    # -- structure

    def entry(self, mapping: CommentedMap, key, prefix: str) -> _Value:
        """The value under ``key``, at its key's line unless it is a scalar on its own line.

        (ruamel places a block list or mapping, and an empty value, at the next token.)
        """
        value = mapping[key]
        at_key = value is None or isinstance(value, (CommentedMap, CommentedSeq))
        pos = mapping.lc.key(key) if at_key else mapping.lc.value(key)
        return _Value(value, pos[0] + 1, _join(prefix, str(key)))

    def mapping(self, v: _Value, what: str) -> CommentedMap:
        if not isinstance(v.value, CommentedMap):
            self.fail(f"expected a mapping ({what}), got {_describe(v.value)}", v.line, v.key,
                      fix=f"see {EXAMPLE} for the format")
        return v.value

    def missing(self, parent: _Value, key: str, fix: str | None = None):
        self.fail("missing required key", parent.line, _join(parent.key, key),
                  fix=fix or f"add '{key}:'; see {EXAMPLE}")

    def reject_unknown(self, mapping: CommentedMap, prefix: str, valid: Iterable[str],
                       hint: Callable[[str], str | None] | None = None):
        """Fail on the first key not in ``valid``, suggesting the closest valid one."""
        valid = list(valid)
        for key in mapping:
            if isinstance(key, str) and key in valid:
                continue
            name = str(key)
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            fix = (hint(name) if hint else None) or (
                f"did you mean '{close[0]}'?" if close
                else f"remove it; valid keys here: {_or_none(valid)}")
            self.fail("unknown key", mapping.lc.key(key)[0] + 1, _join(prefix, name), fix=fix)

    def items(self, v: _Value, what: str) -> list[_Value]:
        """A list's elements (each with its own line), or a lone scalar as a 1-list."""
        if isinstance(v.value, CommentedSeq):
            if not v.value:
                self.fail("empty list", v.line, v.key, fix=f"give at least one {what}")
            return [_Value(x, v.value.lc.item(i)[0] + 1, f"{v.key}[{i}]")
                    for i, x in enumerate(v.value)]
        return [v]

    def no_duplicates(self, items: list[_Value], parsed: list, what: str):
        """Fail on a repeated value (after parsing, so 10 and 1e1 are the same N)."""
        seen = {}
        for item, value in zip(items, parsed):
            if value in seen:
                self.fail(f"duplicate {what} {_show(value)} (same as {seen[value]})",
                          item.line, item.key, fix="list each value once")
            seen[value] = item.key

    # -- scalars

    def number(self, v: _Value) -> float:
        """A finite float; ints are converted so a list like [-3, 0.5] is all floats."""
        x = v.value
        if _is_bool(x) or not isinstance(x, (int, float)):
            self.fail(f"expected a number, got {_describe(x)}", v.line, v.key,
                      fix=_number_fix(x))
        try:
            f = float(x)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            self.fail(f"must be a finite number, got {_show(x)}", v.line, v.key,
                      fix="use a finite value")
        return f

    def whole(self, v: _Value, minimum: int, maximum: int, fix: str) -> int:
        """An int in [minimum, maximum]; a whole-number float such as ``1e6`` is accepted."""
        x = v.value
        if _is_bool(x) or not isinstance(x, (int, float)):
            self.fail(f"expected a whole number, got {_describe(x)}", v.line, v.key,
                      fix=_number_fix(x))
        if isinstance(x, float):
            if not math.isfinite(x):
                self.fail(f"must be a finite whole number, got {_show(x)}", v.line, v.key, fix=fix)
            if not float(x).is_integer():
                self.fail(f"must be a whole number, got {_show(x)}", v.line, v.key, fix=fix)
        n = int(x)
        if n < minimum:
            self.fail(f"must be >= {minimum}, got {n}", v.line, v.key, fix=fix)
        if n > maximum:
            self.fail(f"must be <= {maximum}, got {n}", v.line, v.key, fix=fix)
        return n

    def choice(self, v: _Value, valid: Iterable[str], what: str) -> str:
        """A name from ``valid`` (e.g. a registry's keys); unknown names list the valid ones."""
        valid = list(valid)
        x = v.value
        if not isinstance(x, str):
            self.fail(f"expected {what} name, got {_describe(x)}", v.line, v.key,
                      fix=f"use one of: {_or_none(valid)}")
        if x not in valid:
            close = difflib.get_close_matches(x, valid, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.fail(f"unknown {what} {x!r}", v.line, v.key,
                      fix=f"{hint}valid: {_or_none(valid)}")
        return str(x)       # plain str, not ruamel's quoted-string subclasses


# --------------------------------------------------------------------------- top-level keys
# Each reader takes (reader, value, fields parsed so far) and returns Grid fields.

def _read_name(r: _Reader, v: _Value, fields) -> dict:
    x = v.value
    if not isinstance(x, str) or not x.strip():
        r.fail(f"expected a non-empty name, got {_describe(x)}", v.line, v.key,
               fix="write e.g. name: my_experiment; quote names that look like numbers")
    # The name becomes the default output directory runs/<name>.
    if any(c in x for c in "/\\") or x in (".", ".."):
        r.fail(f"{x!r} is not a valid directory name", v.line, v.key,
               fix="use letters, digits, '_', '-' or '.' without slashes")
    return {"name": str(x)}


def _read_problem(r: _Reader, v: _Value, fields) -> dict:
    m = r.mapping(v, "distribution, cost and their parameters")
    dists, costs = registry.DISTRIBUTIONS, registry.COSTS
    chosen = {}
    for key, table, what in (("distribution", dists, "distribution"), ("cost", costs, "cost")):
        if key in m:
            chosen[key] = r.choice(r.entry(m, key, v.key), table, what)

    # Until both are known, any registered parameter name is plausible.
    dist_params = (dists[chosen["distribution"]].params if "distribution" in chosen
                   else _union(d.params for d in dists.values()))
    cost_params = (costs[chosen["cost"]].params if "cost" in chosen
                   else _union(c.params for c in costs.values()))

    def hint(key: str) -> str | None:
        takers = [n for n, c in costs.items() if key in c.params]
        if "cost" in chosen and takers:
            return (f"cost {chosen['cost']} takes no {key}; "
                    f"remove it or use cost: {' or '.join(takers)}")
        return None

    r.reject_unknown(m, v.key, ("distribution", "cost") + tuple(dist_params) + tuple(cost_params),
                     hint)
    for key, table in (("distribution", dists), ("cost", costs)):
        if key not in chosen:
            r.missing(v, key, fix=f"add '{key}: <name>' with one of: {_or_none(table)}")

    dist, cost = dists[chosen["distribution"]], costs[chosen["cost"]]
    params = []
    for p in dist.params + cost.params:
        if p not in m:
            r.missing(v, p, fix=f"add '{p}: <number>' (or a list of numbers)")
        items = r.items(r.entry(m, p, v.key), "value")
        values = [r.number(item) for item in items]
        if p in dist.positive or p in cost.positive:
            for item, x in zip(items, values):
                if x <= 0:
                    r.fail(f"must be > 0, got {_show(x)}", item.line, item.key,
                           fix=f"{p} is a scale: use a positive value" if p in dist.positive
                           else f"cost {cost.name} needs {p} > 0")
        r.no_duplicates(items, values, "value")
        params.append((p, tuple(values)))
    return {"distribution": chosen["distribution"], "cost": chosen["cost"],
            "params": tuple(params)}


def _read_wrt(r: _Reader, v: _Value, fields) -> dict:
    components = registry.DISTRIBUTIONS[fields["distribution"]].components
    items = r.items(v, "gradient component")
    names = [r.choice(item, components, "gradient component") for item in items]
    r.no_duplicates(items, names, "component")
    # Canonical (distribution) order, so [sigma, mu] and [mu, sigma] are the same cell.
    return {"wrt": tuple(c for c in components if c in names)}


def _read_estimators(r: _Reader, v: _Value, fields) -> dict:
    items = r.items(v, "estimator")
    specs = [_read_estimator(r, item, fields["cost"], fields["distribution"]) for item in items]
    r.no_duplicates(items, [s.label for s in specs], "estimator")
    return {"estimators": tuple(specs)}


def _read_estimator(r: _Reader, v: _Value, cost: str, distribution: str) -> EstimatorSpec:
    """``name`` or ``{name: name, option: value, ...}``; options come from the registry."""
    if isinstance(v.value, CommentedMap):
        m = v.value
        if "name" not in m:
            r.missing(v, "name", fix="write {name: <estimator>, <option>: <value>}")
        name = r.choice(r.entry(m, "name", v.key), registry.ESTIMATORS, "estimator")
        allowed = getattr(registry.ESTIMATORS[name], "options", {}) or {}

        def hint(key: str) -> str | None:
            return None if allowed else f"remove it: estimator {name} has no options"

        r.reject_unknown(m, v.key, ["name", *allowed], hint)
        options = []
        for key in sorted(k for k in m if k != "name"):
            ov = r.entry(m, key, v.key)
            value = _plain(ov.value)
            # a boolean only matches a boolean (True == 1 in Python); store the registered
            # value, so `coefficient: 1.0` and `coefficient: 1` are the same estimator
            matches = [a for a in allowed[key]
                       if a == value and isinstance(a, bool) == isinstance(value, bool)]
            if not matches:
                valid = _or_none(map(registry.option_text, allowed[key]))
                r.fail(f"invalid value {_show(ov.value)} for option {key} of {name}",
                       ov.line, ov.key, fix=f"use one of: {valid}")
            options.append((str(key), matches[0]))
        spec = EstimatorSpec(name, tuple(options))
    elif isinstance(v.value, str):
        spec = EstimatorSpec(r.choice(v, registry.ESTIMATORS, "estimator"))
    else:
        r.fail(f"expected an estimator name or mapping, got {_describe(v.value)}",
               v.line, v.key, fix=f"use one of: {_or_none(registry.ESTIMATORS)}")

    problem = registry.combination_problem(spec, distribution, cost)  # f', f'', ... missing
    if problem is not None:
        r.fail(problem[0], v.line, v.key, fix=problem[1])
    return spec


def _read_n_samples(r: _Reader, v: _Value, fields) -> dict:
    items = r.items(v, "sample size")
    ns = [r.whole(item, 2, MAX_INT64, fix="N is a sample count >= 2, e.g. 1000 or 1e6")
          for item in items]
    r.no_duplicates(items, ns, "sample size")
    return {"n_samples": tuple(ns)}


def _read_seeds(r: _Reader, v: _Value, fields) -> dict:
    if not isinstance(v.value, CommentedSeq):
        count = r.whole(v, 1, MAX_SEED_COUNT,
                        fix="give a count R for seeds 0..R-1, or a list of non-negative ints")
        return {"seeds": tuple(range(count))}
    items = r.items(v, "seed")
    seeds = [r.whole(item, 0, MAX_INT64, fix="seeds are non-negative integers")
             for item in items]
    r.no_duplicates(items, seeds, "seed")
    return {"seeds": tuple(seeds)}


def _read_backend(r: _Reader, v: _Value, fields) -> dict:
    return {"backend": r.choice(v, registry.BACKENDS, "backend")}


# key -> (reader, default): default is _REQUIRED or a function (reader, fields) -> Grid fields.
_TOP_LEVEL: dict[str, tuple[Callable, Any]] = {
    "name": (_read_name, lambda r, fields: {"name": r.path.stem}),
    "problem": (_read_problem, _REQUIRED),
    "wrt": (_read_wrt, lambda r, fields: {
        "wrt": registry.DISTRIBUTIONS[fields["distribution"]].components}),
    "estimators": (_read_estimators, _REQUIRED),
    "n_samples": (_read_n_samples, _REQUIRED),
    "seeds": (_read_seeds, _REQUIRED),
    "backend": (_read_backend, lambda r, fields: {"backend": "cpu"}),
}


# --------------------------------------------------------------------------- small utilities

def _is_bool(x) -> bool:
    # ruamel returns ScalarBoolean (an int, not a bool) for anchored booleans.
    return isinstance(x, (bool, ScalarBoolean))


def _plain(x):
    """ruamel scalar subclasses -> plain Python values (they must hash and print plainly)."""
    if _is_bool(x):
        return bool(x)
    for t in (str, int, float):
        if isinstance(x, t):
            return t(x)
    return x


def _describe(x) -> str:
    if x is None:
        return "nothing (null)"
    if _is_bool(x):
        return f"a boolean ({str(bool(x)).lower()})"
    if isinstance(x, str):
        return f"the text {x!r}"
    if isinstance(x, CommentedMap):
        return "a mapping"
    if isinstance(x, CommentedSeq):
        return "a list"
    if isinstance(x, (int, float)):
        return _show(x)
    return f"a {type(x).__name__}"


def _show(x) -> str:
    """A value as the user would write it (no ruamel class names, no quotes on numbers)."""
    x = _plain(x)
    return repr(x) if isinstance(x, str) else str(x)


def _number_fix(x) -> str:
    if isinstance(x, str) and _parses_as_float(x):
        return "write the number without quotes"
    if _is_bool(x):
        return "write a number; true/false are not numbers"
    return "write a number"


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _join(prefix: str, key: str | None) -> str | None:
    if key is None:
        return prefix or None
    return f"{prefix}.{key}" if prefix else key


def _union(groups) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out.extend(p for p in group if p not in out)
    return tuple(out)


def _or_none(names) -> str:
    names = list(names)
    return ", ".join(names) if names else "(none)"


def _first_content_line(text: str) -> int:
    """1-based line of the first line that is not blank or a comment (for top-level errors)."""
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "---":
            return i
    return 1
