"""Compiled kernels: where they live, importing them under a digest of their code, and
compiling each one once across processes.

## Digest-named modules

Import kernel modules under a name that changes whenever their code does.

Why: numba's on-disk cache (``@njit(cache=True)``) keeps a function's machine code keyed by
the function's own file, and invalidates it only when *that* file changes.  Jitted callees in
other files (``harness/rng.py``'s Philox, ``harness/scalar_math.py``'s log, a family's
transform, ...) are compiled into the cached code, so editing one of them would leave a stale
kernel running.  The fix here is automatic: a kernel module is imported from a copy of its
source named ``<name>_<digest>.py`` in :func:`kernel_dir`, where the digest is a sha256 of
that source and of every file it depends on.  Any edit gives a new module name, hence a new
numba cache entry; an unchanged tree reuses the compiled code in the next process.

- :func:`load_source` (the general tool): source text + dependency files -> imported module.
- :func:`package_dependencies`: the files of a package that a source imports, transitively,
  found by reading ``import`` statements (nothing is executed).
- :func:`load_module`: a module of this package, e.g. ``"harness.vi.kernels"``, loaded by
  :func:`load_source` with its own :func:`package_dependencies`.
- :func:`compile_once`: compile a kernel for a call's types (or load it from numba's cache)
  under a file lock, so processes that need the same new kernel at once (the workers of a
  host, ``harness.executors``) compile it once: the others wait, then load it.
- :func:`try_compile_once`: the same without waiting: nothing if another process holds the
  lock (processes sharing one list of new kernels each take the ones nobody has taken).

A module loaded this way must use absolute imports (its copy lives outside the package) and
should be used only through the returned module object: functions called through a plain
``import`` of the original file are cached under the original file's name, i.e. without the
protection described above.

## Directories and compile locks

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

import ast
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .errors import filesystem_error

DIGEST_CHARS = 16     # hex digits of the sha256 in the module name (64 bits)
NOTE_AFTER = 2.0      # seconds waiting for another process's compile before saying so

_chosen: dict[str, Path] = {}      # preferred directory -> the directory used
_relocated: dict[Path, Path] = {}  # kernel directories replaced by a temporary one
_lock = threading.RLock()  # load_source calls kernel_dir while holding it


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
        # where numba caches depends on the source's directory only if no directory is
        # configured: one decision (and at most one note) per configured directory
        key = f"numba:{configured}" if configured else f"numba::{source_dir}"
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


def source_digest(source: str, dependencies: Iterable[Path]) -> str:
    """sha256 (hex) of ``source`` and of the name and bytes of every dependency file."""
    h = hashlib.sha256(source.encode())
    for path in sorted({Path(p).resolve() for p in dependencies}):
        h.update(b"\0" + path.name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def load_source(name: str, source: str, dependencies: Iterable[Path] = ()) -> ModuleType:
    """Import ``source`` as the module ``<name>_<digest>`` (see the module docstring).

    ``name`` is a Python identifier (e.g. ``"harness_vi_kernels"``); ``dependencies`` are the
    files whose edits must give a new module (the source itself always counts).  The file is
    written atomically (a temporary file, then a rename), so concurrent processes never
    import half a file; within a process the module is imported once.
    """
    if not name.isidentifier():
        raise ValueError(f"module name prefix {name!r} is not a Python identifier")
    module_name = f"{name}_{source_digest(source, dependencies)[:DIGEST_CHARS]}"
    with _lock:
        if module_name in sys.modules:
            return sys.modules[module_name]
        directory = kernel_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{module_name}.py"
        if not path.exists() or path.read_text() != source:
            tmp = directory / f".{module_name}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(source)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module      # numba's cache locates functions through it
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module


def package_root(package: str = "harness") -> Path:
    """The directory of a top-level package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f"package {package!r} not found")
    return Path(spec.origin).parent


def _module_files(module: str, root: Path, package: str) -> list[tuple[str, Path]]:
    """(dotted name, file) of ``package.a.b`` and of every package ``__init__.py`` on the way
    (they run on import); [] if ``module`` is not a module of ``package`` (e.g. a function
    named in ``from package.a import function``)."""
    parts = module.split(".")
    if parts[0] != package:
        return []
    files, here = [], root
    for i, part in enumerate(parts[1:], start=1):
        if (here / "__init__.py").is_file():
            files.append((".".join(parts[:i]), here / "__init__.py"))
        if (here / part).is_dir():
            here = here / part
        elif (here / f"{part}.py").is_file():
            return files + [(module, here / f"{part}.py")]
        else:
            return []
    init = here / "__init__.py"
    return files + [(module, init)] if init.is_file() else []


def _imports(source: str, where: str, module: str | None, is_package: bool) -> list[str]:
    """Absolute names of the modules a source imports (``from a.b import c``: a.b and
    a.b.c).  Relative imports are resolved against ``module`` (None: not allowed)."""
    names = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                if module is None:
                    raise ImportError(f"{where}: relative import (level {node.level}): a "
                                      "module loaded by harness.kernel_cache must use "
                                      "absolute imports")
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def package_dependencies(source: str, package: str = "harness") -> list[Path]:
    """The files of ``package`` that ``source`` (absolute imports only) imports, directly or
    through the modules it imports, sorted."""
    root = package_root(package)
    seen: set[Path] = set()
    todo = [(source, "<source>", None, False)]
    while todo:
        text, where, module, is_package = todo.pop()
        for name in _imports(text, where, module, is_package):
            for dotted, path in _module_files(name, root, package):
                if path not in seen:
                    seen.add(path)
                    todo.append((path.read_text(), str(path), dotted,
                                 path.name == "__init__.py"))
    return sorted(seen)


def load_module(module: str) -> ModuleType:
    """Load a module of this package (``"harness.vi.kernels"``) by :func:`load_source`, named
    after its dotted name, with its :func:`package_dependencies` in the digest."""
    package = module.split(".")[0]
    files = _module_files(module, package_root(package), package)
    if not files or files[-1][1].name == "__init__.py":
        raise ImportError(f"{module!r} is not a module file of package {package!r}")
    source = files[-1][1].read_text()
    return load_source(module.replace(".", "_"), source,
                       package_dependencies(source, package))


@contextlib.contextmanager
def compile_lock(directory: Path, name: str, what: str = "kernel"):
    """Hold an exclusive lock on ``directory/.<name>.lock`` (``fcntl.flock``, blocking; a
    note on stderr if another process holds it for more than ``NOTE_AFTER`` seconds, i.e.
    compiles rather than loads).  The operating system releases it when the holder dies, so
    it never goes stale."""
    fd = _lock_file(directory, name)
    try:
        waited = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited >= NOTE_AFTER:
                    print(f"note: waiting for another process compiling {what} {name}",
                          file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                time.sleep(0.05)
                waited += 0.05
        yield
    finally:
        os.close(fd)             # closing releases the lock


def _lock_file(directory: Path, name: str) -> int:
    """An open descriptor of ``directory/.<name>.lock`` (created with the directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return os.open(directory / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)


def try_compile_once(dispatcher, args, directory: Path | None = None) -> bool:
    """:func:`compile_once` if no other process holds the kernel's lock now; else nothing.
    True if this process has the kernel afterwards.  For processes sharing a list of new
    kernels: each takes the ones nobody is compiling yet, none waits on another."""
    from numba import typeof

    if not hasattr(dispatcher, "overloads"):
        return True
    types = tuple(typeof(a) for a in args)
    if types in dispatcher.overloads:
        return True
    fd = _lock_file(directory or kernel_dir(), dispatcher.py_func.__module__)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False         # another process is compiling it: it will be in the cache
        if types not in dispatcher.overloads:
            dispatcher.compile(types)
        return True
    finally:
        os.close(fd)             # closing releases the lock


def compile_once(dispatcher, args, directory: Path | None = None) -> None:
    """Compile ``dispatcher`` (a ``cache=True`` numba function) for the types of ``args``,
    or load it from numba's cache, under :func:`compile_lock`; a no-op once this process
    has it.  Another process needing the same kernel waits, then loads what the first one
    wrote to the cache (``Dispatcher.compile`` looks there first)."""
    from numba import typeof

    if not hasattr(dispatcher, "overloads"):     # a plain function (a test's stand-in)
        return
    types = tuple(typeof(a) for a in args)
    if types in dispatcher.overloads:
        return
    with compile_lock(directory or kernel_dir(), dispatcher.py_func.__module__):
        if types not in dispatcher.overloads:
            dispatcher.compile(types)
