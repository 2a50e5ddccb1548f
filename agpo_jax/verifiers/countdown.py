"""'countdown' references: any expression over the given numbers that reaches the target.

The reference is one solution, e.g. `3*5+7`: it fixes the numbers (the multiset of its
operands) and the target (its value). A completion is correct when it is an expression of
non-negative integers joined by '+', '-' and '*' (usual precedence, no parentheses, no unary
minus) that uses exactly those numbers, each as often as the reference does, in any order, and
has the same value. Many completions can be correct for one problem, unlike 'exact' ones, so
the answer a grade records (what majority voting groups by) is the value an expression over the
right numbers reaches, and the expression itself otherwise.
"""

from __future__ import annotations

import collections
import re

from agpo_jax.verifiers.grades import CORRECT, INCORRECT, UNPARSEABLE, Grade

_EXPRESSION = re.compile(r"\d+(?:[-+*]\d+)*")
_TOKENS = re.compile(r"\d+|[-+*]")


def parse_expression(text: str) -> tuple[list[int], list[str]] | None:
  """`'3*5+7'` -> `([3, 5, 7], ['*', '+'])`; None unless `text` (spaces ignored) is such an
  expression."""
  text = text.replace(" ", "")
  if not _EXPRESSION.fullmatch(text):
    return None
  tokens = _TOKENS.findall(text)
  return [int(t) for t in tokens[::2]], tokens[1::2]


def expression_value(operands: list, operators: list[str]):
  """The value of `operands[0] operators[0] operands[1] ...` with '*' before '+' and '-'.
  Operands may be integers or numpy arrays (evaluated elementwise, never written to)."""
  terms, signs = [operands[0]], [1]
  for operator, operand in zip(operators, operands[1:]):
    if operator == "*":
      terms[-1] = terms[-1] * operand
    else:
      terms.append(operand)
      signs.append(1 if operator == "+" else -1)
  return sum(sign * term for sign, term in zip(signs, terms))


def grade_countdown(completion: str, gold: str, *, max_answer_chars: int = 1000) -> Grade:
  """Grades a completion against a 'countdown' reference (see the module docstring)."""
  reference = parse_expression(gold)
  if reference is None:
    raise ValueError(f"'countdown' reference {gold!r} is not an expression of numbers joined "
                     "by + - *")
  answer = completion.strip()
  if len(answer) > max_answer_chars:
    return Grade(0.0, UNPARSEABLE, answer[:max_answer_chars], "answer too long")
  parsed = parse_expression(answer)
  if parsed is None:
    return Grade(0.0, UNPARSEABLE, answer, "not an expression of numbers joined by + - *")
  if collections.Counter(parsed[0]) != collections.Counter(reference[0]):
    return Grade(0.0, INCORRECT, answer.replace(" ", ""), "uses other numbers")
  value = expression_value(*parsed)
  if value != expression_value(*reference):
    return Grade(0.0, INCORRECT, str(value), "misses the target")
  return Grade(1.0, CORRECT, str(value))
