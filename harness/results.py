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

A cell is written as one file even when it is computed in blocks of seeds: each block is a
Parquet row group of the same hidden temporary file, renamed into place after the last one
(``write_cell`` takes one table or an iterable of them), so memory is bounded by a block.

File key-value metadata (all values UTF-8 strings):

``harness.schema_version``  ``SCHEMA_VERSION`` of the writer
``harness.version``         the harness package version of the writer
``harness.code``            the digest of the code that computed the cell
                            (``harness.provenance.code_digest``; absent before it was recorded)
``harness.grid``            the digest of the grid file that computed it (``grid_digest``);
                            the grid's text is kept in ``RUN_DIR/grids/<digest>.yaml``
``harness.cell``            the resolved cell configuration, ``json.dumps(cell.to_dict())``,
                            with ``seeds`` as in ``harness.seeds``
``harness.seeds``           the cell's seeds as a JSON list, or ``{"start": a, "stop": b}``
                            (Python ``range`` semantics) for more than ``COMPACT_SEEDS``
                            consecutive seeds (ten million seeds as a list would exceed what
                            Parquet readers accept in a footer)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import ResultsError
from .model import config_id
from .provenance import code_digest

# 3: one model of a study (problem kinds): ``problem`` holds the kind (``expectation`` for
#    the former ``gaussian_cost``), ``distribution`` the family for every kind (ELBO: diag |
#    full, formerly ``family``), a ``point`` label and ``step`` column for every kind, and a
#    column per registered family / cost parameter.  Version-2 files are still read.
# 2: ELBO problems (issue 5).
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)

# Columns every kind fills (or leaves null); each kind adds its own (ProblemKind.columns).
COMMON_FIELDS = (
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("cell", pa.string(), nullable=False),
    pa.field("problem", pa.string(), nullable=False),         # the problem kind
    pa.field("point", pa.string()),                           # the problem point, in words
    pa.field("distribution", pa.string()),                    # the family q
    pa.field("estimator", pa.string(), nullable=False),       # EstimatorSpec.label
    pa.field("param", pa.string(), nullable=False),           # gradient component
    pa.field("n_samples", pa.int64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("step", pa.int64()),                             # optimisation traces: the step
    pa.field("estimate", pa.float64()),
    pa.field("sample_var", pa.float64()),
    pa.field("exact_grad", pa.float64()),
    pa.field("exact_var", pa.float64()),
    pa.field("exact_source", pa.string(), nullable=False),  # closed_form|quadrature|none
    pa.field("evals_per_sample", pa.int64(), nullable=False),
    pa.field("backend", pa.string(), nullable=False),
    pa.field("seconds", pa.float64()),                        # wall time of the whole cell
)


@cache
def schema() -> pa.Schema:
    """The canonical schema: the common columns, then every registered kind's own."""
    from .kinds import KINDS

    fields = list(COMMON_FIELDS)
    for kind in KINDS.values():
        fields += [f for f in kind.columns if f.name not in {g.name for g in fields}]
    return pa.schema(fields)


def __getattr__(name):
    if name == "SCHEMA":          # computed on first use: the kinds import this module
        return schema()
    raise AttributeError(name)


META_SCHEMA_VERSION = b"harness.schema_version"
META_VERSION = b"harness.version"
META_CELL = b"harness.cell"
META_SEEDS = b"harness.seeds"
META_CODE = b"harness.code"
META_GRID = b"harness.grid"

COMPACT_SEEDS = 1000

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


def estimate_columns(cell, *, components, estimate, sample_var, exact_grad, exact_var,
                     exact_source, evals_per_sample) -> dict:
    """The rows of an estimate cell: one per (seed, estimator, component), in that C order.

    ``estimate``, ``sample_var``: shape (seeds, estimators, components) from a kernel;
    ``exact_grad``, ``exact_var``, ``exact_source``: shape (estimators, components);
    ``evals_per_sample``: one int per estimator.  Every kind's estimate rows come from here.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    sample_var = np.asarray(sample_var, dtype=np.float64)
    n_seeds, n_est, n_comp = len(cell.seeds), len(cell.estimators), len(components)
    shape = (n_seeds, n_est, n_comp)
    if estimate.shape != shape or sample_var.shape != shape:
        raise ValueError(
            f"cell {cell.id}: kernel returned shapes {estimate.shape} and {sample_var.shape}, "
            f"expected (seeds, estimators, components) = {shape}")
    sources = list(np.array(exact_source, dtype=object).reshape(n_est * n_comp))
    labels = [spec.label for spec in cell.estimators]
    # the string columns as Arrow arrays (``arrow_array``): few distinct values, many rows
    return {
        "estimator": string_array(labels, np.tile(np.repeat(np.arange(n_est), n_comp),
                                                  n_seeds)),
        "param": string_array(list(components), np.tile(np.arange(n_comp), n_seeds * n_est)),
        "seed": np.repeat(np.asarray(cell.seeds, dtype=np.int64), n_est * n_comp),
        "estimate": estimate.ravel(),
        "sample_var": sample_var.ravel(),
        "exact_grad": np.tile(np.asarray(exact_grad, np.float64).reshape(-1), n_seeds),
        "exact_var": np.tile(np.asarray(exact_var, np.float64).reshape(-1), n_seeds),
        "exact_source": string_array(sources, np.tile(np.arange(n_est * n_comp), n_seeds)),
        "evals_per_sample": np.tile(np.repeat(np.asarray(evals_per_sample, np.int64), n_comp),
                                    n_seeds),
    }


def cell_table(cell, columns: dict) -> pa.Table:
    """The rows of one computed cell, cast to the schema: the kind's ``columns`` (from
    ``ProblemKind.compute``) plus the columns every cell has; absent columns are null."""
    n = len(columns["estimator"])
    rows = {"experiment": [cell.experiment] * n, "cell": [cell.id] * n,
            "problem": [cell.kind] * n, "backend": [cell.backend] * n,
            "n_samples": np.full(n, cell.n_samples, dtype=np.int64), **columns}
    fields = schema()
    unknown = sorted(set(rows) - set(fields.names))
    if unknown:
        raise ValueError(f"cell {cell.id}: columns {unknown} are not in the results schema")
    for name, values in rows.items():
        if len(values) != n:
            raise ValueError(f"cell {cell.id}: column {name} has {len(values)} rows, not {n}")
    arrays = [arrow_array(rows[f.name], f.type) if f.name in rows else pa.nulls(n, f.type)
              for f in fields]
    return pa.Table.from_arrays(arrays, schema=fields)


def arrow_array(values, type_: pa.DataType) -> pa.Array:
    """``pa.array(values, type=type_)`` for what cells hold, from NumPy buffers: an Arrow
    array (cast), a 1-D float64 / int64 array, a list of one repeated ``str``.  The same
    array, without ``pa.array``'s check for pandas objects, which imports pandas (0.3 s a
    process) that a run does not otherwise need; anything else goes to ``pa.array``."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else values.cast(type_)
    if isinstance(values, np.ndarray) and values.ndim == 1 and (
            (type_ == pa.float64() and values.dtype == np.float64)
            or (type_ == pa.int64() and values.dtype == np.int64)):
        values = np.ascontiguousarray(values)
        return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])
    if (type_ == pa.string() and isinstance(values, list) and values
            and type(values[0]) is str and values.count(values[0]) == len(values)):
        return string_array(values[:1], np.zeros(len(values), np.int64))
    return pa.array(values, type=type_)


def string_array(strings, index=None) -> pa.Array:
    """``pa.array([strings[i] for i in index], pa.string())`` (``index`` default: all, in
    order) for a short list of ``str`` and a long NumPy ``index``, built from buffers (see
    ``arrow_array``); ``pa.array`` if an element is not a ``str``."""
    index = np.arange(len(strings)) if index is None else np.asarray(index, np.int64)
    if not all(type(v) is str for v in strings):
        return pa.array([strings[i] for i in index], pa.string())
    encoded = [v.encode() for v in strings]
    if len(encoded) == 1 and len(index) * len(encoded[0]) < 2**31:       # one value
        offsets = np.arange(len(index) + 1, dtype=np.int32) * len(encoded[0])
        return pa.Array.from_buffers(pa.string(), len(index), [
            None, pa.py_buffer(offsets), pa.py_buffer(encoded[0] * len(index))])
    lengths = np.array([len(e) for e in encoded], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    offsets = np.zeros(len(index) + 1, np.int64)
    np.cumsum(lengths[index], out=offsets[1:])
    if offsets[-1] >= 2**31:
        return pa.array([strings[i] for i in index], pa.string())
    pool = np.frombuffer(b"".join(encoded), np.uint8)
    # byte j of the data is byte (j - offset of its row) of its row's string
    rows = np.repeat(np.arange(len(index)), lengths[index])
    data = pool[starts[index][rows] + np.arange(offsets[-1]) - offsets[:-1][rows]]
    return pa.Array.from_buffers(pa.string(), len(index), [
        None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the columns of the schema, in its order and types.

    Raises ``ValueError`` if a column is missing (that is a bug in the caller, not user error).
    """
    fields = schema()
    if table.schema.equals(fields):           # (cell_table's tables): nothing to do
        return table
    missing = [name for name in fields.names if name not in table.column_names]
    if missing:
        raise ValueError(f"results table lacks columns {missing}")
    return table.select(fields.names).cast(fields)


def _upgrade_v2(df):
    """Rows of a version-2 file in version-3 terms (version 2 predates problem kinds: its
    ``gaussian_cost`` rows are the expectation kind's, its ELBO rows kept the family in
    ``family``)."""
    df = df.copy()
    df["problem"] = df["problem"].replace({"gaussian_cost": "expectation"})
    elbo = df["problem"] == "elbo"
    df.loc[elbo, "distribution"] = df.loc[elbo, "family"]
    labels = []
    for _, row in df.iterrows():
        if row["problem"] == "elbo":
            text = f"{row['target']}, {row['family']}, d={row['dim']}"
            labels.append(text + (f": {row['target_params']}" if row["target_params"] else ""))
        else:
            params = ", ".join(f"{n}={row[n]:g}" for n in ("mu", "sigma", "k")
                               if row[n] == row[n])
            labels.append(f"{row['distribution']}, {row['cost']}: {params}")
    df["point"] = labels
    fields = schema()
    for f in fields:
        if f.name not in df.columns:
            df[f.name] = None
    return pa.Table.from_pandas(df[fields.names], schema=fields, preserve_index=False)


def _upgrade_v2_config(config: dict) -> dict:
    """A version-2 file's cell configuration in version-3 terms, i.e. the configuration (and
    so the id) of the cell that recomputes it: only the kind's name changed
    (``gaussian_cost`` -> ``expectation``); ELBO cells kept their configuration and id."""
    problem = config.get("problem")
    return {**config, "problem": "expectation" if problem == "gaussian_cost" else problem}


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
    return begin_atomic_write(path, write).commit()


class PendingWrite:
    """A file written into its hidden temporary sibling, not yet in place
    (``begin_atomic_write``): ``commit()`` makes it durable and renames it into place (fsync,
    rename, fsync of the directory), ``abort()`` removes it.  ``commit`` may run on another
    thread (the runner overlaps it with computing the next cell)."""

    def __init__(self, path: Path, tmp: Path, fh):
        self.path, self.tmp, self.fh = path, tmp, fh

    def commit(self) -> Path:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def begin_atomic_write(path: Path, write) -> PendingWrite:
    """The first half of ``atomic_write_bytes``: ``write(fh)`` into the hidden temporary
    file (removed on any exception), returned as a ``PendingWrite`` to commit."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fh = None
    try:
        fh = open(tmp, "wb")
        write(fh)
    except BaseException:
        if fh is not None:
            fh.close()
        tmp.unlink(missing_ok=True)
        raise
    return PendingWrite(path, tmp, fh)


def grid_digest(text: str) -> str:
    """First 16 hex digits of the sha256 of a grid file's text (``harness.grid``)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seeds_to_json(seeds):
    """A cell's seeds for the metadata: a list, or ``{"start": a, "stop": b}`` for more than
    ``COMPACT_SEEDS`` consecutive seeds."""
    n = len(seeds)
    if n > COMPACT_SEEDS:
        first = int(seeds[0])
        consecutive = (seeds.step == 1 if isinstance(seeds, range)
                       else all(int(s) == first + i for i, s in enumerate(seeds)))
        if consecutive:
            return {"start": first, "stop": first + n}
    return [int(s) for s in seeds]


def seeds_from_json(value):
    """The inverse of :func:`seeds_to_json`: a list of ints or a ``range``."""
    if isinstance(value, dict):
        return range(int(value["start"]), int(value["stop"]))
    return [int(s) for s in value]


def cell_metadata(cell, code: str | None = None, grid: str | None = None) -> dict:
    """The key-value metadata of a cell's file (module docstring); ``code`` defaults to the
    running code's digest."""
    seeds = seeds_to_json(cell.seeds)
    config = {**cell.to_dict(with_seeds=False), "seeds": seeds}
    metadata = {
        META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
        META_VERSION: __version__.encode(),
        META_CODE: (code or code_digest()).encode(),
        META_CELL: json.dumps(config, sort_keys=True).encode(),
        META_SEEDS: json.dumps(seeds).encode(),
    }
    if grid:
        metadata[META_GRID] = grid.encode()
    return metadata


def write_cell(results_dir, cell, tables, *, code: str | None = None,
               grid: str | None = None, defer: bool = False):
    """Write a cell's rows atomically to ``results_dir/<cell.id>.parquet``.

    ``tables``: one ``pyarrow.Table`` (from ``cell_table``) or an iterable of them, e.g. a
    generator computing one block of seeds at a time; each becomes a row group of the same
    hidden temporary file, renamed into place after the last.  Every table is cast to the
    schema; the file carries the metadata in the module docstring (``code``: the digest of the
    code that computed the rows, default the running code's; ``grid``: the grid's digest).
    Returns the path written.  Nothing visible is left if computing or writing fails.
    ``defer``: return the written file as a ``PendingWrite`` instead, for the caller to
    commit (or abort).
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(tables, pa.Table):
        tables = [tables]
    file_schema = schema().with_metadata(cell_metadata(cell, code, grid))

    def write(fh):
        writer = pq.ParquetWriter(fh, file_schema)
        try:
            for table in tables:
                writer.write_table(conform(table).replace_schema_metadata(file_schema.metadata))
        except BaseException:
            try:            # (the file is deleted next; closing only releases the writer)
                writer.close()
            except Exception:
                pass
            raise
        writer.close()

    pending = begin_atomic_write(results_dir / f"{cell.id}.parquet", write)
    return pending if defer else pending.commit()


def file_metadata(path) -> dict[bytes, bytes]:
    """The key-value metadata of one results file (reads only the footer)."""
    return dict(pq.read_schema(path).metadata or {})


@dataclass(frozen=True)
class StoredCell:
    """What a result file's footer says about it (``scan``)."""

    path: Path
    cell: str                    # the cell id (the file's stem)
    schema_version: int | None   # None: not a readable harness results file
    version: str = "?"           # the harness version that wrote it
    code: str | None = None      # the digest of the code that computed it (None: unknown)
    grid: str | None = None      # the digest of the grid that computed it (None: unknown)
    experiment: str | None = None
    config: dict | None = None   # the resolved cell configuration (seeds as stored)

    @property
    def readable(self) -> bool:
        return self.schema_version in READABLE_VERSIONS

    @property
    def current_schema(self) -> bool:
        return self.schema_version == SCHEMA_VERSION


def stored_cell(path: Path) -> StoredCell:
    """Read one result file's footer (never its rows)."""
    path = Path(path)
    try:
        meta = file_metadata(path)
        version = int(meta[META_SCHEMA_VERSION])
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return StoredCell(path, path.stem, None)
    try:
        config = json.loads(meta.get(META_CELL, b"null"))
    except ValueError:
        config = None

    def text(key):
        raw = meta.get(key)
        return raw.decode(errors="replace") if raw is not None else None

    return StoredCell(path, path.stem, version, text(META_VERSION) or "?", text(META_CODE),
                      text(META_GRID),
                      config.get("experiment") if isinstance(config, dict) else None,
                      config if isinstance(config, dict) else None)


def scan(run_dir) -> list[StoredCell]:
    """Every (non-hidden) result file of a run with what its footer says, sorted by name."""
    results = _results_dir(run_dir)
    return [stored_cell(p) for p in _result_files(results)] if results.is_dir() else []


def _schema_version(path: Path) -> int | None:
    """The file's schema version, or None if it is not a readable harness results file."""
    return stored_cell(path).schema_version


def finished_cells(run_dir) -> set[str]:
    """Ids of the cells whose results file is complete and has the current schema version
    (computed by any code: ``harness.provenance`` tells current from stale).

    Files of another schema version (or unreadable ones) are not finished: a rerun
    recomputes and replaces them.
    """
    return {f.cell for f in scan(run_dir) if f.current_schema}


def superseded_files(run_dir, stored: list[StoredCell] | None = None) -> dict[str, Path]:
    """Files of an older readable schema version whose cell has another id today, keyed by
    that id.  Rerunning the grid computes that cell into ``<id>.parquet``; the runner then
    removes the old file, which would otherwise hold a second copy of the cell's rows."""
    out = {}
    for f in scan(run_dir) if stored is None else stored:
        if f.current_schema or not f.readable or f.config is None:
            continue
        config = {**f.config, "seeds": seeds_from_json(f.config.get("seeds", []))}
        cell_id = config_id(_upgrade_v2_config(config))
        if cell_id != f.cell:
            out[cell_id] = f.path
    return out


def read_results(run_dir, files=None):
    """All rows of a run as a pandas DataFrame with the columns and types of the schema.

    Reads ``run_dir/results/*.parquet`` (hidden files skipped), or only ``files`` (paths),
    each file cast to the one schema (version-2 files upgraded).  ``df.attrs`` holds
    ``schema_version``, ``harness_versions`` (of the writers) and ``files``.  Raises
    ``ResultsError`` if the directory is missing or empty, or a file is unreadable or of an
    unknown schema version.
    """
    run_dir = Path(run_dir)
    results = _results_dir(run_dir)
    rerun = f"rerun `harness run GRID --out {run_dir}`"
    if not results.is_dir():
        raise ResultsError(f"{results}: no results directory (fix: run `harness run GRID "
                           f"--out {run_dir}` first, or pass the run's directory)")
    files = _result_files(results) if files is None else sorted(Path(p) for p in files)
    if not files:
        raise ResultsError(f"{results}: no result files (fix: {rerun} to compute them)")
    writers, current, old = set(), [], []
    for path in files:
        try:
            meta = file_metadata(path)
        except (OSError, pa.ArrowException) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ResultsError(f"{path}: not a readable results file ({first}) "
                               f"(fix: delete it and {rerun})") from None
        version = meta.get(META_SCHEMA_VERSION, b"?").decode(errors="replace")
        if version not in {str(v) for v in READABLE_VERSIONS}:
            raise ResultsError(
                f"{path}: results schema version {version}, this harness ({__version__}) reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))} (fix: {rerun} to recompute "
                f"it, or read it with the harness version that wrote it)"
            )
        (current if version == str(SCHEMA_VERSION) else old).append(path)
        writers.add(meta.get(META_VERSION, b"?").decode(errors="replace"))
    import pyarrow.dataset as ds  # here: it imports pandas, which writing does not need

    tables = []
    if current:
        tables.append(ds.dataset([str(p) for p in current], schema=schema(),
                                 format="parquet").to_table())
    tables += [_upgrade_v2(pq.read_table(p).to_pandas()) for p in old]
    df = pa.concat_tables(tables).to_pandas() if len(tables) > 1 else tables[0].to_pandas()
    df.attrs.update(schema_version=SCHEMA_VERSION, harness_versions=sorted(writers),
                    files=len(files))
    return df
