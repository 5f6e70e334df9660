"""Cells of ELBO grids and their rows in the shared results schema (``harness.results``).

``mode: estimate``: one cell per (problem point, N) with every estimator (common random
numbers); one row per (seed, estimator, component), ``param`` = ``mu[i]``, ``L[i,j]`` or
``log_sigma[i]``, ``elbo`` = the seed's N-sample ELBO estimate.

``mode: optimize``: one cell per (problem point, estimator); one row per (seed, recorded
step) with ``param = "*"``, ``n_samples`` = samples per step, and the trace columns
``step, elbo, exact_elbo, dist_opt, grad_var_mean, grad_var_max`` (``harness.vi.api.trace``).

Columns of the Gaussian-cost study (distribution, cost, mu, sigma, k) are null / NaN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..results import SCHEMA
from ..runner import config_id
from . import api
from .config import ElboGrid, ElboPoint
from .estimators import evals_of

PROBLEM = "elbo"


@dataclass(frozen=True)
class ElboCell:
    experiment: str
    point: ElboPoint
    mode: str
    estimators: tuple          # EstimatorSpec
    n_samples: int             # estimate: N; optimize: samples per step
    optimizer: api.OptimizerSpec | None
    seeds: tuple
    backend: str = "cpu"

    @property
    def problem(self) -> str:
        return PROBLEM

    def to_dict(self) -> dict:
        p = self.point
        d = {
            "experiment": self.experiment,
            "problem": PROBLEM,
            "target": p.target,
            "family": p.family,
            "dim": p.dim,
            "target_params": {k: _jsonable(v) for k, v in p.params},
            "q": p.q.to_json(),
            "mode": self.mode,
            "estimators": [{"name": e.name, "options": {str(k): v for k, v in e.options},
                            "label": e.label} for e in self.estimators],
            "n_samples": self.n_samples,
            "seeds": list(self.seeds),
            "backend": self.backend,
        }
        if self.optimizer is not None:
            d["optimizer"] = dict(self.optimizer.__dict__)
        return d

    @property
    def id(self) -> str:
        return config_id(self.to_dict())

    @property
    def samples(self) -> int:
        if self.mode == "estimate":
            return self.n_samples * len(self.seeds)
        o = self.optimizer
        return (o.steps * o.samples + len(api.record_steps(o)) * o.var_samples) * len(self.seeds)

    def build_problem(self) -> api.Problem:
        p = self.point
        params = {k: (np.array(v) if isinstance(v, tuple) else v) for k, v in p.params}
        prob = api.Problem.make(p.target, p.family, params, dim=p.dim)
        mu, C = p.q.resolve(p.family, p.dim, prob.target)
        return prob.at(mu, C)

    def compute_table(self) -> pa.Table:
        start = time.perf_counter()
        prob = self.build_problem()
        if self.mode == "estimate":
            est, var, elbo = api.estimate(prob, [(e.name, e.options) for e in self.estimators],
                                          self.n_samples, self.seeds, backend=self.backend)
            return self._estimate_table(prob, est, var, elbo, time.perf_counter() - start)
        (spec,) = self.estimators
        rec = api.optimize(prob, (spec.name, spec.options), self.optimizer, self.seeds)
        tr = api.trace(prob, (spec.name, spec.options), self.optimizer, rec, self.seeds)
        return self._trace_table(prob, tr, time.perf_counter() - start)

    # -- tables

    def _common(self, n: int, prob) -> dict:
        nan = np.full(n, math.nan)
        return {
            "experiment": [self.experiment] * n, "cell": [self.id] * n,
            "problem": [PROBLEM] * n, "distribution": [None] * n, "cost": [None] * n,
            "mu": nan, "sigma": nan, "k": nan,
            "backend": [self.backend] * n,
            "target": [self.point.target] * n, "family": [self.point.family] * n,
            "dim": np.full(n, self.point.dim, np.int64), "mode": [self.mode] * n,
            "target_params": [self.point.label] * n,
        }

    def _estimate_table(self, prob, est, var, elbo, seconds) -> pa.Table:
        S, E, P = est.shape
        n = S * E * P
        grads, evars, srcs = np.empty((E, P)), np.empty((E, P)), np.empty((E, P), object)
        for e, spec in enumerate(self.estimators):
            g, v, _, vsrc = api.reference(prob, (spec.name, spec.options))
            grads[e], evars[e], srcs[e] = g, v, vsrc
        labels = np.array([e.label for e in self.estimators], dtype=object)
        # log g evaluations per sample (the registry's count: baseline=optimal draws N extra
        # samples from the independent copy of the stream)
        evals = np.array([evals_of(e.name, e.options) for e in self.estimators],
                         dtype=np.int64)
        comps = np.array(prob.components(), dtype=object)
        cols = self._common(n, prob)
        cols.update({
            "estimator": np.tile(np.repeat(labels, P), S),
            "param": np.tile(comps, S * E),
            "n_samples": np.full(n, self.n_samples, np.int64),
            "seed": np.repeat(np.asarray(self.seeds, np.int64), E * P),
            "estimate": est.ravel(), "sample_var": var.ravel(),
            "exact_grad": np.tile(grads.ravel(), S), "exact_var": np.tile(evars.ravel(), S),
            "exact_source": np.tile(srcs.ravel(), S),
            "evals_per_sample": np.tile(np.repeat(evals, P), S),
            "seconds": np.full(n, seconds),
            "elbo": np.repeat(elbo, E * P),
            "exact_elbo": np.full(n, api.exact_elbo(prob)),
            "dist_opt": np.full(n, math.nan),
        })
        return _table(cols, n)

    def _trace_table(self, prob, tr, seconds) -> pa.Table:
        steps = np.asarray(api.record_steps(self.optimizer), np.int64)
        S, R = tr["elbo"].shape
        n = S * R
        cols = self._common(n, prob)
        nan = np.full(n, math.nan)
        cols.update({
            "estimator": [self.estimators[0].label] * n, "param": ["*"] * n,
            "n_samples": np.full(n, self.optimizer.samples, np.int64),
            "seed": np.repeat(np.asarray(self.seeds, np.int64), R),
            "estimate": nan, "sample_var": nan, "exact_grad": nan, "exact_var": nan,
            "exact_source": ["none"] * n,
            "evals_per_sample": np.full(n, evals_of(self.estimators[0].name,
                                                    self.estimators[0].options), np.int64),
            "seconds": np.full(n, seconds), "step": np.tile(steps, S),
        })
        for key in ("elbo", "exact_elbo", "dist_opt", "grad_var_mean", "grad_var_max"):
            cols[key] = tr[key].ravel()
        return _table(cols, n)


def _table(cols: dict, n: int) -> pa.Table:
    arrays = [pa.array(cols[f.name], type=f.type) if f.name in cols else pa.nulls(n, f.type)
              for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def expand_cells(grid: ElboGrid) -> list[ElboCell]:
    """estimate: (point x N), N fastest; optimize: (point x estimator)."""
    cells = []
    for point in grid.points:
        if "estimate" in grid.modes:
            for n in grid.n_samples:
                cells.append(ElboCell(grid.name, point, "estimate", grid.estimators, n, None,
                                      grid.seeds, grid.backend))
        if "optimize" in grid.modes:
            for e in grid.estimators:
                cells.append(ElboCell(grid.name, point, "optimize", (e,),
                                      grid.optimizer.samples, grid.optimizer, grid.seeds,
                                      grid.backend))
    return cells
