r"""'relevance' references: a label from an ordered label set, with optional partial credit.

A query-ad relevance problem is answered with one label of a label set ordered from best to
worst grade: 'graded' is `relevant > partially relevant > irrelevant`, 'esci' is the Amazon
Shopping Queries set `exact > substitute > complement > irrelevant`; a custom set is any list
of distinct lower-case labels (letters, digits and spaces), best first.

**Reference answer.** The `Reference.answer` of kind 'relevance' carries everything the grader
needs, as three fields joined by '|':

    GOLD|LABEL_1,LABEL_2,...,LABEL_K|CREDIT
    e.g. irrelevant|relevant,partially relevant,irrelevant|0.5

GOLD is the gold label, the middle field the label set best to worst, CREDIT the reward of a
label one grade away from the gold one (0: no partial credit). `encode_reference` writes it and
`decode_reference` reads it back (a ValueError names what is wrong).

**Parsing** (`parse_label`). The stated answer is extracted like a math answer (the last
`\boxed{}`, else "the answer is ..." / "Answer: ..."); it must name exactly one label of the
set (case, `\text{}`, quotes, '_' / '-' between words ignored; with distinct first letters,
a bare first letter such as ESCI's 'E' also counts). With no stated answer, the label named
last in the completion is taken ("colour differs so partially relevant" -> 'partially
relevant'). Labels are matched as whole words, longest first, so 'irrelevant' and 'partially
relevant' never read as 'relevant'; for the 'graded' set, 'not relevant' reads as 'irrelevant'.
No label, or a stated answer naming none or several, is 'unparseable'.

**Reward** (`grade_relevance`). 1 ('correct') for the gold label; CREDIT ('incorrect') for a
label adjacent to the gold one on the ordered scale when CREDIT > 0; else 0 ('incorrect').
The grade's `answer` is the parsed label, which majority voting groups by.
"""

from __future__ import annotations

import re
import types
from collections.abc import Sequence

from agpo_jax.verifiers.grades import CORRECT, INCORRECT, UNPARSEABLE, Grade
from agpo_jax.verifiers.math_answers import extract_answer, unwrap_text

GRADED = ("relevant", "partially relevant", "irrelevant")
ESCI = ("exact", "substitute", "complement", "irrelevant")
LABEL_SETS = types.MappingProxyType({"graded": GRADED, "esci": ESCI})
# Extra phrasings read as a label, per named set.
ALIASES = types.MappingProxyType({
    "graded": types.MappingProxyType({"not relevant": "irrelevant",
                                      "partly relevant": "partially relevant"}),
})
_LABEL = re.compile(r"[a-z0-9]+(?: [a-z0-9]+)*")
_SURROUNDING = " \t\n.,;:!?\"'`*$()[]{}"


def resolve_label_set(spec: str | Sequence[str]) -> tuple[str, ...]:
  """The labels, best first, of a label-set name ('graded', 'esci'), a comma-separated list, or
  a sequence of labels.

  Raises:
    ValueError: fewer than two labels, a repeated label, or a label that is not lower-case
      words of letters and digits separated by single spaces.
  """
  if isinstance(spec, str):
    if spec in LABEL_SETS:
      return LABEL_SETS[spec]
    labels = tuple(part.strip() for part in spec.split(","))
  else:
    labels = tuple(str(part).strip() for part in spec)
  for label in labels:
    if not _LABEL.fullmatch(label):
      raise ValueError(f"label {label!r} of label set {spec!r} must be lower-case words of "
                       "letters and digits separated by single spaces (or name a set: "
                       f"{tuple(LABEL_SETS)})")
  if len(labels) < 2:
    raise ValueError(f"label set {spec!r} needs at least two labels")
  if len(set(labels)) < len(labels):
    raise ValueError(f"label set {spec!r} repeats a label")
  return labels


def label_set_name(labels: Sequence[str]) -> str | None:
  """'graded' or 'esci' when `labels` is that set, else None."""
  for name, members in LABEL_SETS.items():
    if tuple(labels) == members:
      return name
  return None


def encode_reference(gold: str, labels: Sequence[str], partial_credit: float = 0.0) -> str:
  """The 'relevance' reference answer `GOLD|L1,L2,...|CREDIT` (see the module docstring)."""
  labels = resolve_label_set(tuple(labels))
  if gold not in labels:
    raise ValueError(f"gold label {gold!r} is not one of {labels}")
  credit = float(partial_credit)
  if not 0.0 <= credit < 1.0:
    raise ValueError(f"partial credit {partial_credit!r} must be in [0, 1)")
  return f"{gold}|{','.join(labels)}|{credit:g}"


def decode_reference(answer: str) -> tuple[str, tuple[str, ...], float]:
  """`(gold, labels, partial_credit)` from a 'relevance' reference answer.

  Raises:
    ValueError: naming the answer and what is wrong with it.
  """
  parts = answer.split("|")
  if len(parts) != 3:
    raise ValueError(f"'relevance' reference {answer!r} must be GOLD|LABEL,LABEL,...|CREDIT")
  gold, labels, credit = parts
  try:
    labels = resolve_label_set(tuple(labels.split(",")))
    value = float(credit)
  except ValueError as e:
    raise ValueError(f"'relevance' reference {answer!r}: {e}") from None
  if gold not in labels:
    raise ValueError(f"'relevance' reference {answer!r}: gold {gold!r} is not in its label set")
  if not 0.0 <= value < 1.0:
    raise ValueError(f"'relevance' reference {answer!r}: credit {credit!r} must be in [0, 1)")
  return gold, labels, value


def _phrases(labels: Sequence[str]) -> dict[str, str]:
  """Every phrase read as a label (the labels and their aliases) -> its label."""
  phrases = {label: label for label in labels}
  phrases.update(ALIASES.get(label_set_name(labels) or "", {}))
  return phrases


def _normalize(text: str) -> str:
  text = unwrap_text(text).lower().replace("_", " ")
  text = re.sub(r"(?<=[a-z0-9])-(?=[a-z0-9])", " ", text)
  return re.sub(r"\s+", " ", text)


def _matches(text: str, labels: Sequence[str]) -> list[str]:
  """The labels named in `text`, in order (whole words, longest phrase first)."""
  phrases = _phrases(labels)
  alternatives = sorted(phrases, key=len, reverse=True)
  pattern = r"(?<![a-z0-9])(?:" + "|".join(re.escape(p) for p in alternatives) + r")(?![a-z0-9])"
  return [phrases[m.group(0)] for m in re.finditer(pattern, _normalize(text))]


def parse_label(completion: str, labels: Sequence[str], *, max_answer_chars: int = 1000
                ) -> tuple[str | None, str]:
  """The label a completion states, and why none was found.

  Args:
    completion: The model's text.
    labels: The label set, best first.
    max_answer_chars: A stated answer longer than this is not read.

  Returns:
    `(label, '')`, or `(None, reason)` when the completion is unparseable.
  """
  stated = extract_answer(completion)
  if stated is not None:
    if len(stated) > max_answer_chars:
      return None, "answer too long"
    key = _normalize(stated).strip(_SURROUNDING)
    initials = [label[0] for label in labels]
    if len(key) == 1 and len(set(initials)) == len(initials) and key in initials:
      return labels[initials.index(key)], ""
    found = set(_matches(stated, labels))
    if len(found) == 1:
      return found.pop(), ""
    if not found:
      return None, f"the stated answer {key[:80]!r} names no label"
    return None, f"the stated answer names several labels: {sorted(found)}"
  found = _matches(completion, labels)
  if not found:
    return None, "no label"
  return found[-1], ""


def label_reward(predicted: str | None, gold: str, labels: Sequence[str],
                 partial_credit: float = 0.0) -> float:
  """1 for the gold label, `partial_credit` one grade away from it, else 0 (also for None)."""
  if predicted is None:
    return 0.0
  if predicted == gold:
    return 1.0
  if partial_credit and abs(labels.index(predicted) - labels.index(gold)) == 1:
    return float(partial_credit)
  return 0.0


def grade_relevance(completion: str, reference: str, *, max_answer_chars: int = 1000) -> Grade:
  """Grades a completion against a 'relevance' reference answer (see the module docstring)."""
  gold, labels, credit = decode_reference(reference)
  label, reason = parse_label(completion, labels, max_answer_chars=max_answer_chars)
  if label is None:
    return Grade(0.0, UNPARSEABLE, "", reason)
  reward = label_reward(label, gold, labels, credit)
  if reward == 1.0:
    return Grade(1.0, CORRECT, label)
  return Grade(reward, INCORRECT, label, "one grade from gold" if reward else "")
