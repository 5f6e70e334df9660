"""Runs you can trust (issue 12): one test per case of the issue.

1. ``report`` shows the grid last run in a directory, counts what it leaves out, says when a
   run is incomplete; ``--all`` groups every file by grid.
2. Result files record the code that computed them; ``run`` recomputes stale cells;
   ``status`` lists every cell's state.
3. ``validate`` rejects what ``run`` would fail on, in one line with exit 2.
4. Operating-system errors are one line naming the path, the error and a fix; read-only
   kernel caches fall back to a temporary one.
5. Runs on one directory share the work (claims); one compile per kernel across processes.
6. Memory is bounded by seed blocks (bitwise equal to one block); the cost is printed first.
7. SIGINT / SIGTERM stop cleanly and say how to resume.
8. Randomly mutated grids: a run or one line with exit 2, never a traceback.

Most tests use the stand-in kernels (``helpers.fake_backend``; for ELBO grids the fake numba
kernels below), in-process with Click's ``CliRunner`` or in subprocesses.  The real kernel
is compiled once, by two processes at once (``compiled_kernel``), and reused.  File-system
faults use ``chattr +i`` (immutable: even root cannot write) and, in a private mount
namespace (``unshare -m``), read-only bind mounts and a tiny tmpfs; each test is skipped,
with the reason, where the machine does not allow it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import fake_backend
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import harness
from harness import claims, kernel_cache, provenance, runner
from harness.cli import main
from harness.results import finished_cells, temp_files

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

GRID = """\
name: trust
problem:
  distribution: normal
  cost: quadratic
  mu: 2.0
  sigma: 1.0
  k: [-1.0, 1.0]
wrt: [mu, sigma]
estimators: [score_function, pathwise]
n_samples: [10, 100]
seeds: 20
"""


@pytest.fixture
def calls(monkeypatch):
    """The stand-in kernel; the list records every call (``helpers.KernelCall``)."""
    recorded = []
    monkeypatch.setitem(sys.modules, "harness.backends.cpu", fake_backend(calls=recorded))
    return recorded


def write_grid(directory: Path, text: str = GRID, name: str = "grid.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments, code=2) -> str:
    """Exit ``code`` and exactly one ``Error:`` line on stderr holding every fragment."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def restamp(path: Path, code: str) -> None:
    """Rewrite a result file as if another code had computed it (its ``harness.code``)."""
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"harness.code"] = code.encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


def result_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "results").glob("[!.]*.parquet"))


# ------------------------------------------------------------------- 1. the report

def test_report_after_an_edited_grid_shows_the_edited_grid_only(tmp_path, calls):
    out = tmp_path / "run"
    grid = write_grid(tmp_path)
    assert cli("run", grid, "--out", out).exit_code == 0
    grid.write_text(GRID.replace("sigma: 1.0", "sigma: 2.0"))       # edit, rerun, report
    assert cli("run", grid, "--out", out).exit_code == 0
    result = cli("report", out)
    assert result.exit_code == 0, result.output
    assert "left out: 4 result files of other grids" in result.stderr
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert set(summary["sigma"]) == {2.0}
    # one row per (point, component, N, estimator): no two cells drawn as one curve
    assert len(summary) == 2 * 2 * 2 * 2
    assert not summary.duplicated(["k", "param", "n_samples", "estimator"]).any()
    page = (out / "report" / "index.html").read_text()
    assert "<dt>cells</dt><dd>4 (2 problem points x 2 values of N)</dd>" in page
    assert "left out: 4 result files of other grids" in page

    # --all: both grids, each with its own YAML and its own figures and tables
    result = cli("report", out, "--all")
    assert result.exit_code == 0, result.output
    page = (out / "report" / "index.html").read_text()
    assert "sigma: 1.0" in page and "sigma: 2.0" in page
    assert "trust (the grid last run here)" in page and "trust (other grid " in page
    for group, sigma in (("grid-1", 2.0), ("grid-2", 1.0)):
        assert set(pd.read_csv(out / "report" / group / "summary.csv")["sigma"]) == {sigma}


def test_an_incomplete_run_is_reported_as_incomplete(tmp_path, calls):
    out = tmp_path / "run"
    assert cli("run", write_grid(tmp_path), "--out", out).exit_code == 0
    result_files(out)[0].unlink()
    result = cli("report", out)
    assert result.exit_code == 0
    note = "incomplete run: 3 of 4 cells of grid trust done (1 missing, 0 computed by other code)"
    assert note in result.stderr and "resume with: harness run" in result.stderr
    page = (out / "report" / "index.html").read_text()
    assert note in page and "<dd>3 of 4: incomplete" in page


def test_the_report_leaves_out_cells_computed_by_other_code(tmp_path, calls):
    out = tmp_path / "run"
    assert cli("run", write_grid(tmp_path), "--out", out).exit_code == 0
    stale = result_files(out)[0]
    restamp(stale, "0" * 16)
    result = cli("report", out)
    assert result.exit_code == 0
    assert "left out: 1 cell computed by other code" in result.stderr
    assert "3 of 4 cells of grid trust done (0 missing, 1 computed by other code)" in \
        result.stderr
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert len(summary) == 3 * 2 * 2 and stale.stem not in set(summary["cell"])


# --------------------------------------------------------- 2. provenance and status

def test_result_files_record_the_version_and_the_code(tmp_path, calls):
    out = tmp_path / "run"
    assert cli("run", write_grid(tmp_path), "--out", out).exit_code == 0
    for path in result_files(out):
        meta = pq.read_schema(path).metadata
        assert meta[b"harness.version"] == harness.__version__.encode()
        assert meta[b"harness.code"] == provenance.code_digest().encode()
        grid_digest = meta[b"harness.grid"].decode()
        assert (out / "grids" / f"{grid_digest}.yaml").read_text() == GRID


def test_cell_ids_are_those_of_earlier_versions(tmp_path):
    """``seeds: R`` is now a range (ten million seeds cost nothing), hashed in pieces: the
    ids must still be the sha256 of the cell's JSON with the list of seeds, as before, so
    existing result files stay finished."""
    import hashlib

    from harness.config import load_grid

    grid = load_grid(REPO / "examples" / "reparam_trick.yaml")
    assert isinstance(grid.seeds, range)
    for cell in runner.expand_cells(grid):
        text = json.dumps(cell.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)
        assert cell.id == hashlib.sha256(text.encode()).hexdigest()[:16]
        as_tuple = runner.Cell(cell.kind, cell.experiment, cell.point, cell.estimators,
                               cell.n_samples, tuple(cell.seeds), cell.backend)
        assert as_tuple.id == cell.id
    many = dataclasses.replace(cell, seeds=range(3, 150_003))       # hashed in 3 pieces
    assert many.id == dataclasses.replace(cell, seeds=tuple(many.seeds)).id


def test_the_code_digest_follows_the_computing_sources_only(tmp_path, monkeypatch):
    copy = tmp_path / "harness"
    shutil.copytree(provenance.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE", copy)
    provenance._package_files.cache_clear()
    try:
        before = provenance.code_digest()
        report = copy / "report.py"
        report.write_text(report.read_text() + "\n# a figure changed\n")
        assert provenance.code_digest() == before          # presentation only
        estimator = copy / "estimators" / "pathwise.py"
        estimator.write_text(estimator.read_text() + "\n# an estimator changed\n")
        assert provenance.code_digest() != before
    finally:
        provenance._package_files.cache_clear()


def test_a_rerun_recomputes_stale_cells_unless_kept(tmp_path, calls):
    out = tmp_path / "run"
    grid = write_grid(tmp_path)
    assert cli("run", grid, "--out", out).exit_code == 0
    assert len(calls) == 4
    for path in result_files(out)[:2]:
        restamp(path, "0" * 16)
    result = cli("run", grid, "--out", out)
    assert "(2 computed, 2 skipped, 2 of them stale)" in result.stdout
    assert len(calls) == 6
    restamp(result_files(out)[0], "1" * 16)
    result = cli("run", grid, "--out", out, "--keep-stale")
    assert "(0 computed, 4 skipped, 1 stale kept)" in result.stdout
    assert len(calls) == 6


def test_status_lists_done_stale_missing_running_and_foreign_cells(tmp_path, calls):
    out = tmp_path / "run"
    other = write_grid(tmp_path, GRID.replace("name: trust", "name: other"), "other.yaml")
    assert cli("run", other, "--out", out).exit_code == 0                  # 4 foreign
    assert cli("run", write_grid(tmp_path), "--out", out).exit_code == 0   # the last grid
    record = json.loads((out / "grid.json").read_text())
    ids = [cell_id for cell_id, _ in record["cells"]]
    restamp(out / "results" / f"{ids[0]}.parquet", "0" * 16)                # stale
    (out / "results" / f"{ids[1]}.parquet").unlink()                        # missing
    (out / "results" / f"{ids[2]}.parquet").unlink()                        # running:
    claim = claims.try_claim(out / "results", ids[2], heartbeat=0)          # (live: us)
    try:
        result = cli("status", out)
    finally:
        claim.release()
    assert result.exit_code == 0
    text = result.stdout
    assert (f"{out}: grid trust ({tmp_path / 'grid.yaml'}): 4 cells: 1 done, 1 stale, "
            "2 missing (1 running); 4 foreign files") in text
    assert re.search(r"done +1 +code \w{16} \(harness [^)]+\) = this code", text)
    assert re.search(r"stale +1 +code 0{16}", text)
    assert re.search(r"foreign +4 +grid other \(\w{16}\); code \w{16}", text)
    assert f"stale    {ids[0]}  N=10  code {'0' * 16}" in text
    assert f"missing  {ids[1]}  N=100" in text
    assert f"running  {ids[2]}  N=10" in text


# ------------------------------------------------------------------- 3. validate

REJECTED = [
    # (edit of GRID, fragments of the one line)
    (("sigma: 1.0", "sigma: 1e-320"), ["problem", "sigma=1e-320", "ZeroDivisionError"]),
    (("mu: 2.0", "mu: 1e308"), ["problem", "mu=1e+308", "cannot be computed in floating"]),
    (("name: trust", "name: " + "x" * 300), ["name", "300 characters", "shorter name"]),
    (("name: trust", 'name: "a\\tb"'), ["name", "not a valid directory name"]),
    (("seeds: 20", "seeds: !!python/object/apply:os.getcwd []"),
     ["seeds", "YAML tag tag:yaml.org,2002:python/object/apply:os.getcwd"]),
    (("mu: 2.0", "mu: !!binary aGk="), ["problem.mu", "is not a grid value"]),
    (("k: [-1.0, 1.0]", "k: !custom [1]"), ["problem.k", "YAML tag !custom"]),
    (("mu: 2.0", "mu: 2001-12-14"), ["problem.mu", "a date is not a grid value"]),
    (("mu: 2.0\n  sigma: 1.0\n  k: [-1.0, 1.0]",
      "mu: [" + ", ".join(str(i) for i in range(500)) + "]\n  sigma: 1.0\n  k: ["
      + ", ".join(str(i) for i in range(101)) + "]"),
     ["problem", "expands to 101,000 cells, more than 100,000"]),
    (("seeds: 20", "seeds: 1e8"), ["seeds", "must be <= 10000000"]),
]


@pytest.mark.parametrize("edit, fragments", REJECTED,
                         ids=["tiny-sigma", "huge-mu", "long-name", "control-char-name",
                              "python-tag", "binary", "custom-tag", "date", "too-many-cells",
                              "too-many-seeds"])
def test_validate_rejects_what_run_would_fail_on(tmp_path, edit, fragments):
    path = write_grid(tmp_path, GRID.replace(*edit))
    one_line_error(cli("validate", path), *fragments)


def test_validate_rejects_an_elbo_trace_that_would_not_fit(tmp_path):
    text = textwrap.dedent("""\
        problem: {kind: elbo, target: gaussian, target_seed: 3, dim: 200, family: full}
        mode: optimize
        estimators: [reparam]
        optimizer: {steps: 1000000, record_every: 1}
        seeds: 1
        """)
    one_line_error(cli("validate", write_grid(tmp_path, text)), "optimizer",
                   "1,000,001 records of 20,300 parameters", "record less often")


def test_validate_refuses_a_huge_grid_file_before_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(GRID + "# " + "x" * (16 << 20) + "\n")   # the 16 MB file
    one_line_error(cli("validate", path), "huge.yaml", "more than a grid file may be")


def test_validate_takes_several_files(tmp_path):
    examples = [REPO / "examples" / f"{name}.yaml"
                for name in ("reparam_trick", "vi_gaussian", "vi_ripple")]
    result = cli("validate", *examples)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == \
        [str(p) for p in examples]
    bad = write_grid(tmp_path, GRID.replace("sigma: 1.0", "sigma: -1"), "bad.yaml")
    result = cli("validate", examples[0], bad, examples[1])
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 2 and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {bad}:6: problem.sigma: must be > 0")


# --------------------------------------------------------- 4. operating-system errors

def test_a_file_in_the_way_and_a_directory_as_grid_yaml_are_one_line(tmp_path, calls):
    grid = write_grid(tmp_path)
    out = tmp_path / "a"
    out.mkdir()
    (out / "results").write_text("not a directory")
    one_line_error(cli("run", grid, "--out", out), f"{out}: cannot create the run directory",
                   "a file is in the way", code=2)
    out = tmp_path / "b"
    (out / "grid.yaml").mkdir(parents=True)
    one_line_error(cli("run", grid, "--out", out), "cannot write the grid",
                   "Is a directory", "rename or remove it", code=2)
    assert not result_files(out)


@contextlib.contextmanager
def immutable(path: Path, recursive: bool = False):
    """``chattr +i``: nothing can be created in ``path``, even by root; skip if the file
    system does not support it."""
    flags = ["-R"] if recursive else []
    done = subprocess.run(["chattr", *flags, "+i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", *flags, "-i", str(path)], check=True)


def test_an_immutable_output_directory_is_one_line(tmp_path, calls):
    out = tmp_path / "locked"
    out.mkdir()
    with immutable(out):
        result = cli("run", write_grid(tmp_path), "--out", out)
    one_line_error(result, f"{out}: cannot create the run directory",
                   "Operation not permitted", "chattr -i", code=1)


def namespace_available() -> str | None:
    """None if ``unshare -m`` can mount here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    done = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True)
    return None if done.returncode == 0 else (
        "cannot mount in a private namespace (needs root or CAP_SYS_ADMIN): "
        + done.stderr.decode().strip())


FS_SCRIPT = textwrap.dedent("""\
    import json, subprocess, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from helpers import fake_backend
    sys.modules["harness.backends.cpu"] = fake_backend()
    from harness.cli import main
    try:
        main(sys.argv[1:], prog_name="harness")
    except SystemExit as e:
        sys.exit(e.code)
""")


def test_read_only_mount_and_full_disk_are_one_line_with_nothing_partial(tmp_path, calls):
    reason = namespace_available()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "harness_fake.py"
    script.write_text(FS_SCRIPT.format(repo=str(REPO), tests=str(TESTS)))
    grid = write_grid(tmp_path, GRID.replace("seeds: 20", "seeds: 400"))   # ~60 kB a cell
    # a finished run with its report, to be reported again on a full disk
    done_run = tmp_path / "r"
    assert cli("run", write_grid(tmp_path, name="small.yaml"), "--out", done_run).exit_code == 0
    (done_run / "report").mkdir()
    (done_run / "report" / "index.html").write_text("<html>the previous report</html>\n")
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    py = f"{sys.executable} {script}"
    steps = textwrap.dedent(f"""\
        mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} || exit 90
        mount -t tmpfs -o size=1m tmpfs {full} || exit 91
        {py} run {grid} --out {ro}/out > {tmp_path}/ro.out 2> {tmp_path}/ro.err
        echo $? > {tmp_path}/ro.rc
        cp -a {done_run} {full}/r || exit 92
        {sys.executable} -c "import os; s = os.statvfs('{full}'); \\
    open('{full}/filler', 'wb').write(bytes(s.f_bavail * s.f_frsize - 60000))"
        {py} run {grid} --out {full}/big > {tmp_path}/full.out 2> {tmp_path}/full.err
        echo $? > {tmp_path}/full.rc
        {py} report {full}/r > {tmp_path}/report.out 2> {tmp_path}/report.err
        echo $? > {tmp_path}/report.rc
        cp {full}/r/report/index.html {tmp_path}/report-after.html
        ls -a {full}/r {full}/big {full}/big/results {full}/r/report > {tmp_path}/listing.txt
        {sys.executable} - <<'EOF' > {tmp_path}/complete.txt
    import glob, pyarrow.parquet as pq
    for p in sorted(glob.glob("{full}/big/results/*.parquet")):
        print(p, pq.read_metadata(p).num_rows)
    EOF
        """)
    done = subprocess.run(["unshare", "-m", "sh", "-c", steps], cwd=tmp_path,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr.decode())

    def read(name):
        return (tmp_path / name).read_text()

    # read-only mount: one line naming the path, the error and a fix; exit 1
    assert read("ro.rc").strip() == "1" and read("ro.out") == ""
    (line,) = read("ro.err").splitlines()
    assert line.startswith(f"Error: {ro}/out: cannot create the run directory: Read-only file "
                           "system (fix: the file system is read-only: choose another --out")
    # full disk while running: one line, no temporary file, every visible file complete
    assert read("full.rc").strip() == "1"
    (line,) = read("full.err").splitlines()
    assert "No space left on device" in line and "free some disk space" in line
    assert ".tmp-" not in read("listing.txt")
    sizes = [line.split() for line in read("complete.txt").splitlines()]
    assert all(int(rows) == 400 * 2 * 2 for _, rows in sizes)   # (seeds x estimators x wrt)
    # full disk while reporting: one line, the previous report intact
    assert read("report.rc").strip() == "1"
    (line,) = read("report.err").splitlines()
    assert line.startswith(f"Error: {full}/r/report: cannot write the report: No space left")
    assert read("report-after.html") == "<html>the previous report</html>\n"
    assert ".report" not in read("listing.txt")


def test_a_read_only_kernel_cache_falls_back_to_a_temporary_one(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "kernels"
    (ro / "__pycache__").mkdir(parents=True)
    (ro / "harness_kernel_0123.py").write_text("# a cached kernel\n")
    (ro / "__pycache__" / "harness_kernel_0123.kernel-1.py311.nbi").write_bytes(b"index")
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(ro))
    monkeypatch.setattr(kernel_cache, "_chosen", {})
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with immutable(ro):
        used = kernel_cache.kernel_dir()
    assert used == tmp_path / "tmp" / f"harness-kernels-{os.getuid()}"
    (note,) = capsys.readouterr().err.splitlines()
    assert note == (f"note: kernel cache {ro} is not writable (Operation not permitted); "
                    f"using {used} for this process (copied 2 cached files) (fix: make it "
                    "writable or set HARNESS_KERNEL_DIR)")
    assert (used / "harness_kernel_0123.py").read_text() == "# a cached kernel\n"
    assert kernel_cache.kernel_dir() == used            # decided once per process
    assert capsys.readouterr().err == ""


def test_a_read_only_home_is_not_a_traceback(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_KERNEL_DIR", "NUMBA_CACHE_DIR")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    code = ("from harness import kernel_cache; print(kernel_cache.kernel_dir()); "
            "kernel_cache.ensure_numba_cache()")
    with immutable(home):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        validate = subprocess.run([sys.executable, "-m", "harness.cli", "validate",
                                   str(REPO / "examples" / "vi_gaussian.yaml")], env=env,
                                  capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / f"harness-kernels-{os.getuid()}")
    assert done.stderr.startswith(f"note: kernel cache {home}/.cache/harness/kernels is not "
                                  "writable")
    assert validate.returncode == 0 and "Traceback" not in validate.stderr, validate.stderr


# ------------------------------------------------------------ the real kernel, compiled once

COMPILE = textwrap.dedent("""\
    import json, pathlib, sys, time
    import numpy as np
    from harness.backends import cpu
    ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    cpu.estimate("normal", "square", ["score_function", "pathwise"], ["mu"],
                 {"mu": 2.0, "sigma": 1.0}, 100, np.arange(4))
    kernel = cpu.load_kernel("normal", "square", ("score_function", "pathwise"), ("mu",))
    print(json.dumps({"hits": sum(kernel.stats.cache_hits.values()),
                      "misses": sum(kernel.stats.cache_misses.values()),
                      "kernels": len(kernel.dispatchers)}))
""")


@pytest.fixture(scope="module")
def compiled_kernel(tmp_path_factory):
    """Two processes need the same new kernel at the same moment (a barrier file): the
    compile lock lets one compile it and the other load it.  Yields (kernel dir, numba cache
    dir, [the two processes' stats and stderr])."""
    base = tmp_path_factory.mktemp("compile")
    # HARNESS_COMPILE_WORKERS=1: each process compiles in itself (no helper processes), so
    # its numba counters say who compiled
    env = {**os.environ, "HARNESS_KERNEL_DIR": str(base / "kernels"),
           "NUMBA_CACHE_DIR": str(base / "numba"), "PYTHONPATH": str(REPO),
           "HARNESS_COMPILE_WORKERS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", COMPILE, str(base / f"ready{i}"),
                               str(base / "go")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((base / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    (base / "go").touch()
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outcomes.append((json.loads(out), err))
    yield base / "kernels", base / "numba", outcomes


def test_two_processes_compile_a_new_kernel_once(compiled_kernel):
    _, _, outcomes = compiled_kernel
    stats = [s for s, _ in outcomes]
    n = stats[0]["kernels"]                                    # the cell type's kernels
    # Each kernel has its own lock, so the two may share the work: every kernel compiled
    # once, by one of them, and loaded by the other.
    assert sum(s["misses"] for s in stats) == n
    assert sum(s["hits"] for s in stats) == n


@pytest.fixture
def real_kernel(compiled_kernel, monkeypatch):
    """The real CPU backend in this process, loading the kernel compiled above."""
    from numba.core import config

    from harness.backends import cpu

    kernels, numba_dir, _ = compiled_kernel
    monkeypatch.setitem(sys.modules, "harness.backends.cpu", cpu)
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(kernels))
    monkeypatch.setattr(config, "CACHE_DIR", str(numba_dir))
    monkeypatch.setattr(kernel_cache, "_chosen", {})
    monkeypatch.setattr(cpu, "_loaded", {})
    return cpu


def test_read_only_caches_holding_a_valid_kernel_load_it(compiled_kernel, tmp_path):
    kernels, numba_dir, _ = compiled_kernel
    env = {**os.environ, "HARNESS_KERNEL_DIR": str(kernels), "NUMBA_CACHE_DIR": str(numba_dir),
           "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    (tmp_path / "go").touch()
    with immutable(kernels, recursive=True), immutable(numba_dir, recursive=True):
        done = subprocess.run([sys.executable, "-c", COMPILE, str(tmp_path / "ready"),
                               str(tmp_path / "go")], env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats == {"hits": stats["kernels"], "misses": 0, "kernels": 3}  # loaded, not compiled
    notes = done.stderr.splitlines()
    assert len(notes) == 2, notes
    assert notes[0].startswith(f"note: kernel cache {kernels} is not writable")
    assert notes[1].startswith(f"note: numba cache {numba_dir} is not writable")
    assert all("copied" in n for n in notes)


# ---------------------------------------------------------------- 5. concurrency

RUN_SCRIPT = textwrap.dedent("""\
    import json, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from helpers import fake_backend
    calls = []
    sys.modules["harness.backends.cpu"] = fake_backend(delay={delay}, calls=calls)
    import harness.runner
    harness.runner.WAIT_POLL = 0.05
    from harness.cli import main
    try:
        main(sys.argv[1:], prog_name="harness")
    finally:
        with open({log!r}, "w") as fh:
            json.dump([[sorted(c.params.items()), int(c.n_samples)] for c in calls], fh)
""")


def start_run(tmp_path: Path, args, delay: float, log: str) -> subprocess.Popen:
    script = RUN_SCRIPT.format(repo=str(REPO), tests=str(TESTS), delay=delay,
                               log=str(tmp_path / log))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


EIGHT_CELLS = GRID.replace("k: [-1.0, 1.0]", "k: [-1.0, 0.0, 1.0, 2.0]")


def test_two_runs_on_one_directory_compute_each_cell_once(tmp_path):
    grid = write_grid(tmp_path, EIGHT_CELLS)
    out = tmp_path / "run"
    procs = [start_run(tmp_path, ["run", grid, "--out", out], 0.4, f"calls{i}.json")
             for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    computed = [{json.dumps(c) for c in json.loads((tmp_path / f"calls{i}.json").read_text())}
                for i in range(2)]
    assert len(computed[0]) + len(computed[1]) == 8           # every cell once ...
    assert not computed[0] & computed[1]                      # ... by one of the runs
    assert all(computed), "both runs computed some cells (the work was shared)"
    assert len(finished_cells(out)) == 8 and not list((out / "results" / ".claims")
                                                      .glob("*.claim"))
    summaries = " ".join(stdout for stdout, _ in outputs)
    assert re.search(r"\d by another run", summaries) or all(
        f"({len(c)} computed" in " ".join(o for o, _ in outputs) for c in computed)


def test_a_killed_runs_claim_is_taken_over(tmp_path, calls):
    grid = write_grid(tmp_path)
    out = tmp_path / "run"
    proc = start_run(tmp_path, ["run", grid, "--out", out], 60.0, "killed.json")
    try:
        deadline = time.monotonic() + 60
        while not list((out / "results" / ".claims").glob("*.claim")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        (claim,) = (out / "results" / ".claims").glob("*.claim")
        assert claims.owner(claim)["pid"] == proc.pid and not claims.is_stale(claim)
    finally:
        proc.kill()
        proc.communicate()
    assert claims.is_stale(claim)                 # its process is dead
    result = cli("run", grid, "--out", out)
    assert result.exit_code == 0 and "(4 computed, 0 skipped)" in result.stdout
    assert len(calls) == 4 and not claim.exists()


def test_claims_are_stale_by_pid_on_this_host_and_by_age_from_others(tmp_path, monkeypatch):
    results_dir = tmp_path / "results"
    mine = claims.try_claim(results_dir, "a" * 16, heartbeat=0)
    assert claims.try_claim(results_dir, "a" * 16, heartbeat=0) is None    # a live run's
    path = mine.path
    info = claims.owner(path)
    old = time.time() - 2 * claims.STALE_AFTER
    os.utime(path, (old, old))
    assert not claims.is_stale(path)          # alive on this host: never stale by age
    path.write_text(json.dumps({**info, "start": "1"}))       # same pid, another process
    assert claims.is_stale(path)
    path.write_text(json.dumps({**info, "host": "elsewhere"}))
    assert not claims.is_stale(path)          # another host's pid means nothing here ...
    os.utime(path, (old, old))
    assert claims.is_stale(path)              # ... but an old heartbeat does
    taken = claims.try_claim(results_dir, "a" * 16, heartbeat=0)
    assert taken.previous["host"] == "elsewhere"
    mine.release()                            # not its claim any more: left alone
    assert path.exists() and claims.owner(path)["token"] == taken.token
    taken.release()
    assert not path.exists()


# ----------------------------------------------------------- 6. memory and cost

def test_seed_blocks_are_row_groups_bitwise_equal_to_one_block(real_kernel, tmp_path,
                                                              monkeypatch):
    text = GRID.replace("cost: quadratic", "cost: square").replace("  k: [-1.0, 1.0]\n", "") \
        .replace("wrt: [mu, sigma]", "wrt: [mu]").replace("seeds: 20", "seeds: 50")
    from harness.config import parse_grid
    grid = parse_grid(text, "blocks.yaml")
    runner.run_grid(grid, tmp_path / "one", progress=False)
    monkeypatch.setattr(runner, "FIRST_BLOCK_SEEDS", 3)
    monkeypatch.setattr(runner, "SEEDS_PER_BLOCK", 7)
    runner.run_grid(grid, tmp_path / "blocks", progress=False)
    for one, blocks in zip(result_files(tmp_path / "one"), result_files(tmp_path / "blocks")):
        assert one.name == blocks.name                    # the id ignores the blocks
        assert pq.read_metadata(one).num_row_groups == 1
        assert pq.read_metadata(blocks).num_row_groups == 1 + math.ceil((50 - 3) / 7)
        a, b = pq.read_table(one).to_pandas(), pq.read_table(blocks).to_pandas()
        pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
        # rows by seed, then estimator (2): every seed once, in order, in both files
        assert a["seed"].tolist() == [seed for seed in range(50) for _ in range(2)]


# The peak RSS of the run itself: getrusage's ru_maxrss would include the pytest process's
# RSS at fork time (Linux keeps the high-water mark across exec), so the peak is reset first
# (/proc/self/clear_refs) and read as VmHWM; where that is impossible, ru_maxrss is used.
RSS = textwrap.dedent("""\
    import resource, sys
    from pathlib import Path
    def hwm():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])   # KiB
    try:
        Path("/proc/self/clear_refs").write_text("5")
        fresh = True
    except OSError:
        fresh = False
    from harness.config import parse_grid
    from harness.runner import run_grid
    text = sys.stdin.read()
    run_grid(parse_grid(text, "rss.yaml"), sys.argv[1], progress=False)
    print(hwm() if fresh else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_peak_memory_does_not_grow_with_the_number_of_seeds(compiled_kernel, tmp_path):
    kernels, numba_dir, _ = compiled_kernel
    env = {**os.environ, "HARNESS_KERNEL_DIR": str(kernels), "NUMBA_CACHE_DIR": str(numba_dir),
           "PYTHONPATH": str(REPO)}
    text = GRID.replace("cost: quadratic", "cost: square").replace("  k: [-1.0, 1.0]\n", "") \
        .replace("wrt: [mu, sigma]", "wrt: [mu]").replace("n_samples: [10, 100]",
                                                          "n_samples: [2]")
    peaks = {}
    for seeds in (20_000, 200_000):
        done = subprocess.run([sys.executable, "-c", RSS, str(tmp_path / str(seeds))], env=env,
                              input=text.replace("seeds: 20", f"seeds: {seeds}"),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        peaks[seeds] = int(done.stdout) / 1024
    # ten times the seeds (one row per seed and estimator: 4e4 -> 4e5 rows) in about the
    # same memory (measured from 3e4 to 3e5 seeds: +2 MiB; +270 MiB before seed blocks)
    assert peaks[200_000] - peaks[20_000] < 100, peaks
    assert peaks[200_000] < 1500, peaks


def test_dry_run_prints_the_cost_and_writes_nothing(tmp_path, calls):
    big = GRID.replace("seeds: 20", "seeds: 1000000")
    out = tmp_path / "run"
    result = cli("run", write_grid(tmp_path, big), "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"trust: cost: 4 cells to compute, 2\.2e8 samples, about .+ \(calibrated at \S+ "
        r"samples/s on small copies of its cells\), about [\d.]+ [kMG]B of results, "
        r"[\d.]+ [kMGT]B free\n", result.stderr)
    assert result.stdout.startswith("trust: dry run: 4 cells, 0 done, 4 to compute; cost:")
    assert not out.exists()
    assert all(len(c.seeds) <= runner.SEEDS_PER_BLOCK for c in calls)    # calibration only


def test_a_run_the_disk_cannot_hold_is_refused_before_computing(tmp_path, calls, monkeypatch):
    free = shutil._ntuple_diskusage(10**12, 10**12 - 999, 999)
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: free)
    big = GRID.replace("seeds: 20", "seeds: 1000000")
    out = tmp_path / "run"
    result = cli("run", write_grid(tmp_path, big), "--out", out)
    one_line_error(result, f"{out}: not enough disk space", "999 B are free", code=1)
    assert not out.exists()


def test_a_report_too_big_for_memory_is_refused(tmp_path, calls, monkeypatch):
    from harness import report

    out = tmp_path / "run"
    assert cli("run", write_grid(tmp_path), "--out", out).exit_code == 0   # 320 rows
    monkeypatch.setattr(report, "MAX_REPORT_ROWS", 319)
    one_line_error(cli("report", out), "the results hold 320 rows, more than a report reads")
    assert not (out / "report").exists()


def test_a_progress_line_at_least_every_interval_without_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "harness.backends.cpu", fake_backend(delay=0.3))
    monkeypatch.setattr(runner, "PROGRESS_EVERY", 0.25)
    result = cli("run", write_grid(tmp_path), "--out", tmp_path / "run")
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if "elapsed" in line]
    assert len(lines) >= 3, result.stderr
    assert re.fullmatch(r"trust: \d/4 cells, \S+/4400 samples \(\d+%\), \d+ s elapsed, "
                        r"ETA .+", lines[-1])


# ------------------------------------------------------------------- 7. signals

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_cleanly_and_says_how_to_resume(tmp_path, sig, code):
    grid = write_grid(tmp_path, EIGHT_CELLS)
    out = tmp_path / "run"
    proc = start_run(tmp_path, ["run", grid, "--out", out], 0.3, "calls.json")
    try:
        deadline = time.monotonic() + 60
        while len(finished_cells(out)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code
    assert stdout == "" and "Traceback" not in stderr
    (line,) = stderr.splitlines()
    done = len(finished_cells(out))
    assert line == (f"Error: interrupted by {signal.Signals(sig).name}: {done} of 8 cells done "
                    f"({done} computed in this run), no partial file left; resume with: "
                    f"harness run {grid} --out {out}")
    assert temp_files(out / "results") == []
    assert not list((out / "results" / ".claims").glob("*.claim"))


# ------------------------------------------------------ 8. mutated grids (hypothesis)

class Raw(str):
    """A YAML snippet written as is (tags, special floats, flow collections)."""


def emit(value) -> str:
    """A document as one line of flow-style YAML (valid YAML: JSON-like, plus Raw)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {emit(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(emit(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


EXPECTATION_BASE = {
    "name": "m", "problem": {"distribution": "normal", "cost": "quadratic", "mu": 2.0,
                             "sigma": 1.0, "k": [0.5, -1.0]},
    "wrt": ["mu", "sigma"], "estimators": ["score_function", "pathwise"],
    "n_samples": [10, 100], "seeds": 4, "backend": "cpu",
}
ELBO_BASE = {
    "name": "e", "problem": {"kind": "elbo", "target": "gaussian", "target_seed": 3, "dim": 2,
                             "family": "diag"},
    "mode": ["estimate", "optimize"],
    "estimators": ["reparam", {"name": "score_function", "baseline": "mean"}],
    "n_samples": [10, 100],
    "optimizer": {"steps": 4, "samples": 4, "record_every": 2, "var_samples": 10},
    "seeds": 3,
}
PLAUSIBLE = [Raw(v) for v in ("1", "2", "3", "4", "0.5", "-1", "-3.5", "10", "100", "1e3")]
NUMBERS = PLAUSIBLE * 2 + [Raw(v) for v in (
    "0", "1e-3", "1e-320", "1e308", "-1e308", "1e12", "10000001", "9223372036854775808",
    "200", "201", ".nan", ".inf", "-.inf",
)]
# the valid names under a key (or in a list under it), mostly drawn where they belong
CONTEXT = {
    "estimators": ["score_function", "pathwise", "delta_cv", "measure_valued", "reparam",
                   "stl", "reparam_sampled_entropy"],
    "cost": ["square", "quadratic", "exp", "cos"], "distribution": ["normal"],
    "target": ["gaussian", "logistic_regression", "ripple", "banana"],
    "family": ["diag", "full"], "mode": ["estimate", "optimize"], "wrt": ["mu", "sigma"],
    "name": ["adam", "sgd"], "schedule": ["constant", "cosine"], "backend": ["cpu", "cuda"],
    "kind": ["elbo", "expectation"], "q": ["standard", "optimum"],
}
NAMES = [Raw(v) for v in (
    "score_function", "pathwise", "delta_cv", "measure_valued", "reparam", "stl",
    "reparam_sampled_entropy", "{name: score_function, baseline: optimal}",
    "{name: score_function, baseline: exact_optimal}", "{name: delta_cv, coefficient: 1}",
    "gaussian", "logistic_regression", "ripple", "banana", "full", "diag", "normal", "cos",
    "exp", "square", "quadratic", "cpu", "cuda", "optimum", "standard", "mu", "sigma",
    "estimate", "optimize", "sgd", "adam", "cosine", "elbo", "expectation", "xyz",
)]
ODD = [Raw(v) for v in (
    "true", "null", '""', '"a/b"', '"\\0"', json.dumps("x" * 300), "[]", "{}", "[1, 2]",
    "[0.5, -3]", "{a: 1}", "2001-12-14", "'3'", "!!python/object/apply:os.getcwd []",
    "!!binary aGk=", "!x 3", "!!str 3", "[reparam, reparam]", "[diag, full]",
    "{mu: 0.0, scale: 1.0}", "{mu: 1e300, scale: 2}", "{mu: 0.0, scale: 1e-300}", "[mu]",
    "[sigma, mu]", "[10, 1e6]", "[2]", "{steps: 3, record_every: 5}",
)]
VALUES = NUMBERS + NAMES + ODD
KEYS = ["name", "problem", "kind", "distribution", "cost", "mu", "sigma", "k", "wrt",
        "estimators", "n_samples", "seeds", "backend", "mode", "optimizer", "target",
        "target_seed", "dim", "family", "q", "mean", "cov", "a", "omega", "batch", "steps",
        "samples", "record_every", "var_samples", "lr", "schedule", "baseline", "xyz"]


def nodes(value, path=()):
    """Every (path, value) of a document (mapping keys and list indices)."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from nodes(v, (*path, i))


def mutate(doc, draw):
    """One random edit: mostly a value of the same type (a number for a number, a name for a
    name: edits a user makes), sometimes anything, a deleted, added or renamed key."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p, _ in nodes(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last, value = path[-1], parent[path[-1]]
    key = next((p for p in reversed(path) if isinstance(p, str)), None)
    op = draw(st.sampled_from(["similar"] * 5 + ["any"] * 2 + ["delete", "add", "rename"]))
    if op == "similar" and isinstance(value, str) and key in CONTEXT and draw(st.booleans()):
        parent[last] = draw(st.sampled_from(CONTEXT[key]))
    elif op == "similar":
        pool = (NUMBERS if isinstance(value, (int, float)) else
                NAMES if isinstance(value, str) else VALUES)
        parent[last] = draw(st.sampled_from(pool))
    elif op == "any":
        parent[last] = draw(st.sampled_from(VALUES))
    elif op == "delete":
        del parent[last]
    elif isinstance(parent, dict) and op == "add":
        parent[draw(st.sampled_from(KEYS))] = draw(st.sampled_from(VALUES))
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(KEYS))] = parent.pop(last)
    else:
        parent.append(draw(st.sampled_from(VALUES)))
    return doc


@contextlib.contextmanager
def installed(name: str, module):
    """``sys.modules[name] = module`` for the block (only that entry is restored)."""
    missing = object()
    previous = sys.modules.get(name, missing)
    sys.modules[name] = module
    try:
        yield
    finally:
        if previous is missing:
            del sys.modules[name]
        else:
            sys.modules[name] = previous


def zeros(call):
    """Stand-in kernel for the expectation kind: zeros, at any N and number of seeds."""
    shape = (len(call.seeds), len(call.estimators), len(call.components))
    return np.zeros(shape), np.ones(shape)


def fake_grad_kernel(k0, k1, n_samples, chunk, stream, tcode, ta, tm, ti, fam, n_params, mus,
                     Cs, codes, offsets, bases, jobs, part):
    """Stand-in for the ELBO gradient kernel: N samples of zeros per seed."""
    part[:] = 0.0
    part[:, :, 0] = n_samples / part.shape[1]


def fake_opt_kernel(k0, k1, steps, samples, tcode, ta, tm, ti, fam, n_params, dim, code, n_terms,
                    theta, adam, lr, cosine, record_every, min_diag, seeds, rec):
    """Stand-in for the ELBO optimiser: lambda stays where it started."""
    rec[:] = theta


def fake_elbo_kernels(target=None):
    """Stand-in for ``harness.vi.api.kernels``: the API loads its kernel module through
    ``harness.kernel_cache`` (not ``import harness.vi.kernels``), so the stand-ins replace
    the loader, not the module's functions."""
    return SimpleNamespace(grad_kernel=fake_grad_kernel, opt_kernel=fake_opt_kernel)


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_grids_run_or_fail_in_one_line(tmp_path, data):
    from harness.vi import api

    base = data.draw(st.sampled_from([EXPECTATION_BASE, ELBO_BASE]))
    doc = base
    for _ in range(data.draw(st.integers(1, 2))):
        doc = mutate(doc, data.draw)
    directory = tmp_path / f"case{abs(hash(emit(doc))) % 10**8}"
    directory.mkdir(exist_ok=True)
    path = write_grid(directory, emit(doc) + "\n")
    # (not mock.patch.dict(sys.modules): it would also drop the modules numba imports
    # meanwhile, and their re-import breaks numba's registries)
    with installed("harness.backends.cpu", fake_backend(kernel=zeros)), \
            mock.patch.object(api, "kernels", fake_elbo_kernels):
        checked = cli("validate", path)
        assert "Traceback" not in checked.output
        if checked.exit_code != 0:
            event("rejected by validate")
            one_line_error(checked, str(path))
            return
        result = cli("run", path, "--out", directory / "run")
        if result.exit_code == 0:
            event("run")
        else:   # what the machine lacks (a GPU for backend: cuda), not the grid
            event(f"run refused: {result.stderr.split(':')[1].strip()}")
            one_line_error(result, "backend")
