"""The CLI: every bad input gives one line naming file, line and key, exit 2, no traceback.

``run``, ``report`` and ``bench`` are tested with their modules; here we test ``validate``,
``list``, usage errors and the error mapping.
"""

import pathlib
import types

import click
import pytest
from click.testing import CliRunner

from harness import __version__, registry
from harness.axes import Cost
from harness.cli import main
from harness.errors import ResultsError

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reparam_trick.yaml"

# A valid grid; the cases below edit one line of it (line numbers are 1-based).
BASE = """\
name: t
problem:
  distribution: normal
  cost: quadratic
  mu: 2.0
  sigma: 1.0
  k: 0.5
wrt: [mu, sigma]
estimators: [score_function, pathwise]
n_samples: [10, 100]
seeds: 4
backend: cpu
"""


def edit(**lines):
    """BASE with line N replaced (``l5="  mu: x"``); None deletes; text may add lines."""
    out = BASE.splitlines()
    for name, text in lines.items():
        out[int(name[1:]) - 1] = text
    return "\n".join(line for line in out if line is not None) + "\n"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments, code=2):
    """Exit ``code``; stderr is exactly one ``Error:`` line holding every fragment."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


BAD = [
    # id, edits to BASE, line, key, fragment of the message or fix
    ("unknown-top-key", dict(l11="seed: 4"), 11, "seed", "did you mean 'seeds'"),
    ("unknown-problem-key", dict(l5="  muu: 2.0"), 5, "problem.muu", "did you mean 'mu'"),
    ("k-on-square", dict(l4="  cost: square"), 7, "problem.k", "use cost: quadratic"),
    ("unknown-estimator-option",
     dict(l9="estimators: [score_function, {name: pathwise, baseline: loo}]"),
     9, "estimators[1].baseline", "has no options"),
    ("bool-is-not-a-number", dict(l5="  mu: true"), 5, "problem.mu", "a boolean"),
    ("quoted-number", dict(l7="  k: '0.5'"), 7, "problem.k", "without quotes"),
    ("number-list-item-type", dict(l7="  k: [1, yes]"), 7, "problem.k[1]", "expected a number"),
    ("problem-not-mapping", dict(l2="problem: normal", l3=None, l4=None, l5=None, l6=None,
                                 l7=None), 2, "problem", "expected a mapping"),
    ("problem-null", dict(l2="problem:", l3=None, l4=None, l5=None, l6=None, l7=None),
     2, "problem", "got nothing"),
    ("n-samples-bool", dict(l10="n_samples: [10, true]"), 10, "n_samples[1]", "a boolean"),
    ("seeds-bool", dict(l11="seeds: false"), 11, "seeds", "a boolean"),
    ("seeds-text", dict(l11="seeds: many"), 11, "seeds", "expected a whole number"),
    ("name-not-text", dict(l1="name: 123"), 1, "name", "quote"),
    ("name-with-slash", dict(l1="name: a/b"), 1, "name", "not a valid directory name"),
    ("wrt-not-text", dict(l8="wrt: [1]"), 8, "wrt[0]", "gradient component"),
    ("estimator-not-text", dict(l9="estimators: [1.5]"), 9, "estimators[0]",
     "estimator name or mapping"),
    ("backend-not-text", dict(l12="backend: 1"), 12, "backend", "use one of: cpu, cuda"),
    ("n-below-2", dict(l10="n_samples: [1, 100]"), 10, "n_samples[0]", "must be >= 2"),
    ("n-zero-scalar", dict(l10="n_samples: 0"), 10, "n_samples", "must be >= 2"),
    ("n-not-whole", dict(l10="n_samples: [10, 1.5e0]"), 10, "n_samples[1]",
     "must be a whole number, got 1.5"),
    ("n-block-list-item-line", dict(l10="n_samples:\n  - 10\n  - 1"), 12, "n_samples[1]",
     "must be >= 2"),
    ("n-too-large", dict(l10="n_samples: [1e30]"), 10, "n_samples[0]", "must be <="),
    ("n-duplicate", dict(l10="n_samples: [10, 1e1]"), 10, "n_samples[1]",
     "duplicate sample size 10 (same as n_samples[0])"),
    ("n-empty", dict(l10="n_samples: []"), 10, "n_samples", "empty list"),
    ("negative-seed", dict(l11="seeds: [0, -1]"), 11, "seeds[1]", "must be >= 0"),
    ("negative-seed-count", dict(l11="seeds: -3"), 11, "seeds", "must be >= 1"),
    ("zero-seed-count", dict(l11="seeds: 0"), 11, "seeds", "must be >= 1"),
    ("too-many-seeds", dict(l11="seeds: 1e12"), 11, "seeds", "must be <="),
    ("duplicate-seeds", dict(l11="seeds: [3, 1, 3]"), 11, "seeds[2]", "duplicate seed 3"),
    ("sigma-zero", dict(l6="  sigma: 0"), 6, "problem.sigma", "must be > 0"),
    ("sigma-negative-in-list", dict(l6="  sigma: [1, -0.5]"), 6, "problem.sigma[1]",
     "must be > 0"),
    ("unknown-estimator", dict(l9="estimators: [score_fuction]"), 9, "estimators[0]",
     "valid: score_function, pathwise"),
    ("unknown-cost", dict(l4="  cost: cubic"), 4, "problem.cost", "valid: square, quadratic"),
    ("unknown-distribution", dict(l3="  distribution: weibull"), 3, "problem.distribution",
     "valid: normal"),
    ("unknown-backend", dict(l12="backend: tpu"), 12, "backend", "valid: cpu, cuda"),
    ("missing-problem", dict(l2=None, l3=None, l4=None, l5=None, l6=None, l7=None, l8=None),
     1, "problem", "missing required key"),
    ("missing-seeds", dict(l11=None), 1, "seeds", "missing required key"),
    ("missing-cost", dict(l4=None, l7=None), 2, "problem.cost", "square, quadratic"),
    ("missing-k", dict(l7=None), 2, "problem.k", "missing required key"),
    ("missing-estimator-name", dict(l9="estimators: [{baseline: loo}]"), 9, "estimators[0].name",
     "missing required key"),
    ("duplicate-top-key", dict(l12="seeds: 5"), 12, "seeds", "duplicate key"),
    ("duplicate-nested-key", dict(l7="  mu: 3.0"), 7, "problem.mu", "first is on line 5"),
    ("duplicate-flow-key", dict(l9="estimators: [{name: pathwise, name: pathwise}]"), 9,
     "estimators[0].name", "duplicate key"),
    ("wrt-non-component", dict(l8="wrt: [mu, tau]"), 8, "wrt[1]", "valid: mu, sigma"),
    ("wrt-duplicate", dict(l8="wrt: [mu, mu]"), 8, "wrt[1]", "duplicate component"),
    ("estimator-duplicate", dict(l9="estimators: [pathwise, {name: pathwise}]"), 9,
     "estimators[1]", "duplicate estimator 'pathwise'"),
    ("estimators-empty", dict(l9="estimators: []"), 9, "estimators", "empty list"),
    ("nan", dict(l5="  mu: .nan"), 5, "problem.mu", "finite"),
    ("inf-in-list", dict(l7="  k: [0, -.inf]"), 7, "problem.k[1]", "finite"),
    ("inf-n", dict(l10="n_samples: [.inf]"), 10, "n_samples[0]", "finite"),
    ("nan-seeds", dict(l11="seeds: .nan"), 11, "seeds", "finite"),
]


@pytest.mark.parametrize("edits, line, key, fragment",
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_grid(tmp_path, edits, line, key, fragment):
    path = tmp_path / "grid.yaml"
    path.write_text(edit(**edits), encoding="utf-8")
    assert_one_line_error(invoke("validate", path), f"Error: {path}:{line}: {key}: ", fragment,
                          "(fix: ")


def test_base_grid_is_valid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(BASE, encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert "2 cells" in result.stdout


def test_pathwise_on_a_non_differentiable_cost(tmp_path, monkeypatch):
    step = Cost(name="step", params=(), value=lambda x, k: float(x > 0), derivative=None)
    monkeypatch.setitem(registry.COSTS, "step", step)
    path = tmp_path / "grid.yaml"
    path.write_text(edit(l4="  cost: step", l7=None), encoding="utf-8")
    line = assert_one_line_error(invoke("validate", path),
                                 f"{path}:8: estimators[1]: pathwise needs the derivative",
                                 "not differentiable")
    assert "use score_function" in line


@pytest.mark.parametrize("text, line, fragment", [
    ("n_samples: [10, 100\nseeds: 3\n", 2, "malformed YAML"),          # unclosed bracket
    ("problem:\n  mu: 1\n sigma: 2\n", 3, "malformed YAML"),             # bad indentation
    ("problem:\n\tmu: 1\n", 2, "malformed YAML"),                        # tab
    ("a: 1\n---\nb: 2\n", 2, "malformed YAML"),                          # two documents
    ("# a comment\n- 1\n- 2\n", 2, "top level must be a mapping, got a list"),
    ("just text\n", 1, "top level must be a mapping"),
])
def test_malformed_yaml_and_wrong_top_level(tmp_path, text, line, fragment):
    path = tmp_path / "grid.yaml"
    path.write_text(text, encoding="utf-8")
    assert_one_line_error(invoke("validate", path), f"{path}:{line}: ",
                          fragment.split(",")[0])


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "grid.yaml"
    path.write_text(text, encoding="utf-8")
    assert_one_line_error(invoke("validate", path), f"{path}: the file is empty")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert_one_line_error(invoke("validate", path), f"{path}: no such file")


def test_not_utf8(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"name: \xff\n")
    assert_one_line_error(invoke("validate", path), f"{path}: not UTF-8")


def test_directory_instead_of_file(tmp_path):
    assert_one_line_error(invoke("validate", tmp_path), "is a directory")


@pytest.mark.parametrize("args, fragment", [
    (["validate"], "Missing argument 'GRIDS...'"),
    (["run"], "Missing argument 'GRID'"),
    (["report"], "Missing argument 'RUN_DIR'"),
    (["run", "a.yaml", "b.yaml"], "unexpected extra argument"),
    (["validate", "--bogus", "a.yaml"], "No such option '--bogus'"),
    (["--bogus"], "No such option '--bogus'"),
    (["valdate"], "No such command 'valdate'"),
    (["bench", "--samples", "1.5"], "not a whole number"),
    (["bench", "--seeds", "0"], "must be >= 1"),
    (["bench", "--threads", "x"], "not a whole number"),
])
def test_usage_errors_are_one_line(args, fragment):
    line = assert_one_line_error(invoke(*args), fragment)
    assert "--help" in line        # points to the help, instead of printing the usage block


def test_harness_error_from_a_command_keeps_its_exit_code(monkeypatch):
    @click.command()
    def boom():
        raise ResultsError("runs/x: no results (fix: run it first)")

    monkeypatch.setitem(main.commands, "boom", boom)
    assert_one_line_error(invoke("boom"), "Error: runs/x: no results (fix: run it first)",
                          code=ResultsError.exit_code)


def test_bugs_keep_their_traceback(monkeypatch):
    @click.command()
    def bug():
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(main.commands, "bug", bug)
    result = invoke("bug")
    assert result.exit_code == 1
    assert isinstance(result.exception, ZeroDivisionError)


def test_validate_example():
    result = invoke("validate", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    for fragment in ("reparam_trick", "5 cells", "normal/square", "mu=2 sigma=1", "wrt mu",
                     "N=[10,100,1000,10000,100000]", "estimators score_function, pathwise",
                     "1000 seeds (0..999)", "backend cpu"):
        assert fragment in lines[0], fragment


def test_validate_counts_cells_as_product_of_value_counts(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(edit(l5="  mu: [0.5, 2.0]", l7="  k: [-3, 0, 3]", l11="seeds: [5, 9]"),
                    encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert "12 cells" in result.stdout          # 2 mu x 1 sigma x 3 k x 2 N
    assert "2 seeds ([5,9])" in result.stdout


def test_list_shows_the_registry():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for section in ("distributions:", "costs:", "estimators:", "backends:"):
        assert section in out
    for name in [*registry.DISTRIBUTIONS, *registry.COSTS, *registry.ESTIMATORS,
                 *registry.BACKENDS]:
        assert f"  {name}" in out
    for name, est in registry.ESTIMATORS.items():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert f"needs: {', '.join(sorted(est.needs)) or 'the cost' + chr(39) + 's value'};" in line
        assert f"evals_per_sample: {est.evals_per_sample}" in line
        assert est.description in line
    quadratic = next(ln for ln in out.splitlines() if ln.strip().startswith("quadratic "))
    assert "params: k" in quadratic and "provides: derivative, second_derivative" in quadratic


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"harness {__version__}"


@pytest.mark.parametrize("command", ["run", "report", "validate", "list", "bench"])
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.stdout
    assert f"harness {command}" in result.stdout


def test_list_shows_estimator_options(monkeypatch):
    est = registry.ESTIMATORS["score_function"]
    fake = types.SimpleNamespace(**{**vars(est), "options": {"baseline": ("none", "loo")}})
    monkeypatch.setitem(registry.ESTIMATORS, "score_function", fake)
    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert "option baseline: none|loo" in result.stdout


def test_list_shows_every_problem_kind_and_what_runs_it():
    from harness.kinds import KINDS
    from harness.vi.estimators import ESTIMATORS as ELBO_ESTIMATORS
    from harness.vi.families import FAMILIES
    from harness.vi.targets import TARGETS

    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    kinds = [ln for ln in lines if ln.startswith("kind ")]
    assert kinds == [f"kind {name}: {kind.description}" for name, kind in KINDS.items()]
    # Each kind's own section (between its line and the next kind's) lists its plug-ins.
    start = lines.index(kinds[1])
    elbo_section = "\n".join(lines[start:lines.index("backends:")])
    for name in [*TARGETS, *FAMILIES, *ELBO_ESTIMATORS]:
        assert f"    {name} " in elbo_section, name
    for name in registry.COSTS:
        assert f"    {name} " not in elbo_section, name
    backends = lines[lines.index("backends:") + 1:]
    for name in registry.BACKENDS:
        line = next(ln for ln in backends if ln.split()[0] == name)
        runs = [k for k, kind in KINDS.items() if name in kind.backends]
        assert line.endswith(f"kinds: {', '.join(runs)}"), line


def test_validate_an_elbo_grid(tmp_path):
    from harness.config import load_grid
    from harness.runner import expand_cells

    path = tmp_path / "vi.yaml"
    path.write_text("problem:\n  kind: elbo\n  target: ripple\n  dim: [2, 3]\n  family: diag\n"
                    "mode: [estimate, optimize]\nestimators: [reparam, stl]\n"
                    "n_samples: [10, 100]\noptimizer: {steps: 20}\nseeds: 3\n",
                    encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    cells = expand_cells(load_grid(path))
    assert len(cells) == 2 * 2 + 2 * 2        # (dims x N) estimate + (dims x estimators)
    line = result.stdout.strip()
    for fragment in (f"{path}: OK: vi: {len(cells)} cells; elbo target ripple family diag "
                     "dim 2,3; N=[10, 100]; optimize adam", "estimators reparam, stl",
                     "3 seeds (0..2)", "backend cpu"):
        assert fragment in line, (fragment, line)


# What a warm `harness run` of an expectation grid must not import: plotting, pandas (only
# reading results needs it), Dask, and the scipy modules only some problems use (numba's
# start-up imports scipy.linalg itself).
HEAVY = ("pandas", "matplotlib", "seaborn", "dask", "rich", "scipy.optimize",
         "scipy.integrate", "scipy.stats")

RUN_PATH = """\
import sys, pathlib, numpy as np
import harness.cli, harness.runner, harness.executors
from harness import registry
from harness.config import parse_grid
from harness.exact import references
from harness.quadrature import values
from harness.results import cell_table, estimate_columns, write_cell
grid = parse_grid(sys.argv[1], pathlib.Path("t.yaml"))
cell = harness.runner.expand_cells(grid)[0]
refs = [references(e.label, c, "normal", "quadratic", cell.point["params"])
        for e in cell.estimators for c in ("mu", "sigma")]
values(registry.get_cost("quadratic").value, np.linspace(-1.0, 1.0, 5), 0.5)
shape = (len(cell.seeds), len(cell.estimators), 2)
columns = estimate_columns(cell, components=("mu", "sigma"), estimate=np.zeros(shape),
                           sample_var=np.ones(shape), exact_grad=[r.grad for r in refs],
                           exact_var=[r.var for r in refs],
                           exact_source=[r.source for r in refs], evals_per_sample=[1, 1])
write_cell(pathlib.Path(sys.argv[2]), cell, cell_table(cell, columns))
{extra}
print(" ".join(m for m in sys.argv[3:] if m in sys.modules))
"""


def heavy_imports(tmp_path, extra: str = "") -> list[str]:
    """The HEAVY modules loaded by a new process that reads a grid, computes its exact
    references, evaluates a cost by ``harness.quadrature.values`` and writes a cell's
    results (what ``harness run`` does besides the kernels)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RUN_PATH.format(extra=extra), BASE,
                          str(tmp_path / "results"), *HEAVY], capture_output=True, text=True,
                         cwd=REPO, check=True)
    return out.stdout.split()


def test_the_run_path_imports_no_plotting_pandas_or_dask(tmp_path):
    """Imports cost seconds in every run: nothing of HEAVY is loaded by the run path.  The
    wrong variant (the same process converting a NumPy array by ``pa.array``, which imports
    pandas) is told apart by the same check."""
    assert heavy_imports(tmp_path) == []
    assert heavy_imports(tmp_path, "import pyarrow as pa; pa.array(np.zeros(2))") == ["pandas"]
