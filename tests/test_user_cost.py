"""User-written costs (``harness.costs.user``): a module written to a temporary directory and
named like a grid's ``cost: {python: "module:function", derivative: ...}``.

The cost passes the same conformance check as the built-in ones (``tests/conformance.py``,
z = 5) against quadrature references, a deliberately wrong derivative is rejected by it, and
the quadrature references agree with the closed forms of a polynomial cost derived by hand.
Load errors are one line with key ``problem.cost``.
"""

import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conformance import COMPONENTS, FAMILY, Z, applicable, params, z_scores

from harness import exact, registry
from harness.errors import ConfigError

MODULE = textwrap.dedent('''\
    import fractions
    import math


    def shifted_quartic(x, k):
        d = x - k
        return d * d * d * d


    def shifted_quartic_prime(x, k):
        d = x - k
        return 4.0 * d * d * d


    def shifted_quartic_second(x, k):
        d = x - k
        return 12.0 * d * d


    def quartic(x):
        return x ** 4


    def quartic_prime_wrong(x):  # deliberately wrong: 3 x^3 instead of 4 x^3
        return 3.0 * x ** 3


    def not_compilable(x):
        return float(fractions.Fraction(x))


    def three_arguments(x, k, j):
        return x
''')

POINT = (1.0, 0.5, -0.5)  # mu, sigma, k: a = mu - k = 1.5


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("user_costs")
    (directory / "my_test_costs.py").write_text(MODULE)
    return directory


def user_key(directory, value, derivative=None, second=None):
    spec = {"python": f"my_test_costs:{value}", "path": str(directory),
            "derivative": derivative and f"my_test_costs:{derivative}",
            "second_derivative": second and f"my_test_costs:{second}"}
    return registry.cost_key(spec)


def test_user_cost_passes_the_conformance_check(module_dir):
    key = user_key(module_dir, "shifted_quartic", "shifted_quartic_prime",
                   "shifted_quartic_second")
    labels = applicable(key)
    assert {"score_function", "pathwise", "antithetic_pathwise", "delta_cv",
            "measure_valued"} <= set(labels)
    for label in labels:
        for comp in COMPONENTS:
            _, var, source = exact.reference(label, comp, FAMILY, dict(key), params(key, POINT))
            assert source == "quadrature" and math.isfinite(var), (label, comp)
            z = z_scores(label, label, key, comp, POINT, fused=labels)
            assert max(abs(v) for v in z.values()) < Z, (label, comp, z)


def test_the_same_check_rejects_a_wrong_user_derivative(module_dir):
    """f = x^4 with f' = 3 x^3: pathwise estimators are biased by a quarter, the score
    function (which does not use f') still passes."""
    key = user_key(module_dir, "quartic", "quartic_prime_wrong")
    fused = ("score_function", "pathwise", "antithetic_pathwise")
    for comp in COMPONENTS:
        for label in fused:
            z = max(abs(v) for v in z_scores(label, label, key, comp, POINT,
                                              fused=fused).values())
            assert (z < Z) if label == "score_function" else (z > Z), (label, comp, z)


def test_quadrature_references_of_a_user_cost_match_hand_derived_closed_forms(module_dir):
    """E(x - k)^4 under N(mu, sigma^2), a = mu - k: a^4 + 6 a^2 sigma^2 + 3 sigma^4, gradient
    (4 a^3 + 12 a sigma^2, 12 a^2 sigma + 12 sigma^3); pathwise wrt mu: Var[4 (x - k)^3] =
    16 (a^6 + 15 a^4 sigma^2 + 45 a^2 sigma^4 + 15 sigma^6) - grad_mu^2."""
    key = user_key(module_dir, "shifted_quartic", "shifted_quartic_prime")
    mu, sigma, k = POINT
    a = mu - k
    grad = {"mu": 4 * a**3 + 12 * a * sigma**2, "sigma": 12 * a**2 * sigma + 12 * sigma**3}
    p = params(key, POINT)
    for comp in COMPONENTS:
        g, _, _ = exact.reference("score_function", comp, FAMILY, dict(key), p)
        assert g == pytest.approx(grad[comp], rel=1e-12)
    _, var, source = exact.reference("pathwise", "mu", FAMILY, dict(key), p)
    m6 = a**6 + 15 * a**4 * sigma**2 + 45 * a**2 * sigma**4 + 15 * sigma**6
    assert source == "quadrature" and var == pytest.approx(16 * m6 - grad["mu"] ** 2, rel=1e-12)


def test_user_cost_records(module_dir):
    with_k = registry.get_cost(dict(user_key(module_dir, "shifted_quartic",
                                             "shifted_quartic_prime")))
    assert with_k.params == ("k",) and with_k.provides == {"derivative"}
    assert with_k.value(2.0, 0.5) == 1.5**4 and with_k.derivative(2.0, 0.5) == 4 * 1.5**3
    without_k = registry.get_cost(dict(user_key(module_dir, "quartic")))
    assert without_k.params == () and without_k.provides == frozenset()
    assert without_k.value(2.0, 123.0) == 16.0  # (x, k) signature, k ignored
    # loaded once per process
    assert registry.get_cost(dict(user_key(module_dir, "quartic"))) is without_k


def test_combinations_a_user_cost_cannot_serve_are_rejected_in_one_line(module_dir):
    spec = dict(user_key(module_dir, "shifted_quartic", "shifted_quartic_prime"))
    registry.check_combination("pathwise", FAMILY, spec)
    with pytest.raises(ConfigError, match="delta_cv needs the second derivative") as info:
        registry.check_combination("delta_cv", FAMILY, spec)
    assert "\n" not in str(info.value) and str(info.value).startswith("estimators: ")


@pytest.mark.parametrize("python, fragment", [
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("my_test_costs:missing", "my_test_costs has no function missing"),
    ("my_test_costs", "expected 'module:function'"),
    ("my_test_costs:not_compilable", "numba cannot compile my_test_costs:not_compilable"),
    ("my_test_costs:three_arguments", "takes 3 arguments"),
    ("math:sin", "not a plain Python function"),
])
def test_load_errors_are_one_line(module_dir, python, fragment):
    with pytest.raises(ConfigError) as info:
        registry.get_cost({"python": python, "path": str(module_dir)})
    text = str(info.value)
    assert fragment in text and text.startswith("problem.cost: ") and "\n" not in text


def test_a_module_name_taken_by_another_directory_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clash_costs.py").write_text("def f(x):\n    return x\n")
    registry.get_cost({"python": "clash_costs:f", "path": str(tmp_path / "a")})
    try:
        with pytest.raises(ConfigError, match="already imported from"):
            registry.get_cost({"python": "clash_costs:f", "path": str(tmp_path / "b")})
    finally:
        sys.modules.pop("clash_costs", None)
    assert str(tmp_path / "a") not in sys.path  # the directory is on the path while importing


def test_the_example_user_cost_loads_and_its_derivatives_are_consistent():
    """examples/user_cost.yaml's cost, from examples/user_costs.py: f' and f'' agree with
    finite differences, and the quadrature gradient with one of the quadrature mean."""
    from ruamel.yaml import YAML

    examples = Path(__file__).resolve().parents[1] / "examples"
    grid = YAML(typ="safe").load((examples / "user_cost.yaml").read_text())
    spec = {**grid["problem"]["cost"], "path": str(examples)}
    cost = registry.get_cost(spec)
    assert cost.params == ("k",) and cost.provides == {"derivative", "second_derivative"}
    h = 1e-5
    for k in grid["problem"]["k"]:
        for x in (-30.0, -1.3, 0.0, 0.7, 30.0):
            fd1 = (cost.value(x + h, k) - cost.value(x - h, k)) / (2 * h)
            fd2 = (cost.derivative(x + h, k) - cost.derivative(x - h, k)) / (2 * h)
            assert cost.derivative(x, k) == pytest.approx(fd1, rel=1e-6, abs=1e-9)
            assert cost.second_derivative(x, k) == pytest.approx(fd2, rel=1e-6, abs=1e-9)
        p = {"mu": grid["problem"]["mu"], "sigma": grid["problem"]["sigma"], "k": k}
        def mean(mu, sigma=p["sigma"], k=k, fam=registry.FAMILIES[FAMILY]):
            x, w = fam.rule((mu, sigma))
            return float(w @ np.array([cost.value(xi, k) for xi in x]))

        grad = exact.reference("pathwise", "mu", FAMILY, spec, p)[0]
        assert grad == pytest.approx((mean(p["mu"] + h) - mean(p["mu"] - h)) / (2 * h),
                                     rel=1e-6)


def test_editing_the_user_module_makes_its_results_stale(tmp_path, monkeypatch):
    """A user's module is code: results computed before it was edited are recomputed (and
    `harness status` calls them stale), not silently kept; a rerun without an edit skips."""
    from helpers import fake_backend

    from harness import runner
    from harness.config import load_grid

    monkeypatch.setitem(sys.modules, "harness.backends.cpu", fake_backend())
    module = tmp_path / "stale_check_costs.py"
    module.write_text("def cube(x):\n    return x * x * x\n")
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(textwrap.dedent("""\
        name: user_stale
        problem: {distribution: normal, cost: {python: "stale_check_costs:cube"},
                  mu: [0.0, 1.0], sigma: 1.0}
        wrt: [mu]
        estimators: [score_function]
        n_samples: [100]
        seeds: 4
        """))
    out = tmp_path / "run"
    grid = load_grid(grid_path)
    assert grid.user_files == (str(module.resolve()),)
    assert runner.run_grid(grid, out, progress=False).computed == 2
    assert runner.run_grid(load_grid(grid_path), out, progress=False).skipped == 2

    module.write_text("def cube(x):\n    return x * x * x  # edited\n")
    status = runner.run_status(out)
    assert "0 done, 2 stale" in status, status
    again = runner.run_grid(load_grid(grid_path), out, progress=False)
    assert again.computed == 2 and again.skipped == 0
    assert runner.run_grid(load_grid(grid_path), out, progress=False).skipped == 2
