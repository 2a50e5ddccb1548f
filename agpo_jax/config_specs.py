"""The pieces config validation is built from (`validation` holds the rules themselves).

A field spec (`Int`, `Num`, `Bool`, `Str`) says what one value may be and how to describe it in
an error; `Checker` walks a config, collects one `config.x.y: got V; must be ...` line per
problem and remembers which keys were bad, so that rules between fields look only at values
that passed their own checks. `MISSING` stands for an absent key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ml_collections import config_dict

MISSING = object()


# --------------------------------------------------------------------------------------------
# Field specs: what one value may be.
# --------------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in `[low, high]` (None: unbounded); `none_ok`: None is allowed too."""

  low: int | None = None
  high: int | None = None
  none_ok: bool = False
  note: str = ""

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      text = f"an integer in [{self.low}, {self.high}]"
    elif self.low is not None:
      text = f"an integer >= {self.low}"
    elif self.high is not None:
      text = f"an integer <= {self.high}"
    else:
      text = "an integer"
    text += " or None" if self.none_ok else ""
    return text + (f" ({self.note})" if self.note else "")

  def allows(self, value: Any) -> bool:
    if value is None:
      return self.none_ok
    return (is_int(value) and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high))


@dataclasses.dataclass(frozen=True)
class Num:
  """A finite number (int or float) between `low` and `high`, each bound open or closed."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  none_ok: bool = False
  note: str = ""

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      text = (f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}"
              f"{')' if self.high_open else ']'}")
    elif self.low is not None:
      text = f"a number {'>' if self.low_open else '>='} {self.low}"
    elif self.high is not None:
      text = f"a number {'<' if self.high_open else '<='} {self.high}"
    else:
      text = "a finite number"
    text += " or None" if self.none_ok else ""
    return text + (f" ({self.note})" if self.note else "")

  def allows(self, value: Any) -> bool:
    if value is None:
      return self.none_ok
    if not is_number(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    if self.high is not None and (value >= self.high if self.high_open else value > self.high):
      return False
    return True


@dataclasses.dataclass(frozen=True)
class Bool:
  """True or False."""

  note: str = ""

  def describe(self) -> str:
    return "True or False" + (f" ({self.note})" if self.note else "")

  def allows(self, value: Any) -> bool:
    return isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Str:
  """A string, one of `choices` when given; `nonempty`: not blank; `none_ok`: or None."""

  choices: tuple[str, ...] | None = None
  nonempty: bool = False
  none_ok: bool = False
  note: str = ""

  def describe(self) -> str:
    if self.choices is not None:
      text = f"one of {self.choices}"
    else:
      text = "a non-empty string" if self.nonempty else "a string"
    text += " or None" if self.none_ok else ""
    return text + (f" ({self.note})" if self.note else "")

  def allows(self, value: Any) -> bool:
    if value is None:
      return self.none_ok
    if not isinstance(value, str):
      return False
    if self.choices is not None:
      return value in self.choices
    return bool(value.strip()) or not self.nonempty


Spec = Int | Num | Bool | Str


# The fixed-shape blocks: key -> spec. `optional` keys may be absent (the code that reads them
# has a default); every other key is required. Mode-, task- and model-dependent fields, and
# the rules between fields, are checked in code below.

# --------------------------------------------------------------------------------------------
# The checker.
# --------------------------------------------------------------------------------------------


def lookup(config: Any, key: str) -> Any:
  node = config
  for part in key.split("."):
    if not isinstance(node, (config_dict.ConfigDict, dict)) or part not in node:
      return MISSING
    node = node[part]
  return node


class Checker:
  """Collects problems; remembers which keys were bad so that rules between fields only look
  at values that passed their own checks."""

  def __init__(self, config: Any):
    self.config = config
    self.problems: list[str] = []
    self.bad: set[str] = set()

  def get(self, key: str) -> Any:
    return lookup(self.config, key)

  def problem(self, key: str, message: str) -> None:
    self.problems.append(f"config.{key}: {message}")
    self.bad.add(key)

  def field(self, key: str, spec: Spec, optional: bool = False) -> bool:
    """Checks `key` against `spec`; True when it is present and allowed."""
    value = self.get(key)
    if value is MISSING:
      if not optional:
        self.problem(key, "missing; every run config starts from agpo_jax.defaults."
                     "base_config(), which has it")
      return False
    if not spec.allows(value):
      self.problem(key, f"got {value!r}; must be {spec.describe()}")
      return False
    return True

  def ok(self, *keys: str) -> bool:
    """Whether every key is present and passed its own check."""
    return all(key not in self.bad and self.get(key) is not MISSING for key in keys)
