"""The runner: cells and ids, grid expansion, skip / force, interruption, progress.

Most tests replace the kernel with ``helpers.fake_backend`` (installed as the module
``harness.backends.cpu`` in ``sys.modules``), so they test the runner alone and run fast.
``test_run_grid_with_the_real_kernel`` needs the real ``harness.backends.cpu``.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import QUADRATIC, expectation_grid, fake_backend

from harness.config import EstimatorSpec
from harness.errors import BackendError
from harness.results import finished_cells, read_results, temp_files
from harness.runner import Cell, RunSummary, expand_cells, format_count, run_grid

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def calls(monkeypatch):
    """Install the fake kernel; the list records every kernel call (``helpers.KernelCall``)."""
    recorded = []
    monkeypatch.setitem(sys.modules, "harness.backends.cpu", fake_backend(calls=recorded))
    return recorded


def make_grid(name="unit", params=QUADRATIC, cost="quadratic", n_samples=(10, 100),
              seeds=tuple(range(20)), wrt=("mu", "sigma"),
              estimators=("score_function", "pathwise"), backend="cpu"):
    return expectation_grid(name=name, cost=cost, params=params, wrt=wrt,
                            estimators=estimators, n_samples=n_samples, seeds=seeds,
                            backend=backend)


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """Results without the wall time, in a fixed row order (for bitwise comparisons)."""
    key = ["cell", "seed", "estimator", "param"]
    return df.drop(columns="seconds").sort_values(key).reset_index(drop=True)


# ------------------------------------------------------------------------------ cells

def test_cell_id_is_stable_and_depends_on_everything_resolved():
    grid = make_grid()
    cell = expand_cells(grid)[0]
    assert len(cell.id) == 16 and int(cell.id, 16) >= 0
    assert cell.id == expand_cells(grid)[0].id
    point = cell.point
    variants = [
        dict(experiment="other"), dict(n_samples=11), dict(seeds=cell.seeds[:-1]),
        dict(point={**point, "wrt": ["mu"]}), dict(backend="cuda"),
        dict(point={**point, "params": {**point["params"], "mu": 2.5}}),
        dict(point={**point, "cost": "square"}), dict(kind="elbo"),
        dict(estimators=(EstimatorSpec("score_function", (("baseline", "loo"),)),)),
    ]
    ids = {cell.id}
    for change in variants:
        ids.add(dataclasses.replace(cell, **change).id)
    assert len(ids) == len(variants) + 1
    # The sample count is bookkeeping (progress), not configuration: the id ignores it.
    assert dataclasses.replace(cell, samples=7).id == cell.id


def test_cell_normalises_values_and_serialises():
    cell = Cell(kind="expectation", experiment="e",
                point={"distribution": "normal", "cost": "quadratic",
                       "params": {"mu": 2.0, "sigma": 1.0, "k": -3.0}, "wrt": ["mu"]},
                estimators=[EstimatorSpec("pathwise")], n_samples=np.int64(100),
                seeds=np.arange(3), backend="cpu")
    assert cell.n_samples == 100 and type(cell.n_samples) is int
    assert cell.seeds == (0, 1, 2) and type(cell.seeds[0]) is int
    assert cell.estimators == (EstimatorSpec("pathwise"),)
    assert cell.samples == 100 * 3
    d = cell.to_dict()
    assert d["params"] == {"mu": 2.0, "sigma": 1.0, "k": -3.0}
    assert d["estimators"] == [{"name": "pathwise", "options": {}, "label": "pathwise"}]
    assert d["problem"] == "expectation" and d["n_samples"] == 100
    hash(cell)  # frozen and hashable


def test_integer_grid_values_give_the_float_cell():
    # The kind normalises the point: k = -3 and k = -3.0 are the same cell and the same id.
    as_int = make_grid(params=(("mu", (2,)), ("sigma", (1,)), ("k", (-3,))))
    as_float = make_grid(params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", (-3.0,))))
    cells = expand_cells(as_int)
    assert [c.id for c in cells] == [c.id for c in expand_cells(as_float)]
    assert all(type(v) is float for v in cells[0].point["params"].values())


def test_expand_cells_is_the_product_in_grid_order():
    grid = make_grid(params=(("mu", (0.5, 2.0)), ("sigma", (1.0,)), ("k", (-3.0, 0.0, 3.0))),
                     n_samples=(10, 100, 1000))
    cells = expand_cells(grid)
    assert len(cells) == 2 * 1 * 3 * 3
    assert len({c.id for c in cells}) == len(cells)
    got = [(c.point["params"]["mu"], c.point["params"]["k"], c.n_samples) for c in cells]
    expected = [(mu, k, n) for mu in (0.5, 2.0) for k in (-3.0, 0.0, 3.0) for n in (10, 100, 1000)]
    assert got == expected
    assert [c.id for c in cells] == [c.id for c in expand_cells(grid)]
    assert all(c.seeds == grid.seeds and c.estimators == grid.estimators for c in cells)
    assert all(c.kind == "expectation" and c.experiment == grid.name for c in cells)


def test_expand_cells_drops_duplicate_points():
    grid = make_grid(params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", (0.0, 0.0))))
    assert len(expand_cells(grid)) == 2  # one k x two N


# ------------------------------------------------------------------------------- run_grid

def test_run_skip_force(tmp_path, calls):
    grid = make_grid()
    summary = run_grid(grid, tmp_path, progress=False)
    assert (summary.cells, summary.computed, summary.skipped) == (4, 4, 0)
    assert summary.samples == (10 + 100) * 2 * 20
    assert (tmp_path / "grid.yaml").read_text() == grid.source_text
    assert finished_cells(tmp_path) == {c.id for c in expand_cells(grid)}
    first = read_results(tmp_path)
    assert len(first) == 4 * 20 * 2 * 2
    assert len(calls) == 4
    # The kernel gets the names, the components, the parameters, N and int64 seeds.
    call = calls[0]
    # (estimators as EstimatorSpec-like objects: the backend resolves their options)
    assert (call.family, call.cost, [e.label for e in call.estimators], call.components,
            call.params, call.n_samples) == (
        "normal", "quadratic", ["score_function", "pathwise"], ("mu", "sigma"),
        {"mu": 2.0, "sigma": 1.0, "k": -3.0}, 10)
    assert call.seeds.dtype == np.int64 and list(call.seeds) == list(range(20))

    again = run_grid(grid, tmp_path, progress=False)
    assert (again.computed, again.skipped, again.samples) == (0, 4, 0)
    assert len(calls) == 4
    pd.testing.assert_frame_equal(read_results(tmp_path), first)  # untouched, seconds too

    forced = run_grid(grid, tmp_path, force=True, progress=False)
    assert (forced.computed, forced.skipped) == (4, 0)
    assert len(calls) == 8
    pd.testing.assert_frame_equal(comparable(read_results(tmp_path)), comparable(first))


def test_rerun_completes_a_partial_run(tmp_path, calls):
    grid = make_grid()
    cells = expand_cells(grid)
    run_grid(make_grid(params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", (-3.0,)))), tmp_path,
             progress=False)
    assert finished_cells(tmp_path) == {cells[0].id, cells[1].id}
    summary = run_grid(grid, tmp_path, progress=False)
    assert (summary.computed, summary.skipped) == (2, 2)
    assert [c.params["k"] for c in calls[-2:]] == [0.0, 0.0]  # only the k = 0 cells ran


def test_cost_without_k_passes_no_k(tmp_path, calls):
    grid = make_grid(cost="square", params=(("mu", (2.0,)), ("sigma", (1.0,))), n_samples=(10,))
    run_grid(grid, tmp_path, progress=False)
    # A number the kernel can take (0.0 in the old signature, absent in the new), never NaN.
    assert calls[0].params.get("k", 0.0) == 0.0
    assert read_results(tmp_path)["k"].isna().all()


def test_unknown_backend_raises_before_writing(tmp_path, calls):
    with pytest.raises(BackendError, match="cuda.*fix:"):
        run_grid(make_grid(backend="cuda"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_stale_temp_files_are_removed(tmp_path, calls):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    stale = results_dir / f".abc.parquet.tmp-{dead.pid}"
    live = results_dir / f".def.parquet.tmp-{os.getppid()}"  # a running process: kept
    stale_grid = tmp_path / f".grid.yaml.tmp-{dead.pid}"
    for path in (stale, live, stale_grid):
        path.write_bytes(b"partial")
    run_grid(make_grid(n_samples=(10,)), tmp_path, progress=False)
    assert temp_files(results_dir) == [live]
    assert not stale_grid.exists()


def test_other_result_files_are_counted_not_deleted(tmp_path, calls):
    run_grid(make_grid(name="first"), tmp_path, progress=False)
    summary = run_grid(make_grid(name="second"), tmp_path, progress=False)
    assert summary.other_files == 4 and summary.computed == 4
    assert "4 other result files" in str(summary)
    assert len(finished_cells(tmp_path)) == 8


def test_summary_line():
    summary = RunSummary(experiment="reparam_trick", out_dir=Path("runs/reparam_trick"), cells=5,
                         computed=5, skipped=0, samples=560_000_000, seconds=3.21)
    assert str(summary) == ("reparam_trick: 5 cells (5 computed, 0 skipped), 5.6e8 samples "
                            "in 3.2 s -> runs/reparam_trick/results")
    assert [format_count(x) for x in (0, 950, 12_345, 1e11)] == ["0", "950", "1.2e4", "1.0e11"]


def test_quiet_when_stderr_is_not_a_terminal(tmp_path, calls, capsys):
    run_grid(make_grid(), tmp_path)  # progress=None: stderr is captured, not a TTY
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_progress_shows_cells_and_rate(tmp_path, calls, capsys):
    run_grid(make_grid(), tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "4/4 cells" in err and "samples/s" in err


# ------------------------------------------------------------------- interruption (kill)

INTERRUPTED_RUN = textwrap.dedent("""
    import signal, sys
    # a shell's background job starts with SIGINT ignored, and Python then keeps it ignored:
    # restore Ctrl-C's KeyboardInterrupt so the test does not depend on how it was launched
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path[:0] = [{repo!r}, {tests!r}]
    from test_runner import fake_backend, make_grid, INTERRUPT_GRID
    sys.modules["harness.backends.cpu"] = fake_backend(delay=0.12)
    from harness.runner import run_grid
    run_grid(make_grid(**INTERRUPT_GRID), {out!r}, progress=False)
""")

# 24 cells of ~0.12 s each: long enough to interrupt, short enough for a quick test.
INTERRUPT_GRID = dict(params=(("mu", tuple(np.linspace(-2, 2, 12))), ("sigma", (1.0,)),
                              ("k", (0.5,))), n_samples=(10, 1000), seeds=tuple(range(50)))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_leaves_no_partial_file_and_resumes_identically(tmp_path, calls, sig):
    out = tmp_path / "interrupted"
    script = INTERRUPTED_RUN.format(repo=str(REPO), tests=str(TESTS), out=str(out))
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while len(finished_cells(out)) < 3:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0  # interrupted, not finished
    results_dir = out / "results"
    done = finished_cells(out)
    visible = {p.name for p in results_dir.iterdir() if not p.name.startswith(".")}
    assert visible == {f"{i}.parquet" for i in done}  # every visible file is complete
    assert 3 <= len(done) < 24
    read_results(out)  # and the partial dataset reads
    if sig == signal.SIGINT:  # Ctrl-C cleans up its temporary file
        assert temp_files(results_dir) == []

    summary = run_grid(make_grid(**INTERRUPT_GRID), out, progress=False)
    assert summary.skipped == len(done) and summary.computed == 24 - len(done)
    assert temp_files(results_dir) == []
    run_grid(make_grid(**INTERRUPT_GRID), tmp_path / "clean", progress=False)
    pd.testing.assert_frame_equal(comparable(read_results(out)),
                                  comparable(read_results(tmp_path / "clean")))


@pytest.mark.parametrize("failing", [1, 4])
def test_a_failed_commit_is_reported_and_leaves_no_claim_or_temp_file(tmp_path, calls,
                                                                      monkeypatch, failing):
    """A cell's file is made durable and renamed into place on a thread while the next cell
    computes (``results.PendingWrite.commit``).  A commit that fails (here: no space, for
    the first or the last of the 4 cells) stops the run with the one-line error, after the
    cells committed before it; no temporary file or claim is left, and a rerun completes.
    Wrong variant: an error swallowed on the thread would leave 3 cells and no exception."""
    import errno

    from harness import claims, results
    from harness.errors import FilesystemError

    commit, seen = results.PendingWrite.commit, []

    def commit_or_fail(self):
        if self.path.suffix == ".parquet":
            seen.append(self.path.name)
        if self.path.suffix == ".parquet" and len(seen) == failing:
            self.abort()
            raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp))
        return commit(self)

    monkeypatch.setattr(results.PendingWrite, "commit", commit_or_fail)
    grid = make_grid()
    with pytest.raises(FilesystemError, match="No space left on device"):
        run_grid(grid, tmp_path, progress=False)
    results_dir = tmp_path / "results"
    assert len(finished_cells(tmp_path)) == failing - 1
    assert temp_files(results_dir) == []
    assert claims.live_claims(results_dir) == {}
    monkeypatch.setattr(results.PendingWrite, "commit", commit)
    summary = run_grid(grid, tmp_path, progress=False)
    assert (summary.computed, summary.skipped) == (5 - failing, failing - 1)


# --------------------------------------------------------------------- with the real kernel

def test_run_grid_with_the_real_kernel(tmp_path):
    """Needs harness.backends.cpu.  Checks means against exact values in SE units (z = 5)."""
    grid = make_grid(params=(("mu", (2.0,)), ("sigma", (1.0,)), ("k", (-1.0,))),
                     n_samples=(100, 1000), seeds=tuple(range(64)))
    summary = run_grid(grid, tmp_path / "a", progress=False)
    assert summary.computed == 2
    df = read_results(tmp_path / "a")
    assert len(df) == 2 * 64 * 2 * 2
    stats = df.groupby(["n_samples", "estimator", "param"]).agg(
        mean=("estimate", "mean"), sd=("estimate", "std"), seeds=("seed", "size"),
        exact=("exact_grad", "first"), exact_var=("exact_var", "first"))
    z = (stats["mean"] - stats["exact"]) / (stats["sd"] / np.sqrt(stats["seeds"]))
    assert (z.abs() < 5).all(), stats.assign(z=z)
    # Rerun into another directory: bitwise identical numbers.
    run_grid(grid, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(comparable(read_results(tmp_path / "a")).drop(columns="cell"),
                                  comparable(read_results(tmp_path / "b")).drop(columns="cell"))
