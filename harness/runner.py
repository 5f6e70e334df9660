"""The resumable run loop: one for every problem kind.

A *cell* (``harness.model.Cell``) is one point of a grid's sweep: one problem point and one
N, with all of the grid's estimators, components and seeds (they share one kernel call, so
estimators see common random numbers).  The grid's problem kind expands it into cells and
computes each; this module decides which cells to compute, computes each in blocks of seeds
and writes it atomically, and shows progress.  The steps are separate functions, so another
executor (e.g. cells as tasks on workers) can reuse them with the same rules:

``plan(grid, out_dir)``          which cells are done, missing, stale (computed by other code)
``compute_blocks(cell)``         one cell -> its rows, one ``pyarrow.Table`` per seed block
``compute_cell(cell)``           one cell -> all its rows in one table (small cells, the API)
``results.write_cell(...)``      one cell's tables -> one file, atomically
``claims.try_claim(...)``        one cell -> this process computes it, or another live one does

Rules (``run_grid``):

- A cell is *done* when its file has the current schema and was computed by the running
  code (``harness.provenance.code_digest``); *stale* when another code computed it: it is
  recomputed unless ``keep_stale``; ``force`` recomputes every cell.
- Several runs on one directory share the work: each cell is claimed before it is computed
  (``harness.claims``); a cell claimed by a live run is left to it and waited for at the end;
  a dead run's claim is taken over.  A cell finished by another run meanwhile is not
  computed again.
- Seeds are computed in blocks (a bounded number of rows and samples each), each written as
  a Parquet row group of the cell's one file: memory does not grow with the number of seeds,
  and the results are bitwise those of one block (every seed's numbers depend on the seed
  only).  The cell id does not depend on the blocks.
- A computed cell's file is written by this thread, then made durable and renamed into
  place (``results.PendingWrite.commit``: fsync, rename, fsync of the directory) on another
  thread while the next cell computes; its claim is released and it is counted once it is
  in place, and an error there stops the run like any write error.
- Before a long run (or with ``dry_run``) the cost is printed: samples, time from a quick
  calibration on a small copy of the first cell, disk; a run that cannot fit on the disk is
  refused before computing.  Without a terminal a progress line is printed at least every
  ``PROGRESS_EVERY`` seconds.
- SIGINT / SIGTERM (``KeyboardInterrupt`` / ``errors.Interrupted``) stop the run after
  removing its temporary file and claims: ``RunInterrupted`` says how to resume.
- Operating-system errors become one-line ``FilesystemError``s naming the path and a fix.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, claims
from .errors import (
    BackendError,
    FilesystemError,
    Interrupted,
    RunInterrupted,
    filesystem_error,
    interrupts_deferred,
)
from .kinds import KINDS
from .model import Cell, config_id
from .provenance import code_digest
from .registry import BACKENDS
from .results import (
    atomic_write_bytes,
    cell_table,
    grid_digest,
    scan,
    stored_cell,
    superseded_files,
    temp_files,
    write_cell,
)

__all__ = ["Cell", "Plan", "RunSummary", "compute_blocks", "compute_cell", "config_id",
           "expand_cells", "plan", "run_grid"]

# Seed blocks: at most this many rows, seeds and samples per block (a block of the
# expectation kind's kernel holds seeds x 64 chunks x terms partial sums; rows cost ~200 B
# each on their way to Parquet).  The first block is small, to measure the rows per seed.
ROWS_PER_BLOCK = 1 << 17
SEEDS_PER_BLOCK = 4096
SAMPLES_PER_BLOCK = 1 << 30
FIRST_BLOCK_SEEDS = 64
# Print the cost before a run of at least this many samples or seed rows (or --dry-run).
COST_NOTE_SAMPLES = 10**10
COST_NOTE_ROWS = 10**6
# Without a terminal, a progress line at least this often (seconds).
PROGRESS_EVERY = 30.0
# How often a run waiting for cells claimed by another run looks again (seconds).
WAIT_POLL = 1.0

RESUME = "resume with: harness run {grid} --out {out}"


def expand_cells(grid) -> list[Cell]:
    """The grid's cells, in the kind's deterministic order (duplicate points give one cell)."""
    return KINDS[grid.kind].cells(grid)


# ------------------------------------------------------------------------- summary, plan

@dataclass(frozen=True)
class RunSummary:
    """What ``run_grid`` did; ``str()`` is the one-line summary the CLI prints."""

    experiment: str
    out_dir: Path
    cells: int          # cells in the grid
    computed: int
    skipped: int
    samples: int        # draws computed in this run (N x seeds, summed over computed cells)
    seconds: float      # wall time of this run
    other_files: int = 0  # result files in the directory that this grid does not produce
    stale: int = 0        # of the computed cells, how many replaced results of other code
    kept_stale: int = 0   # stale cells kept (keep_stale): reported as computed by other code
    by_others: int = 0    # cells another run on the directory computed meanwhile
    cost: Cost | None = None   # the estimate printed before the run (if one was made)
    dry_run: bool = False

    @property
    def results_dir(self) -> Path:
        return Path(self.out_dir) / "results"

    def __str__(self) -> str:
        if self.dry_run:
            return (f"{self.experiment}: dry run: {self.cells} cells, {self.skipped} done, "
                    f"{self.cells - self.skipped} to compute"
                    + (f"; {self.cost}" if self.cost else "") + " (nothing computed)")
        extra = "".join([
            f", {self.stale} of them stale" if self.stale else "",
            f", {self.kept_stale} stale kept" if self.kept_stale else "",
            f", {self.by_others} by another run" if self.by_others else "",
        ])
        line = (f"{self.experiment}: {self.cells} cells ({self.computed} computed, "
                f"{self.skipped} skipped{extra}), {format_count(self.samples)} samples in "
                f"{self.seconds:.1f} s -> {self.results_dir}")
        if self.other_files:
            line += f" ({self.other_files} other result files in the directory, not from this grid)"
        return line


def format_count(x: float) -> str:
    """Compact count: ``950``, ``1.2e4``, ``5.6e8``."""
    if x < 10_000:
        return f"{x:.0f}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


@dataclass
class Plan:
    """What a run directory holds for a grid's cells, by cell id (``plan``)."""

    ids: list[str]                              # the grid's cells, in the grid's order
    code: str                                   # the running code's digest
    done: list[str] = field(default_factory=list)      # current schema, this code
    stale: list[str] = field(default_factory=list)     # current schema, other code
    missing: list[str] = field(default_factory=list)   # no file, or unreadable / old
    other_files: list[Path] = field(default_factory=list)  # files of no cell of this grid
    stored: dict = field(default_factory=dict)  # cell id -> results.StoredCell

    def todo(self, force: bool = False, keep_stale: bool = False) -> set[str]:
        if force:
            return set(self.ids)
        return set(self.missing) | (set() if keep_stale else set(self.stale))


def plan(ids, out_dir, code: str | None = None) -> Plan:
    """Classify cells (their ids) by the files in ``out_dir/results`` (footers only)."""
    ids = list(ids)
    p = Plan(ids, code or code_digest())
    stored = {f.cell: f for f in scan(out_dir)}
    p.stored = stored
    for cell_id in ids:
        f = stored.get(cell_id)
        if f is None or not f.current_schema:
            p.missing.append(cell_id)
        elif f.code == p.code:
            p.done.append(cell_id)
        else:
            p.stale.append(cell_id)
    known = set(ids)
    superseded = set(superseded_files(out_dir, list(stored.values())).values())
    p.other_files = [f.path for i, f in stored.items() if i not in known
                     and f.path not in superseded]
    return p


@dataclass(frozen=True)
class RunRecord:
    """The grid last run in a directory (``grid.yaml`` and ``grid.json``, written by
    ``run_grid``): its name, the path it was run from, its digest, its cells' ids and N."""

    name: str
    path: str
    grid: str | None
    cells: tuple            # ((cell id, N), ...) in the grid's order
    text: str
    user_files: tuple = ()  # user-written modules its numbers depend on (Grid.user_files)

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.cells]

    @property
    def code(self) -> str:
        """The digest a cell of this grid has when this code computed it: the package's
        sources and the user-written modules the grid names (as they are now)."""
        return code_digest(f for f in self.user_files if Path(f).is_file())


def write_record(out_dir: Path, grid, cells: list[Cell], digest: str) -> None:
    source = getattr(grid, "source_text", "") or ""
    record = {"name": grid.name, "path": str(grid.path), "grid": digest,
              "cells": [[c.id, c.n_samples] for c in cells],
              "user_files": list(grid.user_files)}
    for path in (out_dir / "grids" / f"{digest}.yaml", out_dir / "grid.yaml"):
        atomic_write_bytes(path, lambda fh: fh.write(source.encode()))
    atomic_write_bytes(out_dir / "grid.json", lambda fh: fh.write(json.dumps(record).encode()))


def last_run(run_dir) -> RunRecord | None:
    """The grid last run in ``run_dir``, or None if none is recorded.

    Directories written before ``grid.json`` was kept: ``grid.yaml`` is validated and
    expanded again (a grid without ``name:`` was named after its file, which only the
    results remember: the experiment whose cells match is taken); None if it does not load.
    """
    from .config import parse_grid
    from .errors import ConfigError

    run_dir = Path(run_dir)
    yaml_path = run_dir / "grid.yaml"
    text = yaml_path.read_text(encoding="utf-8", errors="replace") if yaml_path.is_file() \
        else None
    try:
        about = json.loads((run_dir / "grid.json").read_text())
        cells = tuple((str(i), int(n)) for i, n in about["cells"])
        # the text of this very grid (grid.yaml may be a newer run's, interrupted between
        # writing it and grid.json)
        kept = run_dir / "grids" / f"{about.get('grid')}.yaml"
        if kept.is_file():
            text = kept.read_text(encoding="utf-8", errors="replace")
        return RunRecord(str(about["name"]), str(about["path"]), about.get("grid"), cells,
                         text or "", tuple(str(f) for f in about.get("user_files", ())))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if text is None:
        return None
    try:
        grid = parse_grid(text, yaml_path)
        stored = {f.cell for f in scan(run_dir)}
        best = grid
        matched = len({c.id for c in expand_cells(grid)} & stored)
        if grid.name == yaml_path.stem:
            for name in sorted({f.experiment for f in scan(run_dir) if f.experiment})[:5]:
                candidate = parse_grid(text, yaml_path, default_name=name)
                n = len({c.id for c in expand_cells(candidate)} & stored)
                if n > matched:
                    best, matched = candidate, n
    except ConfigError:
        return None
    return RunRecord(best.name, str(yaml_path), grid_digest(text),
                     tuple((c.id, c.n_samples) for c in expand_cells(best)), text,
                     best.user_files)


# --------------------------------------------------------------------------- computing

def require_backend(backend: str) -> None:
    """Fail early (one-line BackendError) if ``backend`` cannot run here, e.g. cuda without a
    GPU, before anything is created."""
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is not available (fix: use one of: "
                           f"{', '.join(BACKENDS)})")
    module = importlib.import_module(f"harness.backends.{backend}")
    require = getattr(module, "require", None)
    if require is not None:
        require()


def seed_blocks(cell: Cell, rows_per_seed: float | None = None, first: bool = True) -> int:
    """Seeds per block for a cell: bounded rows, seeds and samples (at least one seed); the
    first block (rows per seed not known yet) is small unless ``first`` is False."""
    per_seed = cell.samples / max(len(cell.seeds), 1)
    by_samples = SAMPLES_PER_BLOCK // max(int(per_seed), 1)
    if rows_per_seed:
        by_rows = ROWS_PER_BLOCK // max(int(math.ceil(rows_per_seed)), 1)
    else:
        by_rows = FIRST_BLOCK_SEEDS if first else SEEDS_PER_BLOCK
    return int(max(1, min(SEEDS_PER_BLOCK, by_samples, by_rows)))


def compute_blocks(cell: Cell, on_block: Callable | None = None) -> Iterator[pa.Table]:
    """Compute one cell with its problem kind, one block of seeds at a time: yields each
    block's rows as a ``pyarrow.Table`` (``results.cell_table``: the cell's id on every row).

    Every seed's numbers depend on the seed alone (counter-based streams, chunking by N), so
    the concatenated blocks equal one call with every seed, bit for bit.  ``on_block(cell,
    seeds_done)`` is called after each block (progress)."""
    compute = KINDS[cell.kind].compute
    seeds, start, size = cell.seeds, 0, seed_blocks(cell)
    while start < len(seeds):
        block = seeds[start:start + size]
        table = cell_table(cell, compute(cell.block(block)))
        start += len(block)
        if on_block is not None:
            on_block(cell, start)
        yield table
        size = seed_blocks(cell, table.num_rows / len(block))


def compute_cell(cell: Cell) -> pa.Table:
    """Compute one cell; all its rows as one ``pyarrow.Table`` (for small cells and the
    library API; the runner writes ``compute_blocks`` block by block)."""
    tables = list(compute_blocks(cell))
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


# ---------------------------------------------------------------------------- the cost

@dataclass(frozen=True)
class Cost:
    """An estimate of a run's cost, from computing a small copy of its first cell twice."""

    cells: int
    samples: int
    seconds: float         # estimated wall time (compile + samples / rate)
    rate: float            # samples per second measured on the small copy
    disk: float            # estimated bytes of result files
    free: float | None     # free bytes where they go (None if unknown)

    def __str__(self) -> str:
        free = f", {format_bytes(self.free)} free" if self.free is not None else ""
        return (f"cost: {self.cells} cells to compute, {format_count(self.samples)} samples, "
                f"about {format_seconds(self.seconds)} (calibrated at "
                f"{format_count(self.rate)} samples/s on small copies of its cells), "
                f"about {format_bytes(self.disk)} of results{free}")


CALIBRATION_SAMPLES = 1 << 20


def _calibrate(cell: Cell, rows_per_seed: float | None = None):
    """Compute one block of a small copy of ``cell`` (the kind's ``calibration``: less work
    per seed) as the run would size it, at most ``CALIBRATION_SAMPLES`` samples: (seconds,
    seeds, samples per seed, table)."""
    kind = KINDS[cell.kind]
    small = kind.calibration(cell) if kind.calibration is not None else cell
    per_seed = max(small.samples / max(len(small.seeds), 1), 1.0)
    n = min(len(small.seeds), seed_blocks(small, rows_per_seed, first=False),
            max(1, int(CALIBRATION_SAMPLES // per_seed)))
    if kind.calibration is None:
        n = min(n, 8)
    started = time.perf_counter()
    table = compute_cell(small.block(small.seeds[:n]))
    return max(time.perf_counter() - started, 1e-6), n, per_seed, table


def _encoded_size(table: pa.Table) -> int:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.tell()


def estimate_cost(todo: list[Cell], out_dir: Path) -> Cost:
    """Estimate a run's time and disk before it starts: compute a block of two seeds of a
    small copy of the cell with the most work per seed (this compiles its kernel and gives
    the rows per seed), then a full block of it (the rate in samples per second) and of the
    cell with the least work per seed (the cost per seed besides sampling); the encoded size
    of the rows gives the disk."""
    def work(c):
        return c.samples / max(len(c.seeds), 1)

    big, small = max(todo, key=work), min(todo, key=work)
    started = time.perf_counter()
    first = compute_cell(big.block(big.seeds[:min(len(big.seeds), 2)]))
    compile_seconds = time.perf_counter() - started
    rows_per_seed = first.num_rows / min(len(big.seeds), 2)
    seconds, n, per_seed, table = _calibrate(big, rows_per_seed)
    rate = per_seed * n / seconds
    overhead = 0.0                    # seconds per seed besides its samples
    if work(small) < work(big):
        seconds_small, n_small, per_seed_small, _ = _calibrate(small, rows_per_seed)
        overhead = max(seconds_small / n_small - per_seed_small / rate, 0.0)
    samples = sum(c.samples for c in todo)
    estimate = compile_seconds + sum(c.samples / rate + len(c.seeds) * overhead for c in todo)
    # Parquet's cost of a row (half the table against all of it: the footer and the
    # dictionaries of repeated values are paid once per file) and of a file
    rows = table.num_rows
    full, half, empty = (_encoded_size(table.slice(0, k)) for k in (rows, rows // 2, 0))
    bytes_per_row = (full - half) / max(rows - rows // 2, 1)
    disk = sum(len(c.seeds) * rows_per_seed * bytes_per_row + empty for c in todo)
    free = None
    for path in (Path(out_dir), *Path(out_dir).absolute().parents):
        if path.exists():
            try:
                free = float(shutil.disk_usage(path).free)
            except OSError:
                pass
            break
    return Cost(len(todo), samples, estimate, rate, disk, free)


# ---------------------------------------------------------------------------- the loop

def _remove_stale_temp_files(*directories: Path) -> None:
    # Left by kill -9 or power loss.  A live process's file (another run writing into the
    # same directory right now) is left alone.
    stale = [t for d in directories if d.is_dir()
             for t in (*temp_files(d), *d.glob(".grid.*.tmp-*"), *d.glob(".*.yaml.tmp-*"))]
    for tmp in stale:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and claims.pid_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _os_errors(action: str, path: Path):
    """Turn an OSError of the block into a one-line FilesystemError naming ``path``."""
    try:
        yield
    except OSError as err:
        raise filesystem_error(err, action, path,
                               elsewhere="choose another --out directory") from err


def run_grid(grid, out_dir, force: bool = False, progress=None, *, keep_stale: bool = False,
             dry_run: bool = False, echo: Callable[[str], None] | None = None,
             executor=None) -> RunSummary:
    """Compute every cell of ``grid`` that ``out_dir`` does not hold (module docstring).

    Writes ``out_dir/results/<cell>.parquet``, the grid's text to ``out_dir/grid.yaml``
    (the grid last run here: what ``harness report`` reports) and to
    ``out_dir/grids/<digest>.yaml``.  ``force`` recomputes every cell; ``keep_stale`` keeps
    cells computed by other code.  ``progress``: None shows a bar on stderr only if stderr is
    a terminal (else a line every ``PROGRESS_EVERY`` s); True/False force the bar on/off.
    ``dry_run``: print the cost and stop (nothing is written).  ``echo``: where notes go
    (default stderr).  ``executor``: who computes the cells (``harness.executors``:
    ``executor.compute(cells)`` yields ``(cell, table)`` as cells finish, e.g. on Dask
    workers); this process claims each cell before handing it out and writes every result,
    so the skip, stale and claim rules are the same.  None computes them here, one after
    another, block by block.
    """
    started = time.perf_counter()
    echo = echo or _stderr
    out_dir = Path(out_dir)
    require_backend(grid.backend)
    results_dir = out_dir / "results"
    source = getattr(grid, "source_text", "") or ""
    digest = grid_digest(source)
    # a user's cost or target module counts as code: editing it makes its cells stale
    code = code_digest(grid.user_files)

    cells = expand_cells(grid)
    p = plan([c.id for c in cells], out_dir, code)
    todo_ids = p.todo(force, keep_stale)
    todo = [c for c in cells if c.id in todo_ids]
    stale_ids = set(p.stale)
    samples = sum(c.samples for c in todo)
    seed_rows = sum(len(c.seeds) * len(c.estimators) for c in todo)
    cost = None
    if todo and (dry_run or samples >= COST_NOTE_SAMPLES or seed_rows >= COST_NOTE_ROWS):
        cost = estimate_cost(todo, out_dir)
        if cost.free is not None and cost.disk > cost.free and not dry_run:
            raise FilesystemError(
                f"{out_dir}: not enough disk space: the results need about "
                f"{format_bytes(cost.disk)}, {format_bytes(cost.free)} are free (fix: free "
                "some space, choose another --out directory, or run fewer seeds or cells)")
        echo(f"{grid.name}: {cost}")
    if dry_run:
        return RunSummary(grid.name, out_dir, len(cells), 0, len(cells) - len(todo), 0,
                          time.perf_counter() - started, len(p.other_files), cost=cost,
                          dry_run=True)

    with _os_errors("create the run directory", out_dir):
        for d in (out_dir, results_dir, out_dir / "grids"):
            d.mkdir(parents=True, exist_ok=True)
    with _os_errors("write the grid", out_dir):
        _remove_stale_temp_files(out_dir, results_dir, out_dir / "grids")
        write_record(out_dir, grid, cells, digest)

    # Files an older harness wrote for cells of this grid under another id: each is removed
    # once its cell is in the current format (now, if it already is; after computing it).
    ids = set(p.ids)
    superseded = {i: f for i, f in superseded_files(out_dir, list(p.stored.values())).items()
                  if i in ids}
    for cell_id in set(p.done) & superseded.keys():
        superseded.pop(cell_id).unlink(missing_ok=True)
    # (mtime, size) of each file at the start: a file that changes meanwhile was written by
    # another run, which then computed that cell (with --force too)
    at_start = {i: _stamp(f.path) for i, f in p.stored.items()}

    show = sys.stderr.isatty() if progress is None else bool(progress)
    counts = {"computed": 0, "stale": 0, "by_others": 0}
    computed_samples = 0
    done_before = len(cells) - len(todo)
    bar = _Progress(grid.name, todo, done_before, enabled=show,
                    ticker=progress is None and not show, echo=echo,
                    estimate=cost.seconds if cost else None)

    def finished_by_another(cell: Cell) -> bool:
        path = results_dir / f"{cell.id}.parquet"
        f = stored_cell(path) if path.exists() else None
        return (f is not None and f.current_schema and f.code == code
                and _stamp(path) != at_start.get(cell.id))

    # The cell computed last, whose file is being made durable and renamed into place
    # (``PendingWrite.commit``: fsync, rename, fsync of the directory: waiting for the disk)
    # on a thread while the next cell computes: (cell, its claim, the commit's future).
    in_flight: list = []
    committer = ThreadPoolExecutor(1, thread_name_prefix="harness-commit")

    def settle(wait_only: bool = False) -> None:
        """Wait for the cell in flight; then release its claim and count it (``wait_only``:
        on the way out after an error, only wait and release)."""
        if not in_flight:
            return
        cell, claim, future = in_flight[0]
        try:
            with _os_errors("write results", results_dir):
                future.result()
                if cell.id in superseded:
                    superseded.pop(cell.id).unlink(missing_ok=True)
        except BaseException:
            if not wait_only:
                raise
        finally:
            wait_futures([future])      # (interrupted while waiting: the file goes in place)
            in_flight.clear()
            with interrupts_deferred():
                claim.release()
        if not wait_only:
            record(cell, "computed")

    def attempt(cell: Cell) -> str:
        """'computed' (its file is committed in the background: ``settle``), 'other'
        (another run finished it) or 'busy' (a live run holds it)."""
        claim = pending = None
        try:
            # (a signal between taking the claim and holding its handle would orphan it)
            with interrupts_deferred(), _os_errors("claim a cell", results_dir):
                claim = claims.try_claim(results_dir, cell.id)
            if claim is None:
                return "busy"
            if finished_by_another(cell):
                return "other"
            with _os_errors("write results", results_dir):
                pending = write_cell(results_dir, cell, compute_blocks(cell, bar.block),
                                     code=code, grid=digest, defer=True)
            settle()
            with interrupts_deferred():
                in_flight.append((cell, claim, committer.submit(pending.commit)))
                claim = pending = None
            return "computed"
        finally:
            if pending is not None:
                pending.abort()
            if claim is not None:
                with interrupts_deferred():
                    claim.release()

    def record(cell: Cell, outcome: str) -> None:
        nonlocal computed_samples
        bar.cell_done(cell, outcome == "computed")
        if outcome == "computed":
            computed_samples += cell.samples
            counts["computed"] += 1
            counts["stale"] += cell.id in stale_ids
        else:
            counts["by_others"] += 1

    def claimed(cells, waiting, held):
        """The cells this run claims, as the executor asks for them (busy ones wait)."""
        for cell in cells:
            with interrupts_deferred(), _os_errors("claim a cell", results_dir):
                claim = claims.try_claim(results_dir, cell.id)
            if claim is None:
                waiting.append(cell)
            elif finished_by_another(cell):
                with interrupts_deferred():
                    claim.release()
                record(cell, "other")
            else:
                held[cell.id] = claim
                yield cell

    def run_on(executor, cells, waiting) -> None:
        held = {}
        executor.start(len(cells))
        computed = executor.compute(claimed(cells, waiting, held))
        try:
            with contextlib.closing(computed):
                for cell, table in computed:
                    with _os_errors("write results", results_dir):
                        write_cell(results_dir, cell, table, code=code, grid=digest)
                        if cell.id in superseded:
                            superseded.pop(cell.id).unlink(missing_ok=True)
                    with interrupts_deferred():
                        held.pop(cell.id).release()
                    record(cell, "computed")
        finally:
            with interrupts_deferred():
                for claim in held.values():
                    claim.release()

    try:
        with bar:
            waiting = []
            if executor is not None and todo:
                run_on(executor, todo, waiting)
            else:
                for cell in todo:
                    outcome = attempt(cell)
                    if outcome == "busy":
                        waiting.append(cell)
                    elif outcome == "other":
                        record(cell, outcome)
                settle()
            if waiting:
                holders = sorted({_holder(results_dir, c.id) for c in waiting} - {None})
                echo(f"{grid.name}: waiting for {len(waiting)} cells being computed by "
                     "another run" + (f" ({', '.join(holders)})" if holders else ""))
            while waiting:        # a live run's cells: finished by it, or taken over
                time.sleep(WAIT_POLL)
                still = []
                for cell in waiting:
                    outcome = attempt(cell)
                    if outcome == "busy":
                        still.append(cell)
                    elif outcome == "other":
                        record(cell, outcome)
                settle()
                waiting = still
    except (KeyboardInterrupt, Interrupted) as err:
        settle(wait_only=True)
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        # counted from the files (the signal may have come between writing and counting)
        now = plan(p.ids, out_dir, code).done
        fresh = [i for i in now if _stamp(results_dir / f"{i}.parquet") != at_start.get(i)]
        raise RunInterrupted(
            f"interrupted by {name}: {len(now)} of {len(cells)} cells done "
            f"({len(fresh)} computed in this run), no partial file left; "
            + RESUME.format(grid=grid.path, out=out_dir), signum) from None
    finally:
        settle(wait_only=True)           # any other error: the cell in flight, then release
        committer.shutdown()

    return RunSummary(
        experiment=grid.name,
        out_dir=out_dir,
        cells=len(cells),
        computed=counts["computed"],
        skipped=len(cells) - counts["computed"],
        samples=computed_samples,
        seconds=time.perf_counter() - started,
        other_files=len(p.other_files),
        stale=counts["stale"],
        kept_stale=len(p.stale) if keep_stale and not force else 0,
        by_others=counts["by_others"],
        cost=cost,
    )


def _stamp(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _holder(results_dir: Path, cell_id: str) -> str | None:
    info = claims.owner(Path(results_dir) / claims.CLAIMS / f"{cell_id}.claim")
    return f"pid {info.get('pid')} on {info.get('host')}" if info else None


# ---------------------------------------------------------------------------- progress

class _Progress:
    """A rich progress bar on stderr (cells done/total, samples/s, ETA); or, without a
    terminal (``ticker``), a plain line at least every ``PROGRESS_EVERY`` seconds; or
    nothing."""

    def __init__(self, name: str, todo: list[Cell], skipped: int, enabled: bool,
                 ticker: bool = False, echo=_stderr, estimate: float | None = None):
        self.enabled = enabled and bool(todo)
        self.ticker = ticker and bool(todo) and not self.enabled
        self.name, self.todo, self.skipped, self.echo = name, todo, skipped, echo
        self.total_samples = sum(c.samples for c in todo)
        self.done_samples = 0.0
        self.cells_done = skipped
        self.cell_fraction: dict[str, float] = {}
        self.estimate = estimate
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.started = time.perf_counter()
        if self.ticker:
            self._thread = threading.Thread(target=self._tick, daemon=True,
                                            name="harness-progress")
            self._thread.start()
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class SamplesPerSecond(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                if not speed and task.elapsed:
                    speed = task.completed / task.elapsed
                return Text(f"{format_count(speed or 0)} samples/s", style="progress.data.speed")

        # The bar measures samples, not cells: cells differ in N by orders of magnitude,
        # so only a sample count gives a meaningful rate and ETA.
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[cells]}/{task.fields[cells_total]} cells"),
            SamplesPerSecond(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.__enter__()
        total_cells = len(self.todo) + self.skipped
        self.task = self.progress.add_task(self.name, total=self.total_samples,
                                           cells=self.skipped, cells_total=total_cells)
        return self

    def block(self, cell: Cell, seeds_done: int) -> None:
        """After a block of seeds of ``cell`` (called by ``compute_blocks``)."""
        fraction = seeds_done / max(len(cell.seeds), 1)
        before = self.cell_fraction.get(cell.id, 0.0)
        self.cell_fraction[cell.id] = fraction
        step = (fraction - before) * cell.samples
        self.done_samples += step
        if self.enabled:
            self.progress.update(self.task, advance=step)

    def cell_done(self, cell: Cell, computed: bool) -> None:
        self.cells_done += 1
        rest = (1.0 - self.cell_fraction.get(cell.id, 0.0)) * cell.samples
        self.done_samples += rest
        if self.enabled:
            cells = self.progress.tasks[0].fields["cells"] + 1
            self.progress.update(self.task, advance=rest, cells=cells)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        total_cells = len(self.todo) + self.skipped
        share = self.done_samples / self.total_samples if self.total_samples else 0.0
        if share > 0:
            eta = f"ETA {format_seconds(elapsed * (1 - share) / share)}"
        elif self.estimate is not None:
            eta = f"ETA {format_seconds(max(self.estimate - elapsed, 0))} (estimated)"
        else:
            eta = "ETA unknown"
        return (f"{self.name}: {self.cells_done}/{total_cells} cells, "
                f"{format_count(self.done_samples)}/{format_count(self.total_samples)} "
                f"samples ({100 * share:.0f}%), {format_seconds(elapsed)} elapsed, {eta}")

    def _tick(self):
        while not self._stop.wait(PROGRESS_EVERY):
            self.echo(self.line())

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.enabled:
            self.progress.__exit__(*exc)
        return False


# ------------------------------------------------------------------------------ status

def run_status(run_dir) -> str:
    """``harness status``: the cells of the grid last run in ``run_dir`` by state (done,
    stale: computed by other code, missing, running: claimed by a live run) and the files of
    other grids, with the code that computed them; then the cells that are not done."""
    run_dir = Path(run_dir)
    record = last_run(run_dir)
    current = record.code if record is not None else code_digest()
    stored = scan(run_dir)
    running = claims.live_claims(run_dir / "results")
    lines = []

    def code_of(files) -> str:
        seen: dict = {}
        for f in files:
            key = (f.code or "unknown", f.version)
            seen[key] = seen.get(key, 0) + 1
        return "; ".join(f"code {c} (harness {v}){' = this code' if c == current else ''}"
                         + (f": {n}" if len(seen) > 1 else "") for (c, v), n in seen.items())

    if record is None:
        lines.append(f"{run_dir}: no grid recorded (no grid.json or valid grid.yaml); "
                     f"{len(stored)} result files")
        others = stored
    else:
        p = plan(record.ids, run_dir, current)
        not_done = [i for i in record.ids if i not in set(p.done)]
        active = [i for i in not_done if i in running]
        known = set(record.ids)
        others = [f for f in stored if f.cell not in known]
        lines.append(f"{run_dir}: grid {record.name} ({record.path}): {len(record.ids)} "
                     f"cells: {len(p.done)} done, {len(p.stale)} stale, {len(p.missing)} "
                     f"missing ({len(active)} running); {len(others)} foreign files")
        lines.append(f"  done     {len(p.done):6d}  " + code_of([p.stored[i] for i in p.done]))
        lines.append(f"  stale    {len(p.stale):6d}  "
                     + code_of([p.stored[i] for i in p.stale]))
        lines.append(f"  missing  {len(p.missing):6d}")
        lines.append(f"  running  {len(active):6d}  " + ", ".join(sorted(
            {f"pid {running[i].get('pid')} on {running[i].get('host')}" for i in active})))
    groups: dict = {}
    for f in others:
        groups.setdefault((f.experiment or "?", f.grid or "not recorded"), []).append(f)
    for (experiment, digest), files in groups.items():
        lines.append(f"  foreign  {len(files):6d}  grid {experiment} ({digest}); "
                     + code_of(files))
    lines.append(f"this code: {current} (harness {__version__})")
    if record is not None and not_done:
        n_of = dict(record.cells)
        stale = set(p.stale)
        lines.append("cells not done:")
        for cell_id in not_done[:STATUS_CELLS]:
            state = ("running" if cell_id in running else
                     "stale" if cell_id in stale else "missing")
            code = p.stored[cell_id].code if cell_id in p.stored else None
            lines.append(f"  {state:8} {cell_id}  N={n_of[cell_id]}"
                         + (f"  code {code or 'unknown'}" if cell_id in stale else ""))
        if len(not_done) > STATUS_CELLS:
            lines.append(f"  ... and {len(not_done) - STATUS_CELLS} more")
    return "\n".join(line.rstrip() for line in lines)


STATUS_CELLS = 20
