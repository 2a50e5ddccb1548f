r"""String-label checking ('exact' and 'label' references).

The answer is extracted like a math answer (last `\boxed{}`, `#### x`, "the answer is x");
a completion that states none is taken whole, since a label task may answer with the bare label.
"""

from __future__ import annotations

import re

from agpo_jax.verifiers.grades import CORRECT, INCORRECT, UNPARSEABLE, Grade
from agpo_jax.verifiers.math_answers import extract_answer, unwrap_text

_SURROUNDING = " \t\n.,;:!?\"'`*$()[]"


def label_key(answer: str, *, ignore_case: bool) -> str:
  r"""'exact': surrounding whitespace stripped. 'label': also `\text{}`, `$`, quotes, case."""
  if not ignore_case:
    return answer.strip()
  return re.sub(r"\s+", " ", unwrap_text(answer).strip(_SURROUNDING)).lower()


def grade_label(
    completion: str, gold: str, *, ignore_case: bool, max_answer_chars: int = 1000
) -> Grade:
  """Grades a completion against a string label."""
  extracted = extract_answer(completion)
  if extracted is None:
    extracted = completion
  if len(extracted) > max_answer_chars:
    return Grade(0.0, UNPARSEABLE, extracted[:max_answer_chars], "answer too long")
  answer = label_key(extracted, ignore_case=ignore_case)
  if not answer:
    return Grade(0.0, UNPARSEABLE, "", "empty answer")
  if answer == label_key(gold, ignore_case=ignore_case):
    return Grade(1.0, CORRECT, answer)
  return Grade(0.0, INCORRECT, answer)
