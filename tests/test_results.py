"""The results layer: row building, schema casting, atomic writes, reads, schema versions.

The estimate arrays here are synthetic (the I/O layer does not care where they come from),
returned by a stand-in kernel through the expectation kind's ``compute``; the exact columns
always come from ``harness.exact``.
"""

import json
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import exact_reference, expectation_grid, fake_backend

import harness
from harness import results
from harness.config import EstimatorSpec
from harness.errors import ResultsError
from harness.kinds import KINDS
from harness.results import (
    SCHEMA,
    SCHEMA_VERSION,
    cell_table,
    estimate_columns,
    finished_cells,
    read_results,
    write_cell,
)
from harness.runner import Cell, expand_cells

ESTIMATORS = (EstimatorSpec("score_function"), EstimatorSpec("pathwise"))
QUADRATIC = (("mu", 2.0), ("sigma", 1.0), ("k", -3.0))


def make_cell(cost="quadratic", params=QUADRATIC, wrt=("mu", "sigma"), n_samples=100,
              seeds=(0, 1, 2), estimators=ESTIMATORS) -> Cell:
    """The expectation kind's cell at one point (one value per parameter)."""
    grid = expectation_grid(cost=cost, params=tuple((n, (v,)) for n, v in params), wrt=wrt,
                            estimators=estimators, n_samples=(n_samples,), seeds=seeds)
    (cell,) = expand_cells(grid)
    return cell


def fake_arrays(n_seeds, n_estimators, n_components):
    """Distinct, recognisable values: estimate[s, e, c] = 1000 s + 10 e + c (+ 0.5 for var)."""
    s, e, c = np.meshgrid(np.arange(n_seeds), np.arange(n_estimators), np.arange(n_components),
                          indexing="ij")
    estimate = 1000.0 * s + 10.0 * e + c
    return estimate, estimate + 0.5


@pytest.fixture(autouse=True)
def fake_kernel(monkeypatch):
    def kernel(call):
        return fake_arrays(len(call.seeds), len(call.estimators), len(call.components))

    monkeypatch.setitem(sys.modules, "harness.backends.cpu", fake_backend(kernel=kernel))


def columns_of(cell: Cell, seconds=1.5) -> dict:
    """The kind's result columns of ``cell`` (fake kernel), with a chosen wall time."""
    columns = KINDS[cell.kind].compute(cell)
    columns["seconds"] = np.full(len(columns["estimator"]), seconds)
    return columns


def table_of(cell: Cell, seconds=1.5) -> pa.Table:
    return cell_table(cell, columns_of(cell, seconds))


def arrays_of(cell: Cell):
    """What the fake kernel returns for ``cell``: (estimate, sample_var)."""
    return fake_arrays(len(cell.seeds), len(cell.estimators), len(cell.point["wrt"]))


def write(run_dir, cell, seconds=1.5):
    return write_cell(run_dir / "results", cell, table_of(cell, seconds))


def visible_files(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith((".", "_")))


def test_cell_table_rows_are_ordered_by_seed_estimator_component():
    cell = make_cell(seeds=(7, 3, 11))
    est, var = arrays_of(cell)
    table = table_of(cell, 2.0)
    assert table.schema.equals(SCHEMA)
    df = table.to_pandas()
    assert len(df) == 3 * 2 * 2
    assert list(df["seed"]) == [7] * 4 + [3] * 4 + [11] * 4   # the cell's seed order
    assert list(df["estimator"][:4]) == ["score_function"] * 2 + ["pathwise"] * 2
    assert list(df["param"][:4]) == ["mu", "sigma", "mu", "sigma"]
    assert np.array_equal(df["estimate"], est.ravel())
    assert np.array_equal(df["sample_var"], var.ravel())
    assert set(df["cell"]) == {cell.id} and set(df["problem"]) == {"expectation"}
    assert set(df["seconds"]) == {2.0} and set(df["evals_per_sample"]) == {1}
    assert set(df["distribution"]) == {"normal"} and set(df["cost"]) == {"quadratic"}
    assert set(df["point"]) == {"normal, quadratic: mu=2, sigma=1, k=-3"}
    assert (set(df["mu"]), set(df["sigma"]), set(df["k"])) == ({2.0}, {1.0}, {-3.0})
    assert df["step"].isna().all() and set(df["n_samples"]) == {100}


def test_cell_table_exact_columns_come_from_harness_exact():
    cell = make_cell()
    df = table_of(cell).to_pandas()
    params = {"mu": 2.0, "sigma": 1.0, "k": -3.0}
    for row in df.itertuples():
        name = row.estimator  # no options, so label == name
        grad, var, source = exact_reference(name, row.param, "normal", "quadratic", params)
        assert (row.exact_grad, row.exact_var, row.exact_source) == (grad, var, source)
    # Spot check against DESIGN.md: a = mu - k = 5, score function wrt mu: a^4 + 14 a^2 + 15.
    sf_mu = df[(df.estimator == "score_function") & (df.param == "mu")]
    assert set(sf_mu["exact_var"]) == {5.0**4 + 14 * 25 + 15}
    assert set(sf_mu["exact_grad"]) == {10.0}


def test_cost_without_k_gets_nan_k_column():
    cell = make_cell(cost="square", params=(("mu", 2.0), ("sigma", 1.0)), wrt=("mu",))
    df = table_of(cell).to_pandas()
    assert df["k"].isna().all() and df["k"].dtype == np.float64
    # The seed-000 numbers: exact gradient 4, per-sample variances 87 and 4.
    assert dict(zip(df["estimator"], df["exact_var"])) == {"score_function": 87.0, "pathwise": 4.0}
    assert set(df["exact_grad"]) == {4.0}


def test_integer_parameters_become_float_columns_and_one_id():
    as_int = make_cell(params=(("mu", 2), ("sigma", 1), ("k", -3)))
    assert as_int.id == make_cell().id
    table = table_of(as_int)
    assert table.schema.field("k").type == pa.float64()
    assert table.schema.field("mu").type == pa.float64()


def test_estimate_columns_reject_wrong_shapes():
    cell = make_cell()
    est, var = arrays_of(cell)
    exact = np.zeros((2, 2))
    kwargs = dict(components=("mu", "sigma"), exact_grad=exact, exact_var=exact,
                  exact_source=[["none"] * 2] * 2, evals_per_sample=[1, 1])
    assert len(estimate_columns(cell, estimate=est, sample_var=var, **kwargs)["seed"]) == 12
    with pytest.raises(ValueError, match="expected"):
        estimate_columns(cell, estimate=est[:, :1], sample_var=var[:, :1], **kwargs)


def test_cell_table_rejects_unknown_columns_and_ragged_columns():
    cell = make_cell()
    columns = columns_of(cell)
    assert cell_table(cell, columns).num_rows == 12
    with pytest.raises(ValueError, match=r"\['family'\] are not in the results schema"):
        cell_table(cell, {**columns, "family": ["diag"] * 12})
    with pytest.raises(ValueError, match="column exact_var has 11 rows, not 12"):
        cell_table(cell, {**columns, "exact_var": columns["exact_var"][:11]})


def test_cell_table_leaves_other_kinds_columns_null():
    df = table_of(make_cell()).to_pandas()
    for field in KINDS["elbo"].columns:
        assert df[field.name].isna().all(), field.name


def same_array(a: pa.Array, b: pa.Array) -> bool:
    """Equal type, nulls and values; floats bit for bit (NaN and -0.0 included)."""
    if a.type != b.type or len(a) != len(b) or a.null_count != b.null_count:
        return False
    if pa.types.is_floating(a.type):
        return np.array_equal(a.to_numpy(zero_copy_only=False).view(np.int64),
                              b.to_numpy(zero_copy_only=False).view(np.int64))
    return a.to_pylist() == b.to_pylist()


@pytest.mark.parametrize("values, type_", [
    (np.array([1.0, np.nan, -0.0, np.inf, 5e-324]), pa.float64()),
    (np.arange(9.0)[::3], pa.float64()),                       # not contiguous
    (np.array([3, -4, 2**62], np.int64), pa.int64()),
    (["normal"] * 5, pa.string()), (["ü", "b", "ü"], pa.string()),
    (np.array(["x", "yy"], dtype=object), pa.string()), (["a", None], pa.string()),
    ([1.5, 2.0], pa.float64()), (np.array([1, 2], np.int32), pa.int64()), ([], pa.string()),
    (np.zeros(0), pa.float64()),
])
def test_arrow_array_is_pa_array(values, type_):
    """``arrow_array`` (NumPy buffers, no pandas) builds what ``pa.array`` builds; the same
    check rejects a wrong variant (the values reversed, or one more element)."""
    expected = pa.array(values, type=type_)
    got = results.arrow_array(values, type_)
    got.validate(full=True)
    assert same_array(got, expected)
    if len(values) > 1 and expected.to_pylist() != expected.to_pylist()[::-1]:
        assert not same_array(results.arrow_array(values[::-1], type_), expected)
    assert not same_array(pa.array(list(values) + [values[0] if len(values) else None],
                                   type=type_), expected)


def test_string_array_is_pa_array_of_the_indexed_strings():
    """Few distinct strings, many rows (estimate_columns' string columns); the same check
    rejects the rows in another order."""
    strings = ["score_function[baseline=mean]", "pathwise", "", "µ"]
    index = np.array([0, 1, 2, 3, 3, 1, 0, 0, 2])
    expected = pa.array([strings[i] for i in index], pa.string())
    got = results.string_array(strings, index)
    got.validate(full=True)
    assert same_array(got, expected)
    assert same_array(results.string_array(["one"], np.zeros(4, int)), pa.array(["one"] * 4))
    assert same_array(results.string_array(strings), pa.array(strings))
    assert not same_array(results.string_array(strings, index[::-1]), expected)


def test_cell_table_equals_the_pa_array_construction():
    """The table of a cell built from the kind's columns through ``pa.array`` (as before)
    equals ``cell_table``'s, column by column; a column changed by one row is told apart."""
    cell = make_cell(seeds=(4, 0, 9))
    columns = columns_of(cell)
    table = cell_table(cell, columns)
    n = table.num_rows
    common = {"experiment": [cell.experiment] * n, "cell": [cell.id] * n,
              "problem": [cell.kind] * n, "backend": [cell.backend] * n,
              "n_samples": np.full(n, cell.n_samples, dtype=np.int64)}
    for field in SCHEMA:
        values = {**common, **columns}.get(field.name)
        if isinstance(values, pa.Array):
            values = values.to_pylist()
        expected = pa.nulls(n, field.type) if values is None else pa.array(values, field.type)
        assert same_array(table.column(field.name).combine_chunks(), expected), field.name
    changed = table.column("estimator").to_pylist()
    changed[-1] = changed[0]
    assert changed != table.column("estimator").to_pylist()
    assert not same_array(pa.array(changed), table.column("estimator").combine_chunks())


def test_write_and_read_round_trip_with_metadata(tmp_path):
    cell = make_cell()
    path = write(tmp_path, cell)
    assert path == tmp_path / "results" / f"{cell.id}.parquet"
    assert visible_files(tmp_path / "results") == [path.name]
    assert not results.temp_files(tmp_path / "results")

    meta = results.file_metadata(path)
    assert meta[b"harness.schema_version"] == str(SCHEMA_VERSION).encode()
    assert meta[b"harness.version"] == harness.__version__.encode()
    assert json.loads(meta[b"harness.cell"]) == cell.to_dict()
    assert json.loads(meta[b"harness.seeds"]) == [0, 1, 2]

    df = read_results(tmp_path)
    expected = table_of(cell, 1.5).to_pandas()
    pd.testing.assert_frame_equal(df, expected)
    assert df.attrs["harness_versions"] == [harness.__version__]


def test_pandas_read_parquet_reads_the_run(tmp_path):
    cells = [make_cell(n_samples=n) for n in (10, 100)] + [
        make_cell(cost="square", params=(("mu", 2.0), ("sigma", 1.0)))]
    for cell in cells:
        write(tmp_path, cell)
    results.atomic_write_bytes(tmp_path / "results" / ".stale.parquet.tmp-1",
                               lambda fh: fh.write(b"partial"))
    df = pd.read_parquet(tmp_path / "results")
    ours = read_results(tmp_path)
    assert len(df) == len(ours) == 3 * 12
    key = ["cell", "seed", "estimator", "param"]
    pd.testing.assert_frame_equal(df.sort_values(key).reset_index(drop=True),
                                  ours.sort_values(key).reset_index(drop=True))


def test_int_and_float_k_in_different_files_read_as_one_float_column(tmp_path):
    # pyarrow infers a directory's schema from one file; a file whose k column is int64
    # (written by hand, bypassing cell_table's cast) must still read into float64.
    write(tmp_path, make_cell(params=(("mu", 2.0), ("sigma", 1.0), ("k", 0.5))))
    cell = make_cell(params=(("mu", 2.0), ("sigma", 1.0), ("k", -3.0)))
    table = table_of(cell)
    k_int = pa.array(np.full(table.num_rows, -3, dtype=np.int64))
    table = table.set_column(SCHEMA.get_field_index("k"), "k", k_int)
    assert table.schema.field("k").type == pa.int64()
    table = table.replace_schema_metadata(
        {b"harness.schema_version": str(SCHEMA_VERSION).encode()})
    # Name it so that it sorts first: pyarrow would infer the int schema from it.
    pq.write_table(table, tmp_path / "results" / f"0000{cell.id}.parquet")

    df = read_results(tmp_path)
    assert df["k"].dtype == np.float64
    assert sorted(set(df["k"])) == [-3.0, 0.5]


def test_write_cell_casts_to_the_canonical_schema(tmp_path):
    cell = make_cell()
    table = table_of(cell)
    # Shuffled columns and an int seconds column: write_cell puts them back in shape.
    table = table.select(list(reversed(table.column_names)))
    table = table.set_column(table.schema.get_field_index("seconds"), "seconds",
                             pa.array(np.ones(table.num_rows, dtype=np.int64)))
    path = write_cell(tmp_path / "results", cell, table)
    assert pq.read_schema(path).remove_metadata().equals(SCHEMA)
    missing = table.drop_columns(["exact_var"])
    with pytest.raises(ValueError, match="exact_var"):
        write_cell(tmp_path / "results", cell, missing)


@pytest.mark.parametrize("interrupt", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_old_file_and_no_partial(tmp_path, monkeypatch, interrupt):
    cell = make_cell()
    path = write(tmp_path, cell, seconds=1.0)
    before = path.read_bytes()

    def blocks():      # the second block of seeds fails: the first is already written
        yield table_of(cell, 2.0)
        raise interrupt

    with pytest.raises(type(interrupt)):
        write_cell(tmp_path / "results", cell, blocks())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path / "results") == [path.name]   # no hidden leftovers either
    assert read_results(tmp_path)["seconds"].eq(1.0).all()


def test_hidden_temp_files_are_ignored(tmp_path):
    cell = make_cell()
    write(tmp_path, cell)
    res = tmp_path / "results"
    (res / f".{make_cell(n_samples=7).id}.parquet.tmp-12345").write_bytes(b"PAR1 partial")
    (res / "_SUCCESS").write_bytes(b"")
    assert finished_cells(tmp_path) == {cell.id}
    assert len(read_results(tmp_path)) == 12
    assert len(pd.read_parquet(res)) == 12


def test_other_schema_version_raises_one_line_error(tmp_path):
    cell = make_cell()
    write(tmp_path, cell)
    old = make_cell(n_samples=10)
    table = table_of(old).replace_schema_metadata(
        {b"harness.schema_version": b"0"})
    pq.write_table(table, tmp_path / "results" / f"{old.id}.parquet")

    with pytest.raises(ResultsError) as info:
        read_results(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "schema version 0" in message and "fix:" in message
    assert old.id in message
    # Not finished: a rerun recomputes (and replaces) it.
    assert finished_cells(tmp_path) == {cell.id}


def test_missing_or_empty_results_raise(tmp_path):
    with pytest.raises(ResultsError, match="no results directory.*fix:"):
        read_results(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / ".x.parquet.tmp-1").write_bytes(b"")
    with pytest.raises(ResultsError, match="no result files.*fix:"):
        read_results(tmp_path)
    assert finished_cells(tmp_path) == set()
    assert finished_cells(tmp_path / "nowhere") == set()


def test_unreadable_file_raises_results_error(tmp_path):
    write(tmp_path, make_cell())
    (tmp_path / "results" / "garbage.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ResultsError, match="garbage.parquet: not a readable results file") as info:
        read_results(tmp_path)
    assert "\n" not in str(info.value)
    assert finished_cells(tmp_path) == {make_cell().id}


def test_finished_cells_lists_every_complete_file(tmp_path):
    cells = [make_cell(n_samples=n) for n in (10, 100, 1000)]
    for cell in cells[:2]:
        write(tmp_path, cell)
    assert finished_cells(tmp_path) == {cells[0].id, cells[1].id}
    write(tmp_path, cells[2])
    assert finished_cells(tmp_path) == {c.id for c in cells}


# ------------------------------------------------------------------ version-2 files (issue 5)

# The version-2 schema, as written by harness before problem kinds (``git show
# <issue-5 commit>:harness/results.py``): kept here verbatim, not derived from the code.
V2_FIELDS = [
    ("experiment", pa.string()), ("cell", pa.string()), ("estimator", pa.string()),
    ("problem", pa.string()), ("distribution", pa.string()), ("cost", pa.string()),
    ("mu", pa.float64()), ("sigma", pa.float64()), ("k", pa.float64()),
    ("param", pa.string()), ("n_samples", pa.int64()), ("seed", pa.int64()),
    ("estimate", pa.float64()), ("sample_var", pa.float64()), ("exact_grad", pa.float64()),
    ("exact_var", pa.float64()), ("exact_source", pa.string()),
    ("evals_per_sample", pa.int64()), ("backend", pa.string()), ("seconds", pa.float64()),
    ("target", pa.string()), ("family", pa.string()), ("dim", pa.int64()),
    ("target_params", pa.string()), ("mode", pa.string()), ("step", pa.int64()),
    ("elbo", pa.float64()), ("exact_elbo", pa.float64()), ("dist_opt", pa.float64()),
    ("grad_var_mean", pa.float64()), ("grad_var_max", pa.float64()),
]
V2_SEEDS = tuple(range(8))
V2_ESTIMATORS = [{"name": "score_function", "options": {}, "label": "score_function"},
                 {"name": "pathwise", "options": {}, "label": "pathwise"}]

# The grids that wrote them, in today's format.
V2_EXPECTATION_GRID = """\
name: old
problem: {distribution: normal, cost: quadratic, mu: 2.0, sigma: 1.0, k: -3.0}
estimators: [score_function, pathwise]
n_samples: 100
seeds: 8
"""
V2_ELBO_GRID = """\
name: old
problem: {kind: elbo, target: gaussian, target_seed: 3, dim: 2, family: diag}
mode: [estimate, optimize]
estimators: [reparam]
n_samples: 100
optimizer: {steps: 20, samples: 4, record_every: 10}
seeds: 8
"""


def write_v2(results_dir, config: dict, columns: dict):
    """A version-2 file: every column of V2_FIELDS (absent ones null), named by the old id."""
    from harness.model import config_id

    cell_id = config_id(config)
    n = len(columns["estimator"])
    columns = {"experiment": ["old"] * n, "cell": [cell_id] * n, "backend": ["cpu"] * n,
               "seconds": np.full(n, 0.25), **columns}
    schema = pa.schema([pa.field(name, t) for name, t in V2_FIELDS])
    table = pa.Table.from_arrays(
        [pa.array(columns[name], t) if name in columns else pa.nulls(n, t)
         for name, t in V2_FIELDS], schema=schema)
    table = table.replace_schema_metadata({
        b"harness.schema_version": b"2", b"harness.version": b"0.4.0",
        b"harness.cell": json.dumps(config, sort_keys=True).encode(),
        b"harness.seeds": json.dumps(list(V2_SEEDS)).encode()})
    results_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, results_dir / f"{cell_id}.parquet")
    return cell_id


def write_v2_run(run_dir):
    """One gaussian_cost cell, one ELBO estimate cell and one ELBO optimisation cell, as
    harness 0.4 wrote them.  Returns {problem: (old cell id, rows written)}."""
    rng = np.random.default_rng(0)
    out = {}
    # gaussian_cost: normal, quadratic, mu = 2, sigma = 1, k = -3; both components
    s, e, c = len(V2_SEEDS), 2, 2
    n = s * e * c
    exact_grad = {"mu": 10.0, "sigma": 2.0}
    exact_var = {("score_function", "mu"): 5.0**4 + 14 * 25 + 15,
                 ("score_function", "sigma"): 900.0, ("pathwise", "mu"): 100.0,
                 ("pathwise", "sigma"): 104.0}
    est_names = np.tile(np.repeat(["score_function", "pathwise"], c), s)
    params = np.tile(["mu", "sigma"], s * e)
    grad = np.array([exact_grad[p] for p in params])
    var = np.array([exact_var[(a, p)] for a, p in zip(est_names, params)])
    config = {"experiment": "old", "problem": "gaussian_cost", "distribution": "normal",
              "cost": "quadratic", "params": {"mu": 2.0, "sigma": 1.0, "k": -3.0},
              "wrt": ["mu", "sigma"], "estimators": V2_ESTIMATORS, "n_samples": 100,
              "seeds": list(V2_SEEDS), "backend": "cpu"}
    columns = {
        "estimator": est_names, "problem": ["gaussian_cost"] * n,
        "distribution": ["normal"] * n, "cost": ["quadratic"] * n,
        "mu": np.full(n, 2.0), "sigma": np.full(n, 1.0), "k": np.full(n, -3.0),
        "param": params, "n_samples": np.full(n, 100), "seed": np.repeat(V2_SEEDS, e * c),
        "estimate": grad + np.sqrt(var / 100) * rng.standard_normal(n),
        "sample_var": var * rng.chisquare(99, n) / 99, "exact_grad": grad, "exact_var": var,
        "exact_source": ["closed_form"] * n, "evals_per_sample": np.ones(n, np.int64),
    }
    out["expectation"] = (write_v2(run_dir / "results", config, columns), columns)

    # ELBO estimate: gaussian target (target_seed 3), diag family, d = 2, reparam
    comps = ["mu[0]", "mu[1]", "log_sigma[0]", "log_sigma[1]"]
    n = s * len(comps)
    elbo_point = {"target": "gaussian", "family": "diag", "dim": 2,
                  "target_params": {"target_seed": 3}, "q": "standard"}
    config = {"experiment": "old", "problem": "elbo", **elbo_point, "mode": "estimate",
              "estimators": [{"name": "reparam", "options": {}, "label": "reparam"}],
              "n_samples": 100, "seeds": list(V2_SEEDS), "backend": "cpu"}
    grad = np.tile([0.3, -0.2, 0.5, 0.1], s)
    columns = {
        "estimator": ["reparam"] * n, "problem": ["elbo"] * n,
        "mu": np.full(n, np.nan), "sigma": np.full(n, np.nan), "k": np.full(n, np.nan),
        "param": np.tile(comps, s), "n_samples": np.full(n, 100),
        "seed": np.repeat(V2_SEEDS, len(comps)),
        "estimate": grad + 0.1 * rng.standard_normal(n), "sample_var": np.full(n, 1.0),
        "exact_grad": grad, "exact_var": np.full(n, 1.0),
        "exact_source": ["closed_form"] * n, "evals_per_sample": np.ones(n, np.int64),
        "target": ["gaussian"] * n, "family": ["diag"] * n, "dim": np.full(n, 2),
        "target_params": ["target_seed=3"] * n, "mode": ["estimate"] * n,
        "elbo": np.repeat(rng.standard_normal(s), len(comps)), "exact_elbo": np.full(n, -1.5),
        "dist_opt": np.full(n, np.nan),
    }
    out["elbo"] = (write_v2(run_dir / "results", config, columns), columns)

    # ELBO optimisation trace: steps 0, 10, 20 per seed, param "*"
    steps = [0, 10, 20]
    n = s * len(steps)
    optimizer = {"name": "adam", "lr": 0.01, "steps": 20, "samples": 4,
                 "schedule": "constant", "record_every": 10, "var_samples": 1000,
                 "min_diag": 1e-6}
    config = {"experiment": "old", "problem": "elbo", **elbo_point, "mode": "optimize",
              "optimizer": optimizer,
              "estimators": [{"name": "reparam", "options": {}, "label": "reparam"}],
              "n_samples": 4, "seeds": list(V2_SEEDS), "backend": "cpu"}
    columns = {
        "estimator": ["reparam"] * n, "problem": ["elbo"] * n, "param": ["*"] * n,
        "mu": np.full(n, np.nan), "sigma": np.full(n, np.nan), "k": np.full(n, np.nan),
        "n_samples": np.full(n, 4), "seed": np.repeat(V2_SEEDS, len(steps)),
        "estimate": np.full(n, np.nan), "exact_source": ["none"] * n,
        "evals_per_sample": np.ones(n, np.int64), "step": np.tile(steps, s),
        "target": ["gaussian"] * n, "family": ["diag"] * n, "dim": np.full(n, 2),
        "target_params": ["target_seed=3"] * n, "mode": ["optimize"] * n,
        "elbo": -3.0 + rng.random(n), "exact_elbo": np.tile([-3.0, -2.0, -1.6], s),
        "dist_opt": np.tile([1.0, 0.5, 0.2], s), "grad_var_mean": np.full(n, 2.0),
        "grad_var_max": np.full(n, 3.0),
    }
    out["optimize"] = (write_v2(run_dir / "results", config, columns), columns)
    return out


def test_version_2_files_are_read_in_version_3_terms(tmp_path):
    from harness.config import parse_grid
    from harness.kinds import elbo, expectation

    written = write_v2_run(tmp_path)
    df = read_results(tmp_path)
    assert list(df.columns) == SCHEMA.names
    assert df.attrs["schema_version"] == SCHEMA_VERSION and df.attrs["files"] == 3
    assert df.attrs["harness_versions"] == ["0.4.0"]
    assert set(df["problem"]) == {"expectation", "elbo"}
    assert len(df) == sum(len(cols["estimator"]) for _, cols in written.values())

    # The rows' labels are today's labels of the same points, so old and new rows of one
    # point are one point of the report.
    (exp_cell,) = expand_cells(parse_grid(V2_EXPECTATION_GRID, "old.yaml"))
    estimate_cell, optimize_cell = expand_cells(parse_grid(V2_ELBO_GRID, "old.yaml"))
    old = df[df["problem"] == "expectation"]
    assert set(old["cell"]) == {written["expectation"][0]}
    assert set(old["point"]) == {expectation.point_label(exp_cell.point)}
    assert set(old["point"]) == {"normal, quadratic: mu=2, sigma=1, k=-3"}
    assert set(old["distribution"]) == {"normal"} and set(old["cost"]) == {"quadratic"}
    assert old["step"].isna().all() and old["target"].isna().all()
    np.testing.assert_array_equal(old["estimate"], written["expectation"][1]["estimate"])

    vi = df[df["problem"] == "elbo"]
    assert set(vi["distribution"]) == {"diag"}          # the family, formerly ``family``
    assert set(vi["point"]) == {elbo.point_label(estimate_cell.point)}
    assert set(vi["point"]) == {"gaussian, diag, d=2: target_seed=3"}
    assert vi["cost"].isna().all() and vi["mu"].isna().all()
    trace = vi[vi["mode"] == "optimize"]
    assert sorted(trace["step"].unique()) == [0, 10, 20] and set(trace["param"]) == {"*"}
    assert vi.loc[vi["mode"] == "estimate", "step"].isna().all()
    np.testing.assert_array_equal(trace["dist_opt"], written["optimize"][1]["dist_opt"])

    # ELBO cell ids did not change with the schema, so a rerun replaces those files.
    assert (written["elbo"][0], written["optimize"][0]) == (estimate_cell.id, optimize_cell.id)


def test_version_2_files_make_a_report(tmp_path):
    from harness.report import build_report

    write_v2_run(tmp_path)
    page = build_report(tmp_path).read_text()
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    # estimate rows only: 2 estimators x 2 components + 1 estimator x 4 components, one N
    assert len(summary) == 2 * 2 + 4
    assert set(summary["problem"]) == {"expectation", "elbo"}
    assert set(summary["seeds"]) == {len(V2_SEEDS)}
    assert (tmp_path / "report" / "elbo_vs_step.png").is_file()
    assert "normal, quadratic: mu=2, sigma=1, k=-3" in page
    assert "gaussian, diag, d=2: target_seed=3" in page


def test_version_2_files_are_not_finished_and_a_rerun_replaces_them(tmp_path):
    from harness.config import parse_grid
    from harness.report import summarise
    from harness.runner import run_grid

    written = write_v2_run(tmp_path)
    old_file = tmp_path / "results" / f"{written['expectation'][0]}.parquet"
    assert finished_cells(tmp_path) == set()
    grid = parse_grid(V2_EXPECTATION_GRID, "old.yaml")
    (cell,) = expand_cells(grid)
    assert cell.id != old_file.stem         # the kind's new name is part of the id
    summary = run_grid(grid, tmp_path, progress=False)
    assert (summary.computed, summary.skipped) == (1, 0)
    assert summary.other_files == 2         # the ELBO files; the replaced one is this grid's
    assert finished_cells(tmp_path) == {cell.id}
    # The recomputed cell replaces the version-2 file of the same cell: one set of rows per
    # point, so the report's statistics accept the run (two cells of one point raise).
    assert not old_file.exists()
    df = read_results(tmp_path)
    rows = df[df["problem"] == "expectation"]
    assert set(rows["cell"]) == {cell.id} and len(rows) == len(V2_SEEDS) * 2 * 2
    assert set(summarise(df)["seeds"]) == {len(V2_SEEDS)}

    # Interrupted between writing the new file and removing the old one: the next run,
    # which has nothing to compute, removes it.
    write_v2_run(tmp_path)
    assert old_file.exists()
    summary = run_grid(grid, tmp_path, progress=False)
    assert (summary.computed, summary.skipped, summary.other_files) == (0, 1, 2)
    assert not old_file.exists()
    assert set(read_results(tmp_path)["cell"]) == {cell.id, written["elbo"][0],
                                                   written["optimize"][0]}
