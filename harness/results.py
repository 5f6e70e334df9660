"""The tidy results dataset: one Parquet file per cell under ``RUN_DIR/results/``.

One row per (seed, estimator, gradient component) of a cell; the columns are ``SCHEMA``.
Every file is cast to ``SCHEMA`` before it is written and every read passes ``SCHEMA``
explicitly, because pyarrow infers a directory's schema from a single file: a ``k`` column
that is int64 in one file and float64 in another, or missing from one file, would otherwise
break the read or silently drop the column (DESIGN.md, "Pitfalls").

Files are written atomically (hidden temporary file in the same directory, fsync,
``os.replace``, fsync of the directory), so an interrupted run (Ctrl-C, kill -9, power loss)
never leaves a partial non-hidden file; hidden names (``.``/``_``) are skipped by every
reader, including ``pandas.read_parquet(RUN_DIR / "results")``.

File key-value metadata (all values UTF-8 strings):

``harness.schema_version``  ``SCHEMA_VERSION`` of the writer
``harness.version``         the harness package version of the writer
``harness.cell``            the resolved cell configuration, ``json.dumps(cell.to_dict())``
``harness.seeds``           the cell's seeds as a JSON list
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import __version__
from .errors import ResultsError
from .exact import reference
from .registry import resolve

# 2: ELBO problems (issue 5): distribution/cost nullable, and the columns from ``target`` on
SCHEMA_VERSION = 2

# Problem parameters that have a column; a cell may leave some out (NaN), e.g. ``k`` for a
# cost without a shape parameter.  A new parameter needs a new column and a version bump.
PARAM_COLUMNS = ("mu", "sigma", "k")

SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("cell", pa.string(), nullable=False),
        pa.field("estimator", pa.string(), nullable=False),   # EstimatorSpec.label
        pa.field("problem", pa.string(), nullable=False),
        pa.field("distribution", pa.string()),                # null for ELBO problems
        pa.field("cost", pa.string()),                        # null for ELBO problems
        pa.field("mu", pa.float64()),
        pa.field("sigma", pa.float64()),
        pa.field("k", pa.float64()),                          # NaN when the cost has no k
        pa.field("param", pa.string(), nullable=False),       # gradient component
        pa.field("n_samples", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("estimate", pa.float64()),
        pa.field("sample_var", pa.float64()),
        pa.field("exact_grad", pa.float64()),
        pa.field("exact_var", pa.float64()),
        pa.field("exact_source", pa.string(), nullable=False),  # closed_form|quadrature|none
        pa.field("evals_per_sample", pa.int64(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("seconds", pa.float64()),                    # wall time of the whole cell
        # ELBO problems (problem == "elbo", harness.vi); null for Gaussian-cost rows
        pa.field("target", pa.string()),                      # log g: gaussian, ...
        pa.field("family", pa.string()),                      # q family: diag | full
        pa.field("dim", pa.int64()),                          # dimension d of z
        pa.field("target_params", pa.string()),               # e.g. "a=1 omega=3"
        pa.field("mode", pa.string()),                        # estimate | optimize
        pa.field("step", pa.int64()),                         # optimize: the recorded step
        pa.field("elbo", pa.float64()),                       # MC estimate of the ELBO
        pa.field("exact_elbo", pa.float64()),                 # closed form, NaN if unknown
        pa.field("dist_opt", pa.float64()),                   # |theta - theta*|, NaN if unknown
        pa.field("grad_var_mean", pa.float64()),              # per-sample gradient variance,
        pa.field("grad_var_max", pa.float64()),               # mean / max over components
    ]
)

META_SCHEMA_VERSION = b"harness.schema_version"
META_VERSION = b"harness.version"
META_CELL = b"harness.cell"
META_SEEDS = b"harness.seeds"

TMP_MARKER = ".parquet.tmp-"


def _results_dir(run_dir) -> Path:
    return Path(run_dir) / "results"


def _is_hidden(path: Path) -> bool:
    # The same rule as pyarrow.dataset's default ignore_prefixes.
    return path.name.startswith((".", "_"))


def _result_files(results_dir: Path) -> list[Path]:
    """Non-hidden ``*.parquet`` files, sorted by name (so reads are deterministic)."""
    return sorted(p for p in results_dir.glob("*.parquet") if not _is_hidden(p) and p.is_file())


def temp_files(results_dir) -> list[Path]:
    """Hidden temporary files left by interrupted writes (``.<id>.parquet.tmp-<pid>``)."""
    return sorted(Path(results_dir).glob(f".*{TMP_MARKER}*"))


def cell_table(cell, estimate, sample_var, seconds: float) -> pa.Table:
    """The rows of one computed cell, cast to ``SCHEMA``.

    ``estimate`` and ``sample_var`` are float arrays of shape
    ``(len(cell.seeds), len(cell.estimators), len(cell.wrt))`` as returned by the kernel.
    Rows are ordered by seed, then estimator, then component (C order of those arrays).
    The exact columns come from ``harness.exact.reference`` for each (estimator, component).
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    sample_var = np.asarray(sample_var, dtype=np.float64)
    n_seeds, n_est, n_comp = len(cell.seeds), len(cell.estimators), len(cell.wrt)
    shape = (n_seeds, n_est, n_comp)
    if estimate.shape != shape or sample_var.shape != shape:
        raise ValueError(
            f"cell {cell.id}: kernel returned shapes {estimate.shape} and {sample_var.shape}, "
            f"expected (seeds, estimators, components) = {shape}"
        )
    params = dict(cell.params)
    unknown = sorted(set(params) - set(PARAM_COLUMNS))
    if unknown:
        raise ValueError(f"cell {cell.id}: parameters {unknown} have no column in SCHEMA")
    mu, sigma = params["mu"], params["sigma"]

    # Per (estimator, component) references, shape (E, C), then repeated for every seed.
    exact_grad = np.empty((n_est, n_comp))
    exact_var = np.empty((n_est, n_comp))
    source = np.empty((n_est, n_comp), dtype=object)
    for e, spec in enumerate(cell.estimators):
        for c, comp in enumerate(cell.wrt):
            exact_grad[e, c], exact_var[e, c], source[e, c] = reference(
                spec, comp, cell.distribution, cell.cost, params
            )
    evals = np.array([resolve(spec).evals_per_sample for spec in cell.estimators],
                     dtype=np.int64)

    n = n_seeds * n_est * n_comp
    labels = np.array([spec.label for spec in cell.estimators], dtype=object)
    columns = {
        "experiment": [cell.experiment] * n,
        "cell": [cell.id] * n,
        "estimator": np.tile(np.repeat(labels, n_comp), n_seeds),
        "problem": [cell.problem] * n,
        "distribution": [cell.distribution] * n,
        "cost": [cell.cost] * n,
        "mu": np.full(n, mu, dtype=np.float64),
        "sigma": np.full(n, sigma, dtype=np.float64),
        "k": np.full(n, params.get("k", math.nan), dtype=np.float64),
        "param": np.tile(np.array(cell.wrt, dtype=object), n_seeds * n_est),
        "n_samples": np.full(n, cell.n_samples, dtype=np.int64),
        "seed": np.repeat(np.asarray(cell.seeds, dtype=np.int64), n_est * n_comp),
        "estimate": estimate.ravel(),
        "sample_var": sample_var.ravel(),
        "exact_grad": np.tile(exact_grad.ravel(), n_seeds),
        "exact_var": np.tile(exact_var.ravel(), n_seeds),
        "exact_source": np.tile(source.ravel(), n_seeds),
        "evals_per_sample": np.tile(np.repeat(evals, n_comp), n_seeds),
        "backend": [cell.backend] * n,
        "seconds": np.full(n, seconds, dtype=np.float64),
    }
    columns["mode"] = ["estimate"] * n
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns
              else pa.nulls(n, f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the columns of ``SCHEMA``, in its order and types.

    Raises ``ValueError`` if a column is missing (that is a bug in the caller, not user error).
    """
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"results table lacks columns {missing}")
    return table.select(SCHEMA.names).cast(SCHEMA)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable.  Not possible on every platform (e.g. Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a hidden sibling, fsync, rename, fsync dir.

    On any exception (including KeyboardInterrupt) the temporary file is removed; after a
    kill -9 it stays behind as a hidden file, which readers skip and the runner removes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_cell(results_dir, cell, table: pa.Table) -> Path:
    """Write ``table`` (from ``cell_table``) atomically to ``results_dir/<cell.id>.parquet``.

    The table is cast to ``SCHEMA`` and the file carries the metadata in the module docstring.
    Returns the path written.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    metadata = {
        META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
        META_VERSION: __version__.encode(),
        META_CELL: json.dumps(cell.to_dict(), sort_keys=True).encode(),
        META_SEEDS: json.dumps([int(s) for s in cell.seeds]).encode(),
    }
    table = conform(table).replace_schema_metadata(metadata)
    return atomic_write_bytes(results_dir / f"{cell.id}.parquet",
                              lambda fh: pq.write_table(table, fh))


def file_metadata(path) -> dict[bytes, bytes]:
    """The key-value metadata of one results file (reads only the footer)."""
    return dict(pq.read_schema(path).metadata or {})


def _schema_version(path: Path) -> int | None:
    """The file's schema version, or None if it is not a readable harness results file."""
    try:
        raw = file_metadata(path).get(META_SCHEMA_VERSION)
        return int(raw) if raw is not None else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def finished_cells(run_dir) -> set[str]:
    """Ids of the cells whose results file is complete and has the current schema version.

    Files of another schema version (or unreadable ones) are not finished: a rerun
    recomputes and replaces them.
    """
    results = _results_dir(run_dir)
    if not results.is_dir():
        return set()
    return {p.stem for p in _result_files(results) if _schema_version(p) == SCHEMA_VERSION}


def read_results(run_dir):
    """All rows of a run as a pandas DataFrame with the columns and types of ``SCHEMA``.

    Reads ``run_dir/results/*.parquet`` (hidden files skipped) with ``SCHEMA`` given
    explicitly, so every file is cast to one schema.  ``df.attrs`` holds ``schema_version``,
    ``harness_versions`` (of the writers) and ``files``.  Raises ``ResultsError`` if the
    directory is missing or empty, or a file is unreadable or has another schema version.
    """
    run_dir = Path(run_dir)
    results = _results_dir(run_dir)
    rerun = f"rerun `harness run GRID --out {run_dir}`"
    if not results.is_dir():
        raise ResultsError(f"{results}: no results directory (fix: run `harness run GRID "
                           f"--out {run_dir}` first, or pass the run's directory)")
    files = _result_files(results)
    if not files:
        raise ResultsError(f"{results}: no result files (fix: {rerun} to compute them)")
    writers = set()
    for path in files:
        try:
            meta = file_metadata(path)
        except (OSError, pa.ArrowException) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ResultsError(f"{path}: not a readable results file ({first}) "
                               f"(fix: delete it and {rerun})") from None
        version = meta.get(META_SCHEMA_VERSION, b"?").decode(errors="replace")
        if version != str(SCHEMA_VERSION):
            raise ResultsError(
                f"{path}: results schema version {version}, this harness ({__version__}) reads "
                f"version {SCHEMA_VERSION} (fix: {rerun} to recompute it, or read it with the "
                f"harness version that wrote it)"
            )
        writers.add(meta.get(META_VERSION, b"?").decode(errors="replace"))
    dataset = ds.dataset([str(p) for p in files], schema=SCHEMA, format="parquet")
    df = dataset.to_table().to_pandas()
    df.attrs.update(schema_version=SCHEMA_VERSION, harness_versions=sorted(writers),
                    files=len(files))
    return df
