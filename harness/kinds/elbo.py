"""Problem kind ``elbo``: gradients of the ELBO E_q[log g(z) - log q(z; lambda)] of a target g
under a location-scale variational family q (seeds 001 and 002).

Grid part: ``harness.vi.config`` (``problem: {kind: elbo, target, family, q, ...}``, ``mode``,
``optimizer``).  Kernels, targets, families and estimators: ``harness.vi``.

``mode: estimate``: one cell per (problem point, N) with every estimator (common random
numbers); one row per (seed, estimator, component), ``param`` = ``mu[i]``, ``L[i,j]`` or
``log_sigma[i]``, ``elbo`` = the seed's N-sample ELBO estimate.

``mode: optimize``: one cell per (problem point, estimator); one row per (seed, recorded
step) with ``param = "*"``, ``n_samples`` = samples per step, and the trace columns ``step``,
``elbo``, ``exact_elbo``, ``dist_opt``, ``grad_var_mean``, ``grad_var_max``.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from ..model import Cell, ProblemKind
from ..results import estimate_columns
from ..vi import api, config
from ..vi.estimators import ESTIMATORS, evals_of
from ..vi.families import FAMILIES
from ..vi.targets import TARGETS, user

NAME = "elbo"


# ----------------------------------------------------------------------------- expansion

def _point_dict(point: config.ElboPoint) -> dict:
    return {"target": point.target, "family": point.family, "dim": point.dim,
            "target_params": {k: _jsonable(v) for k, v in point.params},
            "q": point.q.to_json()}


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def cells(grid) -> list[Cell]:
    """estimate: (point x N), N fastest; optimize: (point x estimator)."""
    p = grid.problem
    out = []
    for point in p.points:
        if "estimate" in p.modes:
            for n in grid.n_samples:
                out.append(Cell(NAME, grid.name, {**_point_dict(point), "mode": "estimate"},
                                grid.estimators, n, grid.seeds, grid.backend))
        if "optimize" in p.modes:
            o = p.optimizer
            work = _optimize_work(o)
            for e in grid.estimators:
                out.append(Cell(NAME, grid.name, {**_point_dict(point), "mode": "optimize",
                                                  "optimizer": dict(o.__dict__)},
                                (e,), o.samples, grid.seeds, grid.backend,
                                samples=work * len(grid.seeds)))
    return out


def _optimize_work(o) -> int:
    """Samples one seed of an optimisation cell draws: every step's, and every record's."""
    return o.steps * o.samples + len(api.record_steps(o)) * o.var_samples


def calibration(cell: Cell) -> Cell:
    """``cell`` with less work per seed, for the cost estimate: N at most 4096, and for
    optimisation at most 20 steps (recording every 10) of the same samples per step."""
    seeds = cell.seeds
    if cell.point["mode"] == "estimate":
        return Cell(NAME, cell.experiment, cell.point, cell.estimators,
                    min(cell.n_samples, 4096), seeds, cell.backend)
    o = {**cell.point["optimizer"]}
    o.update(steps=min(o["steps"], 20), record_every=min(o["record_every"], 10),
             var_samples=min(o["var_samples"], 4096))
    work = _optimize_work(api.OptimizerSpec(**o))
    return Cell(NAME, cell.experiment, {**cell.point, "optimizer": o}, cell.estimators,
                cell.n_samples, seeds, cell.backend, samples=work * len(seeds))


def problem_of(cell: Cell) -> api.Problem:
    """The ``harness.vi.api.Problem`` (target data, family, q) of a cell."""
    point = cell.point
    params = {k: (np.array(v) if isinstance(v, list) else v)
              for k, v in point["target_params"].items()}
    problem = api.Problem.make(point["target"], point["family"], params, dim=point["dim"])
    mu, C = config.QSpec.from_json(point["q"]).resolve(point["family"], point["dim"],
                                                       problem.target)
    return problem.at(mu, C)


def point_label(point) -> str:
    """``gaussian, full, d=3: mean,cov given``."""
    params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in point["target_params"].items()
                      if k not in config.NOT_IN_LABEL)
    if "mean" in point["target_params"]:
        params = ("mean,cov given " + params).strip()
    return f"{point['target']}, {point['family']}, d={point['dim']}" + (
        f": {params}" if params else "")


# ---------------------------------------------------------------------------- computation

def compute(cell: Cell) -> dict:
    start = time.perf_counter()
    problem = problem_of(cell)
    specs = [(e.name, e.options) for e in cell.estimators]
    if cell.point["mode"] == "estimate":
        est, var, elbo = api.estimate(problem, specs, cell.n_samples, cell.seeds,
                                      backend=cell.backend)
        refs = [api.reference(problem, spec) for spec in specs]
        columns = estimate_columns(
            cell, components=problem.components(), estimate=est, sample_var=var,
            exact_grad=[r[0] for r in refs], exact_var=[r[1] for r in refs],
            exact_source=[[r[3]] * len(problem.components()) for r in refs],
            # log g evaluations per sample, as the estimator registry counts them
            evals_per_sample=[evals_of(name, options) for name, options in specs])
        n = len(columns["estimator"])
        columns["elbo"] = np.repeat(elbo, len(specs) * len(problem.components()))
        columns["exact_elbo"] = np.full(n, api.exact_elbo(problem))
    else:
        optimizer = api.OptimizerSpec(**cell.point["optimizer"])
        (spec,) = specs
        record = api.optimize(problem, spec, optimizer, cell.seeds)
        trace = api.trace(problem, spec, optimizer, record, cell.seeds)
        steps = np.asarray(api.record_steps(optimizer), np.int64)
        n_seeds, n_records = trace["elbo"].shape
        n = n_seeds * n_records
        columns = {
            "estimator": [cell.estimators[0].label] * n, "param": ["*"] * n,
            "seed": np.repeat(np.asarray(cell.seeds, np.int64), n_records),
            "exact_source": ["none"] * n, "step": np.tile(steps, n_seeds),
            "evals_per_sample": np.full(n, evals_of(*spec), np.int64),
        }
        for key in ("elbo", "exact_elbo", "dist_opt", "grad_var_mean", "grad_var_max"):
            columns[key] = trace[key].ravel()
        columns["optimal_elbo"] = np.full(n, optimal_elbo(problem))
    n = len(columns["estimator"])
    point = cell.point
    columns.update({
        "distribution": [point["family"]] * n, "target": [point["target"]] * n,
        "dim": np.full(n, point["dim"], np.int64), "mode": [point["mode"]] * n,
        "target_params": [point_label(point).partition(": ")[2]] * n,
        "point": [point_label(point)] * n,
        "seconds": np.full(n, time.perf_counter() - start),
    })
    return columns


def optimal_elbo(problem: api.Problem) -> float:
    """ELBO* = the exact ELBO at the target's exact optimum for the family (NaN where the
    target knows neither)."""
    target, code = problem.target, problem.family.code
    if target.optimum is None or target.exact_elbo is None:
        return float("nan")
    return float(target.exact_elbo(code, *target.optimum(code)))


# -------------------------------------------------------------------------------- report

def user_files(problem) -> tuple[str, ...]:
    """The module files of the grid's user-written targets (empty for built-in targets)."""
    files = []
    for point in problem.points:
        params = dict(point.params)
        if "python" in params:
            spec = {k: params[k] for k in ("python", "gradient", "path")}
            files += [str(f) for f in user.load({**spec, "dim": point.dim}).files]
    return tuple(dict.fromkeys(files))


def report_section(df, summary, out_dir):
    """Component-averaged variance figures and optimisation traces (``harness.vi.report``)."""
    from ..vi.report import section

    return section(df[df["problem"] == NAME], summary, out_dir)


def listing() -> list[str]:
    lines = ["elbo targets (problem: {kind: elbo, target: ...}):"]
    for name, t in TARGETS.items():
        lines.append(f"  {name:24} keys: {', '.join(t.keys)}  {t.description}")
    lines.append(f"  {'{python: ...}':24} {user.TARGET.description}")
    lines.append("elbo families:")
    for name, f in FAMILIES.items():
        lines.append(f"  {name:24} q keys: mu, {f.scale_key}  {f.description}")
    lines.append("elbo estimators:")
    for name, e in ESTIMATORS.items():
        opt = "".join(f"; option {k}: {'|'.join(v)}" for k, v in e.options.items())
        lines.append(f"  {name:24} needs grad log g: {str(e.needs_gradient).lower()}{opt}  "
                     f"{e.description}")
    return lines


KIND = ProblemKind(
    name=NAME,
    description="d/dlambda ELBO of a target g under a location-scale family q(z; lambda)",
    estimators=ESTIMATORS,
    top_level_keys=config.TOP_LEVEL_KEYS,
    backends=("cpu", "cuda"),     # cuda: mode estimate only (harness.vi.config)
    parse=config.parse,
    describe=config.describe,
    cells=cells,
    compute=compute,
    report_section=report_section,
    user_files=user_files,
    listing=listing,
    columns=(
        pa.field("target", pa.string()),                      # log g: gaussian, ...
        pa.field("dim", pa.int64()),                          # dimension d of z
        pa.field("target_params", pa.string()),               # e.g. "a=1 omega=3"
        pa.field("mode", pa.string()),                        # estimate | optimize
        pa.field("elbo", pa.float64()),                       # MC estimate of the ELBO
        pa.field("exact_elbo", pa.float64()),                 # closed form, NaN if unknown
        pa.field("dist_opt", pa.float64()),                   # |theta - theta*|, NaN if unknown
        pa.field("optimal_elbo", pa.float64()),               # ELBO* at the optimum, if known
        pa.field("grad_var_mean", pa.float64()),              # per-sample gradient variance,
        pa.field("grad_var_max", pa.float64()),               # mean / max over components
    ),
    sweep_columns=("dim",),
    calibration=calibration,
)
