"""The ELBO kind's part of a grid file (``problem: {kind: elbo, ...}``, ``mode``, ``optimizer``).

``harness.config.parse_grid`` reads the common keys (``name``, ``estimators``, ``n_samples``,
``seeds``, ``backend``) and calls :func:`parse` (``harness.kinds.elbo.KIND.parse``) for the
rest, with the same one-line errors (file:line: key: message (fix: ...)).  Format::

    name: vi_gaussian
    problem:
      kind: elbo
      target: gaussian            # gaussian | logistic_regression | ripple | banana, or
                                  # {python: "mod:log_g", gradient: "mod:grad_log_g", dim: d}
                                  # (your own module beside the grid: harness.vi.targets.user)
      mean: [0.5, -1.0, 2.0]      # gaussian: mean + cov, or target_seed + dim
      cov: [[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]]
      family: full                # diag | full (or a list: both are run)
      q:                          # lambda, where gradients are estimated / optimisation starts
        mu: [0.0, 0.0, 0.0]
        L: [[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [-0.1, 0.3, 1.2]]   # diag: log_sigma: [...]
    estimators: [reparam, reparam_sampled_entropy, stl, {name: score_function, baseline: mean}]
    n_samples: [10, 100, 1000]
    seeds: 200

``q`` may also be ``standard`` (mu = 0, C = I, the default), ``optimum`` (the target's known
optimum for the family) or scalars ``{mu: 0.0, scale: 1.0}`` (mu = 0.0 everywhere,
C = scale * I), which work for any dim.  ``family``, ``dim``, ``target_seed``, ``batch``,
``a``, ``omega``, ``s``, ``b`` may be lists (the grid is their product).

``mode: optimize`` (default ``estimate``; ``[estimate, optimize]`` for both) runs stochastic
optimisation from q; it takes an ``optimizer:`` mapping (keys of
:class:`harness.vi.api.OptimizerSpec`: name adam|sgd,
lr, steps, samples, schedule constant|cosine, record_every, var_samples).
"""

from __future__ import annotations

import itertools
import math
import pathlib
from dataclasses import dataclass

import numpy as np
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ..config import Value, check_cell_count, describe_value, or_none, show
from ..errors import ConfigError
from .api import OptimizerSpec
from .families import FAMILIES
from .targets import TARGETS, get, user

EXAMPLE = "examples/vi_gaussian.yaml"
SWEEPABLE = ("family", "dim", "target_seed", "batch", "a", "omega", "s", "b")
INT_KEYS = ("dim", "target_seed", "batch")
MAX_DIM = 200
# target parameters left out of the one-line label: matrices, and a user target's spec (its
# log density is the target's name)
NOT_IN_LABEL = ("mean", "cov", "python", "gradient", "path")


@dataclass(frozen=True)
class QSpec:
    """Where q sits: ``kind`` standard | optimum | scalar | explicit."""

    kind: str
    mu: tuple = ()            # explicit: list of floats; scalar: (value,)
    scale: tuple = ()         # explicit: L rows (full) or log_sigma (diag); scalar: (value,)

    def resolve(self, family: str, dim: int, target_data):
        """(mu, C) arrays for a family and dimension."""
        if self.kind == "standard":
            return np.zeros(dim), np.eye(dim)
        if self.kind == "optimum":
            return target_data.optimum(FAMILIES[family].code)
        if self.kind == "scalar":
            return np.full(dim, self.mu[0]), self.scale[0] * np.eye(dim)
        mu = np.array(self.mu, float)
        if family == "diag":
            return mu, np.diag(np.exp(np.array(self.scale, float)))
        return mu, np.array(self.scale, float)

    @classmethod
    def from_json(cls, q) -> QSpec:
        """The inverse of :meth:`to_json` (cells store q as JSON)."""
        if isinstance(q, str):
            return cls(q)
        if not isinstance(q["mu"], list):
            return cls("scalar", (q["mu"],), (q["scale"],))
        return cls("explicit", tuple(q["mu"]),
                   tuple(tuple(r) if isinstance(r, list) else r for r in q["scale"]))

    def to_json(self):
        if self.kind in ("standard", "optimum"):
            return self.kind
        if self.kind == "scalar":
            return {"mu": self.mu[0], "scale": self.scale[0]}
        return {"mu": list(self.mu), "scale": [list(r) if isinstance(r, tuple) else r
                                               for r in self.scale]}


@dataclass(frozen=True)
class ElboPoint:
    """One problem point: target parameters, family, dimension and q."""

    target: str
    family: str
    dim: int
    params: tuple             # ((key, value), ...) target parameters (mean/cov as tuples)
    q: QSpec

    @property
    def label(self) -> str:
        """The target parameters in one short string (``results.target_params``)."""
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in self.params if k not in NOT_IN_LABEL]
        if any(k == "mean" for k, _ in self.params):
            parts.insert(0, "mean,cov given")
        return " ".join(parts)


@dataclass(frozen=True)
class ElboProblem:
    """The ``problem`` of an ELBO grid (with its top-level ``mode`` and ``optimizer``)."""

    target: str
    points: tuple[ElboPoint, ...]
    modes: tuple[str, ...]                     # ("estimate",), ("optimize",) or both
    optimizer: OptimizerSpec | None


# the ELBO kind's own top-level keys (harness.model.ProblemKind.top_level_keys)
TOP_LEVEL_KEYS = ("mode", "optimizer")


def parse(r, doc: CommentedMap, common: dict) -> ElboProblem:
    """Read ``problem``, ``mode`` and ``optimizer``; check them against the common keys."""
    top = Value(doc, 1, "")
    fields = _read_problem(r, r.entry(doc, "problem", ""))
    modes = fields["modes"] = read_modes(r, doc)
    if ":" in fields["target"] and common["backend"] != "cpu":
        v = r.entry(doc, "backend", "")
        r.fail(f"backend {common['backend']!r} does not run user-written targets", v.line,
               v.key, fix="use backend: cpu (the user's gradient allocates its result, which a "
                          "CUDA kernel cannot)")
    if "estimate" in modes:
        if not common["n_samples"]:
            r.missing(top, "n_samples")
    elif common["n_samples"]:
        r.fail("n_samples is only used with mode: estimate", doc.lc.key("n_samples")[0] + 1,
               "n_samples", fix="give the samples per step as optimizer.samples")
    if "optimize" in modes:
        if "optimizer" not in doc:
            r.missing(top, "optimizer", fix="add optimizer: {name: adam, lr: 0.01, steps: 1000, "
                                            "samples: 10}")
        fields["optimizer"] = read_optimizer(r, r.entry(doc, "optimizer", ""),
                                              common["estimators"])
        if common["backend"] != "cpu":
            v = r.entry(doc, "backend", "")
            r.fail(f"backend {common['backend']!r} runs ELBO problems in mode estimate only",
                   v.line, v.key, fix="use backend: cpu for mode: optimize")
    else:
        if "optimizer" in doc:
            r.fail("optimizer is only used with mode: optimize", doc.lc.key("optimizer")[0] + 1,
                   "optimizer", fix="add 'mode: optimize' or remove the optimizer")
        fields["optimizer"] = None
    _check_exact_optimal(r, doc, {**fields, "estimators": common["estimators"]})
    if "optimize" in modes:
        _check_trace_size(r, doc, fields)
    points = len(fields["points"])
    check_cell_count(r, points * (len(common["n_samples"]) if "estimate" in modes else 0)
                     + points * (len(common["estimators"]) if "optimize" in modes else 0),
                     r.entry(doc, "problem", ""))
    return ElboProblem(**fields)


# --------------------------------------------------------------------------- problem

def _read_problem(r, v: Value) -> dict:
    m = r.mapping(v, "kind, target, family, q and the target's parameters")
    if "target" not in m:
        r.missing(v, "target", fix=f"add 'target: <name>' with one of: {or_none(TARGETS)}")
    tv = r.entry(m, "target", v.key)
    user_spec = None
    if isinstance(tv.value, CommentedMap):
        user_spec = _read_user_target(r, tv)
        tname, target = user_spec["python"], user.TARGET
    else:
        tname = r.choice(tv, TARGETS, "target")
        target = TARGETS[tname]

    def hint(key: str) -> str | None:
        if user_spec is not None:
            return (f"a user target takes no {key}" + (": give dim inside target: {python: "
                                                      "..., gradient: ..., dim: d}"
                                                      if key == "dim" else ""))
        if key == "dim" and target.fixed_dim is not None:
            return f"target {tname} has dimension {target.fixed_dim}: remove dim"
        takers = [n for n, t in TARGETS.items() if key in t.keys]
        return f"{key} belongs to target {' or '.join(takers)}" if takers else None

    r.reject_unknown(m, v.key, ("kind", "target", "family", "q")
                     + (() if user_spec else target.keys), hint)

    # sweepable scalars -> lists of values
    axes: dict[str, list] = {}
    for key in SWEEPABLE:
        if key not in m or key == "family":
            continue
        items = r.items(r.entry(m, key, v.key), "value")
        if key in INT_KEYS:
            lo = {"dim": 1, "target_seed": 0, "batch": 0}[key]
            hi = {"dim": MAX_DIM, "target_seed": 2**63 - 1, "batch": 10**6}[key]
            vals = [r.whole(it, lo, hi, fix=f"{key} is a whole number >= {lo}") for it in items]
        else:
            vals = [r.number(it) for it in items]
            if key == "s":
                for it, x in zip(items, vals):
                    if x <= 0:
                        r.fail(f"must be > 0, got {show(x)}", it.line, it.key,
                               fix="s is a scale: use a positive value")
        r.no_duplicates(items, vals, "value")
        axes[key] = vals
    if "family" not in m:
        r.missing(v, "family", fix=f"add 'family: <name>' with one of: {or_none(FAMILIES)}")
    fitems = r.items(r.entry(m, "family", v.key), "family")
    families = [r.choice(it, FAMILIES, "family") for it in fitems]
    r.no_duplicates(fitems, families, "family")

    # the dimension
    explicit_gauss = tname == "gaussian" and ("mean" in m or "cov" in m)
    mean = cov = None
    if tname == "gaussian":
        if explicit_gauss and "target_seed" in m:
            r.fail("give either mean and cov, or target_seed", m.lc.key("target_seed")[0] + 1,
                   f"{v.key}.target_seed", fix="remove target_seed, or mean and cov")
        if explicit_gauss:
            for key in ("mean", "cov"):
                if key not in m:
                    r.missing(v, key, fix="the gaussian target needs both mean and cov")
            mean_v = r.entry(m, "mean", v.key)
            mean = _vector(r, mean_v)
            cov = _matrix(r, r.entry(m, "cov", v.key), len(mean), "cov", mean_v)
            _check_cov(r, r.entry(m, "cov", v.key), cov)
            if "dim" in m:
                r.fail("dim follows from mean and cov", m.lc.key("dim")[0] + 1,
                       f"{v.key}.dim", fix="remove dim")
            axes["dim"] = [len(mean)]
        elif "target_seed" not in m:
            r.missing(v, "target_seed", fix="give mean and cov, or target_seed and dim")
    if user_spec is not None:
        axes["dim"] = [user_spec["dim"]]
    if target.fixed_dim is not None:
        if "dim" in m and axes["dim"] != [target.fixed_dim]:
            r.fail(f"target {tname} has dimension {target.fixed_dim}",
                   r.entry(m, "dim", v.key).line, f"{v.key}.dim", fix="remove dim")
        axes["dim"] = [target.fixed_dim]
    if "dim" not in axes:
        r.missing(v, "dim", fix=f"add 'dim: <d>' (or a list) for target {tname}")
    if tname == "banana":
        for d in axes["dim"]:
            if d < 2:
                r.fail(f"the banana target needs dim >= 2, got {d}", r.entry(m, "dim", v.key).line,
                       f"{v.key}.dim", fix="use dim >= 2")
    if tname == "logistic_regression" and "batch" in axes:
        from .targets.logistic_regression import N_DATA
        for b in axes["batch"]:
            if b > N_DATA:
                r.fail(f"batch {b} exceeds the {N_DATA} examples", r.entry(m, "batch", v.key).line,
                       f"{v.key}.batch", fix=f"use 0 (full data) to {N_DATA}")

    q = _read_q(r, m, v, families, axes["dim"], tname)
    if user_spec is not None:
        _check_user_target(r, tv, user_spec, q, families)

    sweep_keys = [k for k in SWEEPABLE if k in axes and k != "family"]
    # before building them: a product of long lists would exhaust memory
    check_cell_count(r, len(families) * math.prod(len(axes[k]) for k in sweep_keys), v)
    points = []
    for fam in families:
        for combo in itertools.product(*(axes[k] for k in sweep_keys)):
            vals = dict(zip(sweep_keys, combo))
            params = {k: x for k, x in vals.items() if k != "dim"}
            if mean is not None:
                params["mean"] = tuple(mean)
                params["cov"] = tuple(tuple(row) for row in cov)
            if user_spec is not None:
                params.update({k: user_spec[k] for k in ("python", "gradient", "path")})
            points.append(ElboPoint(tname, fam, int(vals["dim"]), tuple(sorted(params.items())),
                                    q))
    return {"target": tname, "points": tuple(points)}


def _read_user_target(r, v: Value) -> dict:
    """``target: {python: "mod:log_density", gradient: "mod:grad_log_density", dim: d}``:
    the spec of ``harness.vi.targets.user.load`` (with the grid file's directory as path),
    imported and compile-checked now (one line if it fails)."""
    m = v.value
    r.reject_unknown(m, v.key, ("python", "gradient", "dim"))
    fixes = {"python": "add python: 'module:function' (log g(z) of a 1-D array z)",
             "gradient": "add gradient: 'module:function' (grad_z log g(z), an array)",
             "dim": "add dim: <the length of z>"}
    for key, fix in fixes.items():
        if key not in m:
            r.missing(v, key, fix=fix)
    spec = {"path": str(pathlib.Path(r.path).resolve().parent)}
    for key in ("python", "gradient"):
        rv = r.entry(m, key, v.key)
        if not isinstance(rv.value, str) or ":" not in rv.value:
            r.fail(f"expected 'module:function', got {describe_value(rv.value)}", rv.line,
                   rv.key, fix="write e.g. my_targets:log_density (my_targets.py beside the "
                               "grid)")
        spec[key] = str(rv.value)
    spec["dim"] = r.whole(r.entry(m, "dim", v.key), 1, MAX_DIM,
                          fix=f"dim is a whole number in 1..{MAX_DIM}")
    try:
        user.load(spec)                  # import and compile-check now: one line if it fails
    except ConfigError as err:
        r.fail(err.message, v.line, v.key, fix=err.fix)
    return spec


def _check_user_target(r, v: Value, spec: dict, q, families) -> None:
    """The user's functions at every family mean mu of the grid: a finite log g and a finite
    gradient of shape (dim,)."""
    target = user.load(spec)
    for family in families:        # (q: optimum is refused by _read_q: no known optimum)
        mu, _ = q.resolve(family, spec["dim"], None)
        try:
            user.check(target, mu)
        except ConfigError as err:
            r.fail(err.message, v.line, v.key, fix=err.fix)


def _vector(r, v: Value) -> list[float]:
    if not isinstance(v.value, CommentedSeq):
        r.fail(f"expected a list of numbers, got {describe_value(v.value)}", v.line, v.key,
               fix="write e.g. [0.0, 1.0]")
    return [r.number(it) for it in r.items(v, "number")]


def _matrix(r, v: Value, d: int, what: str, shape_from: Value) -> list[list[float]]:
    if not isinstance(v.value, CommentedSeq):
        r.fail(f"expected a {d} x {d} matrix (a list of rows), got {describe_value(v.value)}",
               v.line, v.key, fix="write e.g. [[1.0, 0.0], [0.0, 1.0]]")
    rows = r.items(v, "row")
    if len(rows) != d:
        r.fail(f"{what} has {len(rows)} rows but {shape_from.key} has {d} entries", v.line,
               v.key, fix=f"give a {d} x {d} matrix")
    out = []
    for row in rows:
        vals = _vector(r, row)
        if len(vals) != d:
            r.fail(f"row has {len(vals)} entries, expected {d} (as {shape_from.key})",
                   row.line, row.key, fix=f"give a {d} x {d} matrix")
        out.append(vals)
    return out


def _check_cov(r, v: Value, cov):
    a = np.array(cov)
    if not np.allclose(a, a.T, rtol=0, atol=1e-12 * max(1.0, np.abs(a).max())):
        i, j = np.argwhere(~np.isclose(a, a.T, rtol=0, atol=1e-12))[0]
        r.fail(f"cov is not symmetric: cov[{i}][{j}] = {a[i, j]:g} but cov[{j}][{i}] = "
               f"{a[j, i]:g}", v.line, v.key, fix="make cov symmetric")
    eig = np.linalg.eigvalsh(a).min()
    if not eig > 0:
        r.fail(f"cov is not positive definite (smallest eigenvalue {eig:.3g})", v.line, v.key,
               fix="use a positive-definite covariance, e.g. increase the diagonal")


def _read_q(r, m, v: Value, families, dims, tname) -> QSpec:
    if "q" not in m:
        return QSpec("standard")
    qv = r.entry(m, "q", v.key)
    if isinstance(qv.value, str):
        kind = r.choice(qv, ("standard", "optimum"), "q")
        if kind == "optimum" and not get(tname).has_optimum:
            r.fail(f"target {tname} has no known optimum", qv.line, qv.key,
                   fix="use q: standard or give mu and the scale")
        return QSpec(kind)
    q = r.mapping(qv, "mu and L (full) or log_sigma (diag), or mu and scale")
    valid = ["mu", "scale"] + [FAMILIES[f].scale_key for f in families]
    r.reject_unknown(q, qv.key, valid, hint=lambda key: (
        f"{key} belongs to another family; this problem's family is {', '.join(families)}"
        if key in ("L", "log_sigma") else None))
    if "mu" not in q:
        r.missing(qv, "mu", fix="add 'mu: [...]' (or a scalar)")
    mu_v = r.entry(q, "mu", qv.key)
    if not isinstance(mu_v.value, CommentedSeq):       # scalar form
        mu = r.number(mu_v)
        if "scale" not in q:
            r.missing(qv, "scale", fix="with a scalar mu, give 'scale: <positive number>'")
        for key in q:
            if key not in ("mu", "scale"):
                r.fail("a scalar mu goes with a scalar scale only", q.lc.key(key)[0] + 1,
                       f"{qv.key}.{key}", fix="give mu as a list, or remove this key")
        sv = r.entry(q, "scale", qv.key)
        scale = r.number(sv)
        if scale <= 0:
            r.fail(f"must be > 0, got {show(scale)}", sv.line, sv.key, fix="use a positive scale")
        return QSpec("scalar", (mu,), (scale,))
    mu = _vector(r, mu_v)
    if len(families) != 1:
        r.fail("explicit q lists need a single family", qv.line, qv.key,
               fix="run one family per grid, or use q: {mu: 0.0, scale: 1.0}")
    fam = families[0]
    if len(dims) != 1 or len(mu) != dims[0]:
        want = dims[0] if len(dims) == 1 else "one dim"
        r.fail(f"q.mu has {len(mu)} entries but the problem has dimension {want}", mu_v.line,
               mu_v.key, fix=f"give {want} entries" if len(dims) == 1 else "use a single dim")
    if "scale" in q:
        r.fail("scale goes with a scalar mu", q.lc.key("scale")[0] + 1, f"{qv.key}.scale",
               fix=f"give {FAMILIES[fam].scale_key} for an explicit q")
    key = FAMILIES[fam].scale_key
    if key not in q:
        r.missing(qv, key, fix=f"family {fam} takes q.{key}")
    sv = r.entry(q, key, qv.key)
    d = len(mu)
    if fam == "diag":
        ls = _vector(r, sv)
        if len(ls) != d:
            r.fail(f"q.log_sigma has {len(ls)} entries but q.mu has {d}", sv.line, sv.key,
                   fix=f"give {d} entries")
        return QSpec("explicit", tuple(mu), tuple(ls))
    L = _matrix(r, sv, d, "q.L", mu_v)
    rows = r.items(sv, "row")
    for i in range(d):
        for j in range(i + 1, d):
            if L[i][j] != 0.0:
                r.fail(f"L[{i}][{j}] = {L[i][j]:g} is above the diagonal", rows[i].line,
                       rows[i].key,
                       fix="L is lower-triangular: set entries above the diagonal to 0")
        if not L[i][i] > 0:
            r.fail(f"L[{i}][{i}] = {L[i][i]:g}: the diagonal of L must be positive",
                   rows[i].line, rows[i].key, fix="use a positive diagonal")
    return QSpec("explicit", tuple(mu), tuple(tuple(row) for row in L))


# --------------------------------------------------------------------------- checks

def _check_exact_optimal(r, doc, fields):
    """score_function[baseline=exact_optimal] needs the exact b* (quadrature) at every point,
    and a fixed lambda (estimate mode only)."""
    specs = fields["estimators"]
    hits = [i for i, e in enumerate(specs) if e.label == "score_function[baseline=exact_optimal]"]
    if not hits:
        return
    item = r.items(r.entry(doc, "estimators", ""), "estimator")[hits[0]]
    if "optimize" in fields["modes"]:
        r.fail("baseline exact_optimal is not available with mode: optimize (its exact b* "
               "changes with lambda at every step)", item.line, item.key,
               fix="use baseline: optimal (estimated from an independent stream)")
    from .references import unavailable
    for pt in fields["points"]:
        why = unavailable(get(pt.target).code, pt.dim)
        if why:
            r.fail(f"baseline exact_optimal at target {pt.target}, dim {pt.dim}: {why}",
                   item.line, item.key, fix="use baseline: optimal (estimated from an "
                                            "independent stream)")


# --------------------------------------------------------------------------- optimizer

_OPT_KEYS = {
    "name": ("choice", ("adam", "sgd")),
    "lr": ("positive", None),
    "steps": ("int", 1),
    "samples": ("int", 1),
    "schedule": ("choice", ("constant", "cosine")),
    "record_every": ("int", 1),
    "var_samples": ("int", 2),
}


def read_modes(r, doc: CommentedMap) -> tuple[str, ...]:
    """``mode``: estimate (the default), optimize, or a list of both (in that order)."""
    if "mode" not in doc:
        return ("estimate",)
    items = r.items(r.entry(doc, "mode", ""), "mode")
    modes = [r.choice(it, ("estimate", "optimize"), "mode") for it in items]
    r.no_duplicates(items, modes, "mode")
    return tuple(m for m in ("estimate", "optimize") if m in modes)


def read_optimizer(r, v: Value, estimators) -> OptimizerSpec:
    """The ``optimizer`` mapping (keys of :class:`harness.vi.api.OptimizerSpec`), checked
    against the estimators (the leave-one-out baseline needs >= 2 samples per step).  Also
    read by the expectation kind's ``mode: optimize``."""
    m = r.mapping(v, "name, lr, steps, samples, schedule, record_every, var_samples")
    r.reject_unknown(m, v.key, _OPT_KEYS)
    out = {}
    for key, (kind, arg) in _OPT_KEYS.items():
        if key not in m:
            continue
        ev = r.entry(m, key, v.key)
        if kind == "choice":
            out[key] = r.choice(ev, arg, f"optimizer {key}")
        elif kind == "int":
            out[key] = r.whole(ev, arg, 10**9, fix=f"{key} is a whole number >= {arg}")
        else:
            x = r.number(ev)
            if x <= 0:
                r.fail(f"must be > 0, got {show(x)}", ev.line, ev.key, fix="use a positive rate")
            out[key] = x
    spec = OptimizerSpec(**out)
    if spec.samples < 2 and any(e.label == "score_function[baseline=mean]" for e in estimators):
        r.fail("the leave-one-out baseline needs samples >= 2 per step",
               r.entry(m, "samples", v.key).line if "samples" in m else v.line,
               f"{v.key}.samples", fix="use samples >= 2")
    if spec.record_every > spec.steps:
        # (either may be the default: point at the one written, else at the optimizer)
        at = next((k for k in ("record_every", "steps") if k in m), None)
        r.fail(f"record_every {spec.record_every} exceeds steps {spec.steps}"
               + ("" if "record_every" in m else " (record_every defaults to "
                  f"{OptimizerSpec.record_every})"),
               r.entry(m, at, v.key).line if at else v.line, f"{v.key}.{at or 'steps'}",
               fix="use record_every <= steps")
    return spec


# An optimisation cell holds every recorded lambda of a seed at once ([records, params]):
# at most this many numbers per seed (80 MB), whatever the steps, dimension and family.
MAX_TRACE_VALUES = 10_000_000


def _check_trace_size(r, doc, fields) -> None:
    o = fields["optimizer"]
    records = len(range(0, o.steps, o.record_every)) + 1
    params = max(FAMILIES[pt.family].n_params(pt.dim) for pt in fields["points"])
    if records * params > MAX_TRACE_VALUES:
        v = r.entry(doc, "optimizer", "")
        r.fail(f"{records:,} records of {params:,} parameters per seed are more than "
               f"{MAX_TRACE_VALUES:,} numbers", v.line, v.key,
               fix="record less often (a larger record_every), or run fewer steps")


def describe(grid) -> str:
    """What an ELBO grid runs, for ``harness validate``."""
    p = grid.problem
    pts = len(p.points)
    fams = ",".join(dict.fromkeys(pt.family for pt in p.points))
    dims = ",".join(str(d) for d in dict.fromkeys(pt.dim for pt in p.points))
    cells, what = describe_modes(p.modes, p.optimizer, pts, grid, f"{list(grid.n_samples)}")
    return f"{cells} cells; elbo target {p.target} family {fams} dim {dims}; {what}"


def describe_modes(modes, optimizer, points: int, grid, n_text: str) -> tuple[int, str]:
    """(cells, words) of a grid's modes for ``describe``: ``points`` problem points, one
    estimate cell per N (``n_text``: the N list in words), one optimize cell per estimator."""
    what, cells = [], 0
    if "estimate" in modes:
        what.append(f"N={n_text}")
        cells += points * len(grid.n_samples)
    if "optimize" in modes:
        o = optimizer
        what.append(f"optimize {o.name} lr={o.lr:g} {o.schedule} steps={o.steps} "
                    f"samples/step={o.samples}")
        cells += points * len(grid.estimators)
    return cells, "; ".join(what)
