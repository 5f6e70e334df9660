"""The CPU backend (block pipeline): plumbing against a direct NumPy recomputation and a
plain per-sample loop over the same draws for every registry estimator, bitwise
reproducibility (threads, one thread, reruns, cached vs cold, helper-process compiles),
flat memory.

Term kernels are compiled per (estimator variant, component), and per cost for variants
that evaluate the cost themselves: the tests share one cost (``cos``, which every estimator
accepts) so that they compile each kernel once."""

import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from conformance import conformance_labels
from numba import njit

from harness.backends import cpu
from harness.rng import normal_pair, normals

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


def test_bitwise_identical_for_one_and_two_threads_and_one_thread_mode():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _run()
    finally:
        numba.set_num_threads(before)
    serial = _run(parallel=False)  # one thread, whatever numba's thread count
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
           "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "HARNESS_COMPILE_WORKERS": "1"}
    cold, warm = (subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                 capture_output=True, text=True).stdout.split() for _ in range(2))
    # 4 kernels: the draw kernels of (normal, square) and (normal, quadratic), which compute
    # f, and the terms (score_function, mu) and (pathwise, mu), which read f from the draw
    # buffer and so serve every cost (``cpu.reads_cost``)
    assert cold[0] == "0" and warm[0] == "4"  # the second process compiled nothing
    assert cold[1:] == warm[1:] and len(set(cold[1:])) == 3
    entries = [p.name for p in (tmp_path / "numba").rglob("*.nbi")]
    # one cache entry per kernel, and one for the compiled block loop (any cell's)
    assert len([e for e in entries if e.startswith("harness_kernel_")]) == 4
    assert len([e for e in entries if e.startswith("block_driver.run_group")]) == 1
    assert len(entries) == 5, entries


def test_kernels_compiled_by_helper_processes_give_the_bits_of_one_process(tmp_path):
    """A cold run compiles its new kernels in helper processes side by side (draw, shared
    draws and term kernels, taken from one list); every kernel must compile to the same
    code whichever process compiles it, and in whatever order (seen before the cost
    functions were compiled per kernel: 1 ulp).  The one-process run also keeps numba's own
    inliner (``HARNESS_NUMBA_INLINE=numba``, ``harness.numba_inline``), the other has the
    one-copy inliner: the machine code, hence the bits, must not depend on it either."""
    script = (
        "import numpy as np, sys\n"
        "from harness.backends import cpu\n"
        "e, v = cpu.estimate('normal', 'quadratic', ['delta_cv', 'measure_valued',"
        " 'score_function'],"
        " ['mu'], {'mu': 1.0, 'sigma': 1.0, 'k': 0.7}, 20_000, np.arange(4))\n"
        "s = cpu.load_kernel('normal', 'quadratic', ['delta_cv', 'measure_valued',"
        " 'score_function'], ['mu']).stats\n"
        "from harness import numba_inline\n"
        "print(numba_inline.apply(), s.cache_misses['all'], s.cache_hits['all'],"
        " e.tobytes().hex() + v.tobytes().hex())\n"
    )
    outs = {}
    for workers in ("1", "2"):
        env = {**os.environ, "HARNESS_KERNEL_DIR": str(tmp_path / workers / "kernels"),
               "NUMBA_CACHE_DIR": str(tmp_path / workers / "numba"),
               "HARNESS_COMPILE_WORKERS": workers,
               "HARNESS_NUMBA_INLINE": "numba" if workers == "1" else "one-copy"}
        inliner, compiled, loaded, bits = subprocess.run(
            [sys.executable, "-c", script], env=env, check=True, capture_output=True,
            text=True).stdout.split()
        outs[workers] = int(compiled), int(loaded), bits, inliner
    # 1 draw + 1 shared + 3 term kernels (one component: each kernel is compiled twice here,
    # in new caches): one process compiles all of them; with a helper, each process compiles
    # some and this one loads the helper's from numba's cache
    assert outs["1"][:2] == (5, 0)
    assert outs["2"][0] >= 1 and outs["2"][1] >= 1 and sum(outs["2"][:2]) == 5
    assert outs["1"][2] == outs["2"][2] and len(outs["1"][2]) > 0
    import numba

    if numba.__version__.startswith("0.68."):  # the numba source harness.numba_inline knows
        assert (outs["1"][3], outs["2"][3]) == ("off", "patched")


def test_memory_does_not_grow_with_n():
    """Peak RSS growth of a new process while it runs 10^3 and 10^7 samples (after a warm-up
    call): flat, and far below what storing the samples takes, which the same measurement
    of a deliberately wrong implementation (it stores them) shows."""
    from harness.bench import rss_growth

    limit = 4.0  # MiB: the draw buffer is ~cpu.BLOCK_BYTES (1 MiB); 10^7 samples are 80 MB
    small, large = rss_growth(10**3, 1), rss_growth(10**7, 1)
    assert small < limit and large < limit and abs(large - small) < limit
    assert rss_growth(10**7, 1, storing=True) > 10 * limit


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


# ---- every registry estimator ----------------------------------------------------------------

COST = "cos"   # every estimator accepts cos (defined on the whole line, so on [0, 1] too)
FAMILY_PARAMS = {"normal": {"mu": 0.3, "sigma": 1.2}, "bernoulli": {"logit": 0.4},
                 "exponential": {"rate": 1.3}, "gamma": {"shape": 0.7, "rate": 1.3},
                 "beta": {"a": 0.7, "b": 1.6},
                 "categorical[K=3]": {"logits[0]": 0.2, "logits[1]": -0.5, "logits[2]": 1.0}}
# a sized family runs one component and the default temperatures here: the others differ only
# in a compiled-in index or a per-cell constant, and these are kernels tests/test_estimators.py
# compiles anyway
FAMILY_COMPONENTS = {"categorical[K=3]": ["logits[1]"]}
PARAMS = {**FAMILY_PARAMS["normal"], "k": 2.0}


def every_variant(family="normal"):
    """Every estimator label the registry lets run on ``family`` with ``COST``."""
    from harness import registry

    return [label for name in registry.ESTIMATORS for label in registry.variants(name)
            if registry.combination_problem(label, family, COST) is None]


def family_cases():
    """(family, its parameters with k, its components, the labels it runs): every family."""
    from harness import registry

    families = [*registry.FAMILIES, *(f.name(3) for f in registry.FAMILY_FACTORIES.values())]
    assert set(FAMILY_PARAMS) == set(families), "give every family parameters here"
    cases = []
    for name in families:
        # estimators defined for some components only (measure_valued under gamma: rate)
        # form a case of their own with those components
        groups = {}
        for label in (every_variant(name) if name in registry.FAMILIES
                      else conformance_labels(COST, name)):
            groups.setdefault(registry.supported_components(
                label, name, FAMILY_COMPONENTS.get(name, registry.get_family(name).params)),
                []).append(label)
        cases += [(name, {**FAMILY_PARAMS[name], "k": 2.0}, list(components), labels)
                  for components, labels in groups.items()]
    return cases


@pytest.mark.parametrize("family, params, components, labels", family_cases(),
                         ids=lambda c: c if isinstance(c, str) else "")
def test_every_estimator_bitwise_across_threads_one_thread_and_reruns(family, params,
                                                                      components, labels,
                                                                      monkeypatch):
    """Per-sample and accumulated estimators, extra streams (measure_valued, rebar) and the
    independent copy (optimal baseline, estimated coefficient): the same bits on 1 and 2
    threads, in one-thread mode and on rerun; several chunks, an odd N.  And the same bits
    whether the compiled block loop (``block_driver``, the default, used here) or the Python
    loop calls the kernels."""
    def go(**kw):
        return cpu.estimate(family, COST, labels, components, params, 50_001, np.arange(3),
                            **kw)

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = go()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = go()
    finally:
        numba.set_num_threads(before)
    assert cpu._driver(cpu.load_kernel(family, COST, labels, components)) is not None
    monkeypatch.setenv("HARNESS_BLOCK_LOOP", "python")
    assert cpu._driver(cpu.load_kernel(family, COST, labels, components)) is None
    python_loop = (go(), go(parallel=False))
    monkeypatch.delenv("HARNESS_BLOCK_LOOP")
    for other in (two, go(parallel=False), go(), *python_loop):
        assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1])
    assert np.isfinite(one[0]).all() and np.isfinite(one[1]).all()


def base_draws(family, seed, n, stream, theta=()):
    """The family's first n base draws on ``stream``, pair by pair through its jitted
    ``draw_pair`` (or ``draw_pair_at`` with ``theta``) called from Python (no kernel, no
    blocks)."""
    from harness import registry

    fam = registry.get_family(family)
    key0, key1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    if fam.draw_pair_at is not None:
        pairs = [fam.draw_pair_at(theta, key0, key1, np.uint64(p), np.uint64(stream))
                 for p in range((n + 1) // 2)]
    else:
        pairs = [fam.draw_pair(key0, key1, np.uint64(p), np.uint64(stream))
                 for p in range((n + 1) // 2)]
    return np.array(pairs, dtype=float).reshape(-1)[:n]


def loop_transcription(label, component, seed, n, family="normal", params=None):
    """(estimate, sample_var) of one estimator by a plain loop over the samples: the
    estimator's per-sample function (as Python, its jitted helpers called one by one) on
    the family's base draws (stream 0 and its independent copy), then NumPy's mean and
    variance (or the estimator's ``moments_to_estimate``): no blocks, lanes, chunks or
    shifts."""
    from harness import registry
    from harness.axes import CostOps, FamilyOps, Sample, unavailable_1, unavailable_2, unavailable_3
    from harness.rng import INDEPENDENT_STREAM_OFFSET

    params = params or PARAMS
    fam, cost, v = (registry.get_family(family), registry.get_cost(COST),
                    registry.resolve(label))
    ops = FamilyOps(fam.to_x, fam.score, fam.times_score, fam.dx_dtheta or unavailable_3,
                    fam.antithetic or unavailable_1, fam.centred)
    cost_ops = CostOps(cost.value, cost.derivative or unavailable_2)
    theta, k = fam.theta(params), params["k"]
    consts = tuple(cpu.constants(family, COST, [label], [component], params)[:v.n_consts])
    key0, key1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    eps = base_draws(family, seed, n, 0, theta)
    eps_copy = base_draws(family, seed, n, INDEPENDENT_STREAM_OFFSET, theta)
    terms = []
    for i in range(n):
        x = fam.to_x(theta, eps[i])
        shared = () if v.shared_draws is None else v.shared_draws.py_func(
            fam.params.index(component), key0, key1, np.int64(i))
        assert len(shared) == cpu.n_shared(v), f"{label}: n_shared_draws is not {len(shared)}"
        s = Sample(theta, k, eps[i], x, cost.value(x, k), cost.derivative(x, k), eps_copy[i],
                   cost.value(fam.to_x(theta, eps_copy[i]), k), key0, key1, i, shared)
        terms.append(v.per_sample_for(fam).py_func(fam.params.index(component), s, ops,
                                                    cost_ops, consts))
    terms = np.array(terms, dtype=float).reshape(n, -1)
    means, variances = terms.mean(axis=0), terms.var(axis=0, ddof=1)
    if v.n_moments:
        est, var = v.moments_to_estimate(means[None], variances[None], n, np.array(consts))
        return float(est[0]), float(var[0])
    return float(means[0]), float(variances[0])


TOLERANCE = 1e-9  # in standard errors of the estimate: summation order only
N_LOOP = 1001     # samples of the comparisons with the loop transcription (odd: half a pair)


def allowed(estimate, variance, n):
    """How far the pipeline may be from the loop: 1e-9 standard errors, plus 1e-12 relative
    for accumulated estimators whose moments cancel (an estimated optimal baseline on a
    Bernoulli has a per-sample variance ~1e-10 of its mean squared)."""
    return TOLERANCE * math.sqrt(variance / n) + 1e-12 * abs(estimate)


@pytest.mark.parametrize("family, params, components, labels", family_cases(),
                         ids=lambda c: c if isinstance(c, str) else "")
def test_block_pipeline_equals_a_plain_loop_for_every_estimator(monkeypatch, family, params,
                                                                components, labels):
    """Two chunks of an odd N, the last one shorter, each in several blocks (a small draw
    buffer), two seeds."""
    monkeypatch.setattr(cpu, "BLOCK_BYTES", 2 * 2 * 16 * 40 * 8)  # 40 pairs per block
    # small chunks: the loop transcription runs every sample in Python (N = 8195 with the
    # default 4096-pair chunks took ~20 s for a family's estimators)
    monkeypatch.setattr(cpu, "MIN_CHUNK_PAIRS", 256)
    n, seeds = N_LOOP, [3, 2**33 + 1]
    chunk_pairs, n_chunks = cpu.chunking(n)
    assert n_chunks == 2 and chunk_pairs * n_chunks > (n + 1) // 2
    est, var = cpu.estimate(family, COST, labels, components, params, n, np.array(seeds))
    for i, label in enumerate(labels):
        for j, component in enumerate(components):
            for s, seed in enumerate(seeds):
                ref_est, ref_var = loop_transcription(label, component, seed, n, family,
                                                      params)
                assert abs(est[s, i, j] - ref_est) <= allowed(ref_est, ref_var, n), (
                    label, component, seed)
                np.testing.assert_allclose(var[s, i, j], ref_var, rtol=1e-9,
                                           atol=(1e-7 * abs(ref_est)) ** 2,  # rounding of
                                           # a near-constant term (Bernoulli control variates)
                                           err_msg=f"{label} {component} {seed}")


@pytest.mark.parametrize("family, params, components, labels", family_cases(),
                         ids=lambda c: c if isinstance(c, str) else "")
def test_plain_loop_transcription_tells_a_wrong_sample_set_apart(family, params, components,
                                                                 labels):
    """The comparison above is sharp: a deliberately wrong pipeline that drops the last
    sample of N = N_LOOP fails it for every estimator (every estimator whose term varies)."""
    for label in labels:
        full, var = loop_transcription(label, components[0], 3, N_LOOP, family, params)
        if var <= (1e-6 * abs(full)) ** 2:
            continue   # a (nearly) constant term: optimal baselines and control variates on
            #            a Bernoulli leave ~1e-8 relative noise, which no sample set moves
        short, _ = loop_transcription(label, components[0], 3, N_LOOP - 1, family, params)
        assert abs(short - full) > allowed(full, var, N_LOOP), label


@njit(inline="always")
def normal_pair_at(theta, key0, key1, pair, stream):
    """The normal family's draws through the theta-dependent hook (theta unused)."""
    return normal_pair(key0, key1, pair, stream)


def test_a_family_with_a_theta_dependent_sampler_plugs_into_the_draw_kernel(monkeypatch):
    """``Family.draw_pair_at`` replaces ``draw_pair`` in the draw kernel (the hook a
    rejection sampler needs); here it wraps the normal draws, so the bits must not move."""
    import dataclasses

    from harness import registry

    monkeypatch.setenv("HARNESS_COMPILE_WORKERS", "1")  # helpers look families up by name
    family = dataclasses.replace(registry.get_family("normal"), name="normal_at",
                                 draw_pair_at=normal_pair_at)
    assert "family_draw(theta, key0, key1, " in cpu.draw_source(family, "square")
    args = ("square", ["pathwise"], ["mu"], {"mu": 1.0, "sigma": 2.0}, 9_001, np.arange(2))
    with_hook = cpu.estimate(family, *args)
    plain = cpu.estimate("normal", *args)
    assert np.array_equal(with_hook[0], plain[0]) and np.array_equal(with_hook[1], plain[1])


def reads_cost_through_a_closure(component, s, family, cost, consts):
    def inner():
        return cost.value(s.x, s.k)
    return inner()


def reads_cost_through_a_helper(component, s, family, cost, consts):
    return loop_transcription(cost, s, family, component)


def reads_cost_next_to_another_argument(component, s, family, cost, consts):
    return family.score(component, s.theta, s.e) * cost.derivative(s.x, s.k)


def reads_f_and_df_only(component, s, family, costs, consts):
    cost = s.f   # a local that shadows nothing: the cost argument here is ``costs``
    return cost * s.df + len(consts)


def test_term_kernels_that_do_not_read_the_cost_are_shared_by_every_cost():
    """A variant whose ``per_sample`` never reads its cost argument (it uses s.f and s.df,
    computed by the draw kernel) gets one term kernel for every cost; one that evaluates
    the cost elsewhere one per cost.  Loading a kernel compiles nothing."""
    from harness import registry

    shared = {"score_function", "score_function[baseline=mean]", "pathwise",
              "score_function[baseline=optimal]", "delta_cv[coefficient=estimated]"}
    per_cost = {"measure_valued", "antithetic_pathwise", "rebar"}
    for label in [label for name in registry.ESTIMATORS for label in registry.variants(name)]:
        v = registry.resolve(label)
        family = next(f for f in registry.FAMILIES if f in (v.families or (f,)))
        reads = cpu.reads_cost(v.per_sample_for(registry.get_family(family)))
        assert label not in shared or not reads, label
        assert label not in per_cost or reads, label
        component = registry.get_family(family).params[0]
        costs = [c for c in ("cos", "exp", "quadratic")
                 if registry.combination_problem(label, family, c) is None]
        kernels = {id(cpu.load_term_kernel(family, c, label, component)) for c in costs}
        assert len(kernels) == (len(costs) if reads else 1), label
    # the detector itself, on functions written to hide or not hide a read
    for fn in (reads_cost_through_a_closure, reads_cost_through_a_helper,
               reads_cost_next_to_another_argument):
        assert cpu.reads_cost(fn), fn.__name__
    assert not cpu.reads_cost(reads_f_and_df_only)


def test_variants_with_the_same_shared_draws_draw_them_once_and_keep_their_numbers():
    """measure_valued's coupled and uncoupled variants read the same Rayleigh / Maxwell
    draws (``Estimator.shared_draws``): a cell with both runs one shared-draw kernel per
    component, and each variant's numbers are bitwise those it gives alone."""
    labels = ["measure_valued", "measure_valued[coupling=false]"]
    kernels = cpu.load_kernel("normal", COST, labels, COMPONENTS)
    assert len(kernels.shared) == len(COMPONENTS)
    assert kernels.shared_of_term == (0, 1, 0, 1)
    args = (COMPONENTS, PARAMS, 20_001, np.arange(3))
    both = cpu.estimate("normal", COST, labels, *args)
    for i, label in enumerate(labels):
        alone = cpu.estimate("normal", COST, [label], *args)
        assert np.array_equal(alone[0][:, 0], both[0][:, i]), label
        assert np.array_equal(alone[1][:, 0], both[1][:, i]), label
    # the two variants do differ (the comparison above is not between equal numbers)
    assert not np.array_equal(both[1][:, 0], both[1][:, 1])


def test_per_component_shared_draws_give_the_numbers_of_shared_draws():
    """``Estimator.shared_draws_by_component[c]``, what the CPU's shared-draw kernel of
    component c calls, gives bitwise the numbers of ``shared_draws(c, ...)``, what the loop
    transcriptions above and the CUDA cell call, for every variant of every registered
    estimator that has it.  The components' numbers differ, so a tuple in the wrong order
    fails here (and a wrong function fails the comparison)."""
    from harness import registry

    key0, key1 = np.uint64(7), np.uint64(3)
    checked = []
    for name in registry.ESTIMATORS:
        for label in registry.variants(name):
            v = registry.resolve(label)
            if not v.shared_draws_by_component:
                continue
            per_component = []
            for c, function in enumerate(v.shared_draws_by_component):
                got = np.array([function(key0, key1, np.int64(i)) for i in range(64)])
                want = np.array([v.shared_draws.py_func(c, key0, key1, np.int64(i))
                                 for i in range(64)])
                assert got.shape == (64, cpu.n_shared(v)), label
                assert np.array_equal(got, want), f"{label}, component {c}"
                per_component.append(got)
            assert not any(np.array_equal(a, b) for j, a in enumerate(per_component)
                           for b in per_component[j + 1:]), label
            checked.append(label)
    assert "measure_valued" in checked


def test_variants_differing_only_in_constants_share_one_compiled_term_kernel():
    """Options that only change per-cell constants (rebar's temperature and eta) give the
    same term source and one module; options that change the code (a score-function
    baseline) do not."""
    share = [cpu.load_term_kernel("bernoulli", "quadratic", label, "logit")
             for label in ("rebar", "rebar[eta=0.5,temperature=1.0]",
                           "rebar[eta=1.0,temperature=0.1]")]
    assert share[0] is share[1] is share[2]
    apart = {cpu.load_term_kernel("normal", "quadratic", label, "mu") for label in
             ("score_function", "score_function[baseline=mean]", "pathwise")}
    assert len(apart) == 3
