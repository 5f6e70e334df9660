"""The Dask executor (``harness.executors``): a LocalCluster of two workers on loopback.

One cluster for the module (started by ``DaskExecutor`` itself, as ``harness run --executor
dask`` starts it); the other tests reach it by its address, as ``--scheduler`` does.  The
grid is small and uses the same fused kernel as ``test_runner``'s real-kernel test, so it is
compiled once (by one worker: the other waits and loads it).

Checked: results bitwise equal to a serial run; NUMBA_NUM_THREADS set in the workers; a
kernel compiled at most once on the host; a worker killed mid-task (its task is retried and
every cell written once); a driver stopped mid-run (a rerun computes only what is missing);
an unreachable scheduler (one line, exit 2); a bounded number of cells in flight.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)
from click.testing import CliRunner  # noqa: E402
from helpers import expectation_grid  # noqa: E402

from harness import runner  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.errors import ClusterError  # noqa: E402
from harness.executors import (  # noqa: E402
    MIN_IN_FLIGHT,
    DaskExecutor,
    compute_task,
    local_shape,
    make_executor,
)
from harness.runner import compute_cell, expand_cells, run_grid  # noqa: E402

# The compute functions below travel to the workers by value (the workers cannot import
# this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parent.parent
GRID = expectation_grid(name="dask", params=(("mu", (2.0,)), ("sigma", (1.0,)),
                                             ("k", (-1.0, 0.0, 2.0))),
                        n_samples=(100, 1000), seeds=tuple(range(16)))


@pytest.fixture(scope="module")
def executor():
    """A DaskExecutor that started its own LocalCluster: 2 workers x 1 numba thread."""
    with DaskExecutor(workers=2, threads=1) as ex:
        ex.start(cells=len(expand_cells(GRID)))
        yield ex


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The grid run serially in this process (the reference)."""
    out = tmp_path_factory.mktemp("serial")
    assert run_grid(GRID, out, progress=False).computed == len(expand_cells(GRID))
    return out


def connect(executor, **kwargs) -> DaskExecutor:
    """Another executor on the same cluster, by its scheduler address (--scheduler)."""
    return DaskExecutor(executor.cluster.scheduler_address, **kwargs)


def bits(table: pa.Table) -> dict:
    """Every column but the wall time, floats as their bit patterns (so NaN == NaN)."""
    out = {}
    for name in table.column_names:
        if name == "seconds":
            continue
        column = table[name]
        if pa.types.is_floating(column.type):
            out[name] = np.asarray(column.to_numpy(zero_copy_only=False),
                                   dtype=np.float64).view(np.int64).tolist()
        else:
            out[name] = column.to_pylist()
    return out


def assert_bitwise_equal(a: Path, b: Path) -> None:
    files_a = sorted(p.name for p in (a / "results").glob("*.parquet"))
    files_b = sorted(p.name for p in (b / "results").glob("*.parquet"))
    assert files_a == files_b and len(files_a) == len(expand_cells(GRID))
    for name in files_a:
        ta, tb = pq.read_table(a / "results" / name), pq.read_table(b / "results" / name)
        assert bits(ta) == bits(tb), name
        assert ta.schema.metadata[b"harness.cell"] == tb.schema.metadata[b"harness.cell"]


def written_cells(monkeypatch) -> list:
    """Record the id of every cell the driver writes."""
    ids = []
    write = runner.write_cell

    def recording(results_dir, cell, table, **metadata):
        ids.append(cell.id)
        return write(results_dir, cell, table, **metadata)

    monkeypatch.setattr(runner, "write_cell", recording)
    return ids


# --------------------------------------------------------------------------- the tests

def test_local_cluster_shape_fits_the_cores():
    for cores in (1, 2, 3, 8, 64):
        for cells in (1, 2, 5, 1000):
            w, t = local_shape(cells, cores)
            assert w >= 1 and t >= 1 and w * t <= cores
            assert w <= cells or cores == 1
            assert w * t >= min(cores, cells)      # no core left idle by the default
        for workers in (1, 2, cores):
            w, t = local_shape(10, cores, workers=workers)
            assert (w, t) == (workers, max(1, cores // workers)) and w * t <= max(cores, w)
    assert local_shape(10, 8, threads=4) == (2, 4)
    with pytest.raises(ClusterError) as err:
        local_shape(10, 2, workers=2, threads=2)
    assert err.value.exit_code == 2


def test_workers_have_numba_threads_set(executor):
    threads = executor.client.run(lambda: __import__("numba").config.NUMBA_NUM_THREADS)
    assert executor.shape == (2, 1)
    assert len(threads) == 2 and set(threads.values()) == {1}


def test_dask_run_is_bitwise_a_serial_run_and_compiles_once(executor, request, tmp_path,
                                                              monkeypatch):
    ids = written_cells(monkeypatch)
    summary = run_grid(GRID, tmp_path, progress=True, executor=executor)
    cells = expand_cells(GRID)
    assert (summary.computed, summary.skipped) == (len(cells), 0)
    assert sorted(ids) == sorted(c.id for c in cells)           # each cell written once
    # Both workers computed cells, and each kernel was compiled at most once among them:
    # the other loaded it from the cache (or both did, if this session compiled it already).
    stats = executor.client.run(_kernel_stats)
    per_worker = [s for s in stats.values() if s]
    assert len(per_worker) == 2, stats
    # one compile at most per kernel: the draw kernel and a term kernel per (estimator,
    # component); helper processes compile some of them (not counted here)
    n_kernels = 1 + len(GRID.estimators) * 2
    assert sum(misses for _, misses in per_worker) <= n_kernels, stats
    # The serial reference only now, so that a worker compiled the kernel above.
    assert_bitwise_equal(request.getfixturevalue("serial"), tmp_path)
    # A rerun skips every cell and starts no task.
    again = run_grid(GRID, tmp_path, progress=False, executor=executor)
    assert (again.computed, again.skipped) == (0, len(cells))


def _kernel_stats():
    """On a worker: (cache hits, compiles) of the expectation kernels it loaded."""
    from harness.backends import cpu

    hits = misses = 0
    for kernel in cpu._loaded.values():
        hits += sum(kernel.stats.cache_hits.values())
        misses += sum(kernel.stats.cache_misses.values())
    return (hits, misses) if hits + misses else None


GRID_YAML = ("name: dask\nproblem: {distribution: normal, cost: quadratic, mu: 2.0, "
             "sigma: 1.0,\n          k: [-1.0, 0.0, 2.0]}\n"
             "estimators: [score_function, pathwise]\nn_samples: [100, 1000]\nseeds: 16\n")


def test_cli_runs_on_an_existing_cluster(executor, serial, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID_YAML)
    result = CliRunner().invoke(main, ["run", str(grid), "--out", str(tmp_path / "run"),
                                       "--scheduler", executor.cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert "6 cells (6 computed, 0 skipped)" in result.output
    assert_bitwise_equal(serial, tmp_path / "run")


# Run as its own program: like the `harness` console script, its main module imports
# harness (hence numba) at the top, so the spawned workers import numba before the nanny
# sets NUMBA_NUM_THREADS in their environment.
DRIVER = """
import json, sys
from harness.cli import main  # noqa: F401  (what the console script imports first)
from harness.executors import DaskExecutor, numba_threads
from harness.runner import run_grid
from harness.config import load_grid
if __name__ == "__main__":
    with DaskExecutor(workers=2, threads=1) as ex:
        summary = run_grid(load_grid(sys.argv[1]), sys.argv[2], progress=False, executor=ex)
        threads = ex.client.run(numba_threads)
        print(json.dumps({"computed": summary.computed, "threads": sorted(threads.values()),
                          "shape": ex.shape}))
"""


def test_a_local_cluster_started_by_a_driver_program(serial, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID_YAML)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    result = subprocess.run([sys.executable, str(script), str(grid), str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"computed": 6, "threads": [1, 1], "shape": [2, 1]}
    assert_bitwise_equal(serial, tmp_path / "run")


def _die_once(cell, marker: str, victim: str):
    """A task that kills its own worker process (SIGKILL) the first time it runs ``victim``."""
    from harness.runner import compute_cell

    if cell.id == victim and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return compute_cell(cell)


def test_worker_killed_mid_task_is_retried_and_every_cell_written_once(
        executor, serial, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    victim = expand_cells(GRID)[1].id
    ids = written_cells(monkeypatch)
    with connect(executor, compute=lambda cell: _die_once(cell, str(marker), victim)) as ex:
        summary = run_grid(GRID, tmp_path / "run", progress=False, executor=ex)
    assert marker.exists()                          # the worker was killed in the task
    pid = int(marker.read_text())
    assert not _alive(pid)
    assert summary.computed == len(expand_cells(GRID))
    assert sorted(ids) == sorted(c.id for c in expand_cells(GRID))
    assert_bitwise_equal(serial, tmp_path / "run")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class DriverLost(Exception):
    pass


def test_driver_lost_mid_run_then_a_rerun_computes_only_the_missing_cells(
        executor, serial, tmp_path, monkeypatch):
    write = runner.write_cell
    written = []

    def write_two_then_die(results_dir, cell, table, **metadata):
        if len(written) == 2:
            raise DriverLost
        written.append(cell.id)
        return write(results_dir, cell, table, **metadata)

    monkeypatch.setattr(runner, "write_cell", write_two_then_die)
    with pytest.raises(DriverLost):
        run_grid(GRID, tmp_path, progress=False, executor=executor)
    assert sorted(p.stem for p in (tmp_path / "results").glob("*.parquet")) == sorted(written)
    monkeypatch.setattr(runner, "write_cell", write)
    ids = written_cells(monkeypatch)
    summary = run_grid(GRID, tmp_path, progress=False, executor=executor)
    n = len(expand_cells(GRID))
    assert (summary.computed, summary.skipped) == (n - 2, 2)
    assert sorted(ids) == sorted({c.id for c in expand_cells(GRID)} - set(written))
    assert_bitwise_equal(serial, tmp_path)


def _fake_rows(cell):
    return pa.table({"cell": [cell.id]})


def test_cells_in_flight_are_bounded(executor):
    cells = expand_cells(expectation_grid(name="many", params=(
        ("mu", (2.0,)), ("sigma", (1.0,)), ("k", tuple(float(k) for k in range(24)))),
        n_samples=(10,), seeds=(0,)))
    taken = []

    def feed():
        for cell in cells:
            taken.append(cell.id)
            yield cell

    with connect(executor, compute=_fake_rows) as ex:
        window = ex.start()._window()
        assert window == max(MIN_IN_FLIGHT, 4 * 2)
        seen = []
        for cell, table in ex.compute(feed()):
            assert table["cell"].to_pylist() == [cell.id]
            seen.append(cell.id)
            assert len(taken) - len(seen) <= window       # never more than a window ahead
    assert sorted(seen) == sorted(c.id for c in cells)


def test_a_cell_error_stops_the_run_as_in_a_serial_run(executor, tmp_path):
    def broken(cell):
        raise ValueError(f"broken cell {cell.id}")

    with connect(executor, compute=broken) as ex, pytest.raises(ValueError, match="broken"):
        run_grid(GRID, tmp_path, progress=False, executor=ex)
    assert not list((tmp_path / "results").glob("*.parquet"))


def test_a_worker_with_other_code_refuses_the_cell():
    cell = expand_cells(GRID)[0]
    with pytest.raises(ClusterError, match="other harness code"):
        compute_task(compute_cell, cell, "0" * 16)


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:                     # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    grid = tmp_path / "grid.yaml"
    grid.write_text("problem: {distribution: normal, cost: square, mu: 2.0, sigma: 1.0}\n"
                    "estimators: [pathwise]\nn_samples: [10]\nseeds: 2\n")
    result = CliRunner().invoke(main, ["run", str(grid), "--out", str(tmp_path / "run"),
                                       "--scheduler", f"tcp://127.0.0.1:{port}",
                                       "--connect-timeout", "1"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach the Dask scheduler")
    assert not (tmp_path / "run").exists()


def test_executor_options_need_the_dask_executor():
    assert make_executor("serial") is None
    for kwargs in ({"workers": 2}, {"threads": 2}):
        with pytest.raises(ClusterError) as err:
            make_executor("serial", **kwargs)
        assert err.value.exit_code == 2
    with pytest.raises(ClusterError):
        make_executor("dask", "tcp://127.0.0.1:1", workers=2)
    for address in ("nonsense", "tcp://host-without-port"):
        with pytest.raises(ClusterError, match="not a scheduler address") as err:
            DaskExecutor(address).start()
        assert err.value.exit_code == 2
