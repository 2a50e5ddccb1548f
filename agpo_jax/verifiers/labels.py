r"""String references: 'exact', 'label', 'number', 'countdown' (in `countdown`) and 'relevance'
(in `relevance`).

The answer is extracted like a math answer (last `\boxed{}`, `#### x`, "the answer is x").
For 'exact' and 'label', a completion that states none is taken whole, since a label task may
answer with the bare label. For 'number', it is the last number in the completion (the
"flexible extract" of lm-evaluation-harness's GSM8K), compared as a number: `1,024`, `1024.0`
and `+1024` all equal `1024`.
"""

from __future__ import annotations

import re

from agpo_jax.verifiers.countdown import grade_countdown
from agpo_jax.verifiers.grades import CORRECT, INCORRECT, UNPARSEABLE, Grade
from agpo_jax.verifiers.math_answers import extract_answer, normalize_number, unwrap_text
from agpo_jax.verifiers.relevance import grade_relevance

_SURROUNDING = " \t\n.,;:!?\"'`*$()[]"
_LAST_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
STRING_KINDS = ("exact", "label", "number", "countdown", "relevance")


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


def number_key(text: str) -> str | None:
  """The canonical form of the number `text` states (`-1,024.50` -> `-1024.5`); None if it is
  not a plain number."""
  text = unwrap_text(text).strip(_SURROUNDING)
  if _LAST_NUMBER.fullmatch(text) is None:
    return None
  return normalize_number(text)


def grade_number(completion: str, gold: str, *, max_answer_chars: int = 1000) -> Grade:
  """Grades a completion against a numeric gold answer: the stated answer if there is one,
  else the last number in the text."""
  extracted = extract_answer(completion)
  if extracted is None:
    numbers = _LAST_NUMBER.findall(completion)
    if not numbers:
      return Grade(0.0, UNPARSEABLE, "", "no number")
    extracted = numbers[-1]
  if len(extracted) > max_answer_chars:
    return Grade(0.0, UNPARSEABLE, extracted[:max_answer_chars], "answer too long")
  answer = number_key(extracted)
  if answer is None:
    return Grade(0.0, UNPARSEABLE, extracted, "not a number")
  gold_key = number_key(gold)
  if gold_key is None:
    raise ValueError(f"'number' reference {gold!r} is not a number")
  return Grade(1.0, CORRECT, answer) if answer == gold_key else Grade(0.0, INCORRECT, answer)


def grade_string(completion: str, gold: str, kind: str, *, max_answer_chars: int = 1000
                 ) -> Grade:
  """Grades a completion against a string reference of kind `kind` (`STRING_KINDS`)."""
  if kind == "number":
    return grade_number(completion, gold, max_answer_chars=max_answer_chars)
  if kind == "countdown":
    return grade_countdown(completion, gold, max_answer_chars=max_answer_chars)
  if kind == "relevance":
    return grade_relevance(completion, gold, max_answer_chars=max_answer_chars)
  if kind not in ("exact", "label"):
    raise ValueError(f"reference kind {kind!r} is not one of {STRING_KINDS}")
  return grade_label(completion, gold, ignore_case=kind == "label",
                     max_answer_chars=max_answer_chars)
