"""Test-session settings. Must run before JAX is imported anywhere."""

import os

# The tests use tiny models: XLA compile time dominates, and LLVM's optimisation passes are
# most of it (a 2-layer model's init compiles ~5x faster at -O0 on CPU). Results are unchanged;
# only the generated code is less tuned.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_backend_optimization_level=0").strip()
