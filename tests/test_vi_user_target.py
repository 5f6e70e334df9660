"""User-written ELBO targets (``harness.vi.targets.user``): a module written to a temporary
directory and named like a grid's ``target: {python: "module:function", gradient: ...,
dim: d}``.

The target passes the same conformance check as the built-in ones (``tests/test_vi.py``:
three z-scores per component, |z| < Z = 5, against quadrature references written apart from
the kernel), and the same check rejects deliberately wrong variants (the entropy gradient
dropped by the kernel; a wrong gradient in the user's module).  The quadrature references
agree with the closed forms of the built-in ripple target when the user writes that target,
and never run kernel code.  Grid errors are one line (file:line: key), the kernel module
follows edits of the user's module, and a grid with a user target runs end to end.
"""

import math
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_grid
from test_vi import ALL, Z, finite_n_reference, worst, z_scores

from harness import kernel_cache
from harness.cli import main
from harness.config import parse_grid
from harness.errors import BackendError, ConfigError
from harness.quadrature import hermite_tensor
from harness.vi import api, codes, references
from harness.vi.api import Problem
from harness.vi.targets import ripple, user

N, R = 2000, 400
MODULE_NAME = "vi_user_targets_for_tests"
MODULE = textwrap.dedent('''\
    import fractions
    import math

    import numpy as np

    SHIFT = 1.0
    A, OMEGA = 0.7, 3.0


    def mixture(z):
        """log of an equal mixture of N((SHIFT, 0), I) and N((-SHIFT, 0), I)."""
        a = -0.5 * ((z[0] - SHIFT) ** 2 + z[1] ** 2)
        b = -0.5 * ((z[0] + SHIFT) ** 2 + z[1] ** 2)
        top = max(a, b)
        return top + math.log(0.5 * math.exp(a - top) + 0.5 * math.exp(b - top)) \\
            - math.log(2.0 * math.pi)


    def mixture_gradient(z):
        t = 2.0 * SHIFT * z[0]
        r = 1.0 / (1.0 + math.exp(-t)) if t >= 0.0 else math.exp(t) / (1.0 + math.exp(t))
        return np.array([-z[0] + SHIFT * (2.0 * r - 1.0), -z[1]])


    def mixture_gradient_wrong(z):  # deliberately wrong: the mixture's pull is left out
        return np.array([-z[0], -z[1]])


    def ripple(z):
        """The built-in ripple target, written again: log N(z; 0, I) + A sum cos(OMEGA z)."""
        out = -0.5 * z.size * math.log(2.0 * math.pi)
        for i in range(z.size):
            out += -0.5 * z[i] * z[i] + A * math.cos(OMEGA * z[i])
        return out


    def ripple_gradient(z):
        return -z - A * OMEGA * np.sin(OMEGA * z)


    def not_compilable(z):
        return float(fractions.Fraction(z[0]))


    def wrong_shape(z):
        return np.zeros(z.size + 1)


    def infinite_at_zero(z):
        return math.log(abs(z[0]))


    def two_arguments(z, k):
        return 0.0
''')


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("user_targets")
    (directory / f"{MODULE_NAME}.py").write_text(MODULE)
    yield directory
    sys.modules.pop(MODULE_NAME, None)


def spec(directory, log_density="mixture", gradient="mixture_gradient"):
    return {"python": f"{MODULE_NAME}:{log_density}", "gradient": f"{MODULE_NAME}:{gradient}",
            "path": str(directory)}


def away_from_optimum(directory, family, **names) -> Problem:
    C = [[0.9, 0.0], [0.2, 1.1]] if family == "full" else np.diag([0.9, 1.1])
    return Problem.make(f"{MODULE_NAME}:{names.get('log_density', 'mixture')}", family,
                        spec(directory, **names), dim=2, mu=[0.3, -0.2], C=C)


@pytest.mark.parametrize("family", ["diag", "full"])
def test_user_target_passes_the_conformance_check(module_dir, family):
    p = away_from_optimum(module_dir, family)
    est, var, elbo = api.estimate(p, ALL, N, range(R))
    for e, estimator in enumerate(ALL):
        grad, exact_var, gsrc, vsrc = api.reference(p, estimator)
        assert gsrc == vsrc == "quadrature" and np.all(exact_var > 0), estimator
        z = z_scores(est[:, e], var[:, e], grad, *finite_n_reference(p, estimator, N))
        assert worst(z) < Z, (estimator, {k: np.round(v, 1) for k, v in z.items()})
    assert abs(elbo.mean() - api.exact_elbo(p)) < Z * elbo.std(ddof=1) / math.sqrt(R)


@pytest.mark.parametrize("family", ["diag", "full"])
def test_the_same_check_rejects_a_dropped_entropy_gradient(module_dir, family):
    p = away_from_optimum(module_dir, family)
    est, var, _ = api.estimate(p, [codes.E_WRONG_NO_ENTROPY], N, range(R))
    grad, exact_var, _, _ = api.reference(p, ("reparam", ()))
    assert worst(z_scores(est[:, 0], var[:, 0], grad, exact_var)) > Z


def test_the_same_check_rejects_a_wrong_user_gradient(module_dir):
    """grad log g without the mixture's pull: the pathwise estimators (which use it) are
    biased in mu[0] and rejected; the score function (log g only) still passes."""
    p = away_from_optimum(module_dir, "diag", gradient="mixture_gradient_wrong")
    estimators = [("reparam", ()), ("stl", ()), ("score_function", ())]
    est, var, _ = api.estimate(p, estimators, N, range(R))
    for e, estimator in enumerate(estimators):
        grad, exact_var, _, _ = api.reference(p, estimator)
        z = z_scores(est[:, e], var[:, e], grad, exact_var)
        if estimator[0] == "score_function":
            assert worst(z) < Z, z
        else:
            assert abs(z["mean"][0]) > Z, (estimator, z)


@pytest.mark.parametrize("family", ["diag", "full"])
def test_quadrature_references_match_the_ripple_closed_forms(module_dir, family,
                                                             monkeypatch):
    """The user's copy of the ripple target: its quadrature ELBO and gradient equal the
    built-in ripple target's closed forms, computed without any kernel code."""
    def blocked(*args, **kwargs):
        raise AssertionError("a reference ran kernel code")

    monkeypatch.setattr(kernel_cache, "load_source", blocked)
    p = away_from_optimum(module_dir, family, log_density="ripple", gradient="ripple_gradient")
    closed = ripple.make(2, 0.7, 3.0)
    grad, var, gsrc, vsrc = api.reference(p, ("reparam", ()))
    assert gsrc == vsrc == "quadrature" and np.isfinite(var).all()
    np.testing.assert_allclose(grad, closed.exact_grad(p.family.code, p.mu, p.C), rtol=1e-9,
                               atol=1e-12)
    assert api.exact_elbo(p) == pytest.approx(closed.exact_elbo(p.family.code, p.mu, p.C),
                                              rel=1e-10)
    # the transcribed pathwise terms average to the gradient too (the user's gradient is
    # right here): reparam, stl and reparam_sampled_entropy
    means = 0.0
    for eps, w in hermite_tensor(200, 2):
        _, _, terms = references._user_terms(p, eps)
        means = means + np.stack([w @ t for t in terms.values()])
    np.testing.assert_allclose(means, np.broadcast_to(grad, means.shape), rtol=1e-9,
                               atol=1e-12)


def test_references_are_none_above_dim_2(module_dir):
    p = Problem.make(f"{MODULE_NAME}:ripple", "diag",
                     spec(module_dir, "ripple", "ripple_gradient"), dim=3)
    grad, var, gsrc, vsrc = api.reference(p, ("stl", ()))
    assert gsrc == vsrc == "none" and np.isnan(grad).all() and np.isnan(var).all()
    assert math.isnan(api.exact_elbo(p))
    assert "dim <= 2" in references.unavailable(codes.T_USER, 3)


def test_cuda_is_a_one_line_error(module_dir):
    p = away_from_optimum(module_dir, "diag")
    with pytest.raises(BackendError, match="user-written targets") as info:
        api.estimate(p, ["reparam"], 10, range(2), backend="cuda")
    assert "\n" not in str(info.value)


def test_the_kernel_module_follows_the_users_module(tmp_path):
    """Editing the user's module gives the kernel module a new (digest) name, so numba's
    cache never serves the old code; an unchanged module gives the same name."""
    name = "vi_user_targets_edited"
    text = MODULE.replace("SHIFT = 1.0", "SHIFT = 1.5")
    (tmp_path / f"{name}.py").write_text(text)
    spec_ = {"python": f"{name}:mixture", "gradient": f"{name}:mixture_gradient", "dim": 2,
             "path": str(tmp_path)}
    try:
        first = user.kernels(user.load(spec_)).__name__
        assert user.kernels(user.load(spec_)).__name__ == first
        (tmp_path / f"{name}.py").write_text(text.replace("SHIFT = 1.5", "SHIFT = 2.0"))
        sys.modules.pop(name)
        user._load.cache_clear()
        second = user.kernels(user.load(spec_)).__name__
        assert second != first and second.startswith("harness_vi_kernels_user_")
    finally:
        sys.modules.pop(name, None)
        user._load.cache_clear()


GRID = f"""\
name: user_target
problem:
  kind: elbo
  target: {{python: "{MODULE_NAME}:mixture", gradient: "{MODULE_NAME}:mixture_gradient", dim: 2}}
  family: diag
  q: {{mu: 0.3, scale: 1.2}}
estimators: [reparam, {{name: score_function, baseline: mean}}]
n_samples: [100]
seeds: 20
"""

BAD = [
    # (replacements old -> new in GRID, words in the message)
    ({"mixture_gradient\"": "wrong_shape\""}, "returns shape (3,)"),
    ({"mixture_gradient\"": "not_compilable\""}, "numba cannot compile"),
    ({":mixture\"": ":two_arguments\""}, "takes 2 arguments"),
    ({":mixture\"": ":missing\""}, "has no function missing"),
    ({f"{MODULE_NAME}:mixture\"": "no_such_module_xyz:f\""}, "cannot import no_such_module_xyz"),
    ({"dim: 2}": "dim: 0}"}, "must be >= 1"),
    ({", dim: 2}": "}"}, "missing required key"),
    ({":mixture\"": ":infinite_at_zero\"", "q: {mu: 0.3": "q: {mu: 0.0"},
     "not a finite number"),                                  # log|z0| at z = mu = 0
    ({"family: diag": "family: diag\n  dim: 2"}, "give dim inside target"),
    ({"seeds: 20": "seeds: 20\nbackend: cuda"}, "does not run user-written targets"),
]


@pytest.mark.parametrize("replacements, fragment", BAD)
def test_grid_errors_are_one_line(module_dir, replacements, fragment):
    text = GRID
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(ConfigError) as info:
        parse_grid(text, module_dir / "grid.yaml")
    message = str(info.value)
    assert fragment in message and "\n" not in message, message
    assert "grid.yaml:" in message


def test_a_grid_with_a_user_target_runs_end_to_end(module_dir):
    _, df = run_grid(module_dir, GRID, "grid.yaml")      # the module sits beside the grid
    result = CliRunner().invoke(main, ["validate", str(module_dir / "grid.yaml")])
    assert result.exit_code == 0 and f"elbo target {MODULE_NAME}:mixture" in result.output, \
        result.output
    assert set(df["target"]) == {f"{MODULE_NAME}:mixture"} and set(df["dim"]) == {2}
    assert set(df["exact_source"]) == {"quadrature"}
    assert np.isfinite(df["exact_var"]).all() and np.isfinite(df["exact_elbo"]).all()
    # the same numbers as the library call on the same streams
    p = Problem.make(f"{MODULE_NAME}:mixture", "diag", spec(module_dir), dim=2,
                     mu=[0.3, 0.3], C=1.2 * np.eye(2))
    est, _, _ = api.estimate(p, ["reparam"], 100, range(20))
    rows = df[df["estimator"] == "reparam"].sort_values(["seed", "param"])
    order = np.argsort(p.components())
    assert np.array_equal(rows["estimate"].to_numpy().reshape(20, -1), est[:, 0][:, order])


def test_the_example_user_target_validates_and_its_gradient_is_consistent():
    """examples/user_target.yaml's target, from examples/user_targets.py: the grid validates,
    the gradient agrees with central differences of the log density, and the density is
    normalised: E_q[g / q] = 1 by quadrature over a wide q = N(0, 9 I)."""
    from pathlib import Path

    from harness.config import load_grid

    examples = Path(__file__).resolve().parents[1] / "examples"
    grid = load_grid(examples / "user_target.yaml")
    point = grid.problem.points[0]
    params = dict(point.params)
    target = user.load({**{k: params[k] for k in ("python", "gradient", "path")},
                        "dim": point.dim})
    h = 1e-6
    for z in ([0.0, 0.0], [1.3, -0.4], [-2.5, 1.0], [6.0, 3.0]):
        z = np.array(z)
        fd = [(target.log_density(z + h * e) - target.log_density(z - h * e)) / (2 * h)
              for e in np.eye(2)]
        np.testing.assert_allclose(target.grad_log_density(z), fd, rtol=1e-6, atol=1e-8)
    total = 0.0
    for eps, w in hermite_tensor(200, 2):
        z = 3.0 * eps                                   # q = N(0, 9 I)
        log_q = -0.5 * (eps * eps).sum(axis=1) - math.log(2 * math.pi * 9.0)
        total += w @ np.exp(target.density(z)[0] - log_q)
    assert total == pytest.approx(1.0, rel=1e-9)
