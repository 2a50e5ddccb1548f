"""Test-session settings. Must run before JAX is imported anywhere."""

import os

import pytest

# The tests use tiny models: XLA compile time dominates, and LLVM's optimisation passes are
# most of it (a 2-layer model's init compiles ~5x faster at -O0 on CPU). Results are unchanged;
# only the generated code is less tuned.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_backend_optimization_level=0").strip()


@pytest.fixture(autouse=True)
def _shipped_benchmark_data(monkeypatch):
  """Every test reads the repository's own copy of the benchmark files (data/benchmarks)."""
  monkeypatch.delenv("AGPO_DATA_DIR", raising=False)
