"""Verifiers: grade completions against reference answers, in isolated worker processes.

    with make_verifier(verifier_config()) as verifier:
        rewards, statuses = verifier(completions, [Reference("\\frac{1}{2}")] * len(completions))
        log(verifier.last_stats)

`verifier.grade(...)` returns the full `Grade`s (with the extracted answer, for majority voting).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from agpo_jax.verifiers.grades import (
    CORRECT,
    ERROR,
    INCORRECT,
    REFERENCE_KINDS,
    STATUSES,
    TIMEOUT,
    UNPARSEABLE,
    Grade,
    Reference,
    grade_stats,
)
from agpo_jax.verifiers.math_answers import (
    MathGrader,
    comparison_key,
    extract_answer,
    extract_boxed,
    normalize_answer,
)
from agpo_jax.verifiers.pool import VerifierPool, default_num_workers


def verifier_config() -> ml_collections.ConfigDict:
  """Defaults for `make_verifier`; lives at `config.verifier` in run configs."""
  cfg = ml_collections.ConfigDict()
  cfg.kind = "math"  # kind of references given as plain strings: 'math' | 'exact' | 'label'
  cfg.num_workers = config_dict.placeholder(int)  # None: min(cpu_count, 8)
  cfg.timeout_s = 10.0  # hard wall-clock bound per item: the worker is killed past it
  cfg.math_verify_timeout_s = 3  # Math-Verify's inner signal.alarm guard, whole seconds
  cfg.max_answer_chars = 1000  # longer extracted answers are 'unparseable'
  cfg.string_fast_path = True  # equal normalised strings are correct without SymPy
  cfg.cache_size = 4096  # per worker: parsed answers and verdicts (a group shares its gold)
  cfg.start_method = "spawn"  # or 'forkserver'; never 'fork' (deadlocks once JAX is up)
  cfg.memory_limit_mb = 4096  # RLIMIT_AS per worker; 0 disables
  cfg.startup_timeout_s = 120.0
  return cfg


def make_verifier(cfg: ml_collections.ConfigDict) -> VerifierPool:
  """The verifier callback described by `cfg` (see `verifier_config`). Close it when done."""
  return VerifierPool(
      num_workers=cfg.num_workers,
      timeout_s=cfg.timeout_s,
      default_kind=cfg.kind,
      math_verify_timeout_s=cfg.math_verify_timeout_s,
      max_answer_chars=cfg.max_answer_chars,
      string_fast_path=cfg.string_fast_path,
      cache_size=cfg.cache_size,
      start_method=cfg.start_method,
      memory_limit_mb=cfg.memory_limit_mb,
      startup_timeout_s=cfg.startup_timeout_s,
  )


__all__ = [
    "CORRECT",
    "ERROR",
    "INCORRECT",
    "REFERENCE_KINDS",
    "STATUSES",
    "TIMEOUT",
    "UNPARSEABLE",
    "Grade",
    "MathGrader",
    "Reference",
    "VerifierPool",
    "comparison_key",
    "default_num_workers",
    "extract_answer",
    "extract_boxed",
    "grade_stats",
    "make_verifier",
    "normalize_answer",
    "verifier_config",
]
