"""Grid expansion, cell ids, and the resumable run loop.

A *cell* is one point of a grid's sweep: one value of every problem parameter and one N,
with all of the grid's estimators, components and seeds (they share one kernel call, so
estimators see common random numbers).  Its id is a hash of its resolved configuration, so
a rerun of the same grid finds the cells already computed and skips them.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BackendError
from .registry import BACKENDS
from .results import atomic_write_bytes, cell_table, finished_cells, temp_files, write_cell

# The objective family: E_q[cost(x)] for a Gaussian q.  Future ELBO targets get their own name.
PROBLEM = "gaussian_cost"


def config_id(config: dict) -> str:
    """A cell's id: first 16 hex digits of sha256 of the canonical JSON of its resolved
    configuration (the same config always gives the same id, any change a new one)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One unit of work and one results file.

    ``params`` is ``((name, value), ...)`` in the grid's order (distribution params, then
    cost params); ``estimators`` holds ``EstimatorSpec``-like objects (``name``, ``options``,
    ``label``).  Values are normalised on construction (floats, ints, tuples), so ``k = -3``
    and ``k = -3.0`` give the same cell and the same id.
    """

    experiment: str
    distribution: str
    cost: str
    params: tuple
    wrt: tuple
    estimators: tuple
    n_samples: int
    seeds: tuple
    backend: str = "cpu"

    def __post_init__(self):
        norm = object.__setattr__
        norm(self, "params", tuple((str(n), float(v)) for n, v in self.params))
        norm(self, "wrt", tuple(str(c) for c in self.wrt))
        norm(self, "estimators", tuple(self.estimators))
        norm(self, "n_samples", int(self.n_samples))
        norm(self, "seeds", tuple(int(s) for s in self.seeds))

    @property
    def problem(self) -> str:
        return PROBLEM

    @property
    def param_dict(self) -> dict[str, float]:
        return dict(self.params)

    def to_dict(self) -> dict:
        """The resolved configuration: plain JSON types, stored in the file metadata."""
        return {
            "experiment": self.experiment,
            "problem": self.problem,
            "distribution": self.distribution,
            "cost": self.cost,
            "params": dict(self.params),
            "wrt": list(self.wrt),
            "estimators": [
                {"name": e.name, "options": {str(k): v for k, v in e.options}, "label": e.label}
                for e in self.estimators
            ],
            "n_samples": self.n_samples,
            "seeds": list(self.seeds),
            "backend": self.backend,
        }

    @property
    def id(self) -> str:
        return config_id(self.to_dict())

    @property
    def samples(self) -> int:
        """Draws of the cell: N per seed (shared by all estimators and components)."""
        return self.n_samples * len(self.seeds)


def expand_cells(grid) -> list[Cell]:
    """One cell per point of ``product(*param values) x n_samples``, N varying fastest.

    The order is the grid's order (parameters in ``grid.params`` order, values as listed),
    so it is deterministic.  Duplicate points (e.g. ``k: [0, 0.0]``) give one cell.
    """
    if getattr(grid, "kind", None) == "elbo":      # ELBO problems: harness.vi.runner
        from .vi.runner import expand_cells as expand_elbo_cells
        return expand_elbo_cells(grid)
    names = [name for name, _ in grid.params]
    cells, seen = [], set()
    for values in itertools.product(*(vals for _, vals in grid.params)):
        for n in grid.n_samples:
            cell = Cell(
                experiment=grid.name,
                distribution=grid.distribution,
                cost=grid.cost,
                params=tuple(zip(names, values)),
                wrt=grid.wrt,
                estimators=grid.estimators,
                n_samples=n,
                seeds=grid.seeds,
                backend=grid.backend,
            )
            if cell.id not in seen:
                seen.add(cell.id)
                cells.append(cell)
    return cells


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

    @property
    def results_dir(self) -> Path:
        return Path(self.out_dir) / "results"

    def __str__(self) -> str:
        line = (f"{self.experiment}: {self.cells} cells ({self.computed} computed, "
                f"{self.skipped} skipped), {format_count(self.samples)} samples in "
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


def _kernel(backend: str):
    """The backend's ``estimate`` function, looked up at call time (tests replace it)."""
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is not available (fix: use one of: "
                           f"{', '.join(BACKENDS)})")
    module = importlib.import_module(f"harness.backends.{backend}")
    require = getattr(module, "require", None)
    if require is not None:
        require()  # e.g. cuda without a GPU: a one-line BackendError saying what to do
    return module.estimate


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temp_files(*directories: Path) -> None:
    # Left by kill -9 or power loss.  A live process's file (another run writing into the
    # same directory right now) is left alone.
    stale = [t for d in directories for t in (*temp_files(d), *d.glob(".grid.yaml.tmp-*"))]
    for tmp in stale:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)


def compute_cell(cell: Cell):
    """Run the backend kernel on one cell; returns ``(estimate, sample_var, seconds)``.

    The arrays have shape ``(len(cell.seeds), len(cell.estimators), len(cell.wrt))``.
    """
    estimate = _kernel(cell.backend)
    start = time.perf_counter()
    est, var = estimate(cell.distribution, cell.cost, list(cell.estimators), cell.wrt,
                        cell.param_dict, cell.n_samples, np.asarray(cell.seeds, dtype=np.int64))
    return est, var, time.perf_counter() - start


def run_grid(grid, out_dir, force: bool = False, progress=None) -> RunSummary:
    """Compute every unfinished cell of ``grid`` into ``out_dir/results/<cell>.parquet``.

    Copies the grid text to ``out_dir/grid.yaml``; skips cells whose file is complete unless
    ``force``.  ``progress``: None shows a progress bar on stderr only if stderr is a
    terminal; True/False force it on/off.  Safe to interrupt at any point: files are
    written atomically and a rerun completes the run.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _kernel(grid.backend)  # fail early (BackendError) before creating anything
    results_dir = out_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(out_dir, results_dir)
    source = getattr(grid, "source_text", "") or ""
    atomic_write_bytes(out_dir / "grid.yaml", lambda fh: fh.write(source.encode()))

    cells = expand_cells(grid)
    done = set() if force else finished_cells(out_dir)
    todo = [c for c in cells if c.id not in done]
    ids = {c.id for c in cells}
    other = sum(1 for p in results_dir.glob("*.parquet")
                if not p.name.startswith((".", "_")) and p.stem not in ids)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    with _Progress(grid.name, todo, len(cells) - len(todo), enabled=show) as bar:
        for cell in todo:
            if hasattr(cell, "compute_table"):     # ELBO cells build their own rows
                table = cell.compute_table()
            else:
                est, var, seconds = compute_cell(cell)
                table = cell_table(cell, est, var, seconds)
            write_cell(results_dir, cell, table)
            bar.advance(cell)

    return RunSummary(
        experiment=grid.name,
        out_dir=out_dir,
        cells=len(cells),
        computed=len(todo),
        skipped=len(cells) - len(todo),
        samples=sum(c.samples for c in todo),
        seconds=time.perf_counter() - started,
        other_files=other,
    )


class _Progress:
    """A rich progress bar on stderr (cells done/total, samples/s, ETA), or nothing."""

    def __init__(self, name: str, todo: list[Cell], skipped: int, enabled: bool):
        self.enabled = enabled and bool(todo)
        self.name, self.todo, self.skipped = name, todo, skipped

    def __enter__(self):
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
        self.task = self.progress.add_task(self.name, total=sum(c.samples for c in self.todo),
                                           cells=self.skipped, cells_total=total_cells)
        return self

    def advance(self, cell: Cell) -> None:
        if self.enabled:
            cells = self.progress.tasks[0].fields["cells"] + 1
            self.progress.update(self.task, advance=cell.samples, cells=cells)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
        return False
