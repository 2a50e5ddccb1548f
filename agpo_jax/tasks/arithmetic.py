r"""Arithmetic word-free problems for pretrained chat models: `What is 23 + 58 - 7?`.

An easy verifiable task on which a small instruct model (SmolLM2-135M) starts above zero, so a
short RL run on a CPU has a signal to learn from; GSM8K and MATH start near zero for it.

A problem is an expression of `terms` integers in `[low, high]` joined by operators drawn from
`ops` ('+', '-', '*'), evaluated with the usual precedence; the gold answer is the integer
result. Problems are drawn with `seed`, deduplicated, and split by problem into `num_train`
training and `num_heldout` held-out problems. The prompt is one user message, the question and
then `instruction` (by default the math prompt format's "reason step by step, and put your final
answer within \boxed{}"); the reference is 'number': the boxed (or otherwise stated) answer, or
failing that the completion's last number, must equal the result (`verifiers.labels`).
"""

from __future__ import annotations

import numpy as np
from ml_collections import config_dict

from agpo_jax import configs
from agpo_jax.tasks.math_format import MATH_INSTRUCTION
from agpo_jax.tasks.problem import Problem
from agpo_jax.verifiers.countdown import expression_value

OPERATORS = "+-*"


def arithmetic_config() -> config_dict.ConfigDict:
  """The `config.task` block of the arithmetic task.

  Fields: `low`, `high` (operand range, inclusive); `terms` (operands per expression, >= 2);
  `ops` (the operators drawn from, a subset of '+-*'); `num_train`, `num_heldout` (problems per
  split); `seed` (draws the problems); `system_prompt` (a system message first; None: none).
  """
  return config_dict.ConfigDict(dict(
      name="arithmetic",
      low=1,
      high=50,
      terms=2,
      ops="+-",
      num_train=2000,
      num_heldout=200,
      seed=0,
      instruction=MATH_INSTRUCTION,
      system_prompt=config_dict.placeholder(str),
  ))


def format_expression(operands: list[int], operators: list[str]) -> str:
  """`23 + 58 - 7`: operands and operators separated by spaces."""
  parts = [str(operands[0])]
  for operator, operand in zip(operators, operands[1:]):
    parts += [operator, str(operand)]
  return " ".join(parts)


class ArithmeticTask:
  """Drawn arithmetic expressions, split by problem into 'train' and 'heldout' ('test')."""

  name = "arithmetic"
  SPLITS = ("train", "heldout", "test")

  def __init__(self, cfg: config_dict.ConfigDict):
    defaults = arithmetic_config()
    field = lambda key: cfg[key] if key in cfg else defaults[key]  # noqa: E731
    low, high, terms = int(field("low")), int(field("high")), int(field("terms"))
    ops = str(field("ops"))
    num_train, num_heldout = int(field("num_train")), int(field("num_heldout"))
    self.instruction, self.system_prompt = str(field("instruction")), field("system_prompt")
    if not 0 <= low <= high:
      raise configs.ConfigError(f"config.task.low={low} and config.task.high={high} must "
                                "satisfy 0 <= low <= high")
    if terms < 2:
      raise configs.ConfigError(f"config.task.terms={terms} must be >= 2")
    if not ops or set(ops) - set(OPERATORS):
      raise configs.ConfigError(f"config.task.ops={ops!r} must be a non-empty string of "
                                f"operators from {OPERATORS!r}")
    if num_train < 1 or num_heldout < 1:
      raise configs.ConfigError(f"config.task.num_train={num_train} and "
                                f"config.task.num_heldout={num_heldout} must be >= 1")
    distinct_ops = sorted(set(ops))
    available = (high - low + 1) ** terms * len(distinct_ops) ** (terms - 1)
    wanted = num_train + num_heldout
    if wanted > available // 2:
      raise configs.ConfigError(
          f"config.task.num_train + num_heldout = {wanted} is more than half of the "
          f"{available} distinct expressions of {terms} terms in [{low}, {high}] with ops "
          f"{''.join(distinct_ops)!r}: widen the range or draw fewer problems")
    rng = np.random.default_rng(int(field("seed")))
    seen: dict[str, Problem] = {}
    while len(seen) < wanted:
      operands = [int(x) for x in rng.integers(low, high + 1, size=terms)]
      operators = [distinct_ops[i] for i in rng.integers(0, len(distinct_ops), size=terms - 1)]
      expression = format_expression(operands, operators)
      if expression not in seen:
        seen[expression] = self._problem(expression, expression_value(operands, operators))
    problems = list(seen.values())  # draw order: the held-out split is the first draws
    self.heldout = problems[:num_heldout]
    self.train = problems[num_heldout:]

  def _problem(self, expression: str, value: int) -> Problem:
    question = f"What is {expression}?"
    content = f"{question}\n\n{self.instruction}" if self.instruction else question
    messages = [{"role": "user", "content": content}]
    if self.system_prompt is not None:
      messages.insert(0, {"role": "system", "content": self.system_prompt})
    return Problem.from_messages(messages, id=expression, prompt=question, answer=str(value),
                                 reference_kind="number", benchmark="arithmetic")

  def split(self, name: str) -> list[Problem]:
    """The 'train' or 'heldout' (alias 'test') problems, in draw order."""
    if name not in self.SPLITS:
      raise configs.ConfigError(f"split {name!r} (config.eval.split) is not one of "
                                f"{self.SPLITS} for config.task.name={self.name!r}")
    return self.train if name == "train" else self.heldout
