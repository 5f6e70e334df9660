"""The CPU kernel: plumbing against a direct NumPy recomputation from the same draws,
bitwise reproducibility (threads, serial compile, reruns, cached vs cold), flat memory."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from harness.backends import cpu
from harness.rng import normals

ESTIMATORS = ["score_function", "pathwise"]
COMPONENTS = ["mu", "sigma"]


def direct_terms(eps, mu, sigma, k):
    """Per-sample terms of both estimators for f = (x - k)^2, straight from the formulas."""
    x = mu + sigma * eps
    f, df = (x - k) ** 2, 2.0 * (x - k)
    return np.stack([f * eps / sigma, f * (eps**2 - 1) / sigma, df, df * eps])


@pytest.mark.parametrize("n", [2, 3, 10_001, 3 * cpu.MIN_CHUNK_PAIRS * 2 + 7])
def test_kernel_matches_direct_computation_on_the_same_draws(n):
    mu, sigma, k = 0.7, 1.3, -0.4
    seeds = np.array([0, 5, 2**40 + 3])
    est, var = cpu.estimate("normal", "quadratic", ESTIMATORS, COMPONENTS,
                            {"mu": mu, "sigma": sigma, "k": k}, n, seeds)
    assert est.shape == var.shape == (3, 2, 2)
    for s, seed in enumerate(seeds):
        terms = direct_terms(normals(int(seed), n), mu, sigma, k)
        np.testing.assert_allclose(est[s].ravel(), terms.mean(axis=1), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(var[s].ravel(), terms.var(axis=1, ddof=1), rtol=1e-10)


def test_chunking_depends_on_n_only_and_covers_every_pair():
    for n in [2, 3, 8191, 8192, 10**6 + 1, 10**9]:
        chunk_pairs, n_chunks = cpu.chunking(n)
        assert 0 < n_chunks <= cpu.MAX_CHUNKS
        assert (n_chunks - 1) * chunk_pairs < (n + 1) // 2 <= n_chunks * chunk_pairs


def _run(**kw):
    return cpu.estimate("normal", "quadratic", ESTIMATORS, COMPONENTS,
                        {"mu": 2.0, "sigma": 0.5, "k": 1.0}, 200_001, np.arange(6), **kw)


def test_bitwise_identical_for_one_and_two_threads_and_serial_compile():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _run()
    finally:
        numba.set_num_threads(before)
    serial = _run(parallel=False)
    again = _run()
    for other in (two, serial, again):
        assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1])


def test_thread_count_from_environment_gives_identical_bits(tmp_path):
    script = (
        "import numpy as np, sys\n"
        "from harness.backends import cpu\n"
        "e, v = cpu.estimate('normal', 'square', ['score_function'], ['mu'],"
        " {'mu': 2.0, 'sigma': 1.0}, 100_003, np.arange(4))\n"
        "sys.stdout.write(e.tobytes().hex() + v.tobytes().hex())\n"
    )
    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 0


def test_cached_kernel_in_a_new_process_gives_the_cold_numbers(tmp_path):
    """Cold compile and cache hit must agree for every cell type (the pitfall: factory
    closures can share a wrong cache entry). Two cells that differ only in cost or estimator
    set must not read each other's kernel."""
    script = (
        "import numpy as np, sys\n"
        "from harness.backends import cpu\n"
        "out = []\n"
        "for cost, ests, k in (('square', ['score_function'], {}),\n"
        "                      ('square', ['pathwise'], {}),\n"
        "                      ('quadratic', ['score_function'], {'k': 0.5})):\n"
        "    e, v = cpu.estimate('normal', cost, ests, ['mu'], {'mu': 1.5, 'sigma': 0.8, **k},"
        " 5_001, np.arange(3))\n"
        "    out.append(e.tobytes().hex() + v.tobytes().hex())\n"
        "hits = sum(sum(k.stats.cache_hits.values()) for k in cpu._loaded.values())\n"
        "sys.stdout.write(str(hits) + ' ' + ' '.join(out))\n"
    )
    env = {**os.environ, "HARNESS_KERNEL_DIR": str(tmp_path / "kernels"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    cold, warm = (subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                 capture_output=True, text=True).stdout.split() for _ in range(2))
    assert cold[0] == "0" and warm[0] == "3"  # the second process compiled nothing
    assert cold[1:] == warm[1:] and len(set(cold[1:])) == 3
    assert len(list((tmp_path / "numba").rglob("*.nbi"))) == 3  # one cache entry per cell type


def test_memory_does_not_grow_with_n():
    # partial sums are (seeds, chunks <= MAX_CHUNKS, terms): independent of N
    for n in (10**3, 10**6, 10**12):
        chunk_pairs, n_chunks = cpu.chunking(n)
        assert n_chunks <= cpu.MAX_CHUNKS


def test_rejects_bad_input_with_harness_errors():
    from harness.errors import ConfigError

    good = {"mu": 0.0, "sigma": 1.0}
    bad = [
        dict(family="gamma"), dict(cost="nope"), dict(estimators=["nope"]),
        dict(components=["tau"]), dict(components=["mu", "mu"]),
        dict(params={**good, "sigma": 0.0}), dict(params={**good, "sigma": float("nan")}),
        dict(params={"mu": 0.0}), dict(params={**good, "k": 1.0}), dict(n_samples=1),
        dict(seeds=[-1]), dict(seeds=[]), dict(n_samples=2.5),
        dict(cost="exp", params={**good, "k": 0.0}),                      # exp needs k > 0
    ]
    for override in bad:
        args = dict(family="normal", cost="square", estimators=["pathwise"],
                    components=["mu"], params=good, n_samples=10, seeds=[0])
        args.update(override)
        with pytest.raises(ConfigError):
            cpu.estimate(**args)


def test_accumulated_and_extra_stream_estimators_are_bitwise_identical_across_threads():
    """The same guarantee for estimators with their own random streams (measure_valued) and
    accumulated moments finalised after the chunk merge (an estimated optimal baseline)."""
    ests = ["score_function[baseline=optimal]", "measure_valued[coupling=false]"]

    def go(**kw):
        return cpu.estimate("normal", "cos", ests, COMPONENTS,
                            {"mu": 0.3, "sigma": 1.2, "k": 2.0}, 150_001, np.arange(5), **kw)

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = go()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = go()
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    # A serial compile is a different binary: with fastmath "contract" LLVM may fuse a
    # multiply-add in one and not the other (seen: 1 ulp in the measure-valued mu-term), so
    # it agrees to rounding here, not bitwise (the thread-count guarantee above is bitwise).
    serial = go(parallel=False)
    np.testing.assert_allclose(serial[0], one[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(serial[1], one[1], rtol=1e-13)
    assert np.isfinite(one[0]).all() and (one[1] > 0).all()
