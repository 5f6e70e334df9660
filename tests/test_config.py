"""Grid files -> Grid: good inputs parse to exactly what the user meant.

Bad inputs are covered end to end (exit code, one line, file:line and key) in test_cli.py;
here we check the parsed values and the structured fields of ConfigError.
"""

import dataclasses
import pathlib
import types

import pytest

from harness import registry
from harness.config import EstimatorSpec, Grid, load_grid, parse_grid
from harness.errors import ConfigError
from harness.kinds import expectation
from harness.kinds.expectation import ExpectationProblem

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reparam_trick.yaml"

MINIMAL = """\
problem:
  distribution: normal
  cost: square
  mu: 2.0
  sigma: 1.0
estimators: [score_function]
n_samples: 100
seeds: 3
"""


def write(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def plain_types(value):
    """Every leaf of a parsed Grid field, to check no ruamel subclass leaks out."""
    if isinstance(value, tuple):
        for v in value:
            yield from plain_types(v)
    elif isinstance(value, EstimatorSpec):
        yield from plain_types((value.name, value.options))
    elif dataclasses.is_dataclass(value):      # the kind's problem spec
        yield from plain_types(tuple(getattr(value, f.name) for f in dataclasses.fields(value)))
    else:
        yield value


def test_example_parses_to_the_issue_grid():
    grid = load_grid(EXAMPLE)
    assert grid == Grid(
        kind="expectation",
        name="reparam_trick",
        path=EXAMPLE,
        source_text=EXAMPLE.read_text(encoding="utf-8"),
        problem=ExpectationProblem(
            distribution="normal",
            cost="square",
            params=(("mu", (2.0,)), ("sigma", (1.0,))),
            wrt=("mu",),
        ),
        estimators=(EstimatorSpec("score_function"), EstimatorSpec("pathwise")),
        n_samples=(10, 100, 1000, 10000, 100000),
        seeds=range(1000),   # (a range: ten million seeds cost nothing)
        backend="cpu",
    )


def test_parsed_values_are_plain_python_types():
    grid = load_grid(EXAMPLE)
    for field in ("kind", "name", "problem", "estimators", "n_samples", "seeds", "backend"):
        for leaf in plain_types(getattr(grid, field)):
            # (seeds: R is a range: ten million seeds cost nothing until they run)
            # (None: an absent optional part, e.g. the optimizer of an estimate-only grid)
            assert type(leaf) in (str, int, float, range, type(None)), (field, type(leaf))
    hash(grid)   # frozen and hashable all the way down


def test_grid_is_frozen():
    grid = parse_grid(MINIMAL, "g.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        grid.name = "other"


def test_defaults_name_from_stem_wrt_all_backend_cpu(tmp_path):
    grid = load_grid(write(tmp_path, MINIMAL, "my_study.yaml"))
    assert grid.name == "my_study"
    assert grid.problem.wrt == ("mu", "sigma")
    assert grid.backend == "cpu"
    assert grid.path == tmp_path / "my_study.yaml"
    assert grid.source_text == MINIMAL


def test_scalars_become_one_tuples():
    grid = parse_grid(MINIMAL, "g.yaml")
    assert grid.problem.params == (("mu", (2.0,)), ("sigma", (1.0,)))
    assert grid.n_samples == (100,)
    assert grid.estimators == (EstimatorSpec("score_function"),)


def test_numbers_as_users_write_them():
    text = MINIMAL.replace("cost: square", "cost: quadratic").replace(
        "  sigma: 1.0\n", "  sigma: 1.0\n  k: [-3, 0.5]\n").replace(
        "n_samples: 100", "n_samples: [1e3, 1e6, 2000, 1.0e+2]")
    grid = parse_grid(text, "g.yaml")
    params = dict(grid.problem.params)
    # One float column, not a mix of ints and floats.
    assert params["k"] == (-3.0, 0.5)
    assert all(type(x) is float for x in params["k"])
    assert grid.n_samples == (1000, 1000000, 2000, 100)
    assert all(type(n) is int for n in grid.n_samples)


def test_params_in_fixed_order_distribution_then_cost():
    text = MINIMAL.replace("cost: square", "cost: quadratic").replace(
        "  mu: 2.0\n", "  k: [-3, 0, 3]\n  mu: [0.5, 2]\n")
    grid = parse_grid(text, "g.yaml")
    assert grid.problem.params == (("mu", (0.5, 2.0)), ("sigma", (1.0,)), ("k", (-3.0, 0.0, 3.0)))


def test_seeds_count_and_explicit_list():
    assert tuple(parse_grid(MINIMAL, "g.yaml").seeds) == (0, 1, 2)
    def seeds(text):
        return parse_grid(MINIMAL.replace("seeds: 3", text), "g.yaml").seeds

    assert seeds("seeds: 1e1") == range(10)
    # An explicit list keeps the user's order.
    assert seeds("seeds: [7, 0, 42]") == (7, 0, 42)


def test_wrt_scalar_and_canonical_order():
    assert parse_grid(MINIMAL + "wrt: sigma\n", "g.yaml").problem.wrt == ("sigma",)
    # Order does not change the cell: components come in the distribution's order.
    assert parse_grid(MINIMAL + "wrt: [sigma, mu]\n", "g.yaml").problem.wrt == ("mu", "sigma")


def test_estimator_mappings_and_labels():
    text = MINIMAL.replace("estimators: [score_function]",
                           "estimators:\n  - {name: score_function}\n  - pathwise\n")
    grid = parse_grid(text, "g.yaml")
    assert grid.estimators == (EstimatorSpec("score_function"), EstimatorSpec("pathwise"))
    assert [e.label for e in grid.estimators] == ["score_function", "pathwise"]
    assert EstimatorSpec("score_function", (("baseline", "loo"),)).label == \
        "score_function[baseline=loo]"
    assert EstimatorSpec("x", (("a", 1), ("b", "c"))).label == "x[a=1,b=c]"


@pytest.fixture
def with_options(monkeypatch):
    """Give score_function a ``baseline`` option, as a later issue will."""
    est = registry.ESTIMATORS["score_function"]
    fake = types.SimpleNamespace(**{**vars(est), "options": {"baseline": ("none", "loo")},
                                    "configure": lambda baseline: est})
    monkeypatch.setitem(registry.ESTIMATORS, "score_function", fake)
    # a made-up option has no exact reference to check
    monkeypatch.setattr(expectation, "_check_references", lambda *args: None)
    registry._resolve.cache_clear()
    yield
    registry._resolve.cache_clear()


def test_estimator_options_come_from_the_registry(with_options):
    text = MINIMAL.replace(
        "estimators: [score_function]",
        "estimators: [{name: score_function, baseline: loo}, score_function,"
        " {baseline: none, name: score_function}]")
    grid = parse_grid(text, "g.yaml")
    assert [e.label for e in grid.estimators] == [
        "score_function[baseline=loo]", "score_function", "score_function[baseline=none]"]


@pytest.mark.parametrize("estimators, key, fragment", [
    ("[{name: score_function, baseline: mean}]", "estimators[0].baseline", "none, loo"),
    ("[{name: score_function, baselin: loo}]", "estimators[0].baselin", "did you mean 'baseline'"),
    ("[{name: score_function, baseline: loo}, {baseline: loo, name: score_function}]",
     "estimators[1]", "duplicate estimator"),
])
def test_estimator_option_errors(with_options, estimators, key, fragment):
    text = MINIMAL.replace("[score_function]", estimators)
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    assert info.value.key == key
    assert info.value.line == 6
    assert fragment in str(info.value)


def test_real_estimator_options_parse_to_registered_values():
    text = MINIMAL.replace(
        "estimators: [score_function]",
        "estimators: [{name: measure_valued, coupling: false}, {name: delta_cv, coefficient: 1.0},"
        " {name: score_function, baseline: optimal}, {name: delta_cv, coefficient: estimated}]")
    grid = parse_grid(text, "g.yaml")
    assert [e.label for e in grid.estimators] == [
        "measure_valued[coupling=false]", "delta_cv[coefficient=1]",
        "score_function[baseline=optimal]", "delta_cv[coefficient=estimated]"]
    assert grid.estimators[0].options == (("coupling", False),)
    assert type(grid.estimators[1].options[0][1]) is int     # the registered 1, not 1.0
    for spec in grid.estimators:
        assert registry.resolve(spec).name == spec.label


@pytest.mark.parametrize("estimators, fragment", [
    ("[{name: measure_valued, coupling: 1}]", "true, false"),      # 1 is not a boolean
    ("[{name: delta_cv, coefficient: true}]", "1, estimated"),     # true is not 1
    ("[{name: score_function, baseline: loo}]", "none, mean, optimal, exact_optimal"),
    ("[{name: pathwise, baseline: mean}]", "pathwise has no options"),
])
def test_real_estimator_option_errors_list_the_valid_values(estimators, fragment):
    with pytest.raises(ConfigError) as info:
        parse_grid(MINIMAL.replace("[score_function]", estimators), "g.yaml")
    assert fragment in str(info.value)


def test_config_error_fields(tmp_path):
    path = write(tmp_path, MINIMAL.replace("sigma: 1.0", "sigma: -1.0"))
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    err = info.value
    assert (err.file, err.line, err.key) == (path, 5, "problem.sigma")
    assert err.fix and "positive" in err.fix
    assert err.exit_code == 2
    assert str(err).startswith(f"{path}:5: problem.sigma: must be > 0, got -1.0")
    assert "\n" not in str(err)


def test_duplicate_key_names_the_full_path_and_both_lines():
    text = MINIMAL.replace("  sigma: 1.0\n", "  sigma: 1.0\n  mu: 3.0\n")
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    assert (info.value.line, info.value.key) == (6, "problem.mu")
    assert "line 4" in info.value.fix


def test_registry_is_read_at_call_time(monkeypatch):
    monkeypatch.setattr(registry, "BACKENDS", ("cpu", "cuda"))
    assert parse_grid(MINIMAL + "backend: cuda\n", "g.yaml").backend == "cuda"


@pytest.mark.parametrize("k", ["0", "-0.5", "[1.0, -2.0]"])
def test_exp_cost_needs_positive_k(k):
    text = MINIMAL.replace("cost: square", "cost: exp").replace("sigma: 1.0",
                                                                 f"sigma: 1.0\n  k: {k}")
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    message = str(info.value)
    assert message.startswith("g.yaml:6: problem.k") and "must be > 0" in message
    assert "cost exp needs k > 0" in message
    parse_grid(text.replace(f"k: {k}", "k: [0.1, 10]"), "g.yaml")  # positive values pass


# ------------------------------------------------------------------------- problem kinds

def test_kind_defaults_to_expectation_and_may_be_named():
    from harness.runner import expand_cells

    default = parse_grid(MINIMAL, "g.yaml")
    named = parse_grid(MINIMAL.replace("problem:\n", "problem:\n  kind: expectation\n"), "g.yaml")
    assert default.kind == named.kind == "expectation"
    assert default.problem == named.problem
    # The same study: the same cells, so a rerun after adding the key skips them all.
    assert [c.id for c in expand_cells(default)] == [c.id for c in expand_cells(named)]


def test_mode_and_optimizer_are_keys_of_both_kinds():
    """``mode``/``optimizer`` were the ELBO kind's only; the expectation kind reads them too
    (``mode: optimize``), so they no longer name another kind (``wrt`` still does, below)."""
    assert parse_grid(MINIMAL + "mode: estimate\n", "g.yaml").problem.modes == ("estimate",)
    with pytest.raises(ConfigError) as info:
        parse_grid(MINIMAL + "optimizer: {lr: 0.1}\n", "g.yaml")
    assert (info.value.line, info.value.key) == (9, "optimizer")
    assert info.value.fix == "add 'mode: optimize' or remove the optimizer"


def test_wrt_in_an_elbo_grid_names_its_kind():
    text = ("problem: {kind: elbo, target: ripple, dim: 2, family: diag}\n"
            "estimators: [reparam]\nn_samples: 10\nseeds: 2\nwrt: [mu]\n")
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    assert (info.value.line, info.value.key) == (5, "wrt")
    assert info.value.fix == "wrt belongs to problem kind expectation"


def test_estimators_come_from_the_kinds_registry():
    # reparam is an ELBO estimator, not an expectation one (and the reverse).
    with pytest.raises(ConfigError) as info:
        parse_grid(MINIMAL.replace("[score_function]", "[reparam]"), "g.yaml")
    assert info.value.key == "estimators[0]" and "unknown estimator 'reparam'" in str(info.value)
    elbo = ("problem: {kind: elbo, target: ripple, dim: 2, family: diag}\n"
            "estimators: [pathwise]\nn_samples: 10\nseeds: 2\n")
    with pytest.raises(ConfigError) as info:
        parse_grid(elbo, "g.yaml")
    assert info.value.key == "estimators[0]" and "unknown estimator 'pathwise'" in str(info.value)


def test_a_backend_the_kind_does_not_run(monkeypatch):
    """A kind lists the backends it runs on; any other is one line at the backend key."""
    from harness.kinds import KINDS

    text = ("problem: {kind: elbo, target: ripple, dim: 2, family: diag}\n"
            "estimators: [reparam]\nn_samples: 10\nseeds: 2\nbackend: cuda\n")
    assert parse_grid(text, "g.yaml").backend == "cuda"       # ELBO estimates run on cuda
    assert parse_grid(MINIMAL + "backend: cuda\n", "g.yaml").backend == "cuda"
    monkeypatch.setitem(KINDS, "elbo", dataclasses.replace(KINDS["elbo"], backends=("cpu",)))
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    assert (info.value.line, info.value.key) == (5, "backend")
    assert "does not run elbo problems" in str(info.value) and info.value.fix == "use backend: cpu"


def test_elbo_optimisation_is_cpu_only():
    text = ("problem: {kind: elbo, target: ripple, dim: 2, family: diag}\nmode: optimize\n"
            "optimizer: {steps: 10}\nestimators: [reparam]\nseeds: 2\nbackend: cuda\n")
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g.yaml")
    assert (info.value.line, info.value.key) == (6, "backend")
    assert "mode estimate only" in str(info.value)
    assert info.value.fix == "use backend: cpu for mode: optimize"
