"""Test-session settings. Must run before JAX is imported anywhere."""

import importlib.metadata
import os
import shutil
import tempfile

import pytest


def _jaxlib_version() -> tuple[int, ...]:
  """jaxlib's (major, minor), read without importing JAX (the flags must be set first)."""
  try:
    return tuple(int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return (1 << 30,)


# The tests use tiny models: XLA compile time dominates, and LLVM's optimisation passes are
# most of it (a 2-layer model's init compiles ~5x faster at -O0 on CPU). Results are unchanged;
# only the generated code is less tuned.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
# jaxlib 0.10's CPU backend still has the elemental emitters beside the newer fusion emitters;
# they compile the tests' programs ~3x faster (an RL step: 0.44 s vs 1.35 s at -O0). From 0.11 on
# the flag is gone, and XLA aborts on a flag it does not know, so it is set for 0.10 only.
if "xla_cpu_use_fusion_emitters" not in _flags and _jaxlib_version() < (0, 11):
  _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()

# Many tests (and the CLI subprocesses they start, which inherit the environment) compile the
# same small programs: a session-wide persistent compilation cache compiles each once
# (measured: the CLI-heavy test files run 25% faster). A fresh directory per session, so no
# stale entry from another jax version is ever read.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="agpo_jax_test_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(autouse=True)
def _shipped_benchmark_data(monkeypatch):
  """Every test reads the repository's own copy of the benchmark files (data/benchmarks)."""
  monkeypatch.delenv("AGPO_DATA_DIR", raising=False)


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The files with the longest set-up or tests (measured: tens of seconds each on this machine's
# cores), first. With `--dist loadfile` xdist hands out whole files in collection order, so
# starting with the longest ones packs the two workers evenly instead of ending on a long tail.
_HEAVY_FIRST = ("test_parallel.py", "test_multihost.py", "test_train.py", "test_gguf.py",
                "test_main.py", "test_sweep.py", "test_relevance_app.py",
                "test_checkpoint_integrity.py", "test_memory_plan.py", "test_math_verifier.py",
                "test_evaluate.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
