"""Executors: where a grid's cells are computed (``harness run GRID --executor dask``).

``runner.run_grid(grid, out_dir, executor=...)`` decides which cells to compute (the resume,
skip and stale rules) and writes every cell itself (``results.write_cell``, atomically); an
executor only computes.  Its one method is::

    executor.compute(cells) -> iterator of (cell, pyarrow.Table), in the order cells finish

``executor=None`` is the serial loop in the running process.  :class:`DaskExecutor` runs
each cell as one task on a Dask cluster: a ``LocalCluster`` sized to this machine, or an
existing cluster by its scheduler address (``--scheduler tcp://host:8786``, the only change
from a laptop to a cluster).

**Where results are written: by the driver.**  A worker returns its cell's Arrow table; the
driver (the process running ``harness run``) writes it with ``results.write_cell``.  So

- the rules of a serial run (which cells are done, atomic writes, superseded files, a rerun
  completing only what is missing) live in one place and hold unchanged;
- workers need no shared file system and never touch the results directory: nothing a lost
  worker leaves behind can be half a file, and the clean-up of temporary files (which trusts
  a local pid) only ever runs on the driver's host;
- a cell computed twice (a worker lost after finishing, its task rerun) is written once.

The price is one transfer per cell (its rows: a few kB for a study cell) and writes done one
after another by the driver (about 1 ms per cell here, against seconds of computing).

**Threads.**  A worker process computes one cell at a time (numba's default threading layers
do not take concurrent launches), on numba threads = ``NUMBA_NUM_THREADS`` of the worker's
environment if set, else the worker's Dask thread count.  The ``LocalCluster`` started here
has W single-threaded workers with ``NUMBA_NUM_THREADS = T`` and W x T <= cores (Dask does
not set numba's thread count); on other clusters start workers with ``--nthreads 1`` and set
``NUMBA_NUM_THREADS`` (README, "Running on Dask").  Results do not depend on the thread
count: they are bitwise those of a serial run.

**Compiled kernels** are compiled at most once per host: workers of a host share the kernel
directory (``$HARNESS_KERNEL_DIR``) and numba's cache, and the first compile of each kernel
holds a file lock (``harness.kernel_cache.compile_once``) so the others load it from the
cache instead of compiling it too.

**Faults.**  A worker lost mid-task (killed, out of memory, its machine gone): the scheduler
gives its task to another worker (up to ``distributed.scheduler.allowed-failures`` = 3 lost
workers per task; then :class:`~harness.errors.ClusterError`).  The driver lost: the files
written so far are complete, and a rerun computes only what is missing.  A scheduler that
cannot be reached within ``connect_timeout``: one line, exit 2.  An error raised by a cell
(a bug, a bad configuration) is not retried: it stops the run as in a serial one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache

from .errors import ClusterError
from .model import Cell

CONNECT_TIMEOUT = 10.0     # seconds to reach a scheduler (--connect-timeout)
TASKS_PER_THREAD = 4       # cells in flight per worker thread (bounds the driver's memory)
MIN_IN_FLIGHT = 8
WINDOW_REFRESH = 5.0       # seconds between looks at the cluster's size (it may scale)


def machine_cores() -> int:
    """The cores this process may use (its CPU affinity; a container's limit on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:        # not on Linux
        return os.cpu_count() or 1


def local_shape(cells: int, cores: int, workers: int | None = None,
                threads: int | None = None) -> tuple[int, int]:
    """(worker processes W, numba threads per worker T) for a LocalCluster, W x T <= cores.

    By default as many single-threaded workers as there are cells to compute, up to the
    cores (cells in parallel need no synchronisation), and the cores left over as numba
    threads when there are fewer cells than cores.  ``workers`` or ``threads`` fix one and
    size the other; both given must fit the cores.
    """
    cores = max(int(cores), 1)
    if workers is not None and threads is not None:
        if workers * threads > cores:
            raise ClusterError(
                f"--workers {workers} x --threads {threads} = {workers * threads} numba "
                f"threads, more than the {cores} cores here (fix: lower one of them, or leave "
                "one out to have it sized)", exit_code=2)
        return workers, threads
    if workers is not None:
        return workers, max(1, cores // workers)
    if threads is not None:
        return max(1, cores // threads), threads
    w = max(1, min(cores, cells))
    return w, max(1, cores // w)


# --------------------------------------------------------------------------- on a worker

_one_cell_at_a_time = threading.Lock()


@cache
def _code() -> str:
    from .provenance import code_digest

    return code_digest()


def numba_threads() -> int:
    """Numba threads per cell on this worker: $NUMBA_NUM_THREADS if set, else the worker's
    Dask thread count (at most numba's thread pool)."""
    import numba

    if os.environ.get("NUMBA_NUM_THREADS"):
        # The nanny sets the worker's environment after the process started, and numba may
        # have been imported before (a spawned worker re-imports the driver's main module,
        # e.g. harness.cli): read the variable again before numba starts its threads.
        numba.core.config.reload_config()
        wanted = numba.config.NUMBA_NUM_THREADS
    else:
        from distributed import get_worker

        wanted = get_worker().state.nthreads
    return max(1, min(int(wanted), numba.config.NUMBA_NUM_THREADS))


def compute_task(compute: Callable, cell: Cell, code: str):
    """One task: compute ``cell`` with ``compute`` (``runner.compute_cell``) on a worker.

    ``code`` is the driver's digest of the computing sources: a worker running other code
    (another harness version on a cluster) would give other numbers, so it refuses.
    """
    import numba

    if code != _code():
        import socket

        from . import __file__ as where
        raise ClusterError(
            f"worker on {socket.gethostname()} runs other harness code than the driver "
            f"(code digest {_code()} from {os.path.dirname(where)}, driver {code}) (fix: "
            "install the same harness version on every worker)")
    with _one_cell_at_a_time:
        numba.set_num_threads(numba_threads())      # thread-local: set in the task's thread
        return compute(cell)


# ---------------------------------------------------------------------------- the driver

class DaskExecutor:
    """Compute cells as Dask tasks; the driver writes them (module docstring).

    ``scheduler``: the address of a running cluster's scheduler, or None to start a
    ``LocalCluster`` of ``workers`` x ``threads`` (:func:`local_shape`) when the first cells
    are given (none is started if every cell is already done).  Use it as a context
    manager; ``close()`` stops what it started.  ``compute``: the function a worker applies
    to a cell (default ``runner.compute_cell``); ``echo``: where notes go (stderr).
    """

    def __init__(self, scheduler: str | None = None, *, workers: int | None = None,
                 threads: int | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 compute: Callable | None = None, echo: Callable[[str], None] | None = None):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ClusterError("the Dask executor needs dask and distributed (fix: pip "
                               "install -e \".[dask]\")", exit_code=2) from None
        if scheduler is None:
            local_shape(1, machine_cores(), workers, threads)     # check the options now
        self.scheduler, self.workers, self.threads = scheduler, workers, threads
        self.connect_timeout = connect_timeout
        self.echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
        self._compute = compute
        self.client = None
        self.cluster = None
        self.shape: tuple[int, int] | None = None    # (W, T) of a LocalCluster we started

    # -- lifecycle

    def __enter__(self):
        if self.scheduler is not None:
            self._connect()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _connect(self) -> None:
        from distributed import Client
        from distributed.comm.addressing import parse_address, parse_host_port

        try:       # a malformed address is a usage error (and a Client made of one
            scheme, location = parse_address(self.scheduler)   # fails noisily at exit)
            if scheme in ("tcp", "tls"):
                parse_host_port(location)
        except ValueError as err:
            raise ClusterError(f"--scheduler {self.scheduler!r} is not a scheduler address "
                               f"({err}) (fix: write it as tcp://HOST:PORT, e.g. "
                               "tcp://10.0.0.5:8786)", exit_code=2) from None
        try:
            self.client = Client(self.scheduler, timeout=self.connect_timeout,
                                 set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            if len(reason) > 160:
                reason = reason[:157] + "..."
            raise ClusterError(
                f"cannot reach the Dask scheduler at {self.scheduler} within "
                f"{self.connect_timeout:g} s ({reason}) (fix: check the address and that "
                "the scheduler is running, or run without --scheduler)",
                exit_code=2) from None
        wide = sorted({n for n in self.client.nthreads().values() if n > 1})
        if wide:
            self.echo(f"note: workers with {'/'.join(map(str, wide))} Dask threads compute one "
                      "cell at a time each (start workers with --nthreads 1 and set "
                      "NUMBA_NUM_THREADS for numba's threads)")

    def _start_local(self, cells: int) -> None:
        from distributed import Client, LocalCluster

        w, t = self.shape = local_shape(cells, machine_cores(), self.workers, self.threads)
        # NUMBA_NUM_THREADS must be in the environment before numba is imported: the
        # nanny sets it before starting the worker process.
        self.cluster = LocalCluster(
            n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=":0", env={"NUMBA_NUM_THREADS": str(t)})
        self.client = Client(self.cluster, set_as_default=False)

    def start(self, cells: int = 1) -> DaskExecutor:
        """Connect to the scheduler, or start the LocalCluster sized for ``cells`` cells to
        compute (``compute`` does it at the first cells otherwise)."""
        if self.client is None:
            if self.scheduler is not None:
                self._connect()
            else:
                self._start_local(cells)
        return self

    # -- computing

    def _window(self) -> int:
        return max(MIN_IN_FLIGHT, TASKS_PER_THREAD * sum(self.client.nthreads().values()))

    def compute(self, cells: Iterable[Cell]) -> Iterator[tuple[Cell, object]]:
        """Yield ``(cell, table)`` for every cell, as cells finish.

        At most a window of cells is in flight (a few per worker thread), so the driver's
        memory does not grow with the grid; ``cells`` is consumed as the window moves (it
        may be a generator).  An error from a cell cancels the cells in flight and is
        raised as it would be in a serial run.
        """
        from distributed import as_completed
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        from .provenance import code_digest
        from .runner import compute_cell

        cells = iter(cells)
        first = next(cells, None)
        if first is None:
            return
        if self.client is None and self.scheduler is None:
            pending = [first, *cells]            # a local run: the count sizes the cluster
            self.start(len(pending))
            cells = iter(pending)
            first = next(cells)
        self.start()
        compute, code = self._compute or compute_cell, code_digest()
        queue = _prepend(first, cells)
        in_flight: dict = {}
        done = as_completed(loop=self.client.loop)

        def submit(cell: Cell) -> None:
            future = self.client.submit(compute_task, compute, cell, code,
                                        key=f"harness-cell-{cell.id}", pure=False)
            in_flight[future.key] = (cell, future)
            done.add(future)

        window, looked = self._window(), time.monotonic()
        try:
            for cell in _take(queue, window):
                submit(cell)
            for future in done:
                cell, _ = in_flight.pop(future.key)
                try:
                    table = future.result()
                except KilledWorker as err:
                    raise ClusterError(
                        f"cell {cell.id} was lost with {_allowed_failures() + 1} workers in a "
                        f"row (last: {getattr(err, 'last_worker', None) or '?'}); it may need "
                        "more memory than a worker has (fix: fewer workers with more memory "
                        "each, or fewer seeds per cell)") from None
                except FutureCancelledError:
                    raise ClusterError(
                        f"cell {cell.id} was cancelled on the cluster (its scheduler "
                        "restarted or another client cancelled it) (fix: rerun: finished "
                        "cells are kept)") from None
                del future
                if time.monotonic() - looked > WINDOW_REFRESH:
                    window, looked = self._window(), time.monotonic()
                for more in _take(queue, window - len(in_flight)):
                    submit(more)
                yield cell, table
        finally:
            if in_flight:                  # an error, or the caller stopped early
                done.clear()
                self.client.cancel([f for _, f in in_flight.values()], force=True)
                in_flight.clear()


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _take(iterator: Iterator, n: int) -> list:
    out = []
    for _ in range(max(n, 0)):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def _allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures"))


def make_executor(name: str, scheduler: str | None = None, *, workers: int | None = None,
                  threads: int | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                  echo: Callable[[str], None] | None = None) -> DaskExecutor | None:
    """The executor the CLI options name: None for ``serial``, else a DaskExecutor
    (``--scheduler`` implies ``dask``; ``--workers`` / ``--threads`` need it)."""
    if scheduler is not None:
        name = "dask"
    if name == "serial":
        if workers is not None or threads is not None:
            raise ClusterError("--workers and --threads size a Dask LocalCluster (fix: add "
                               "--executor dask)", exit_code=2)
        return None
    if scheduler is not None and (workers is not None or threads is not None):
        raise ClusterError("--workers and --threads size the LocalCluster started without "
                           "--scheduler; an existing cluster has its own workers (fix: drop "
                           "them, and set NUMBA_NUM_THREADS on the workers)", exit_code=2)
    return DaskExecutor(scheduler, workers=workers, threads=threads,
                        connect_timeout=connect_timeout, echo=echo)
