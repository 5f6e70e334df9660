"""``harness bench``: the report's pieces on tiny workloads. No speed is asserted (speed
depends on the machine and its load); what is checked is that every figure is produced, that
the NumPy reference computes the same statistics, and that memory does not grow with N."""

import numpy as np
import pandas as pd
from click.testing import CliRunner

from harness import bench
from harness.cli import main


def test_numpy_reference_estimates_the_same_statistics_as_the_kernel():
    # different random numbers, same estimand: both near the exact values (4; 87 and 4)
    n, seeds = 200_000, [0, 1]
    est_np, var_np = bench.numpy_reference(n, seeds)
    est_h, var_h = bench._harness_kernel(n, seeds)
    for est, var in ((est_np, var_np), (est_h, var_h)):
        assert np.all(np.abs(est - 4.0) < 5 * np.sqrt(np.array([87.0, 4.0]) / n))
        np.testing.assert_allclose(var, [[87.0, 4.0]] * 2, rtol=0.05)


def test_report_has_threads_ratio_and_flat_rss_in_new_processes():
    report = bench.run_report(n_samples=20_000, n_seeds=2, threads=None, repeats=1,
                              rss_n=(10**3, 10**6), rss_seeds=1, cache_check=False)
    text = str(report)
    assert "numpy default_rng" in text and "harness, 1 thread" in text
    assert "x numpy" in text and "peak RSS" in text
    assert [n for n, _, _ in report.rss] == [10**3, 10**6]
    # each process's own growth during the run (its absolute level differs from process to
    # process by what it imported: 208 vs 227 MiB seen on CI, so levels are not compared)
    assert all(r["peak_rss_mib"] - r["rss_before_mib"] < RSS_LIMIT_MIB for _, _, r in report.rss)


# The kernels' own memory: draw buffers near cpu.BLOCK_BYTES (1 MiB) and O(jobs x terms)
# partial sums; one seed of 10^6 stored samples is 8 MB, twice this limit.
RSS_LIMIT_MIB = 4


def test_rss_check_catches_a_kernel_that_stores_its_samples():
    n = 10**6
    assert bench.rss_growth(n, 1) < RSS_LIMIT_MIB
    # the same measurement of a deliberately wrong implementation that stores its samples
    assert bench.rss_growth(n, 1, storing=True) > RSS_LIMIT_MIB


def test_bench_cli_prints_the_report():
    result = CliRunner().invoke(main, ["bench", "--samples", "1e4", "--seeds", "2",
                                       "--threads", "1", "--rss-n", "1e3", "--no-cache-check"])
    assert result.exit_code == 0, result.output
    assert "harness, 1 thread" in result.output and "flat" in result.output


def test_scaling_writes_parquet_and_png(tmp_path):
    table, figure = bench.run_scaling(tmp_path, n_values=(10**3, 10**4), n_seeds=2,
                                      seed_values=(1, 2), seeds_n=1000, numpy_max_n=10**3,
                                      estimator_sets=(bench.WORKLOAD,))
    df = pd.read_parquet(table)
    assert set(df["sweep"]) == {"n_samples", "seeds"}
    assert set(df["implementation"]) == {"harness", "numpy"}
    assert (df["seconds"] > 0).all() and (df["samples_per_second"] > 0).all()
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"
