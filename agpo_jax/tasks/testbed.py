"""The embedded testbed: two-digit multiplication with the product written backwards.

A problem is `a*b=` with `a, b` in `[low, high]`; the answer is `a*b` as `digits` digits,
zero-padded, least-significant digit first (reversed digits make multiplication learnable for
a tiny model: each output digit depends on the carries already written). With the defaults
there are 8,100 problems, split by problem into training and held-out sets, and 10,000
possible answers, so a uniform guesser's pass@256 is 1 - (1 - 1e-4)^256 = 2.5%.

The verifier is exact string match on the completion's text ('exact' references).
"""

from __future__ import annotations

import numpy as np
from ml_collections import config_dict

from agpo_jax import configs
# PromptIterator lived here; agpo_jax.train imports it from this module.
from agpo_jax.tasks.problem import Problem, PromptIterator  # noqa: F401


def testbed_config() -> config_dict.ConfigDict:
  """The `config.task` block for the multiplication testbed."""
  return config_dict.ConfigDict(dict(
      name="multiplication",
      low=10,
      high=99,
      digits=4,
      num_heldout=1000,
      split_seed=0,
  ))


class MultiplicationTask:
  """All `a*b=` problems for `a, b` in `[low, high]`, split by problem."""

  name = "multiplication"
  alphabet = "0123456789*="
  SPLITS = ("train", "heldout")

  def __init__(self, cfg: config_dict.ConfigDict):
    if not 0 <= cfg.low <= cfg.high:
      raise ValueError(f"task.low={cfg.low} and task.high={cfg.high} must satisfy "
                       "0 <= low <= high")
    if cfg.high * cfg.high >= 10 ** cfg.digits:
      raise ValueError(f"task.digits={cfg.digits} cannot hold {cfg.high}*{cfg.high}")
    self.digits = cfg.digits
    problems = [self._problem(a, b) for a in range(cfg.low, cfg.high + 1)
                for b in range(cfg.low, cfg.high + 1)]
    if not 0 < cfg.num_heldout < len(problems):
      raise ValueError(f"task.num_heldout={cfg.num_heldout} must be in (0, {len(problems)})")
    order = np.random.default_rng(cfg.split_seed).permutation(len(problems))
    self.heldout = [problems[i] for i in sorted(order[:cfg.num_heldout])]
    self.train = [problems[i] for i in sorted(order[cfg.num_heldout:])]

  def _problem(self, a: int, b: int) -> Problem:
    answer = str(a * b).zfill(self.digits)[::-1]
    return Problem(id=f"{a}*{b}", prompt=f"{a}*{b}=", answer=answer, reference_kind="exact")

  def split(self, name: str) -> list[Problem]:
    """The 'train' or 'heldout' problems, in (a, b) order."""
    if name not in self.SPLITS:
      raise configs.ConfigError(f"split {name!r} (config.eval.split) is not one of {self.SPLITS} "
                                f"for config.task.name={self.name!r}")
    return self.train if name == "train" else self.heldout
