"""The embedded testbed: two-digit multiplication with the product written backwards.

A problem is `a*b=` with `a, b` in `[low, high]`; the answer is `a*b` as `digits` digits,
zero-padded, least-significant digit first (reversed digits make multiplication learnable for
a tiny model: each output digit depends on the carries already written). With the defaults
there are 8,100 problems, split by problem into training and held-out sets, and 10,000
possible answers, so a uniform guesser's pass@256 is 1 - (1 - 1e-4)^256 = 2.5%.

The verifier is exact string match on the completion's text ('exact' references).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from ml_collections import config_dict

from agpo_jax.verifiers.grades import Reference


@dataclasses.dataclass(frozen=True)
class Problem:
  """One verifiable prompt: `prompt` is what the model sees, `answer` the gold completion."""

  id: str
  prompt: str
  answer: str

  @property
  def reference(self) -> Reference:
    return Reference(self.answer, kind="exact")


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

  alphabet = "0123456789*="

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
    return Problem(id=f"{a}*{b}", prompt=f"{a}*{b}=", answer=answer)

  @property
  def max_answer_tokens(self) -> int:
    """Tokens a correct completion needs: the digits and the end-of-sequence token."""
    return self.digits + 1

  def split(self, name: str) -> list[Problem]:
    if name not in ("train", "heldout"):
      raise ValueError(f"unknown split {name!r}; expected 'train' or 'heldout'")
    return self.train if name == "train" else self.heldout


def uniform_guess_pass_at_k(num_answers: int, k: int) -> float:
  """pass@k of a guesser drawing uniformly from `num_answers` answers."""
  return 1.0 - (1.0 - 1.0 / num_answers) ** k


class PromptIterator:
  """Deterministic, resumable order over a problem list: a fresh permutation each epoch.

  Batches are consecutive slices of the concatenated epoch permutations, so every problem is
  seen once per epoch and a batch may be larger than the problem set. The whole state is
  `(epoch, position)`; `state()` goes into checkpoints and `PromptIterator(..., state=...)`
  continues exactly where a run stopped.
  """

  def __init__(self, num_problems: int, batch_size: int, seed: int,
               state: dict | None = None):
    if num_problems <= 0 or batch_size <= 0:
      raise ValueError(f"need problems and a positive batch size, got {num_problems} problems "
                       f"and batch size {batch_size}")
    self.num_problems, self.batch_size, self.seed = num_problems, batch_size, seed
    state = state or {"epoch": 0, "position": 0}
    self.epoch, self.position = int(state["epoch"]), int(state["position"])

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_problems)

  def next_indices(self) -> np.ndarray:
    """The next `batch_size` problem indices."""
    taken = []
    while sum(len(t) for t in taken) < self.batch_size:
      need = self.batch_size - sum(len(t) for t in taken)
      taken.append(self._order(self.epoch)[self.position:self.position + need])
      self.position += len(taken[-1])
      if self.position == self.num_problems:
        self.epoch, self.position = self.epoch + 1, 0
    return np.concatenate(taken)

  def state(self) -> dict:
    return {"epoch": self.epoch, "position": self.position}


def select(problems: Sequence[Problem], indices: Sequence[int]) -> list[Problem]:
  return [problems[int(i)] for i in indices]
