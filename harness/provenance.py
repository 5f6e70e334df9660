"""Which code computed a result: the package version and a digest of the computing sources.

Every result file records ``code_digest()`` (``harness.results`` metadata); ``harness run``
treats a finished cell whose digest differs from the running code's as *stale* and
recomputes it (``--keep-stale`` keeps it), and ``harness status`` lists each cell's state.

The digest covers every ``.py`` file of the package that can change a number: kernels,
estimators, families, costs, targets, random numbers, exact references, the kinds, the grid
reader, the run loop and the row builder.  Files that only present results (the CLI, the
report pages, the benchmark) or only coordinate processes (claims, the kernel cache, this
module, the error messages) are left out, so editing a figure does not invalidate a study.
User-written code outside the package adds its own files (``extra_files``).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# modules that never change a computed number (relative to the package directory)
PRESENTATION_ONLY = frozenset({
    "cli.py", "report.py", "report_study.py", "report_bias.py", "vi/report.py", "bench.py",
    "__main__.py",
    "claims.py", "kernel_cache.py", "provenance.py", "errors.py",
    "executors.py",       # where cells run; results do not depend on it (nor on threads)
})


@cache
def _package_files() -> tuple[Path, ...]:
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in PRESENTATION_ONLY and "__pycache__" not in rel:
            files.append(path)
    return tuple(files)


def code_digest(extra_files=()) -> str:
    """sha256 (16 hex digits) of the computing sources (relative names and contents)."""
    h = hashlib.sha256()
    for path in _package_files():
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    for path in sorted(Path(p).resolve() for p in extra_files):
        h.update(path.as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
