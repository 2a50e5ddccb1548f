"""The second testbed task: Countdown, a search puzzle with many right answers.

A problem gives `numbers` integers in `[low, high]` and a target, `3,5,7:22=`; a correct answer
is any expression that uses each given number exactly once, joined by operators from `ops`
('+', '-', '*', usual precedence, no parentheses), whose value is the target, e.g. `3*5+7` or
`5*3+7`. Unlike multiplication, where one string is right and each digit follows from the
previous ones, the model must search over orders and operators, and several answers are right
('countdown' references, `verifiers.countdown`).

Problems are drawn with `seed`: numbers uniformly, then a target as the value of a uniformly
drawn (order, operators) choice (so a target many choices reach is drawn more often), without
repeats; the first `num_heldout` drawn are held out, the next `num_train` are the training
split. A problem's gold answer, the warm start's demonstration, is its first solution in a
fixed order (orders of the given numbers as `itertools.permutations` lists them, then operators
in `ops` order). `uniform_guess_rate` is a uniform guesser's chance per sample: the fraction of
the n! x |ops|^(n-1) (order, operators) choices that reach the target.
"""

from __future__ import annotations

import itertools

import numpy as np
from ml_collections import config_dict

from agpo_jax import configs
from agpo_jax.tasks.problem import Problem
from agpo_jax.verifiers.countdown import expression_value

OPERATORS = "+-*"


def countdown_config() -> config_dict.ConfigDict:
  """The `config.task` block of the Countdown task.

  Fields: `numbers` (operands per problem, 2 to 5); `low`, `high` (their range, inclusive);
  `ops` (the operators, distinct, from '+-*'); `num_train`, `num_heldout` (problems per
  split); `seed` (draws the problems).
  """
  return config_dict.ConfigDict(dict(
      name="countdown",
      numbers=4,
      low=1,
      high=9,
      ops="+-*",
      num_train=20000,
      num_heldout=1000,
      seed=0,
  ))


def format_expression(operands, operators) -> str:
  """`3*5+7`: no spaces (the character tokenizer's alphabet has none)."""
  return str(operands[0]) + "".join(f"{o}{x}" for o, x in zip(operators, operands[1:]))


class _Choices:
  """The n! x |ops|^(n-1) (order, operators) choices of n numbers, evaluated for many number
  tuples at once."""

  def __init__(self, numbers: int, ops: str):
    self.orders = list(itertools.permutations(range(numbers)))
    self.patterns = list(itertools.product(ops, repeat=numbers - 1))

  def __len__(self) -> int:
    return len(self.orders) * len(self.patterns)

  def values(self, tuples: np.ndarray) -> np.ndarray:
    """`[B, numbers]` -> `[B, choices]`: each choice's value, choice `i * len(patterns) + j`
    being order `i` with operators `j`."""
    return np.stack([expression_value([tuples[:, i] for i in order], list(pattern))
                     for order in self.orders for pattern in self.patterns], axis=1)

  def expression(self, numbers, choice: int) -> str:
    order, pattern = divmod(choice, len(self.patterns))
    return format_expression([numbers[i] for i in self.orders[order]], self.patterns[pattern])


class CountdownTask:
  """Countdown problems, split by problem into 'train' and 'heldout'."""

  name = "countdown"
  alphabet = "0123456789+-*,:="
  SPLITS = ("train", "heldout")

  def __init__(self, cfg: config_dict.ConfigDict):
    defaults = countdown_config()
    field = lambda key: cfg[key] if key in cfg else defaults[key]  # noqa: E731
    numbers, low, high = int(field("numbers")), int(field("low")), int(field("high"))
    self.ops = str(field("ops"))
    num_train, num_heldout = int(field("num_train")), int(field("num_heldout"))
    if not 2 <= numbers <= 5:
      raise configs.ConfigError(f"config.task.numbers={numbers} must be in [2, 5]")
    if not 0 <= low <= high:
      raise configs.ConfigError(f"config.task.low={low} and config.task.high={high} must "
                                "satisfy 0 <= low <= high")
    if not self.ops or set(self.ops) - set(OPERATORS) or len(set(self.ops)) < len(self.ops):
      raise configs.ConfigError(f"config.task.ops={self.ops!r} must be distinct operators "
                                f"from {OPERATORS!r}")
    if num_train < 1 or num_heldout < 1:
      raise configs.ConfigError(f"config.task.num_train={num_train} and "
                                f"config.task.num_heldout={num_heldout} must be >= 1")
    self.choices = _Choices(numbers, self.ops)
    wanted = num_train + num_heldout
    rng = np.random.default_rng(int(field("seed")))
    drawn: dict[str, Problem] = {}
    for _ in range(100):  # batches of draws; repeats are dropped
      tuples = rng.integers(low, high + 1, size=(wanted, numbers))
      values = self.choices.values(tuples)
      targets = values[np.arange(wanted), rng.integers(0, len(self.choices), size=wanted)]
      first = np.argmax(values == targets[:, None], axis=1)
      for row in range(wanted):
        problem = self._problem(tuples[row].tolist(), int(targets[row]),
                                self.choices.expression(tuples[row].tolist(), int(first[row])))
        drawn.setdefault(problem.id, problem)
        if len(drawn) == wanted:
          break
      if len(drawn) == wanted:
        break
    else:
      raise configs.ConfigError(
          f"config.task.num_train + num_heldout = {wanted}: could not draw that many distinct "
          f"problems of {numbers} numbers in [{low}, {high}] with ops {self.ops!r} (100 "
          f"batches gave {len(drawn)}): widen the range or draw fewer problems")
    problems = list(drawn.values())
    self.heldout, self.train = problems[:num_heldout], problems[num_heldout:]

  def _problem(self, numbers: list[int], target: int, gold: str) -> Problem:
    prompt = f"{','.join(map(str, numbers))}:{target}="
    return Problem(id=prompt[:-1], prompt=prompt, answer=gold, reference_kind="countdown")

  def split(self, name: str) -> list[Problem]:
    """The 'train' or 'heldout' problems, in draw order."""
    if name not in self.SPLITS:
      raise configs.ConfigError(f"split {name!r} (config.eval.split) is not one of "
                                f"{self.SPLITS} for config.task.name={self.name!r}")
    return self.train if name == "train" else self.heldout

  def uniform_guess_rate(self, problem: Problem) -> float:
    """The chance that a uniformly drawn (order, operators) choice reaches `problem`'s target."""
    numbers, target = problem.id.split(":")
    values = self.choices.values(np.array([[int(x) for x in numbers.split(",")]]))[0]
    return float(np.mean(values == int(target)))
