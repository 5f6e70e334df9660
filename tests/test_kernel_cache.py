"""harness.kernel_cache: modules imported under a digest of their source and dependencies."""

import sys

import pytest

from harness import kernel_cache

SOURCE = "VALUE = {value}\n"


def test_an_edit_to_a_dependency_gives_a_new_module(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path / "kernels"))
    dep = tmp_path / "helper.py"
    dep.write_text("X = 1\n")
    first = kernel_cache.load_source("cache_test", SOURCE.format(value=1), [dep])
    again = kernel_cache.load_source("cache_test", SOURCE.format(value=1), [dep])
    assert again is first                      # unchanged: the same module (and cache entry)
    dep.write_text("X = 2\n")
    second = kernel_cache.load_source("cache_test", SOURCE.format(value=1), [dep])
    assert second.__name__ != first.__name__
    assert second.__file__ != first.__file__   # so numba's on-disk cache starts afresh
    assert first.__name__.startswith("cache_test_") and second.VALUE == 1
    assert (tmp_path / "kernels" / f"{second.__name__}.py").read_text() == SOURCE.format(value=1)


def test_two_sources_never_share_a_module_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path))
    one = kernel_cache.load_source("cache_test", SOURCE.format(value=10))
    two = kernel_cache.load_source("cache_test", SOURCE.format(value=20))
    assert one.__name__ != two.__name__ and one.__file__ != two.__file__
    assert (one.VALUE, two.VALUE) == (10, 20)
    assert sys.modules[one.__name__] is one and sys.modules[two.__name__] is two
    with pytest.raises(ValueError, match="identifier"):
        kernel_cache.load_source("not-an-identifier", "")


def test_dependencies_are_found_transitively_from_imports():
    """The ELBO kernels import harness.rng (which imports scalar_math) and the families."""
    root = kernel_cache.package_root()
    source = (root / "vi" / "kernels.py").read_text()
    deps = {p.relative_to(root).as_posix() for p in kernel_cache.package_dependencies(source)}
    for name in ("rng.py", "scalar_math.py", "vi/codes.py", "vi/families/__init__.py",
                 "vi/families/diag.py", "vi/families/full.py", "__init__.py"):
        assert name in deps, name
    assert "vi/api.py" not in deps and "vi/kernels.py" not in deps
    with pytest.raises(ImportError, match="absolute imports"):
        kernel_cache.package_dependencies("from .rng import normal_pair\n")


def test_the_elbo_kernel_module_is_loaded_under_its_digest():
    from harness.vi import api

    module = api.kernels()
    root = kernel_cache.package_root()
    source = (root / "vi" / "kernels.py").read_text()
    digest = kernel_cache.source_digest(source, kernel_cache.package_dependencies(source))
    assert module.__name__ == f"harness_vi_kernels_{digest[:kernel_cache.DIGEST_CHARS]}"
    assert api.kernels() is module
