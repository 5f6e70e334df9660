"""Where compiled kernels live, and compiling each one once across processes.

Two caches hold compiled code: the generated kernel modules of ``harness.backends.cpu`` (in
``$HARNESS_KERNEL_DIR``, default ``~/.cache/harness/kernels``) and numba's on-disk cache of
every ``cache=True`` function (``$NUMBA_CACHE_DIR`` if set, else a ``__pycache__`` next to
the source, else ``~/.cache/numba``).

**Read-only caches.**  numba only uses a cache directory it can write to: with a read-only
one it silently recompiles into the next writable place, and with none at all it fails with
a traceback.  :func:`kernel_dir` and :func:`ensure_numba_cache` check each directory once
per process; one that cannot be written is replaced by a per-user temporary directory,
seeded with a copy of the read-only one's harness kernels (numba's cache files are keyed by
a hash of the source's content, so a copied valid kernel loads instead of recompiling), and
a one-line note goes to stderr.

**Compiling once.**  Two processes needing the same new kernel would both compile it (tens
of seconds each).  :func:`compile_once` compiles (or loads from numba's cache) a dispatcher
for the types of a call while holding an exclusive lock (``fcntl.flock``) on a lock file
next to the kernel: the second process waits, then loads what the first wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from .errors import filesystem_error

_chosen: dict[str, Path] = {}      # preferred directory -> the directory used
_relocated: dict[Path, Path] = {}  # kernel directories replaced by a temporary one
_lock = threading.Lock()


def note(text: str) -> None:
    """A one-line note on stderr (never on stdout: that is the commands' output)."""
    print(f"note: {text}", file=sys.stderr, flush=True)


def preferred_kernel_dir() -> Path:
    """$HARNESS_KERNEL_DIR, else ~/.cache/harness/kernels."""
    env = os.environ.get("HARNESS_KERNEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "harness" / "kernels"


def writable(directory: Path) -> OSError | None:
    """None if files can be created in ``directory`` (created if missing), else the error."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as err:
        return err
    return None


def fallback_dir(what: str) -> Path:
    """A per-user temporary directory (``$TMPDIR/harness-<what>-<uid>``, mode 0700) shared
    by this user's processes, so they still share compiled kernels and compile locks."""
    path = Path(tempfile.gettempdir()) / f"harness-{what}-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.stat().st_uid != os.getuid():
        raise filesystem_error(OSError(errno.EPERM, "owned by another user", str(path)),
                               "use it as a kernel cache", path,
                               elsewhere="set TMPDIR to a directory of your own")
    return path


def _copy_tree(source: Path, target: Path, match=lambda name: True) -> int:
    """Copy the files of ``source`` whose name matches (and its ``__pycache__``) into
    ``target``, keeping modification times; existing files are kept.  Returns the count."""
    copied = 0
    for sub in ("", "__pycache__"):
        src = source / sub
        if not src.is_dir():
            continue
        (target / sub).mkdir(exist_ok=True)
        try:
            names = sorted(os.listdir(src))
        except OSError:
            continue
        for name in names:
            if not match(name) or (target / sub / name).exists():
                continue
            try:
                shutil.copy2(src / name, target / sub / name)
                copied += 1
            except OSError:
                continue           # unreadable: that kernel is compiled again
    return copied


def kernel_dir() -> Path:
    """The directory for generated kernels: the preferred one if it is writable, else a
    temporary one seeded with the preferred one's kernels (with a one-line note)."""
    preferred = preferred_kernel_dir()
    key = str(preferred)
    with _lock:
        if key in _chosen:
            return _chosen[key]
        err = writable(preferred)
        if err is None:
            _chosen[key] = preferred
            return preferred
        fallback = fallback_dir("kernels")
        copied = _copy_tree(preferred, fallback,
                            lambda name: name.startswith("harness_kernel_"))
        _relocated[preferred] = fallback
        note(f"kernel cache {preferred} is not writable ({err.strerror or err}); using "
             f"{fallback} for this process" + (f" (copied {copied} cached files)" if copied
                                               else "")
             + " (fix: make it writable or set HARNESS_KERNEL_DIR)")
        _chosen[key] = fallback
        return fallback


def ensure_numba_cache(source_dir: Path | None = None) -> None:
    """Make sure numba has a writable cache for functions defined in ``source_dir``.

    If ``$NUMBA_CACHE_DIR`` is set but cannot be written, or it is unset and neither
    ``source_dir/__pycache__`` nor numba's user-wide cache can be (numba would fail with "no
    locator available"), point numba at a temporary directory, seeded with the read-only
    one's entries, with a one-line note.  numba picks a cache location when a ``cache=True``
    function is defined, so this runs before such functions are defined
    (``harness.vi.kernels``; ``harness.backends.cpu`` before importing a kernel).  Kernels
    moved to a temporary kernel directory (``kernel_dir``) get their numba entries copied to
    where numba will look for them (its entries are named after the source's directory).
    """
    from numba.core import config

    with _lock:
        configured = _configured_numba_dir(config)
        key = f"numba:{configured}:{source_dir}"
        if key not in _chosen:
            _chosen[key] = _numba_fallback(configured, source_dir)
        if _chosen[key] is not None:
            config.CACHE_DIR = str(_chosen[key])
        if configured:
            _relocate_entries(Path(configured), Path(config.CACHE_DIR))


def _configured_numba_dir(config) -> str:
    """$NUMBA_CACHE_DIR as the user set it (not a fallback this module chose)."""
    current = getattr(config, "CACHE_DIR", "") or ""
    for key, chosen in _chosen.items():
        if key.startswith("numba:") and chosen is not None and str(chosen) == current:
            return key.split(":")[1]
    return current


def _numba_fallback(configured: str, source_dir) -> Path | None:
    """None if numba can cache where it would, else a temporary directory (with a note)."""
    if configured:
        err = writable(Path(configured))
        what = f"numba cache {configured}"
    else:
        from numba.misc.appdirs import AppDirs

        user_wide = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
        err = writable(user_wide)
        if err is not None and source_dir is not None:
            err = writable(Path(source_dir) / "__pycache__") and err
        what = f"numba cache {user_wide}"
    if err is None:
        return None
    fallback = fallback_dir("numba-cache")
    copied = 0
    source = Path(configured) if configured else None
    if source is not None and source.is_dir():
        try:
            entries = sorted(os.listdir(source))
        except OSError:
            entries = []
        for entry in entries:          # numba names a source directory's entries
            if (source / entry).is_dir():   # "<dir name>_<sha1 of its path>"
                (fallback / entry).mkdir(exist_ok=True)
                copied += _copy_tree(source / entry, fallback / entry)
    note(f"{what} is not writable ({err.strerror or err}); using {fallback} for this "
         "process" + (f" (copied {copied} cached files)" if copied else "")
         + " (fix: make it writable or set NUMBA_CACHE_DIR)")
    return fallback


def _relocate_entries(source: Path, target: Path) -> None:
    """Copy numba's entries for each relocated kernel directory to the relocated name."""
    from numba.core.caching import _CacheLocator

    for preferred, fallback in _relocated.items():
        old = source / _CacheLocator.get_suitable_cache_subpath(str(preferred / "k.py"))
        new = target / _CacheLocator.get_suitable_cache_subpath(str(fallback / "k.py"))
        if old.is_dir() and old != new:
            new.mkdir(parents=True, exist_ok=True)
            _copy_tree(old, new, lambda name: name.startswith("harness_kernel_"))


@contextlib.contextmanager
def compile_lock(directory: Path, name: str, what: str = "kernel"):
    """Hold an exclusive lock on ``directory/.<name>.lock`` (blocking; a note if another
    process holds it).  The lock is released when the process dies, so it never goes stale."""
    path = Path(directory) / f".{name}.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another process compiling {what} {name}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)             # closing releases the lock


def compile_once(dispatcher, args, directory: Path | None = None) -> None:
    """Compile ``dispatcher`` (a ``cache=True`` numba function) for the types of ``args``,
    or load it from numba's cache, under :func:`compile_lock`; a no-op once this process has
    it.  Another process needing the same kernel waits and then loads it from the cache."""
    from numba import typeof

    if not hasattr(dispatcher, "overloads"):     # a plain function (a test's stand-in)
        return
    types = tuple(typeof(a) for a in args)
    if types in dispatcher.overloads:
        return
    name = dispatcher.py_func.__module__
    with compile_lock(directory or kernel_dir(), name):
        if types not in dispatcher.overloads:
            dispatcher.compile(types)
