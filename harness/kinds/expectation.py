"""Problem kind ``expectation``: the gradient of E_q[f(x)] for a distribution q(x; theta)
and a cost f(x; k).

Grid part (``problem`` and ``wrt``)::

    problem:
      kind: expectation            # optional: the default kind
      distribution: normal         # a family of harness.registry.FAMILIES
      cost: quadratic              # a cost of harness.registry.COSTS, or a user-written cost
      mu: 2.0                      # the family's and the cost's parameters; each may be a list
      sigma: 1.0
      k: [-3, 0, 3]
    wrt: [mu, sigma]               # gradient components; default: every family parameter
    mode: optimize                 # optional: estimate (default), optimize, or both
    optimizer: {name: adam, lr: 0.05, steps: 2000, samples: 2, record_every: 20}

``mode: estimate``: a cell is one point of the product of the parameter lists and one N.
Its kernel call is ``harness.backends.<backend>.estimate``; its exact references
``harness.exact.reference``.
Rows: one per (seed, estimator, component), with a column per problem parameter and
``exact_estimator_mean`` (the estimator's own exact expectation: see ``harness.exact``).

``mode: optimize``: a cell is one (point, estimator); each seed runs stochastic gradient
descent on E_q[f] from the point over the ``wrt`` components
(``harness.kinds.expectation_optimize``; optimizer keys name adam|sgd, lr, steps, samples (per
step), schedule constant|cosine, record_every).  Rows: one per (seed, recorded step,
component) with ``step``, ``theta`` (the component's value), ``objective`` (exact E_q[f] at
the recorded theta), ``estimate`` (that step's gradient estimate), ``exact_grad``,
``exact_var`` and ``exact_estimator_mean`` at the recorded theta.
"""

from __future__ import annotations

import importlib
import itertools
import math
import pathlib
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from .. import registry
from ..config import Value, check_cell_count, describe_value, read_numbers, union, values_text
from ..errors import ConfigError
from ..model import Cell, ProblemKind
from ..results import estimate_columns
from ..vi.api import OptimizerSpec
from ..vi.config import describe_modes, read_modes, read_optimizer
from . import expectation_optimize

NAME = "expectation"


def _estimators():
    return registry.ESTIMATORS


# ------------------------------------------------------------------------------- grid part

@dataclass(frozen=True)
class ExpectationProblem:
    """The ``problem`` of an expectation grid: ``params`` is ((name, (values, ...)), ...) in
    family-then-cost order (each list a sweep axis); ``wrt`` the gradient components in the
    family's order."""

    distribution: str
    cost: str
    params: tuple[tuple[str, tuple[float, ...]], ...]
    wrt: tuple[str, ...]
    modes: tuple[str, ...] = ("estimate",)     # and/or "optimize"
    optimizer: OptimizerSpec | None = None     # with mode: optimize


def parse(r, doc, common) -> ExpectationProblem:
    v = r.entry(doc, "problem", "")
    m = r.mapping(v, "distribution, cost and their parameters")
    families, costs, sized = registry.FAMILIES, registry.COSTS, registry.FAMILY_FACTORIES
    family = cost = cost_spec = factory = None
    if "distribution" in m:
        dv = r.entry(m, "distribution", v.key)
        chosen = r.choice(dv, {**families, **sized}, "distribution")
        family, factory = families.get(chosen), sized.get(chosen)
        if common.get("backend") == "cuda" and family is not None \
                and family.draw_pair_at is not None:
            # the CUDA kernels draw with the theta-free ``draw_pair`` (a rejection sampler
            # whose law depends on theta, such as gamma's, runs on the CPU backend only)
            r.fail(f"distribution {family.name} does not run on backend cuda", dv.line, dv.key,
                   fix="use backend: cpu")
    if "cost" in m:
        cost_spec = _read_cost(r, r.entry(m, "cost", v.key), r.path)
        cost = registry.get_cost(cost_spec)

    # Until both are known, any registered parameter name is plausible (a sized family's
    # parameters are one list under its GRID_KEY).
    family_params = (family.params if family else (factory.GRID_KEY,) if factory else
                     union([d.params for d in families.values()]
                           + [(f.GRID_KEY,) for f in sized.values()]))
    cost_params = cost.params if cost else union(c.params for c in costs.values())

    def hint(key: str) -> str | None:
        takers = [n for n, c in costs.items() if key in c.params]
        if cost is not None and takers:
            return (f"cost {cost.name} takes no {key}; "
                    f"remove it or use cost: {' or '.join(takers)}")
        return None

    r.reject_unknown(m, v.key, ("kind", "distribution", "cost") + tuple(family_params)
                     + tuple(cost_params), hint)
    if family is None and factory is None:
        r.missing(v, "distribution", fix=f"add 'distribution: <name>' with one of: "
                                         f"{', '.join([*families, *sized])}")
    if cost is None:
        r.missing(v, "cost", fix=f"add 'cost: <name>' with one of: {', '.join(costs)}, or "
                                 "{python: 'module:function', derivative: 'module:function'}")

    params = []
    if factory is not None:
        params = _read_sized(r, m, v, factory)
        family = factory.family(len(params))
    for p in (() if factory else family.params) + cost.params:
        if p not in m:
            r.missing(v, p, fix=f"add '{p}: <number>' (or a list of numbers)")
        positive = p in family.positive or p in cost.positive
        fix = (f"{p} is a scale: use a positive value" if p in family.positive
               else f"cost {cost.name} needs {p} > 0")
        params.append((p, read_numbers(r, m, p, v, positive=positive, fix=fix)))

    wrt = family.params
    if "wrt" in doc:
        wv = r.entry(doc, "wrt", "")
        items = r.items(wv, "gradient component")
        names = [r.choice(item, family.params, "gradient component") for item in items]
        r.no_duplicates(items, names, "component")
        # Canonical (family) order, so [sigma, mu] and [mu, sigma] are the same cell.
        wrt = tuple(c for c in family.params if c in names)

    _check_estimators(r, doc, common["estimators"], family.name, cost_spec, wrt)
    modes, optimizer = _read_mode(r, doc, common)
    problem = ExpectationProblem(family.name, cost_spec, tuple(params), tuple(wrt), modes,
                                 optimizer)
    points = math.prod(len(values) for _, values in params)
    check_cell_count(r, points * (len(common["n_samples"]) if "estimate" in modes else 0)
                     + points * (len(common["estimators"]) if "optimize" in modes else 0), v)
    _check_references(r, v, problem, common["estimators"])
    return problem


def _read_mode(r, doc, common) -> tuple[tuple[str, ...], OptimizerSpec | None]:
    """``mode`` and, with ``mode: optimize``, ``optimizer`` (as the ELBO kind reads them)."""
    top = Value(doc, 1, "")
    modes = read_modes(r, doc)
    if "estimate" in modes and not common["n_samples"]:
        r.missing(top, "n_samples")
    if "estimate" not in modes and common["n_samples"]:
        r.fail("n_samples is only used with mode: estimate", doc.lc.key("n_samples")[0] + 1,
               "n_samples", fix="give the samples per step as optimizer.samples")
    if "optimize" not in modes:
        if "optimizer" in doc:
            r.fail("optimizer is only used with mode: optimize",
                   doc.lc.key("optimizer")[0] + 1, "optimizer",
                   fix="add 'mode: optimize' or remove the optimizer")
        return modes, None
    if "optimizer" not in doc:
        r.missing(top, "optimizer", fix="add optimizer: {name: adam, lr: 0.05, steps: 1000, "
                                        "samples: 2}")
    ov = r.entry(doc, "optimizer", "")
    optimizer = read_optimizer(r, ov, common["estimators"])
    if optimizer.samples < 2:
        sv = r.entry(ov.value, "samples", ov.key)
        r.fail(f"samples per step must be >= 2 for expectation problems, got "
               f"{optimizer.samples}", sv.line, "optimizer.samples",
               fix="use samples: 2 or more (the kernels draw samples in pairs)")
    for key in ("var_samples", "min_diag"):
        if isinstance(ov.value, CommentedMap) and key in ov.value:
            r.fail(f"{key} is not used by expectation problems (the variance at each "
                   "record is exact)", r.entry(ov.value, key, ov.key).line,
                   f"optimizer.{key}", fix=f"remove {key}")
    if common["backend"] != "cpu":
        bv = r.entry(doc, "backend", "")
        r.fail(f"backend {common['backend']!r} runs expectation problems in mode estimate "
               "only", bv.line, bv.key, fix="use backend: cpu for mode: optimize")
    return modes, optimizer

def _read_sized(r, m, v, factory) -> list:
    """A sized family's parameters (the categorical's ``logits: [l_0, ..., l_{K-1}]``) as
    [(``logits[j]``, values), ...]: 2 to MAX_K entries, each a number or a list of numbers
    (a sweep axis, like any problem value)."""
    key = factory.GRID_KEY
    if key not in m:
        r.missing(v, key, fix=f"add '{key}: [0.0, 0.5, -1.0]' (one number per category)")
    lv = r.entry(m, key, v.key)
    if not isinstance(lv.value, CommentedSeq) or not 2 <= len(lv.value) <= factory.MAX_K:
        r.fail(f"expected a list of 2 to {factory.MAX_K} numbers (one per category), got "
               f"{describe_value(lv.value)}", lv.line, lv.key,
               fix=f"write {key}: [0.0, 0.5, -1.0]; a list in place of a number sweeps it")
    params = []
    for j, item in enumerate(r.items(lv, key)):
        values = r.items(item, "value")
        numbers = [r.number(x) for x in values]
        r.no_duplicates(values, numbers, "value")
        params.append((factory.COLUMNS[j], tuple(numbers)))
    return params


def _check_references(r, v, problem: ExpectationProblem, estimators) -> None:
    """Compute every exact reference the run will compute, and fail (one line) where one
    cannot be computed or is not finite: e.g. sigma = 1e-320 (1 / sigma overflows) or
    mu = 1e308 (mu^2 overflows).  A NaN variance is fine only where no exact reference
    exists (``exact_source: none``).  Costs a fraction of a millisecond per reference."""
    from ..exact import reference

    names = [name for name, _ in problem.params]
    for values in itertools.product(*(vals for _, vals in problem.params)):
        p = dict(zip(names, values))
        for spec in estimators:
            for comp in problem.wrt:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        grad, var, source = reference(spec.label, comp, problem.distribution,
                                                      problem.cost, p)
                        error = None
                    except (ArithmeticError, ValueError) as err:
                        error = type(err).__name__
                if error is None and math.isfinite(grad) and (
                        math.isfinite(var) or (source == "none" and math.isnan(var))):
                    continue
                where = ", ".join(f"{n}={x!r}" for n, x in p.items())
                what = error or f"gradient {grad:g}, variance {var:g}"
                r.fail(f"the exact reference of {spec.label} wrt {comp} at {where} cannot "
                       f"be computed in floating point ({what})", v.line, v.key,
                       fix="use parameter values of moderate magnitude (e.g. |mu| < 1e100, "
                           "sigma between 1e-100 and 1e100)")


def _read_cost(r, v, grid_path):
    """A built-in cost's name, or a user-written cost ``{python: "module:function",
    derivative: ..., second_derivative: ...}`` (the module beside the grid file), returned as
    the spec ``harness.registry.get_cost`` takes (with the grid file's directory as path)."""
    if isinstance(v.value, str):
        return r.choice(v, registry.COSTS, "cost")
    if not isinstance(v.value, CommentedMap):
        r.fail(f"expected a cost name or a mapping, got {describe_value(v.value)}", v.line,
               v.key, fix=f"use one of: {', '.join(registry.COSTS)}, or {{python: "
                          "'module:function', derivative: 'module:function'}")
    m = v.value
    roles = ("python", "derivative", "second_derivative")
    r.reject_unknown(m, v.key, roles)
    if "python" not in m:
        r.missing(v, "python", fix="add python: 'module:function' (the cost f(x) or f(x, k))")
    spec = {"python": None, "derivative": None, "second_derivative": None,
            "path": str(pathlib.Path(grid_path).resolve().parent)}
    for role in roles:
        if role in m:
            rv = r.entry(m, role, v.key)
            if not isinstance(rv.value, str) or ":" not in rv.value:
                r.fail(f"expected 'module:function', got {describe_value(rv.value)}", rv.line,
                       rv.key, fix="write e.g. my_costs:quartic (my_costs.py beside the grid)")
            spec[role] = str(rv.value)
    try:
        registry.get_cost(spec)          # import and compile-check now: one line if it fails
    except ConfigError as err:
        r.fail(err.message, v.line, v.key, fix=err.fix)
    return spec


def _check_estimators(r, doc, estimators, family: str, cost_spec, wrt) -> None:
    """Reject an estimator that cannot work with this family and cost (a derivative, second
    derivative or reparameterisation it needs and they lack) or for a component of ``wrt``,
    at its line in the file."""
    items = r.items(r.entry(doc, "estimators", ""), "estimator")
    for item, spec in zip(items, estimators):
        problem = registry.combination_problem(spec, family, cost_spec, wrt)
        if problem is not None:
            r.fail(problem[0], item.line, item.key, fix=problem[1])


def describe(grid) -> str:
    p = grid.problem
    cells = math.prod(len(values) for _, values in p.params) * len(grid.n_samples)
    params = " ".join(f"{name}={values_text(values)}" for name, values in p.params)
    cost = registry.get_cost(p.cost).name
    points = math.prod(len(values) for _, values in p.params)
    cells, what = describe_modes(p.modes, p.optimizer, points, grid,
                                 values_text(grid.n_samples))
    return f"{cells} cells; {p.distribution}/{cost} {params}; wrt {','.join(p.wrt)}; {what}"


# ----------------------------------------------------------------------------- expansion

def cells(grid) -> list[Cell]:
    """estimate: one cell per point of ``product(*param values) x n_samples``, N varying
    fastest, in the grid's order; optimize: one per (point, estimator).  Duplicate points
    give one cell."""
    p = grid.problem
    names = [name for name, _ in p.params]
    out, seen = [], set()
    for values in itertools.product(*(vals for _, vals in p.params)):
        point = {"distribution": p.distribution, "cost": p.cost,
                 "params": {n: float(x) for n, x in zip(names, values)}, "wrt": list(p.wrt)}
        new = []
        if "estimate" in p.modes:
            new += [Cell(NAME, grid.name, point, grid.estimators, n, grid.seeds, grid.backend)
                    for n in grid.n_samples]
        if "optimize" in p.modes:
            o = p.optimizer
            new += [Cell(NAME, grid.name, {**point, "mode": "optimize",
                                           "optimizer": dict(o.__dict__)}, (e,), o.samples,
                         grid.seeds, grid.backend, samples=o.steps * o.samples * len(grid.seeds))
                    for e in grid.estimators]
        for cell in new:
            if cell.id not in seen:
                seen.add(cell.id)
                out.append(cell)
    return out


def point_label(point) -> str:
    """``normal, quadratic: mu=2, sigma=1, k=0.5``."""
    params = ", ".join(f"{n}={x:g}" for n, x in point["params"].items())
    return f"{point['distribution']}, {registry.get_cost(point['cost']).name}: {params}"


# ---------------------------------------------------------------------------- computation

def compute(cell: Cell) -> dict:
    """Run the backend kernel on one cell and attach the exact references."""
    from ..exact import references

    point = cell.point
    if point.get("mode") == "optimize":
        return _compute_optimize(cell)
    backend = importlib.import_module(f"harness.backends.{cell.backend}")
    wrt = tuple(point["wrt"])
    start = time.perf_counter()
    est, var = backend.estimate(point["distribution"], point["cost"], list(cell.estimators),
                                wrt, dict(point["params"]), cell.n_samples,
                                np.asarray(cell.seeds, dtype=np.int64))
    seconds = time.perf_counter() - start
    refs = [[references(e.label, comp, point["distribution"], point["cost"], point["params"])
             for comp in wrt] for e in cell.estimators]
    columns = estimate_columns(
        cell, components=wrt, estimate=est, sample_var=var,
        exact_grad=[[ref.grad for ref in row] for row in refs],
        exact_var=[[ref.var for ref in row] for row in refs],
        exact_source=[[ref.source for ref in row] for row in refs],
        evals_per_sample=[registry.resolve(e).evals_per_sample for e in cell.estimators])
    n = len(columns["estimator"])
    cost_name = registry.get_cost(point["cost"]).name
    columns.update({"distribution": [point["distribution"]] * n, "cost": [cost_name] * n,
                    "point": [point_label(point)] * n, "seconds": np.full(n, seconds)})
    # the estimator's own exact expectation (= exact_grad for unbiased ones): the exact bias
    own_means = np.array([[ref.estimator_mean for ref in row] for row in refs], np.float64)
    columns["exact_estimator_mean"] = np.tile(own_means.reshape(-1), len(cell.seeds))
    for name in parameter_columns():
        columns[name] = np.full(n, point["params"].get(name, math.nan))
    return columns


def _compute_optimize(cell: Cell) -> dict:
    """The optimisation traces of one (point, estimator) cell (module docstring)."""
    point = cell.point
    opt = OptimizerSpec(**point["optimizer"])
    (spec,) = cell.estimators
    wrt, params = tuple(point["wrt"]), dict(point["params"])
    start = time.perf_counter()
    run = expectation_optimize.optimize(point["distribution"], point["cost"], spec.label, wrt,
                                        params, opt, cell.seeds)
    refs = expectation_optimize.trace_references(point["distribution"], point["cost"],
                                                 spec.label, wrt, params, run["theta"])
    n_seeds, n_records, n_comp = run["theta"].shape
    n = n_seeds * n_records * n_comp
    columns = {
        "estimator": [spec.label] * n,
        "param": np.tile(np.array(wrt, dtype=object), n_seeds * n_records),
        "seed": np.repeat(np.asarray(cell.seeds, np.int64), n_records * n_comp),
        "step": np.tile(np.repeat(run["steps"], n_comp), n_seeds),
        "theta": run["theta"].ravel(), "estimate": run["estimate"].ravel(),
        "objective": np.repeat(refs["objective"].ravel(), n_comp),
        "exact_grad": refs["grad"].ravel(), "exact_var": refs["var"].ravel(),
        "exact_estimator_mean": refs["estimator_mean"].ravel(),
        "exact_source": np.tile(np.array(refs["source"], dtype=object), n_seeds * n_records),
        "evals_per_sample": np.full(n, registry.resolve(spec.label).evals_per_sample,
                                    np.int64),
        "mode": ["optimize"] * n,
        "distribution": [point["distribution"]] * n,
        "cost": [registry.get_cost(point["cost"]).name] * n,
        "point": [point_label(point)] * n,
    }
    for name in parameter_columns():
        columns[name] = np.full(n, params.get(name, math.nan))
    columns["seconds"] = np.full(n, time.perf_counter() - start)
    return columns


def calibration(cell: Cell) -> Cell:
    """``cell`` with N at most 2^16 (optimize: at most 20 steps), for the cost estimate (the
    kernel's time per seed is linear in N beyond a few thousand samples)."""
    if cell.point.get("mode") == "optimize":
        o = {**cell.point["optimizer"]}
        o.update(steps=min(o["steps"], 20), record_every=min(o["record_every"], 10))
        return Cell(NAME, cell.experiment, {**cell.point, "optimizer": o}, cell.estimators,
                    cell.n_samples, cell.seeds, cell.backend,
                    samples=o["steps"] * o["samples"] * len(cell.seeds))
    return Cell(NAME, cell.experiment, cell.point, cell.estimators,
                min(cell.n_samples, 1 << 16), cell.seeds, cell.backend)


def parameter_columns() -> tuple[str, ...]:
    """Every registered family and cost parameter: one float64 results column each (NaN
    where a cell's problem has no such parameter)."""
    return union([registry.family_parameters()] + [c.params for c in registry.COSTS.values()])


# -------------------------------------------------------------------------------- report

def report_section(df, summary, out_dir):
    """The variance study against a swept parameter (Mohamed et al. 2020, Section 3), when
    a run sweeps more points than the common page draws as panels; and the bias of biased
    estimators against their temperature (``harness.report_bias``), when a run has any."""
    from ..report import MAX_FACET_POINTS
    from ..report_bias import bias_section
    from ..report_optimize import optimize_section
    from ..report_study import study_section, swept_parameter

    rows = df[df["problem"] == NAME]
    figures, text = [], ""
    if rows.loc[rows["step"].isna(), "point"].nunique() > MAX_FACET_POINTS:
        figures, text = study_section(rows[rows["step"].isna()], out_dir)
    estimates = rows[rows["step"].isna()]
    bias_figures, bias_text = bias_section(estimates, out_dir, swept_parameter(estimates))
    opt_figures, opt_text = optimize_section(rows[rows["step"].notna()], out_dir)
    return figures + bias_figures + opt_figures, text + bias_text + opt_text


def listing() -> list[str]:
    lines = ["distributions:"]
    for name, d in registry.FAMILIES.items():
        lines.append(f"  {name:16} params: {', '.join(d.params)}; "
                     f"supports: {', '.join(sorted(d.supports)) or '-'}  {d.description}")
    for name, factory in registry.FAMILY_FACTORIES.items():
        lines.append(f"  {name:16} params: {factory.GRID_KEY} (a list of 2 to {factory.MAX_K}; "
                     f"components {factory.COLUMNS[0]}, ...)  {factory.DESCRIPTION}")
    lines.append("costs:")
    for name, c in registry.COSTS.items():
        params = ", ".join(c.params) if c.params else "-"
        provides = ", ".join(sorted(c.provides)) or "value only"
        lines.append(f"  {name:16} params: {params}; provides: {provides}  {c.description}")
    lines.append("estimators:")
    for name, e in registry.ESTIMATORS.items():
        options = getattr(e, "options", {}) or {}
        opt = "".join(f"; option {k}: {'|'.join(map(registry.option_text, v))}"
                      for k, v in options.items())
        needs = ", ".join(sorted(e.needs)) or "the cost's value"
        families = f"; families: {', '.join(e.families)}" if e.families else ""
        biased = "; biased" if e.biased else ""
        lines.append(f"  {name:16} needs: {needs}{families}{biased}; evals_per_sample: "
                     f"{e.evals_per_sample}{opt}  {e.description}")
    return lines


def _columns() -> tuple:
    return (pa.field("cost", pa.string()),
            # E[estimate] exactly: exact_grad for unbiased estimators, the relaxed problem's
            # gradient for biased ones (Estimator.biased), NaN where not tractable
            pa.field("exact_estimator_mean", pa.float64()),
            pa.field("mode", pa.string()),        # null (estimate) | optimize
            pa.field("theta", pa.float64()),      # optimize: the component's value at step
            pa.field("objective", pa.float64()),  # optimize: exact E_q[f] at that theta
            *(pa.field(name, pa.float64()) for name in parameter_columns()))


def user_files(problem) -> tuple[str, ...]:
    """The module file of a user-written cost (empty for a built-in cost)."""
    from ..costs.user import module_files

    return module_files(registry.get_cost(problem.cost).python.values())


KIND = ProblemKind(
    name=NAME,
    description="d/dtheta E_q[f(x)] for a distribution q(x; theta) and a cost f(x; k)",
    estimators=registry.ESTIMATORS,
    top_level_keys=("wrt", "mode", "optimizer"),
    backends=("cpu", "cuda"),
    parse=parse,
    describe=describe,
    cells=cells,
    compute=compute,
    report_section=report_section,
    listing=listing,
    columns=_columns(),
    sweep_columns=parameter_columns(),
    calibration=calibration,
    user_files=user_files,
)
