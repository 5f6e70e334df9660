"""The problem-kind contract (``harness.model.ProblemKind``), checked for every entry of
``harness.kinds.KINDS``: a kind's columns are in the results schema; a tiny grid of the kind
parses, expands to cells with stable ids, runs through ``runner.run_grid`` and
``report.build_report`` with the real kernels; every row names its kind and its point.

And the other half of the contract: the pipeline modules (runner, results, report) name no
kind, so a new kind plugs in without editing them.
"""

import ast
import html
import re
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness import results
from harness.config import parse_grid
from harness.kinds import KINDS
from harness.report import build_report
from harness.results import finished_cells, read_results
from harness.runner import expand_cells, run_grid

# One tiny grid per kind (small N and seeds: the point is the plumbing, not the statistics),
# and an edit of one problem value that must give other cells.
TINY = {
    "expectation": ("""\
name: tiny_expectation
problem:
  distribution: normal
  cost: quadratic
  mu: 2.0
  sigma: 1.0
  k: [-1.0, 0.0]
estimators: [score_function, pathwise]
n_samples: [100, 1000]
seeds: 3
""", ("mu: 2.0", "mu: 2.5")),
    "elbo": ("""\
name: tiny_elbo
problem:
  kind: elbo
  target: gaussian
  target_seed: 3
  dim: 2
  family: diag
mode: [estimate, optimize]
estimators: [reparam, {name: score_function, baseline: mean}]
n_samples: [10, 100]
optimizer: {steps: 4, samples: 4, record_every: 2, var_samples: 10}
seeds: 3
""", ("target_seed: 3", "target_seed: 4")),
}


def test_every_kind_has_a_tiny_grid():
    # A new kind must add its tiny grid here, and so be run through the whole pipeline.
    assert set(TINY) == set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name


@pytest.mark.parametrize("name", KINDS)
def test_kind_columns_are_in_the_schema(name):
    schema = results.schema()
    assert schema is results.SCHEMA            # one schema, built once
    for field in KINDS[name].columns:
        assert field.name in schema.names, field.name
        assert schema.field(field.name).type == field.type, field.name
    for column in KINDS[name].sweep_columns:
        assert column in schema.names, column
    # The common columns come first, unchanged by any kind.
    assert schema.names[:len(results.COMMON_FIELDS)] == [f.name for f in results.COMMON_FIELDS]


@pytest.mark.parametrize("name", KINDS)
def test_tiny_grid_parses_to_cells_with_stable_ids(name):
    text, (old, new) = TINY[name]
    grid = parse_grid(text, f"{name}.yaml")
    assert grid.kind == name
    cells = expand_cells(grid)
    ids = [c.id for c in cells]
    assert len(ids) >= 2 and len(set(ids)) == len(ids)
    assert all(c.kind == name and c.experiment == grid.name for c in cells)
    # Same grid, same ids (a rerun finds its cells), also from a second parse.
    assert [c.id for c in expand_cells(parse_grid(text, f"{name}.yaml"))] == ids
    # One problem value changed: every cell is another cell.
    assert old in text
    changed = [c.id for c in expand_cells(parse_grid(text.replace(old, new), f"{name}.yaml"))]
    assert len(changed) == len(ids) and not set(changed) & set(ids)
    # What `harness validate` says agrees with the expansion.
    assert KINDS[name].describe(grid).startswith(f"{len(cells)} cells; ")
    lines = KINDS[name].listing()
    assert lines and all(isinstance(line, str) and line for line in lines)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every kind's tiny grid, run and reported once (the ELBO kernels compile in ~20 s)."""
    out = {}
    for name, (text, _) in TINY.items():
        run_dir = tmp_path_factory.mktemp(name)
        grid = parse_grid(text, run_dir / f"{name}.yaml")
        summary = run_grid(grid, run_dir, progress=False)
        index = build_report(run_dir)
        out[name] = (grid, run_dir, summary, index)
    return out


@pytest.mark.parametrize("name", KINDS)
def test_tiny_grid_runs_and_reports(runs, name):
    grid, run_dir, summary, index = runs[name]
    cells = expand_cells(grid)
    assert (summary.cells, summary.computed, summary.skipped) == (len(cells), len(cells), 0)
    assert finished_cells(run_dir) == {c.id for c in cells}
    df = read_results(run_dir)
    assert list(df.columns) == results.SCHEMA.names
    assert set(df["cell"]) == {c.id for c in cells}
    assert set(df["problem"]) == {name}
    assert df["point"].notna().all() and (df["point"] != "").all()
    assert set(df["experiment"]) == {grid.name} and set(df["backend"]) == {grid.backend}
    # Every cell's rows carry the cell's N and seeds.
    for cell in cells:
        rows = df[df["cell"] == cell.id]
        assert set(rows["n_samples"]) == {cell.n_samples}
        assert set(rows["seed"]) == set(cell.seeds)
    # Columns only other kinds have stay empty.
    own = {f.name for f in KINDS[name].columns}
    for other, kind in KINDS.items():
        for field in kind.columns:
            if field.name not in own:
                assert df[field.name].isna().all(), (other, field.name)
    # The page counts the run's cells and points; the summary has every estimate point.
    page = index.read_text()
    assert index == run_dir / "report" / "index.html"
    points = df["point"].nunique()
    assert re.search(rf"<dt>cells</dt><dd>{len(cells)} \({points} problem points? x ", page)
    assert html.escape(KINDS[name].description) in page
    summary = pd.read_csv(run_dir / "report" / "summary.csv")
    assert set(summary["point"]) == set(df.loc[df["step"].isna(), "point"])
    assert set(summary["problem"]) == {name}


def test_a_run_mixing_kinds_reports_both(runs, tmp_path):
    """Results of two kinds in one directory: one page with both kinds' sections."""
    target = tmp_path / "results"
    target.mkdir()
    for _, run_dir, _, _ in runs.values():
        for path in (run_dir / "results").glob("*.parquet"):
            (target / path.name).write_bytes(path.read_bytes())
    df = read_results(tmp_path)
    assert set(df["problem"]) == set(KINDS)
    page = build_report(tmp_path).read_text()
    for kind in KINDS.values():
        assert html.escape(kind.description) in page
    summary = (tmp_path / "report" / "summary.csv").read_text()
    for name in KINDS:
        assert f"\n{name}," in summary, name


# ------------------------------------------------------- the pipeline names no kind

PACKAGE = Path(harness.__file__).resolve().parent
PIPELINE = ("runner.py", "results.py", "report.py")
# Reading files of schema version 2 must name the old kinds and columns: allowed there only.
UPGRADE_FUNCTIONS = {"results.py": ("_upgrade_v2", "_upgrade_v2_config")}
# Kind names and words only a kind uses; and every kind's own column names, plus the
# version-2 ``family`` column.
KIND_WORDS = {*KINDS, "gaussian", "gaussian_cost", "mu", "sigma"}
KIND_COLUMNS = {f.name for kind in KINDS.values() for f in kind.columns} | {"family"}


def kind_names(source: str, allowed_functions=()) -> list[tuple[int, str]]:
    """(line, text) of every place ``source`` names a kind or a kind's column: in a string
    (a column name as the whole string, a kind word as a token of it), an identifier, an
    argument or an import.  Docstrings and comments may mention kinds; code may not."""
    tree = ast.parse(source)
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            skip.add(id(body[0].value))                      # a docstring
        if isinstance(node, ast.FunctionDef) and node.name in allowed_functions:
            skip.update(id(n) for n in ast.walk(node))
    hits = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            tokens = set(re.split(r"[^A-Za-z0-9]+", node.value)) | {node.value}
            if node.value in KIND_COLUMNS or tokens & KIND_WORDS:
                hits.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, ast.ImportFrom):
            names = (node.module or "").split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [part for a in node.names for part in a.name.split(".")]
        hits += [(node.lineno, n) for n in names if n in KIND_WORDS]
    return sorted(hits)


@pytest.mark.parametrize("module", PIPELINE)
def test_pipeline_modules_name_no_kind(module):
    source = (PACKAGE / module).read_text()
    assert kind_names(source, UPGRADE_FUNCTIONS.get(module, ())) == []


def test_only_the_version_2_upgrade_names_the_old_kinds():
    # The allowance is not vacuous: without it, exactly those functions' lines are found.
    source = (PACKAGE / "results.py").read_text()
    spans = [(f.lineno, f.end_lineno) for f in ast.walk(ast.parse(source))
             if isinstance(f, ast.FunctionDef) and f.name in UPGRADE_FUNCTIONS["results.py"]]
    assert len(spans) == len(UPGRADE_FUNCTIONS["results.py"])
    hits = kind_names(source)
    assert {text for _, text in hits} >= {"gaussian_cost", "expectation", "elbo", "family"}
    assert all(any(a <= line <= b for a, b in spans) for line, _ in hits), hits


# Edits that would put kind knowledge back into the pipeline (the first is the pre-kinds
# report's dispatch); the check must catch each.
KIND_EDITS = [
    ("report.py", 'df = df[df["step"].isna()].copy()',
     'df = df[df["mode"] != "optimize"].copy()'),
    ("report.py", "from .kinds import KINDS",
     "from .kinds import KINDS\nfrom .kinds.elbo import point_label"),
    ("report.py", "    summary = summarise(df)\n",
     '    summary = summarise(df)\n    if (df["problem"] == "elbo").all():\n'
     "        raise ValueError\n"),
    ("report.py", 'POINT_COLUMNS = ["problem", "point"]',
     'POINT_COLUMNS = ["problem", "point", "mu", "sigma", "k"]'),
    ("runner.py", "return KINDS[grid.kind].cells(grid)",
     'return KINDS[getattr(grid, "kind", "expectation")].cells(grid)'),
    ("results.py", '"problem": [cell.kind] * n,', '"problem": ["gaussian_cost"] * n,'),
    ("results.py", "    fields = list(COMMON_FIELDS)\n",
     "    fields = list(COMMON_FIELDS)\n    fields.append(pa.field('sigma', pa.float64()))\n"),
]


@pytest.mark.parametrize("module, old, new", KIND_EDITS)
def test_the_check_catches_kind_knowledge(module, old, new):
    source = (PACKAGE / module).read_text()
    assert source.count(old) == 1, old
    edited = source.replace(old, new)
    assert kind_names(edited, UPGRADE_FUNCTIONS.get(module, ())) != []
