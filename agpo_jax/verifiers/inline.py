"""An in-process verifier for string references ('exact', 'label', 'number', 'countdown').

String comparison cannot hang or crash, so it needs none of the worker pool's isolation, and
skipping the inter-process round trip matters for the testbed, where a step grades hundreds of
four-character answers. Math references are refused here: they go to `VerifierPool`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from agpo_jax.verifiers.grades import Reference, Verdicts
from agpo_jax.verifiers.labels import STRING_KINDS, grade_string


class InlineVerifier:
  """Same callback contract as `VerifierPool`: `(completions, references) -> (rewards, statuses)`."""

  kinds = STRING_KINDS

  def __init__(self, default_kind: str = "exact", max_answer_chars: int = 1000):
    if default_kind not in self.kinds:
      raise ValueError(f"InlineVerifier grades {self.kinds} references, not {default_kind!r}")
    self.default_kind = default_kind
    self.max_answer_chars = max_answer_chars

  def grade(self, completions: Sequence[str], references: Sequence[Reference | str]
            ) -> Verdicts:
    if len(completions) != len(references):
      raise ValueError(f"{len(completions)} completions but {len(references)} references")
    start = time.monotonic()
    grades = []
    for completion, reference in zip(completions, references):
      if isinstance(reference, str):
        reference = Reference(reference, self.default_kind)
      if reference.kind not in self.kinds:
        raise ValueError(f"InlineVerifier cannot grade {reference.kind!r} references; "
                         "use the process pool (verifier.kind='math')")
      grades.append(grade_string(completion, reference.answer, reference.kind,
                                 max_answer_chars=self.max_answer_chars))
    return Verdicts(grades, time.monotonic() - start)

  def __call__(self, completions: Sequence[str], references: Sequence[Reference | str]
               ) -> tuple[np.ndarray, list[str]]:
    verdicts = self.grade(completions, references)
    return verdicts.rewards, verdicts.statuses

  def close(self) -> None:
    pass

  def __enter__(self) -> "InlineVerifier":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
