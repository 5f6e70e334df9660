"""The categorical family (``distribution: categorical``, ``logits: [...]``): references
against independent computations, the sampler against an inverse CDF written here, wrong
variants the conformance check must reject, the grid interface and an end-to-end run.  The
conformance check itself runs over the family in ``tests/test_estimators.py`` (``cases()``,
at K = 3) and the thread-count check in ``tests/test_kernel.py``.

Independent computations: plain-Python sums over b in {0..K-1} with a softmax written here
(``math.exp``), closed forms derived in the docstrings, finite differences of E[b] and
Var[b], and the Bernoulli family's references (K = 2 is a Bernoulli variable in logit
l_1 - l_0).
"""

import dataclasses
import math

import numpy as np
import pytest
from conformance import FAMILY_POINTS, Z, z_scores
from helpers import needs_cuda
from numba import njit

from harness import exact, registry
from harness.axes import Estimator
from harness.backends import cpu
from harness.config import parse_grid
from harness.distributions import categorical
from harness.errors import ConfigError
from harness.estimators.relaxed_categorical import relaxed_index
from harness.rng import uniform_pair

FAMILY = "categorical[K=3]"
POINTS = FAMILY_POINTS[FAMILY]
COSTS = sorted(registry.COSTS)


def pmf(logits):
    """softmax, written out."""
    m = max(logits)
    w = [math.exp(x - m) for x in logits]
    return [x / sum(w) for x in w]


def f(cost, b, k):
    return float(registry.COSTS[cost].value(float(b), k))


def point_params(point):
    *logits, k = point
    return {f"logits[{j}]": x for j, x in enumerate(logits)}, logits, k


# ---- references against sums written here ------------------------------------------------------

@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("point", POINTS)
def test_references_match_sums_over_the_categories(cost, point):
    """With p = softmax(logits), f_b = f(b), F = E f = sum_b p_b f_b and s_j(b) = 1{b = j} - p_j:
    gradient p_j (f_j - F); score function g = f s_j: E g^2 = sum_b p_b f_b^2 s_j(b)^2;
    leave-one-out limit g = (f - F) s_j; exact optimal baseline b* = E[f s_j^2] / E[s_j^2]
    with E[s_j^2] = p_j (1 - p_j).  Every reference's mean is the gradient."""
    fam_params, logits, k = point_params(point)
    p = pmf(logits)
    fs = [f(cost, b, k) for b in range(len(p))]
    mean_f = sum(pb * fb for pb, fb in zip(p, fs))
    has_k = bool(registry.COSTS[cost].params)
    all_params = {**fam_params, **({"k": k} if has_k else {})}
    for j in range(len(p)):
        comp = f"logits[{j}]"
        s = [(1.0 if b == j else 0.0) - p[j] for b in range(len(p))]
        grad = p[j] * (fs[j] - mean_f)
        b_star = sum(pb * fb * sb * sb for pb, fb, sb in zip(p, fs, s)) / (p[j] * (1 - p[j]))

        def var(baseline, s=s, grad=grad):
            return sum(pb * ((fb - baseline) * sb) ** 2 for pb, fb, sb in zip(p, fs, s)) \
                - grad ** 2

        for label, expected_var in (("score_function", var(0.0)),
                                    ("score_function[baseline=mean]", var(mean_f)),
                                    ("score_function[baseline=optimal]", var(b_star)),
                                    ("score_function[baseline=exact_optimal]", var(b_star))):
            ref = exact.references(label, comp, FAMILY, cost, all_params)
            scale = 1.0 + abs(expected_var)
            assert ref.grad == pytest.approx(grad, rel=1e-12, abs=1e-14), (label, comp)
            assert ref.estimator_mean == ref.grad
            assert abs(ref.var - expected_var) < 1e-12 * scale, (label, comp, ref.var)
            assert ref.source == "quadrature"
        mean, _ = registry.resolve("score_function").reference(
            registry.get_family(FAMILY), registry.COSTS[cost], comp, all_params)
        assert mean == pytest.approx(grad, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("point", POINTS)
def test_moment_gradients_match_finite_differences(point):
    """d E[b] / dlogit_j and d Var[b] / dlogit_j (delta_cv's correction) against central
    differences of the sums written here."""
    fam = registry.get_family(FAMILY)
    _, logits, _ = point_params(point)

    def moments(ls):
        p = pmf(ls)
        m = sum(b * pb for b, pb in enumerate(p))
        return m, sum((b - m) ** 2 * pb for b, pb in enumerate(p))

    h = 1e-6
    for j in range(len(logits)):
        up, down = list(logits), list(logits)
        up[j] += h
        down[j] -= h
        fd = [(a - b) / (2 * h) for a, b in zip(moments(up), moments(down))]
        assert fam.moment_grads(f"logits[{j}]", tuple(logits)) == pytest.approx(fd, abs=1e-8)
        assert fam.mean(tuple(logits)) == pytest.approx(moments(logits)[0], rel=1e-14)


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("logit_pair", [(0.3, -0.4), (-1.0, 1.5)])
def test_two_categories_are_the_bernoulli_family(cost, logit_pair):
    """K = 2: b ~ Bernoulli(sigmoid(l_1 - l_0)); the gradient wrt l_1 is the Bernoulli
    family's wrt its logit and wrt l_0 its negative; the scores are +-(b - p), so every
    score-function variance is the Bernoulli's."""
    l0, l1 = logit_pair
    k = 0.7
    has_k = bool(registry.COSTS[cost].params)
    cat = {"logits[0]": l0, "logits[1]": l1, **({"k": k} if has_k else {})}
    ber = {"logit": l1 - l0, **({"k": k} if has_k else {})}
    for label in registry.variants("score_function"):
        b = exact.references(label, "logit", "bernoulli", cost, ber)
        for comp, sign in (("logits[1]", 1.0), ("logits[0]", -1.0)):
            c = exact.references(label, comp, "categorical[K=2]", cost, cat)
            assert c.grad == pytest.approx(sign * b.grad, rel=1e-12, abs=1e-14)
            assert c.var == pytest.approx(b.var, rel=1e-10, abs=1e-14), (label, comp)


# ---- the sampler ---------------------------------------------------------------------------------

@pytest.mark.parametrize("logits", [(0.2, -0.5, 1.0), (800.0, 0.0, -800.0), (0.0, 0.0),
                                    (-3.0, 2.0, 0.5, 0.5, 1.0)])
def test_sampler_is_the_inverse_cdf_of_the_softmax(logits):
    """to_x(theta, u) = the least j with u < P(b <= j), against np.searchsorted on the
    cumulative pmf, at uniforms from the shared streams and at the category boundaries;
    no overflow for logits of +-800."""
    to_x = registry.get_family(categorical.name(len(logits))).to_x
    cdf = np.cumsum(pmf(logits))
    u = np.array([uniform_pair(np.uint64(3), np.uint64(0), np.uint64(i), np.uint64(0))[0]
                  for i in range(2000)])
    inner = cdf[:-1]
    u = np.concatenate([u, np.nextafter(inner, 0.0), np.nextafter(inner, 1.0), [1e-300, 1 - 1e-16]])
    u = u[(u > 0) & (u < 1)]
    mine = np.array([to_x(logits, x) for x in u])
    expected = np.minimum(np.searchsorted(cdf, u, side="right"), len(logits) - 1)
    # at a boundary itself rounding may pick either neighbour; elsewhere they agree exactly
    near = np.min(np.abs(u[:, None] - inner[None, :]), axis=1) < 1e-14 if inner.size else \
        np.zeros(u.size, bool)
    assert np.array_equal(mine[~near], expected[~near])
    assert np.all(np.abs(mine[near] - expected[near]) <= 1)
    freq = np.bincount(mine[:2000].astype(int), minlength=len(logits)) / 2000
    p = np.array(pmf(logits))
    assert np.all(np.abs(freq - p) < Z * np.sqrt(p * (1 - p) / 2000) + 1e-12)


# ---- deliberately wrong estimators: the conformance check must reject each ----------------------

@njit
def score_without_softmax(component, s, family, cost, consts):
    # d/dlogit_j log q(b) without its -p_j term: biased by -p_j E[f]
    return s.f * (1.0 if s.x == component else 0.0)


@njit
def score_with_noisy_baseline(component, s, family, cost, consts):
    # an unbiased baseline drawn per sample, independent of b (E[score] = 0): the mean is
    # right and the variance is Var[f s] + E[c^2] E[s^2] larger, c ~ Uniform(-2, 2)
    c = 4.0 * uniform_pair(s.key0, s.key1, s.index, 1)[0] - 2.0
    return (s.f - c) * family.score(component, s.theta, s.e)


WRONG = {"score_without_softmax": score_without_softmax,
         "score_with_noisy_baseline": score_with_noisy_baseline}


@pytest.fixture
def wrong_registered(monkeypatch):
    real = registry.ESTIMATORS["score_function"]
    for name, fn in WRONG.items():
        monkeypatch.setitem(registry.ESTIMATORS, name, Estimator(
            name=name, per_sample=fn, evals_per_sample=1, description="deliberately wrong",
            reference=real.reference))
    registry._resolve.cache_clear()
    yield
    registry._resolve.cache_clear()


@pytest.mark.parametrize("wrong", sorted(WRONG))
@pytest.mark.parametrize("point", POINTS)
def test_same_check_rejects_wrong_score_functions(wrong_registered, wrong, point):
    """On the square cost, component logits[1] (``conformance_components``: one kernel per
    wrong variant): the biased score by its mean, the noisy baseline by its variances."""
    z = z_scores(wrong, "score_function", "square", "logits[1]", point,
                 fused=tuple(sorted(WRONG)), family=FAMILY)
    assert max(abs(v) for v in z.values()) > Z, z
    if wrong == "score_with_noisy_baseline":
        assert abs(z["mean"]) < Z and z["pooled"] > Z, z   # unbiased: the variance catches it


# ---- the grid ----------------------------------------------------------------------------------

def _grid(logits_text, extra="", estimators="score_function"):
    return (f"problem:\n  distribution: categorical\n  cost: square\n  logits: {logits_text}\n"
            f"{extra}estimators: [{estimators}]\nn_samples: 100\nseeds: 3\n")


def test_a_grid_names_k_logits_and_sweeps_an_entry(tmp_path):
    grid = parse_grid(_grid("[[-1.0, 0.0, 1.0], 0.5, 2]", extra="wrt: ['logits[2]']\n"),
                      tmp_path / "g.yaml")
    p = grid.problem
    assert p.distribution == "categorical[K=3]" and p.wrt == ("logits[2]",)
    assert p.params == (("logits[0]", (-1.0, 0.0, 1.0)), ("logits[1]", (0.5,)),
                        ("logits[2]", (2.0,)))
    default = parse_grid(_grid("[0, 0]"), tmp_path / "g.yaml").problem
    assert default.distribution == "categorical[K=2]"
    assert default.wrt == ("logits[0]", "logits[1]")


@pytest.mark.parametrize("logits_text,extra,estimators,message", [
    ("[0.5]", "", "score_function", "problem.logits: expected a list of 2 to 8 numbers"),
    ("[0, 1, 2, 3, 4, 5, 6, 7, 8]", "", "score_function", "expected a list of 2 to 8 numbers"),
    ("0.5", "", "score_function", "expected a list of 2 to 8 numbers"),
    ("[0.5, x]", "", "score_function", "problem.logits[1]: expected a number"),
    ("[0.5, .inf]", "", "score_function", "problem.logits[1]: must be a finite number"),
    ("[[0.5, 0.5], 1]", "", "score_function", "duplicate value"),
    ("[0, 1]", "", "pathwise", "pathwise needs a reparameterisable family"),
    ("[0, 1]", "", "arm", "defined for the bernoulli family only"),
    ("[0, 1]", "wrt: ['logits[2]']\n", "score_function", "wrt[0]"),
])
def test_validate_rejects_bad_logits_in_one_line(tmp_path, logits_text, extra, estimators,
                                                  message):
    with pytest.raises(ConfigError) as info:
        parse_grid(_grid(logits_text, extra, estimators), tmp_path / "g.yaml")
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_validate_asks_for_the_logits(tmp_path):
    text = "problem:\n  distribution: categorical\n  cost: square\nestimators: [score_function]\n" \
           "n_samples: 100\nseeds: 3\n"
    with pytest.raises(ConfigError, match="problem.logits: missing required key"):
        parse_grid(text, tmp_path / "g.yaml")


def test_the_example_grid_validates():
    from pathlib import Path

    grid = parse_grid((Path(__file__).parents[1] / "examples" / "categorical.yaml").read_text(),
                      Path(__file__).parents[1] / "examples" / "categorical.yaml")
    assert grid.problem.distribution == "categorical[K=4]"


def test_a_categorical_grid_runs_with_one_column_per_logit(tmp_path):
    """harness run on a tiny grid (square cost, logits[1]: a kernel the conformance test
    compiles anyway): the logits' columns hold the point, the unused ones NaN, and
    exact_grad is the sum written here."""
    from harness.results import read_results
    from harness.runner import run_grid

    grid = parse_grid(_grid("[0.2, [-0.5, 0.5], 1.0]", extra="wrt: ['logits[1]']\n"),
                      tmp_path / "g.yaml")
    run_grid(grid, tmp_path, progress=False)
    df = read_results(tmp_path)
    assert set(df["distribution"]) == {"categorical[K=3]"} and set(df["param"]) == {"logits[1]"}
    assert sorted(df["logits[1]"].unique()) == [-0.5, 0.5] and df["logits[0]"].eq(0.2).all()
    assert df[[f"logits[{j}]" for j in range(3, categorical.MAX_K)]].isna().all().all()
    for l1, rows in df.groupby("logits[1]"):
        p = pmf([0.2, l1, 1.0])
        grad = p[1] * (1.0 - sum(pb * b * b for b, pb in enumerate(p)))
        assert rows["exact_grad"].to_numpy() == pytest.approx(grad, rel=1e-12)
        assert np.isfinite(rows["estimate"]).all()


@needs_cuda
def test_cuda_backend_matches_the_cpu_on_the_same_streams(monkeypatch):
    """The score function, the leave-one-out baseline and REBAR (its own Gumbel and
    conditional streams) on the CUDA backend (the simulator in tox -e cudasim): the CPU's
    numbers to the tolerance of tests/test_cuda.py."""
    from harness.backends import cuda

    monkeypatch.setattr(cuda, "MIN_CHUNK_PAIRS", 64)
    seeds = np.array([0, 7, 2**40 + 3])
    for n in (3, 1001):
        args = (FAMILY, "square", ["score_function", "score_function[baseline=mean]", "rebar"],
                ("logits[1]",), {"logits[0]": 0.2, "logits[1]": -0.5, "logits[2]": 1.0}, n,
                seeds)
        (eg, vg), (ec, vc) = cuda.estimate(*args), cpu.estimate(*args)
        assert np.all(np.abs(eg - ec) <= 1e-12 * (np.abs(ec) + np.sqrt(vc))), n
        assert np.allclose(vg, vc, rtol=1e-10, atol=0), n


# ---- the relaxed estimators (gumbel_softmax, straight_through) ----------------------------------

RELAXED = ("gumbel_softmax", "straight_through")


@pytest.mark.parametrize("cost", ["quadratic", "cos"])
@pytest.mark.parametrize("temperature", registry.ESTIMATORS["gumbel_softmax"].options[
    "temperature"])
def test_two_category_relaxations_are_the_bernoulli_ones(cost, temperature):
    """K = 2: the soft index is the binary concrete sample sigmoid((l_1 - l_0 + L) / tau)
    (L = G_1 - G_0 ~ Logistic) and dy/dl_1 = -dy/dl_0 = y (1 - y) / tau, so each relaxed
    estimator's exact expectation and variance are the Bernoulli family's (its references
    integrate over L on a fixed logistic rule; the categorical's over its sector rule, which
    is accurate to ~1e-8 relative with 8-point panels)."""
    l0, l1, k = 0.4, -0.3, 0.7
    for name in RELAXED:
        label = registry.label(name, [("temperature", temperature)] if temperature != 0.5
                               else [])
        b = exact.references(label, "logit", "bernoulli", cost, {"logit": l1 - l0, "k": k})
        for comp, sign in (("logits[1]", 1.0), ("logits[0]", -1.0)):
            c = exact.references(label, comp, "categorical[K=2]", cost,
                                 {"logits[0]": l0, "logits[1]": l1, "k": k})
            assert c.source == "quadrature" and c.estimator_mean != c.grad
            assert c.estimator_mean == pytest.approx(sign * b.estimator_mean, rel=1e-6,
                                                     abs=1e-12), (label, comp)
            assert c.var == pytest.approx(b.var, rel=1e-6), (label, comp)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_three_category_relaxed_references_match_a_numpy_simulation(temperature):
    """K = 3: the sector quadrature against a plain-NumPy simulation of the definitions
    (numpy's Gumbel sampler, softmax, argmax; 10^6 draws), mean and variance in SE units."""
    from harness.estimators import relaxed_categorical

    logits, k = np.array([0.2, -0.5, 1.0]), 0.8
    cost = registry.COSTS["quadratic"]
    rng = np.random.default_rng(11)
    n = 1_000_000
    d = logits + rng.gumbel(size=(n, 3))
    z = np.exp((d - d.max(axis=1, keepdims=True)) / temperature)
    z /= z.sum(axis=1, keepdims=True)
    y = z @ np.arange(3)
    hard = d.argmax(axis=1)
    for c in range(3):
        for is_hard in (False, True):
            g = 2.0 * ((hard if is_hard else y) - k) * z[:, c] * (c - y) / temperature
            mean, var = relaxed_categorical.moments(logits, temperature, c, cost.derivative, k,
                                                    is_hard)
            dev = (g - mean) ** 2
            assert abs(g.mean() - mean) < Z * math.sqrt(var / n), (c, is_hard)
            assert abs(dev.mean() - var) < Z * dev.std() / math.sqrt(n), (c, is_hard)
            # the check has power: a 20 % error in either would be > 2 Z standard errors off
            assert 0.2 * abs(mean) > 2 * Z * math.sqrt(var / n) or abs(mean) < 0.05
            assert 0.2 * var > 2 * Z * dev.std() / math.sqrt(n)


def test_relaxed_references_beyond_three_categories_are_none():
    p = {"logits[0]": 0.1, "logits[1]": 0.2, "logits[2]": -0.3, "logits[3]": 0.0, "k": 1.0}
    for name in RELAXED:
        ref = exact.references(name, "logits[2]", "categorical[K=4]", "quadratic", p)
        assert ref.source == "none" and math.isnan(ref.var) and math.isnan(ref.estimator_mean)
        assert math.isfinite(ref.grad)


@njit
def relaxed_without_mean_index(component, s, family, cost, consts):
    # dy/dlogit_j without its -y term: z_j j / tau instead of z_j (j - y) / tau
    tau = consts[0]
    y, z, _ = relaxed_index(s.theta, tau, s.key0, s.key1, s.index, 5, component)
    return cost.derivative(y, s.k) * z * component / tau


@pytest.mark.parametrize("point", POINTS)
def test_same_check_rejects_a_wrong_relaxation(monkeypatch, point):
    """The conformance check (biased estimators against their own exact expectation) rejects
    a concrete estimator with a wrong Jacobian (square cost, logits[1]: one kernel)."""
    real = registry.ESTIMATORS["gumbel_softmax"]
    monkeypatch.setitem(registry.ESTIMATORS, "wrong_relaxation", dataclasses.replace(
        real, name="wrong_relaxation", per_sample=relaxed_without_mean_index,
        per_sample_by_family={}, options={}, configure=None, streams=()))
    registry._resolve.cache_clear()
    try:
        z = z_scores("wrong_relaxation", "gumbel_softmax", "square", "logits[1]", point,
                     family=FAMILY)
        assert max(abs(v) for v in z.values()) > Z, z
    finally:
        registry._resolve.cache_clear()
