"""Evaluation: pass@k / maj@k from per-problem counts, boundary comparison, the sampling loop.

`plots` is not imported here, so that evaluating never imports matplotlib.
"""

from agpo_jax.evaluation.boundary import BoundaryReport, ProblemChange, bootstrap_ci, compare
from agpo_jax.evaluation.counts import (
    append_counts,
    make_record,
    read_counts,
    summarize,
    validate_record,
    write_counts,
)
from agpo_jax.evaluation.passk import (
    avg_at_n,
    default_ks,
    maj_at_k,
    maj_at_k_curve,
    majority_answer,
    majority_vote_accuracy,
    pass_at_k,
    pass_at_k_array,
    pass_at_k_curve,
)

__all__ = [
    "BoundaryReport", "ProblemChange", "append_counts", "avg_at_n", "bootstrap_ci", "compare",
    "default_ks", "maj_at_k", "maj_at_k_curve", "majority_answer", "majority_vote_accuracy",
    "make_record", "pass_at_k", "pass_at_k_array", "pass_at_k_curve", "read_counts",
    "summarize", "validate_record", "write_counts",
]
