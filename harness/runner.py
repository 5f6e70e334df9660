"""The resumable run loop: one for every problem kind.

A *cell* (``harness.model.Cell``) is one point of a grid's sweep: one problem point and one
N, with all of the grid's estimators, components and seeds (they share one kernel call, so
estimators see common random numbers).  The grid's problem kind expands it into cells and
computes each; this module only skips finished cells, writes each cell's rows atomically and
shows progress.  A cell's id is a hash of its resolved configuration, so a rerun of the same
grid finds the cells already computed and skips them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError
from .kinds import KINDS
from .model import Cell, config_id
from .registry import BACKENDS
from .results import (
    atomic_write_bytes,
    cell_table,
    finished_cells,
    superseded_files,
    temp_files,
    write_cell,
)

__all__ = ["Cell", "RunSummary", "compute_cell", "config_id", "expand_cells", "run_grid"]


def expand_cells(grid) -> list[Cell]:
    """The grid's cells, in the kind's deterministic order (duplicate points give one cell)."""
    return KINDS[grid.kind].cells(grid)


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
    """Compute one cell with its problem kind; returns its rows as a ``pyarrow.Table``."""
    return cell_table(cell, KINDS[cell.kind].compute(cell))


def run_grid(grid, out_dir, force: bool = False, progress=None, executor=None) -> RunSummary:
    """Compute every unfinished cell of ``grid`` into ``out_dir/results/<cell>.parquet``.

    Copies the grid text to ``out_dir/grid.yaml``; skips cells whose file is complete unless
    ``force``.  ``progress``: None shows a progress bar on stderr only if stderr is a
    terminal; True/False force it on/off.  Safe to interrupt at any point: files are
    written atomically and a rerun completes the run.  ``executor``: who computes the cells
    (``harness.executors``: ``executor.compute(cells)`` yields ``(cell, table)`` as cells
    finish; this process writes them); None computes them here, one after another.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    require_backend(grid.backend)
    results_dir = out_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(out_dir, results_dir)
    source = getattr(grid, "source_text", "") or ""
    atomic_write_bytes(out_dir / "grid.yaml", lambda fh: fh.write(source.encode()))

    cells = expand_cells(grid)
    done = set() if force else finished_cells(out_dir)
    todo = [c for c in cells if c.id not in done]
    ids = {c.id for c in cells}
    # Files an older harness wrote for cells of this grid under another id: each is removed
    # once its cell is in the current format (now, if it already is; after computing it).
    superseded = {i: p for i, p in superseded_files(out_dir).items() if i in ids}
    other = sum(1 for p in results_dir.glob("*.parquet")
                if not p.name.startswith((".", "_")) and p.stem not in ids
                and p not in superseded.values())
    for cell_id in done & superseded.keys():
        superseded.pop(cell_id).unlink(missing_ok=True)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    # The hook for executors (harness.executors): they compute, this loop writes.
    computed = (((c, compute_cell(c)) for c in todo) if executor is None
                else executor.compute(todo))
    with _Progress(grid.name, todo, len(cells) - len(todo), enabled=show) as bar, \
            contextlib.closing(computed):
        for cell, table in computed:
            write_cell(results_dir, cell, table)
            if cell.id in superseded:
                superseded.pop(cell.id).unlink(missing_ok=True)
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
