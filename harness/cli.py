"""The ``harness`` command line: Click only.  Parse, call the library, print one line.

Every user error (a :class:`~harness.errors.HarnessError` from the library, or a Click usage
error such as a missing argument) is shown as exactly one line ``Error: <message>`` on stderr
with exit code ``err.exit_code`` (2 for bad configuration or usage), and never a traceback.
Anything else is a bug and keeps its traceback.

The runner, report and bench modules are imported inside their commands: they pull in
numba/pyarrow/matplotlib, which ``validate`` and ``list`` do not need.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import signal
import threading

import click

from . import __version__, registry
from .config import Grid, load_grid, values_text
from .errors import OS_ERRNOS, HarnessError, Interrupted, filesystem_error, on_signal


class OneLineError(click.ClickException):
    """A ClickException shown as a single ``Error: ...`` line, with a chosen exit code.

    Plain ClickException exits 1 and UsageError prints the usage block and a hint first;
    we want one line and exit 2 for anything the user can fix.
    """

    def __init__(self, message: str, exit_code: int = 2):
        # One line even if a message ever carries a newline.
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class _Group(click.Group):
    """A group that turns usage errors and HarnessErrors into :class:`OneLineError`.

    ``make_context`` covers errors in the group's own options (``harness --bogus``);
    ``invoke`` covers the subcommand: its name, its arguments and its body.
    """

    def make_context(self, *args, **kwargs):
        with _one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_errors(), _signals_raise():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_errors():
    """Re-raise user errors (usage errors, HarnessError), interruptions and the file
    system's errors as :class:`OneLineError`."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise               # bare `harness`: the help text is the right answer
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        raise OneLineError(err.format_message() + hint, err.exit_code) from err
    except HarnessError as err:
        raise OneLineError(str(err), err.exit_code) from err
    except (KeyboardInterrupt, Interrupted) as err:
        # (run says more: RunInterrupted)  Click would print only "Aborted!".
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        raise OneLineError(f"interrupted by {signal.Signals(signum).name}; nothing partial "
                           "was written", 128 + signum) from None
    except OSError as err:
        # The machine's file system (a path we did not anticipate): one line, not a bug.
        if err.errno not in OS_ERRNOS:
            raise
        failure = filesystem_error(err, "access", elsewhere="choose another path")
        raise OneLineError(str(failure), failure.exit_code) from err


@contextlib.contextmanager
def _signals_raise():
    """SIGINT and SIGTERM raise KeyboardInterrupt / :class:`~harness.errors.Interrupted` in
    the main thread (``errors.on_signal``: deferred inside blocks that must not be split),
    so temporary files and claims are cleaned up on the way out instead of the process
    vanishing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Count(click.ParamType):
    """A positive integer that may be written like ``1e7`` (as in grid files)."""

    name = "integer"

    def __init__(self, minimum: int):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            n = value
        else:
            try:
                n = int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    self.fail(f"{value!r} is not a whole number", param, ctx)
                if not math.isfinite(f) or not f.is_integer():
                    self.fail(f"{value!r} is not a whole number", param, ctx)
                n = int(f)
        if n < self.minimum:
            self.fail(f"must be >= {self.minimum}, got {n}", param, ctx)
        return n


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="harness",
                      message="%(prog)s %(version)s")
def main():
    """Variance studies of Monte Carlo gradient estimators.

    \b
    Example:
      harness validate examples/reparam_trick.yaml
      harness run examples/reparam_trick.yaml
      harness report runs/reparam_trick
    """


@main.command()
@click.argument("grid", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default=None, help="Output directory [default: runs/<grid name>].")
@click.option("--force", is_flag=True, help="Recompute cells that already have results.")
@click.option("--keep-stale", is_flag=True,
              help="Keep cells computed by other code instead of recomputing them.")
@click.option("--dry-run", is_flag=True,
              help="Print what the run would cost (cells, samples, time, disk) and stop.")
# -- executors (harness/executors.py): who computes the cells
@click.option("--executor", type=click.Choice(["serial", "dask"]), default="serial",
              show_default=True, help="serial: cells one after another in this process; "
              "dask: cells as tasks on a Dask cluster (pip install -e \".[dask]\").")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="A running Dask scheduler (tcp://host:8786) whose workers compute the "
                   "cells (implies --executor dask) [default: a LocalCluster on this machine].")
@click.option("--workers", type=_Count(1), default=None,
              help="LocalCluster worker processes [default: one per core, at most one per "
                   "cell].")
@click.option("--threads", type=_Count(1), default=None,
              help="LocalCluster numba threads per worker [default: cores / workers].")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to reach --scheduler.")
def run(grid: pathlib.Path, out_dir, force: bool, keep_stale: bool, dry_run: bool,
        executor: str, scheduler, workers, threads, connect_timeout: float):
    """Run every cell of GRID and write one Parquet file per cell.

    Finished cells are skipped, so an interrupted run resumes where it stopped; cells
    computed by other code (an edited estimator) are recomputed unless --keep-stale.
    Several runs on one directory share the work.  Ctrl-C or SIGTERM stop cleanly
    (exit 130 / 143) and say how to resume.  With --executor dask the cells are computed on
    Dask workers and written here: the same files, bitwise the same numbers.

    \b
    Example:
      harness run examples/reparam_trick.yaml --out runs/reparam_trick
      harness run examples/reparam_trick.yaml --dry-run
      harness run examples/mohamed_section3_quadratic.yaml --executor dask
      harness run examples/mohamed_section3_quadratic.yaml --scheduler tcp://10.0.0.5:8786
    """
    from .executors import make_executor
    from .runner import run_grid

    g = load_grid(grid)
    out_dir = out_dir if out_dir is not None else pathlib.Path("runs") / g.name
    pool = None if dry_run else make_executor(
        executor, scheduler, workers=workers, threads=threads,
        connect_timeout=connect_timeout, echo=lambda text: click.echo(text, err=True))
    # progress=None: the runner decides (a bar on a terminal, a line every 30 s otherwise).
    with pool if pool is not None else contextlib.nullcontext():
        summary = run_grid(g, out_dir, force=force, progress=None, keep_stale=keep_stale,
                           dry_run=dry_run, echo=lambda text: click.echo(text, err=True),
                           executor=pool)
    click.echo(str(summary))


@main.command(short_help="Build the report (PNGs + HTML) of a run directory.")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False,
                                           path_type=pathlib.Path))
@click.option("--all", "include_all", is_flag=True,
              help="Include result files of other grids and other code, grouped by grid.")
def report(run_dir: pathlib.Path, include_all: bool):
    """Build figures and an HTML page from the results stored in RUN_DIR.

    The page shows the cells of the grid last run in RUN_DIR computed by this code; files
    of other grids or other code are counted and left out (--all includes them).

    \b
    Example:
      harness report runs/reparam_trick
    """
    from .report import build_report

    click.echo(str(build_report(run_dir, include_all=include_all,
                                echo=lambda text: click.echo(text, err=True))))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False,
                                           path_type=pathlib.Path))
def status(run_dir: pathlib.Path):
    """List the cells of the grid last run in RUN_DIR: done, missing, stale (computed by
    other code), running (claimed by a live run), and the files of other grids, with the
    code versions that computed them.

    \b
    Example:
      harness status runs/reparam_trick
    """
    from .runner import run_status

    click.echo(run_status(run_dir))


@main.command()
@click.argument("grids", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=pathlib.Path))
def validate(grids):
    """Check each GRID without running it and print what it would run.

    Every problem is one line ``Error: file:line: key: message (fix: ...)``; exit 2 if any
    grid is invalid.

    \b
    Example:
      harness validate examples/reparam_trick.yaml
      harness validate examples/*.yaml
    """
    failed = []
    for grid in grids:
        try:
            click.echo(describe_grid(load_grid(grid)))
        except HarnessError as err:
            if len(grids) == 1:
                raise
            click.echo(f"Error: {' '.join(str(err).split())}", err=True)
            failed.append(err.exit_code)
    if failed:
        raise click.exceptions.Exit(max(failed))


def describe_grid(g: Grid) -> str:
    """One line: name, what the kind runs (cells, problem, N), estimators, seeds, backend."""
    from .kinds import KINDS

    n = len(g.seeds)
    consecutive = (g.seeds == range(n) if isinstance(g.seeds, range)
                   else tuple(g.seeds) == tuple(range(n)))
    which = f"0..{n - 1}" if consecutive else values_text(g.seeds)
    seed_text = f"{n} seed{'s' if n != 1 else ''} ({which})"
    return (f"{g.path}: OK: {g.name}: {KINDS[g.kind].describe(g)}; "
            f"estimators {', '.join(e.label for e in g.estimators)}; {seed_text}; "
            f"backend {g.backend}")


@main.command("list", short_help="List problem kinds, families, costs, estimators, backends.")
def list_command():
    """List the problem kinds with their families, costs or targets and estimators, and the
    backends.

    \b
    Example:
      harness list
    """
    from .kinds import KINDS

    for name, kind in KINDS.items():
        click.echo(f"kind {name}: {kind.description}")
        for line in kind.listing():
            click.echo(f"  {line}")
    click.echo("backends:")
    for name in registry.BACKENDS:
        runs = ", ".join(k for k, kind in KINDS.items() if name in kind.backends)
        click.echo(f"  {name:16} kinds: {runs}")


@main.command()
@click.option("--samples", type=_Count(2), default=10_000_000, show_default=True,
              help="Samples per seed (1e7 style accepted).")
@click.option("--seeds", type=_Count(1), default=8, show_default=True, help="Number of seeds.")
@click.option("--threads", type=_Count(1), default=None,
              help="Numba threads [default: 1 and all].")
@click.option("--rss-n", "rss_n", type=_Count(2), multiple=True,
              help="N of a peak-RSS run in a new process (repeatable) "
                   "[default: 1e6 1e8 1e9].")
@click.option("--no-cache-check", is_flag=True,
              help="Skip the compile / cached-load measurement in new processes.")
@click.option("--scaling", is_flag=True,
              help="Instead: time vs N (1e3..1e9) and vs seeds per estimator, written as "
                   "Parquet + PNG to --out.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default=pathlib.Path("runs") / "bench", show_default=True,
              help="Where --scaling writes bench_scaling.parquet and .png.")
@click.option("--max-n", type=_Count(2), default=10**9, show_default=True,
              help="Largest N of the --scaling sweep.")
def bench(samples: int, seeds: int, threads, rss_n, no_cache_check: bool, scaling: bool,
          out_dir: pathlib.Path, max_n: int):
    """Measure samples/s of the CPU kernel against a NumPy reference.

    Prints samples/s and the ratio to NumPy (same process) for 1 and all threads, the
    kernel's compile time and cached load in new processes, and the peak RSS at several N
    (each in a new process: it must not grow with N). Speeds are never asserted in tests.

    \b
    Example:
      harness bench
      harness bench --samples 1e6 --seeds 4 --threads 2 --rss-n 1e6 --rss-n 1e7
      harness bench --scaling --out runs/bench
    """
    import numba

    from .bench import run_report, run_scaling

    if threads is not None:
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise OneLineError(f"--threads {threads}: at most NUMBA_NUM_THREADS = "
                               f"{numba.config.NUMBA_NUM_THREADS} (fix: set that variable)")
        numba.set_num_threads(threads)
    say = (lambda text: click.echo(f"... {text}", err=True)) if _stderr_tty() else None
    if scaling:
        n_values = tuple(n for n in (10**e for e in range(3, 10)) if n <= max_n) or (max_n,)
        table, figure = run_scaling(out_dir, n_values=n_values, echo=say)
        click.echo(f"{table}\n{figure}")
        return
    report = run_report(n_samples=samples, n_seeds=seeds, threads=threads,
                        rss_n=rss_n or (10**6, 10**8, 10**9),
                        cache_check=not no_cache_check, echo=say)
    click.echo(str(report))


def _stderr_tty() -> bool:
    import sys

    return sys.stderr.isatty()


if __name__ == "__main__":     # python -m harness.cli
    main(prog_name="harness")
