"""What a verifier is asked (a `Reference`) and what it answers (a `Grade`)."""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

CORRECT = "correct"
INCORRECT = "incorrect"
UNPARSEABLE = "unparseable"  # no final answer found, or it could not be read as math
TIMEOUT = "timeout"  # the inner Math-Verify guard fired, or the parent killed the worker
ERROR = "error"  # the verifier itself failed: a crashed worker, an exception, an unreadable gold
STATUSES = (CORRECT, INCORRECT, UNPARSEABLE, TIMEOUT, ERROR)

# 'math': symbolic equivalence; 'exact': the extracted answer equals the gold string;
# 'label': like 'exact' but ignoring case, `\text{}`, quotes and surrounding punctuation;
# 'number': the stated (or last) number equals the gold number; 'countdown': any expression
# over the gold expression's numbers with its value (`countdown`); 'relevance': a label of an
# ordered label set, with optional partial credit one grade away (`relevance`).
REFERENCE_KINDS = ("math", "exact", "label", "number", "countdown", "relevance")


@dataclasses.dataclass(frozen=True)
class Reference:
  """The gold answer for one completion."""

  answer: str
  kind: str = "math"


class Grade(NamedTuple):
  """The verdict on one completion.

  `answer` is the normalised final answer extracted from the completion ('' when none was
  found); evaluation groups completions by it for majority voting.
  """

  reward: float
  status: str
  answer: str = ""
  detail: str = ""  # why, for unparseable / timeout / error; free text for logs


def grade_stats(grades: Sequence[Grade], seconds: float, worker_restarts: int = 0) -> dict:
  """What a verifier call reports for logging: the count of each status, time, throughput."""
  counts = collections.Counter(g.status for g in grades)
  stats: dict[str, float] = {status: counts.get(status, 0) for status in STATUSES}
  stats.update(
      num_items=len(grades),
      seconds=seconds,
      items_per_s=len(grades) / seconds if seconds > 0 else 0.0,
      mean_reward=sum(g.reward for g in grades) / len(grades) if grades else 0.0,
      worker_restarts=worker_restarts,
  )
  return stats


class Verdicts(collections.abc.Sequence):
  """What one verifier call returns: a `Grade` per completion, in order (it is a sequence of
  them), with the rewards, statuses and logging stats (`grade_stats`) of the call."""

  def __init__(self, grades: Sequence[Grade], seconds: float, worker_restarts: int = 0):
    self.grades = list(grades)
    self.seconds = seconds
    self.worker_restarts = worker_restarts

  def __getitem__(self, index):
    return self.grades[index]

  def __len__(self) -> int:
    return len(self.grades)

  @property
  def rewards(self) -> np.ndarray:
    """`[N]` float32 rewards in [0, 1]."""
    return np.asarray([g.reward for g in self.grades], np.float32)

  @property
  def statuses(self) -> list[str]:
    return [g.status for g in self.grades]

  @property
  def stats(self) -> dict:
    """The count of each status, seconds, throughput, mean reward, worker restarts."""
    return grade_stats(self.grades, self.seconds, self.worker_restarts)
