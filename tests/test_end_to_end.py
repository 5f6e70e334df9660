"""run -> report through the command line, and thread-count invariance of the stored data."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
from click.testing import CliRunner
from helpers import run_grid

from harness.cli import main

GRID = """\
name: e2e
problem:
  distribution: normal
  cost: quadratic
  mu: 1.5
  sigma: 0.7
  k: [-1, 2]
estimators: [score_function, pathwise]
n_samples: [100, 1e4]
seeds: 20
"""


def test_run_then_report_from_the_command_line(tmp_path):
    output, df = run_grid(tmp_path, GRID, "e2e.yaml")
    grid, out = tmp_path / "e2e.yaml", tmp_path / "out"
    runner = CliRunner()
    assert "4 cells (4 computed, 0 skipped)" in output
    assert len(df) == 4 * 20 * 2 * 2  # cells x seeds x estimators x components
    assert (out / "grid.yaml").read_text() == GRID

    again = runner.invoke(main, ["run", str(grid), "--out", str(out)])
    assert again.exit_code == 0 and "(0 computed, 4 skipped)" in again.output
    assert pd.read_parquet(out / "results").equals(df)

    report = runner.invoke(main, ["report", str(out)])
    assert report.exit_code == 0, report.output
    html = (out / "report" / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert "e2e" in html and "score_function" in html and "pathwise" in html


def test_stored_estimates_are_bitwise_identical_for_one_and_two_threads(tmp_path):
    grid = tmp_path / "e2e.yaml"
    grid.write_text(GRID)
    frames = []
    for threads in ("1", "2"):
        out = tmp_path / f"threads{threads}"
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-m", "harness.cli", "run", str(grid), "--out", str(out)],
                       env=env, check=True, capture_output=True)
        df = pd.read_parquet(out / "results")
        frames.append(df.sort_values(["cell", "seed", "estimator", "param"]).reset_index(drop=True))
    for column in ("estimate", "sample_var"):
        a, b = (f[column].to_numpy() for f in frames)
        assert a.tobytes() == b.tobytes(), column
    assert np.isfinite(frames[0]["estimate"]).all()
