"""The model of a study that every layer shares: a grid, its cells, and the problem kinds.

A *study* is a grid file.  Its ``problem`` names a **problem kind** (``kind: expectation``,
the default: the gradient of E_q[f(x)] for a distribution q and a cost f; ``kind: elbo``: the
gradient of an ELBO for a variational family and a target), and the common keys say which
estimators, sample sizes N, seeds and backend to run.  The pipeline is the same for every
kind and knows none of them by name::

    grid.yaml --config.load_grid--> Grid --kind.cells--> [Cell]
    Cell --kind.compute--> result columns --results.cell_table--> one Parquet file per cell
    results/ --report.build_report--> one HTML page (common sections + the kind's section)

A kind is a :class:`ProblemKind` record registered in :data:`harness.kinds.KINDS`; it owns
its part of the grid schema, its cell expansion, its kernel call and exact references, its
result columns and its report section.  Distribution families, costs / targets and
estimators are the kind's own plug-ins (``harness.registry`` for the expectation kind,
``harness.vi`` for the ELBO kind).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import registry


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator by registry name, with its options sorted by option name."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """``"score_function"`` or ``"score_function[baseline=mean]"`` (results column)."""
        return registry.label(self.name, self.options)

    def to_dict(self) -> dict:
        return {"name": self.name, "options": {str(k): v for k, v in self.options},
                "label": self.label}


@dataclass(frozen=True)
class Grid:
    """A validated grid file: the common keys, and the kind's own ``problem`` spec."""

    kind: str                              # a key of harness.kinds.KINDS
    name: str
    path: Path
    source_text: str                       # the YAML as read (copied to the run directory)
    problem: Any                           # the kind's frozen problem spec
    estimators: tuple[EstimatorSpec, ...]
    n_samples: tuple[int, ...]             # may be () where the kind does not need N
    seeds: tuple[int, ...]
    backend: str

    @property
    def user_files(self) -> tuple[str, ...]:
        """The user-written source files this grid's numbers depend on (may be empty)."""
        from .kinds import KINDS

        files = KINDS[self.kind].user_files
        return tuple(files(self.problem)) if files is not None else ()


def config_id(config: dict) -> str:
    """First 16 hex digits of the sha256 of a configuration's canonical JSON.

    ``config["seeds"]`` may be a ``range``: it hashes as the list it stands for, streamed in
    pieces, so ten million seeds never become one 80 MB string (the id is the same).
    """
    seeds = config.get("seeds")
    if not isinstance(seeds, range):
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
    marker = "\x00seeds\x00"           # cannot occur in JSON text (it would be escaped)
    text = json.dumps({**config, "seeds": marker}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    head, tail = text.split(json.dumps(marker))
    h = hashlib.sha256(head.encode())
    h.update(b"[")
    piece = 1 << 16
    for start in range(0, len(seeds), piece):
        if start:
            h.update(b",")
        h.update(",".join(map(str, seeds[start:start + piece])).encode())
    h.update(b"]")
    h.update(tail.encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Cell:
    """One unit of work: a problem point, a sample size, every estimator and every seed.

    ``point`` is the kind's resolved problem point in plain JSON types (it is stored in the
    result file's metadata and hashed into ``id``); ``samples`` is the number of draws the
    cell computes (for progress and summaries; not part of the id).  All estimators of a cell
    see the same random numbers (common random numbers).  ``seeds`` is a tuple of ints, or a
    ``range`` for ``seeds: R`` (ten million seeds cost nothing until a block of them runs).
    The runner computes a cell in blocks of seeds (``block``); the id is that of the whole.
    """

    kind: str
    experiment: str
    point: Mapping[str, Any]
    estimators: tuple
    n_samples: int
    seeds: tuple
    backend: str = "cpu"
    samples: int = 0
    _id: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "n_samples", int(self.n_samples))
        if not isinstance(self.seeds, range):
            object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "estimators", tuple(self.estimators))
        if not self.samples:
            object.__setattr__(self, "samples", self.n_samples * len(self.seeds))

    def to_dict(self, with_seeds: bool = True) -> dict:
        """The resolved configuration: plain JSON types, stored in the file metadata."""
        d = {
            "experiment": self.experiment,
            "problem": self.kind,
            **self.point,
            "estimators": [e.to_dict() for e in self.estimators],
            "n_samples": self.n_samples,
            "backend": self.backend,
        }
        if with_seeds:
            d["seeds"] = list(self.seeds)
        return d

    @property
    def id(self) -> str:
        """The hash of ``to_dict()`` (computed once: a cell may have ten million seeds)."""
        if self._id is None:
            seeds = self.seeds if isinstance(self.seeds, range) else list(self.seeds)
            config = {**self.to_dict(with_seeds=False), "seeds": seeds}
            object.__setattr__(self, "_id", config_id(config))
        return self._id

    def block(self, seeds) -> Cell:
        """The same cell restricted to some of its seeds (what a kind computes at a time)."""
        return replace(self, seeds=seeds, samples=0)

    def __eq__(self, other):
        return isinstance(other, Cell) and self.id == other.id

    def __hash__(self):
        return hash(self.id)


@dataclass(frozen=True)
class ProblemKind:
    """A problem kind: everything the pipeline asks of one, as plain functions.

    ``parse(reader, doc, common) -> problem spec``: read ``doc["problem"]`` and the kind's
        own top-level keys (``top_level_keys``) with the ``harness.config.Reader`` (every
        error one line with file, line, key and fix); ``common`` holds the common keys
        already read (``estimators``, ``n_samples``, ``seeds``, ``backend``).  Also checks
        what only the kind knows (an estimator that cannot work with this problem).
    ``describe(grid) -> str``: what the grid would run, for ``harness validate``.
    ``cells(grid) -> list[Cell]``: the expansion, in a deterministic order.
    ``compute(cell) -> dict``: run the cell; result columns (name -> one value per row) as
        ``harness.results.estimate_columns`` builds them, plus the kind's own columns.
    ``columns``: the kind's own result columns (``pyarrow.Field``s), part of the schema.
    ``report_section(df, summary, out_dir) -> list[(title, html)]``: the kind's part of
        the report page (figures embedded), from stored results only.
    ``listing() -> list[str]``: lines for ``harness list``.
    ``calibration(cell) -> Cell`` (optional): ``cell`` with the same seeds and rows but less
        work per seed at the same cost per sample (e.g. a smaller N), of which the runner
        computes a block of seeds to estimate a run's time and disk before it starts;
        without it the runner computes a few seeds of the cell itself.
    ``user_files(problem) -> tuple[str, ...]`` (optional): the source files of user-written
        code the problem runs (a user cost's or target's module), so that editing one makes
        the results computed with it stale (``harness.provenance.code_digest``).
    """

    name: str
    description: str
    estimators: Mapping[str, Any]          # name -> record with ``options`` (option -> values)
    top_level_keys: tuple[str, ...]
    backends: tuple[str, ...]
    parse: Callable
    describe: Callable
    cells: Callable
    compute: Callable
    report_section: Callable
    listing: Callable
    columns: tuple = field(default_factory=tuple)
    # numeric columns a study may sweep (drawn against in the report)
    sweep_columns: tuple[str, ...] = ()
    calibration: Callable | None = None
    user_files: Callable | None = None
