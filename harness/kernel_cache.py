"""Import kernel modules under a name that changes whenever their code does.

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

A module loaded this way must use absolute imports (its copy lives outside the package) and
should be used only through the returned module object: functions called through a plain
``import`` of the original file are cached under the original file's name, i.e. without the
protection described above.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

DIGEST_CHARS = 16     # hex digits of the sha256 in the module name (64 bits)
NOTE_AFTER = 2.0      # seconds waiting for another process's compile before saying so

_lock = threading.Lock()


def kernel_dir() -> Path:
    """Where loaded kernel modules (and numba's cache of them, unless NUMBA_CACHE_DIR says
    otherwise) live: ``$HARNESS_KERNEL_DIR``, else ``~/.cache/harness/kernels``."""
    env = os.environ.get("HARNESS_KERNEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "harness" / "kernels"


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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
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


def compile_once(dispatcher, args, directory: Path | None = None) -> None:
    """Compile ``dispatcher`` (a ``cache=True`` numba function) for the types of ``args``,
    or load it from numba's cache, under :func:`compile_lock`; a no-op once this process
    has it.  Another process needing the same kernel waits, then loads what the first one
    wrote to the cache (``Dispatcher.compile`` looks there first)."""
    from numba import typeof

    types = tuple(typeof(a) for a in args)
    if types in dispatcher.overloads:
        return
    with compile_lock(directory or kernel_dir(), dispatcher.py_func.__module__):
        if types not in dispatcher.overloads:
            dispatcher.compile(types)
