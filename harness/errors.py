"""One error family for everything a user can get wrong.

The CLI maps every :class:`HarnessError` to a one-line message and exit code 2 (bad usage or
configuration) or 1 (a failure while running); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: its ``str`` is the one line shown to the user."""

    exit_code = 1


class ConfigError(HarnessError):
    """A grid file (or command-line value) is wrong.

    The message names the file, the line, the key and the fix, e.g.
    ``grid.yaml:4: problem.sigma: must be > 0, got -1.0 (fix: use a positive scale)``.
    """

    exit_code = 2

    def __init__(self, message: str, *, file=None, line=None, key=None, fix=None):
        self.file, self.line, self.key, self.fix = file, line, key, fix
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f"{key}: " if key else ""
        tail = f" (fix: {fix})" if fix else ""
        super().__init__(f"{where}{what}{message}{tail}")


class ResultsError(HarnessError):
    """A results directory is missing, empty or not readable with the current schema."""

    exit_code = 2


class ClusterError(HarnessError):
    """A Dask cluster cannot be used: its scheduler cannot be reached, a cell was lost with
    too many workers, a worker runs other code (``harness.executors``).  Exit 2 where the
    command line is the cause (an address, the options), else 1."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class BackendError(HarnessError):
    """A backend cannot run here (e.g. ``backend: cuda`` without a GPU)."""

    exit_code = 2
