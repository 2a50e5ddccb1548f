"""Verifiers: grade completions against reference answers.

    with make_verifier(config.verifier) as verifier:
        verdicts = verifier.grade(completions, [Reference("\\frac{1}{2}")] * len(completions))
        verdicts.rewards, verdicts.statuses, verdicts.stats   # [N] float32, [N] str, dict

`verifier(completions, references)` is the plain callback: `(rewards, statuses)`. Math is
graded in isolated worker processes (`VerifierPool`); string references ('exact', 'label',
'number', 'countdown') in-process (`InlineVerifier`), where nothing can hang.
"""

from __future__ import annotations

from typing import Any

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
    Verdicts,
    grade_stats,
)
from agpo_jax.verifiers.inline import InlineVerifier
from agpo_jax.verifiers.math_answers import (
    MathGrader,
    comparison_key,
    extract_answer,
    extract_boxed,
    normalize_answer,
)
from agpo_jax.verifiers.pool import VerifierPool, default_num_workers


def make_verifier(cfg: Any) -> VerifierPool | InlineVerifier:
  """The verifier described by a `config.verifier` block (`defaults.verifier_config`):
  in-process for string kinds, the worker pool for math. Close it when done (it is a context
  manager)."""
  if cfg.kind in InlineVerifier.kinds:
    return InlineVerifier(cfg.kind, cfg.max_answer_chars)
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
    "Verdicts",
    "Grade",
    "InlineVerifier",
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
]
