"""The results layer: schema casting, atomic writes, reads, schema versions.

The estimate arrays here are synthetic (the I/O layer does not care where they come from);
the exact columns always come from ``harness.exact``.
"""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import harness
from harness import results
from harness.config import EstimatorSpec
from harness.errors import ResultsError
from harness.exact import reference
from harness.results import (
    SCHEMA,
    SCHEMA_VERSION,
    cell_table,
    finished_cells,
    read_results,
    write_cell,
)
from harness.runner import Cell

ESTIMATORS = (EstimatorSpec("score_function"), EstimatorSpec("pathwise"))


def make_cell(**overrides) -> Cell:
    fields = dict(experiment="unit", distribution="normal", cost="quadratic",
                  params=(("mu", 2.0), ("sigma", 1.0), ("k", -3.0)), wrt=("mu", "sigma"),
                  estimators=ESTIMATORS, n_samples=100, seeds=(0, 1, 2), backend="cpu")
    fields.update(overrides)
    return Cell(**fields)


def fake_arrays(cell: Cell):
    """Distinct, recognisable values: estimate[s, e, c] = 1000 s + 10 e + c (+ 0.5 for var)."""
    s, e, c = np.meshgrid(np.arange(len(cell.seeds)), np.arange(len(cell.estimators)),
                          np.arange(len(cell.wrt)), indexing="ij")
    estimate = 1000.0 * s + 10.0 * e + c
    return estimate, estimate + 0.5


def write(run_dir, cell, seconds=1.5):
    est, var = fake_arrays(cell)
    return write_cell(run_dir / "results", cell, cell_table(cell, est, var, seconds))


def visible_files(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith((".", "_")))


def test_cell_table_rows_are_ordered_by_seed_estimator_component():
    cell = make_cell(seeds=(7, 3, 11))
    est, var = fake_arrays(cell)
    table = cell_table(cell, est, var, 2.0)
    assert table.schema.equals(SCHEMA)
    df = table.to_pandas()
    assert len(df) == 3 * 2 * 2
    assert list(df["seed"]) == [7] * 4 + [3] * 4 + [11] * 4   # the cell's seed order
    assert list(df["estimator"][:4]) == ["score_function"] * 2 + ["pathwise"] * 2
    assert list(df["param"][:4]) == ["mu", "sigma", "mu", "sigma"]
    assert np.array_equal(df["estimate"], est.ravel())
    assert np.array_equal(df["sample_var"], var.ravel())
    assert set(df["cell"]) == {cell.id} and set(df["problem"]) == {"gaussian_cost"}
    assert set(df["seconds"]) == {2.0} and set(df["evals_per_sample"]) == {1}


def test_cell_table_exact_columns_come_from_harness_exact():
    cell = make_cell()
    df = cell_table(cell, *fake_arrays(cell), 1.0).to_pandas()
    for row in df.itertuples():
        name = row.estimator  # no options, so label == name
        grad, var, source = reference(name, row.param, "normal", "quadratic",
                                      {"mu": 2.0, "sigma": 1.0, "k": -3.0})
        assert (row.exact_grad, row.exact_var, row.exact_source) == (grad, var, source)
    # Spot check against DESIGN.md: a = mu - k = 5, score function wrt mu: a^4 + 14 a^2 + 15.
    sf_mu = df[(df.estimator == "score_function") & (df.param == "mu")]
    assert set(sf_mu["exact_var"]) == {5.0**4 + 14 * 25 + 15}
    assert set(sf_mu["exact_grad"]) == {10.0}


def test_cost_without_k_gets_nan_k_column():
    cell = make_cell(cost="square", params=(("mu", 2.0), ("sigma", 1.0)), wrt=("mu",))
    df = cell_table(cell, *fake_arrays(cell), 1.0).to_pandas()
    assert df["k"].isna().all() and df["k"].dtype == np.float64
    # The seed-000 numbers: exact gradient 4, per-sample variances 87 and 4.
    assert dict(zip(df["estimator"], df["exact_var"])) == {"score_function": 87.0, "pathwise": 4.0}
    assert set(df["exact_grad"]) == {4.0}


def test_integer_parameters_become_float_columns_and_one_id():
    as_int = make_cell(params=(("mu", 2), ("sigma", 1), ("k", -3)))
    assert as_int.id == make_cell().id
    table = cell_table(as_int, *fake_arrays(as_int), 1.0)
    assert table.schema.field("k").type == pa.float64()
    assert table.schema.field("mu").type == pa.float64()


def test_cell_table_rejects_wrong_shapes():
    cell = make_cell()
    est, var = fake_arrays(cell)
    with pytest.raises(ValueError, match="expected"):
        cell_table(cell, est[:, :1], var[:, :1], 1.0)


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
    expected = cell_table(cell, *fake_arrays(cell), 1.5).to_pandas()
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
    table = cell_table(cell, *fake_arrays(cell), 1.0)
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
    table = cell_table(cell, *fake_arrays(cell), 1.0)
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

    def half_write(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise interrupt

    monkeypatch.setattr(results.pq, "write_table", half_write)
    with pytest.raises(type(interrupt)):
        write(tmp_path, cell, seconds=2.0)
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
    table = cell_table(old, *fake_arrays(old), 1.0).replace_schema_metadata(
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
