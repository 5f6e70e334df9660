"""Grid files: YAML in, a frozen, fully validated :class:`Grid` out.

A grid file looks like this (``examples/reparam_trick.yaml``; the keys under ``problem`` and
the kind's own top-level keys, here ``wrt``, belong to the problem kind)::

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

This module reads the keys every grid has (``name``, ``estimators``, ``n_samples``, ``seeds``,
``backend``) and hands ``problem`` to the problem kind named by ``problem.kind``
(``harness.kinds``), which reads it with the same :class:`Reader`.  Valid names come from the
registries at call time, so a new kind, family, cost, estimator or option needs no change
here.
"""

from __future__ import annotations

import difflib
import math
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from . import registry
from .errors import ConfigError
from .model import EstimatorSpec, Grid

__all__ = ["EstimatorSpec", "Grid", "Reader", "Value", "load_grid", "parse_grid"]

DEFAULT_KIND = "expectation"
# keys every grid may have; a problem kind adds its own (ProblemKind.top_level_keys)
COMMON_KEYS = ("name", "problem", "estimators", "n_samples", "seeds", "backend")

# n_samples and seeds end up in int64 arrays and Parquet columns.
MAX_INT64 = 2**63 - 1
# ``seeds: R`` is computed in blocks (memory does not grow with R), but every seed is a row
# of the result file per estimator and component: ten million is 0.8 GB per cell already,
# and a typo such as ``seeds: 1e12`` must fail at once.
MAX_SEED_COUNT = 10_000_000
# A grid file is a few lines; a larger one is a mistake (a pasted data file) and would take
# minutes to parse.  1 MiB holds e.g. a list of 100 000 sweep values.
MAX_GRID_BYTES = 1 << 20
# Cells of one grid (the product of the sweep lists and N): each is a file and a kernel
# call; more would take hours to list, and the expansion itself would exhaust memory.
MAX_CELLS = 100_000
# The name is the default output directory runs/<name>: one path component.
MAX_NAME_CHARS = 128

EXAMPLE = "examples/reparam_trick.yaml"


# --------------------------------------------------------------------------- entry points

def load_grid(path) -> Grid:
    """Read and validate the grid file at ``path``; raise ConfigError on any problem."""
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_GRID_BYTES:
            raise ConfigError(f"the file is {size:,} bytes, more than a grid file may be "
                              f"({MAX_GRID_BYTES:,})", file=path,
                              fix="a grid lists values to sweep; generate long sweeps with "
                                  "fewer, coarser values, or split the study into several "
                                  "grids")
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


def parse_grid(text: str, path="<string>", default_name: str | None = None) -> Grid:
    """Validate grid YAML ``text``; ``path`` names it in errors and gives the default name
    (``default_name`` instead, if given: a copy of a grid keeps the original's name).

    The common keys are read here; ``problem`` and the kind's own top-level keys by the
    problem kind (``problem.kind``, default ``expectation``; see ``harness.kinds``).
    """
    from .kinds import KINDS

    path = pathlib.Path(path)
    reader = Reader(path)
    if len(text) > MAX_GRID_BYTES:
        reader.fail(f"the grid is {len(text):,} characters, more than a grid file may be "
                    f"({MAX_GRID_BYTES:,})", None, None,
                    fix="sweep fewer values, or split the study into several grids")
    doc = _load_yaml(text, reader)
    _reject_tags(reader, doc)
    if doc is None:
        reader.fail("the file is empty", None, None,
                    fix=f"write a grid; see {EXAMPLE}")
    if not isinstance(doc, CommentedMap):
        reader.fail("the top level must be a mapping (name:, problem:, ...), "
                    f"got {describe_value(doc)}", _first_content_line(text), None,
                    fix=f"see {EXAMPLE} for the format")
    top = Value(doc, 1, "")
    if "problem" not in doc:
        reader.reject_unknown(doc, "", COMMON_KEYS + union(k.top_level_keys
                                                           for k in KINDS.values()))
        reader.missing(top, "problem")
    problem = reader.entry(doc, "problem", "")
    kind_name = DEFAULT_KIND
    if isinstance(problem.value, CommentedMap) and "kind" in problem.value:
        kind_name = reader.choice(reader.entry(problem.value, "kind", "problem"), KINDS,
                                  "problem kind")
    kind = KINDS[kind_name]

    def hint(key: str) -> str | None:
        owners = [n for n, k in KINDS.items() if key in k.top_level_keys]
        return f"{key} belongs to problem kind {' or '.join(owners)}" if owners else None

    reader.reject_unknown(doc, "", COMMON_KEYS + kind.top_level_keys, hint)
    common: dict[str, Any] = {
        "name": read_name(reader, reader.entry(doc, "name", "")) if "name" in doc
        else default_name or path.stem,
    }
    for key in ("estimators", "seeds"):
        if key not in doc:
            reader.missing(top, key)
    common["estimators"] = read_estimators(reader, reader.entry(doc, "estimators", ""),
                                           kind.estimators)
    common["n_samples"] = (read_n_samples(reader, reader.entry(doc, "n_samples", ""))
                           if "n_samples" in doc else ())
    common["seeds"] = read_seeds(reader, reader.entry(doc, "seeds", ""))
    common["backend"] = (read_backend(reader, reader.entry(doc, "backend", ""), kind)
                         if "backend" in doc else "cpu")
    spec = kind.parse(reader, doc, common)
    return Grid(kind=kind.name, path=path, source_text=text, problem=spec, **common)


def check_cell_count(r: Reader, count: int, v: Value) -> None:
    """Fail (at ``v``, e.g. the ``problem`` key) if a grid expands to more than MAX_CELLS
    cells; kinds call this before expanding anything."""
    if count > MAX_CELLS:
        r.fail(f"the grid expands to {count:,} cells, more than {MAX_CELLS:,}", v.line, v.key,
               fix="sweep fewer values (every list multiplies the cell count), or split the "
                   "study into several grids")


# Plain YAML values only: a tag (``!!python/object/apply:...``, ``!foo``, ``!!binary``) or a
# type no grid key takes (bytes, sets, dates) is refused where it stands, before any key is
# read, so no reader ever meets an unexpected type.
_PLAIN_TYPES = (str, int, float, bool, type(None), CommentedMap, CommentedSeq)


def _reject_tags(reader: Reader, doc) -> None:
    seen: set[int] = set()

    def check(value, line, key):
        tag = getattr(getattr(value, "tag", None), "value", None)
        if tag is not None or isinstance(value, TaggedScalar):
            reader.fail(f"YAML tag {tag or '?'} is not allowed", line, key,
                        fix="remove the tag: grid files hold plain numbers, text, lists and "
                            "mappings")
        if not isinstance(value, _PLAIN_TYPES) or type(value).__name__ in (
                "CommentedSet", "CommentedOrderedMap"):
            reader.fail(f"{describe_value(value)} is not a grid value", line, key,
                        fix="write a number, text, a list or a mapping (quote text that "
                            "looks like a date)")

    def walk(node, prefix):
        if id(node) in seen:       # an alias: checked where its anchor is
            return
        seen.add(id(node))
        if isinstance(node, CommentedMap):
            for k, value in node.items():
                key = join_key(prefix, str(k))
                line = node.lc.key(k)[0] + 1
                check(k, line, key)
                check(value, line, key)
                walk(value, key)
        elif isinstance(node, CommentedSeq):
            for i, value in enumerate(node):
                line = node.lc.item(i)[0] + 1
                check(value, line, f"{prefix}[{i}]")
                walk(value, f"{prefix}[{i}]")

    check(doc, 1, None)
    walk(doc, "")


# --------------------------------------------------------------------------- YAML loading

def _load_yaml(text: str, reader: Reader):
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
            return join_key(prefix, name), first
    return name, None


def _mappings(node, prefix: str):
    """Yield (dotted path, mapping) for every mapping in a loaded document."""
    if isinstance(node, CommentedMap):
        yield prefix, node
        for key, value in node.items():
            yield from _mappings(value, join_key(prefix, str(key)))
    elif isinstance(node, CommentedSeq):
        for i, value in enumerate(node):
            yield from _mappings(value, f"{prefix}[{i}]")


# --------------------------------------------------------------------------- reading helpers

class Value(NamedTuple):
    """A YAML value with where it came from: its 1-based line and its dotted key."""

    value: Any
    line: int | None
    key: str


class Reader:
    """Error reporting and small typed readers bound to one file."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def fail(self, message: str, line: int | None, key: str | None,
             fix: str | None = None):
        raise ConfigError(message, file=self.path, line=line, key=key or None, fix=fix)

    # -- structure

    def entry(self, mapping: CommentedMap, key, prefix: str) -> Value:
        """The value under ``key``, at its key's line unless it is a scalar on its own line.

        (ruamel places a block list or mapping, and an empty value, at the next token.)
        """
        value = mapping[key]
        at_key = value is None or isinstance(value, (CommentedMap, CommentedSeq))
        pos = mapping.lc.key(key) if at_key else mapping.lc.value(key)
        return Value(value, pos[0] + 1, join_key(prefix, str(key)))

    def mapping(self, v: Value, what: str) -> CommentedMap:
        if not isinstance(v.value, CommentedMap):
            self.fail(f"expected a mapping ({what}), got {describe_value(v.value)}", v.line, v.key,
                      fix=f"see {EXAMPLE} for the format")
        return v.value

    def missing(self, parent: Value, key: str, fix: str | None = None):
        self.fail("missing required key", parent.line, join_key(parent.key, key),
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
                else f"remove it; valid keys here: {or_none(valid)}")
            self.fail("unknown key", mapping.lc.key(key)[0] + 1, join_key(prefix, name), fix=fix)

    def items(self, v: Value, what: str) -> list[Value]:
        """A list's elements (each with its own line), or a lone scalar as a 1-list."""
        if isinstance(v.value, CommentedSeq):
            if not v.value:
                self.fail("empty list", v.line, v.key, fix=f"give at least one {what}")
            return [Value(x, v.value.lc.item(i)[0] + 1, f"{v.key}[{i}]")
                    for i, x in enumerate(v.value)]
        return [v]

    def no_duplicates(self, items: list[Value], parsed: list, what: str):
        """Fail on a repeated value (after parsing, so 10 and 1e1 are the same N)."""
        seen = {}
        for item, value in zip(items, parsed):
            if value in seen:
                self.fail(f"duplicate {what} {show(value)} (same as {seen[value]})",
                          item.line, item.key, fix="list each value once")
            seen[value] = item.key

    # -- scalars

    def number(self, v: Value) -> float:
        """A finite float; ints are converted so a list like [-3, 0.5] is all floats."""
        x = v.value
        if is_bool(x) or not isinstance(x, (int, float)):
            self.fail(f"expected a number, got {describe_value(x)}", v.line, v.key,
                      fix=_number_fix(x))
        try:
            f = float(x)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            self.fail(f"must be a finite number, got {show(x)}", v.line, v.key,
                      fix="use a finite value")
        return f

    def whole(self, v: Value, minimum: int, maximum: int, fix: str) -> int:
        """An int in [minimum, maximum]; a whole-number float such as ``1e6`` is accepted."""
        x = v.value
        if is_bool(x) or not isinstance(x, (int, float)):
            self.fail(f"expected a whole number, got {describe_value(x)}", v.line, v.key,
                      fix=_number_fix(x))
        if isinstance(x, float):
            if not math.isfinite(x):
                self.fail(f"must be a finite whole number, got {show(x)}", v.line, v.key, fix=fix)
            if not float(x).is_integer():
                self.fail(f"must be a whole number, got {show(x)}", v.line, v.key, fix=fix)
        n = int(x)
        if n < minimum:
            self.fail(f"must be >= {minimum}, got {n}", v.line, v.key, fix=fix)
        if n > maximum:
            self.fail(f"must be <= {maximum}, got {n}", v.line, v.key, fix=fix)
        return n

    def choice(self, v: Value, valid: Iterable[str], what: str) -> str:
        """A name from ``valid`` (e.g. a registry's keys); unknown names list the valid ones."""
        valid = list(valid)
        x = v.value
        if not isinstance(x, str):
            self.fail(f"expected {what} name, got {describe_value(x)}", v.line, v.key,
                      fix=f"use one of: {or_none(valid)}")
        if x not in valid:
            close = difflib.get_close_matches(x, valid, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.fail(f"unknown {what} {x!r}", v.line, v.key,
                      fix=f"{hint}valid: {or_none(valid)}")
        return str(x)       # plain str, not ruamel's quoted-string subclasses


# --------------------------------------------------------------------------- common keys

def read_name(r: Reader, v: Value) -> str:
    x = v.value
    if not isinstance(x, str) or not x.strip():
        r.fail(f"expected a non-empty name, got {describe_value(x)}", v.line, v.key,
               fix="write e.g. name: my_experiment; quote names that look like numbers")
    # The name becomes the default output directory runs/<name>: one valid path component.
    if (any(c in x for c in "/\\") or x in (".", "..")
            or any(not c.isprintable() for c in x)):
        r.fail(f"{x!r} is not a valid directory name", v.line, v.key,
               fix="use letters, digits, '_', '-' or '.' without slashes or control "
                   "characters")
    if len(x) > MAX_NAME_CHARS or len(x.encode("utf-8", "surrogatepass")) > 255:
        r.fail(f"the name is {len(x)} characters, more than {MAX_NAME_CHARS}", v.line, v.key,
               fix="use a shorter name (it becomes the output directory runs/<name>)")
    return str(x)


def read_estimators(r: Reader, v: Value, estimators: Mapping) -> tuple[EstimatorSpec, ...]:
    """The ``estimators`` list, names and options checked against a kind's registry."""
    items = r.items(v, "estimator")
    specs = [read_estimator(r, item, estimators) for item in items]
    r.no_duplicates(items, [s.label for s in specs], "estimator")
    return tuple(specs)


def read_estimator(r: Reader, v: Value, estimators: Mapping) -> EstimatorSpec:
    """``name`` or ``{name: name, option: value, ...}``; options come from the registry."""
    if isinstance(v.value, CommentedMap):
        m = v.value
        if "name" not in m:
            r.missing(v, "name", fix="write {name: <estimator>, <option>: <value>}")
        name = r.choice(r.entry(m, "name", v.key), estimators, "estimator")
        allowed = getattr(estimators[name], "options", {}) or {}

        def hint(key: str) -> str | None:
            return None if allowed else f"remove it: estimator {name} has no options"

        r.reject_unknown(m, v.key, ["name", *allowed], hint)
        options = []
        for key in sorted(k for k in m if k != "name"):
            ov = r.entry(m, key, v.key)
            value = plain(ov.value)
            # a boolean only matches a boolean (True == 1 in Python); store the registered
            # value, so `coefficient: 1.0` and `coefficient: 1` are the same estimator
            matches = [a for a in allowed[key]
                       if a == value and isinstance(a, bool) == isinstance(value, bool)]
            if not matches:
                valid = or_none(map(registry.option_text, allowed[key]))
                r.fail(f"invalid value {show(ov.value)} for option {key} of {name}",
                       ov.line, ov.key, fix=f"use one of: {valid}")
            options.append((str(key), matches[0]))
        return EstimatorSpec(name, tuple(options))
    if isinstance(v.value, str):
        return EstimatorSpec(r.choice(v, estimators, "estimator"))
    r.fail(f"expected an estimator name or mapping, got {describe_value(v.value)}",
           v.line, v.key, fix=f"use one of: {or_none(estimators)}")


def read_n_samples(r: Reader, v: Value) -> tuple[int, ...]:
    items = r.items(v, "sample size")
    ns = [r.whole(item, 2, MAX_INT64, fix="N is a sample count >= 2, e.g. 1000 or 1e6")
          for item in items]
    r.no_duplicates(items, ns, "sample size")
    return tuple(ns)


def read_seeds(r: Reader, v: Value) -> tuple[int, ...]:
    if not isinstance(v.value, CommentedSeq):
        count = r.whole(v, 1, MAX_SEED_COUNT,
                        fix="give a count R for seeds 0..R-1, or a list of non-negative ints")
        return range(count)        # not a tuple: ten million seeds cost nothing here
    items = r.items(v, "seed")
    seeds = [r.whole(item, 0, MAX_INT64, fix="seeds are non-negative integers")
             for item in items]
    r.no_duplicates(items, seeds, "seed")
    return tuple(seeds)


def read_backend(r: Reader, v: Value, kind) -> str:
    name = r.choice(v, registry.BACKENDS, "backend")
    if name not in kind.backends:
        r.fail(f"backend {name!r} does not run {kind.name} problems", v.line, v.key,
               fix=f"use backend: {or_none(kind.backends)}")
    return name


def read_numbers(r: Reader, m: CommentedMap, key: str, parent: Value, *,
                 positive: bool = False, fix: str | None = None) -> tuple[float, ...]:
    """A number or a list of distinct numbers under ``m[key]`` (a sweep axis)."""
    items = r.items(r.entry(m, key, parent.key), "value")
    values = [r.number(item) for item in items]
    if positive:
        for item, x in zip(items, values):
            if x <= 0:
                r.fail(f"must be > 0, got {show(x)}", item.line, item.key,
                       fix=fix or f"{key} must be positive")
    r.no_duplicates(items, values, "value")
    return tuple(values)


# --------------------------------------------------------------------------- small utilities

def is_bool(x) -> bool:
    # ruamel returns ScalarBoolean (an int, not a bool) for anchored booleans.
    return isinstance(x, (bool, ScalarBoolean))


def plain(x):
    """ruamel scalar subclasses -> plain Python values (they must hash and print plainly)."""
    if is_bool(x):
        return bool(x)
    for t in (str, int, float):
        if isinstance(x, t):
            return t(x)
    return x


def describe_value(x) -> str:
    if x is None:
        return "nothing (null)"
    if is_bool(x):
        return f"a boolean ({str(bool(x)).lower()})"
    if isinstance(x, str):
        return f"the text {x!r}"
    if isinstance(x, CommentedMap):
        return "a mapping"
    if isinstance(x, CommentedSeq):
        return "a list"
    if isinstance(x, (int, float)):
        return show(x)
    return f"a {type(x).__name__}"


def show(x) -> str:
    """A value as the user would write it (no ruamel class names, no quotes on numbers)."""
    x = plain(x)
    return repr(x) if isinstance(x, str) else str(x)


def values_text(values) -> str:
    """A value list in one short word: ``2``, ``[0.5,1,2]``, ``[0,1,2,...,98,99]``."""
    text = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    if len(text) > 6:
        text = text[:3] + ["..."] + text[-2:]
    return text[0] if len(text) == 1 else "[" + ",".join(text) + "]"


def _number_fix(x) -> str:
    if isinstance(x, str) and _parses_as_float(x):
        return "write the number without quotes"
    if is_bool(x):
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


def join_key(prefix: str, key: str | None) -> str | None:
    if key is None:
        return prefix or None
    return f"{prefix}.{key}" if prefix else key


def union(groups) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out.extend(p for p in group if p not in out)
    return tuple(out)


def or_none(names) -> str:
    names = list(names)
    return ", ".join(names) if names else "(none)"


def _first_content_line(text: str) -> int:
    """1-based line of the first line that is not blank or a comment (for top-level errors)."""
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "---":
            return i
    return 1
