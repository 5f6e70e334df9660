"""One error family for everything a user can get wrong.

The CLI maps every :class:`HarnessError` to a one-line message and exit code 2 (bad usage or
configuration) or 1 (a failure while running); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import signal


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
        self.message = message
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


class FilesystemError(HarnessError):
    """The operating system refused a file operation (permissions, read-only file system,
    a file where a directory should be, no space, a name too long).  One line naming the
    path, the error and a fix; exit 2 where the user's input (a path or a name) is the cause,
    1 where the machine is (no space, no permission)."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread by the CLI's handler (SIGINT is KeyboardInterrupt).
    A BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# The CLI handles SIGINT and SIGTERM with ``on_signal``: it raises KeyboardInterrupt or
# Interrupted in the main thread, except inside ``interrupts_deferred()`` blocks, which
# must not be split (taking a claim and keeping the handle that releases it): there the
# signal is raised when the block ends.
_deferring = 0
_pending: list[int] = []


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


def on_signal(signum, frame) -> None:
    """Signal handler: raise the interruption now, or at the end of a deferred block."""
    if _deferring:
        _pending.append(signum)
        return
    raise _interruption(signum)


@contextlib.contextmanager
def interrupts_deferred():
    """A block that ``on_signal`` does not interrupt (the signal is raised after it)."""
    global _deferring
    _deferring += 1
    try:
        yield
    except BaseException:
        _deferring -= 1
        raise
    _deferring -= 1
    if not _deferring and _pending:
        signum = _pending[0]
        _pending.clear()
        raise _interruption(signum)


class RunInterrupted(HarnessError):
    """A run or report stopped by SIGINT or SIGTERM after cleaning up; says how to resume.
    Exit 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


# errno -> (the user's input is the cause, fix); ``{elsewhere}`` is filled in by the caller
# (e.g. "choose another --out directory").
_OS_FIXES = {
    errno.EACCES: (False, "make it writable for this user, or {elsewhere}"),
    errno.EPERM: (False, "check its permissions and attributes (lsattr; chattr -i for an "
                         "immutable one), or {elsewhere}"),
    errno.EROFS: (False, "the file system is read-only: {elsewhere}"),
    errno.ENOSPC: (False, "free some disk space, or {elsewhere}"),
    errno.EDQUOT: (False, "free some of your disk quota, or {elsewhere}"),
    errno.ENOTDIR: (True, "a part of this path is a file, not a directory: rename or remove "
                          "that file, or {elsewhere}"),
    errno.EISDIR: (True, "it is a directory where a file belongs: rename or remove it, or "
                         "{elsewhere}"),
    errno.EEXIST: (True, "a file is in the way of a directory: rename or remove it, or "
                         "{elsewhere}"),
    errno.ENAMETOOLONG: (True, "use a shorter name or path"),
    errno.ENOENT: (True, "check the path"),
    errno.ELOOP: (True, "the path has a symbolic link loop: fix the link"),
}

# The errors the CLI turns into one line even where no caller caught them: the machine's
# file system, not a bug of ours.
OS_ERRNOS = frozenset(_OS_FIXES) | {errno.EIO}


def filesystem_error(err: OSError, action: str, path=None,
                     elsewhere: str = "choose another directory") -> FilesystemError:
    """One line for an ``OSError``: ``<path>: cannot <action>: <strerror> (fix: ...)``."""
    path = path if path is not None else (err.filename or "?")
    strerror = err.strerror or type(err).__name__
    user, fix = _OS_FIXES.get(err.errno, (False, "check the disk and the path, or {elsewhere}"))
    if err.filename is not None and path is not None and str(err.filename) != str(path):
        strerror += f" ({err.filename})"
    out = FilesystemError(f"{path}: cannot {action}: {strerror} "
                          f"(fix: {fix.format(elsewhere=elsewhere)})")
    out.exit_code = 2 if user else 1
    out.errno = err.errno
    return out
