"""The one problem type every task produces, the resumable prompt order, and prompt encoding.

A `Problem` is what training and evaluation consume: an id, the prompt (plain text, or chat
messages rendered with the tokenizer's chat template), the gold answer and the `Reference` the
verifier grades against. The testbed makes text problems with 'exact' references; the math
benchmarks make chat problems with 'math' references.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from agpo_jax.chat_render import encode_chat
from agpo_jax.tokenizers import CHAT_ROLES, Tokenizer
from agpo_jax.verifiers.grades import REFERENCE_KINDS, Reference


@dataclasses.dataclass(frozen=True)
class Problem:
  """One verifiable prompt.

  Attributes:
    id: Unique within its split; evaluation records are keyed by it.
    prompt: The prompt text. A problem without `chat` is encoded as this text after BOS; a chat
      problem keeps its bare question here (without the answer-format instruction).
    answer: The gold answer: the exact completion for 'exact' references, the LaTeX a correct
      `\\boxed{}` must equal for 'math' ones.
    reference_kind: The verifier kind of `reference` ('exact', 'math' or 'label').
    chat: The prompt as `(role, content)` pairs (see `messages`); empty for a text prompt.
    solution: A worked solution, where the source has one (GSM8K).
    benchmark: The benchmark the problem comes from; None for the testbed.
  """

  id: str
  prompt: str
  answer: str
  reference_kind: str = "exact"
  chat: tuple[tuple[str, str], ...] = ()
  solution: str | None = None
  benchmark: str | None = None

  def __post_init__(self):
    if self.reference_kind not in REFERENCE_KINDS:
      raise ValueError(f"problem {self.id!r}: reference_kind={self.reference_kind!r} is not one "
                       f"of {REFERENCE_KINDS}")
    for role, _ in self.chat:
      if role not in CHAT_ROLES:
        raise ValueError(f"problem {self.id!r}: chat role {role!r} is not one of {CHAT_ROLES}")

  @classmethod
  def from_messages(cls, messages: Iterable[Mapping[str, str]], **fields) -> Problem:
    """A chat problem from messages (dicts with 'role' and 'content') and the other fields."""
    return cls(chat=tuple((m["role"], m["content"]) for m in messages), **fields)

  @property
  def reference(self) -> Reference:
    """What the verifier grades a completion against."""
    return Reference(self.answer, kind=self.reference_kind)

  @property
  def messages(self) -> list[dict[str, str]] | None:
    """The prompt as chat messages, or None for a text prompt."""
    if not self.chat:
      return None
    return [{"role": role, "content": content} for role, content in self.chat]

  @property
  def question(self) -> str:
    """The bare question: `prompt` (the name the math benchmark code uses)."""
    return self.prompt


def balance_by_label(problems: Sequence[Problem], seed: int) -> list[Problem]:
  """Every gold label equally often: each label's problems repeated (the last partial round a
  seeded random subset) up to the count of the most frequent label; order by label, then as
  given (a `PromptIterator` shuffles). Problems without a `label` attribute are an error.

  For RL on an imbalanced label task: with group-normalised advantages every prompt's group
  weighs about the same in the update whatever its reward scale, so how often each class is
  prompted is what sets how much the policy learns about it.
  """
  groups: dict[str, list[Problem]] = {}
  for problem in problems:
    label = getattr(problem, "label", None)
    if label is None:
      raise ValueError(f"problem {problem.id!r} has no gold label to balance by")
    groups.setdefault(label, []).append(problem)
  if not groups:
    return []
  largest = max(len(group) for group in groups.values())
  rng = np.random.default_rng(seed)
  out: list[Problem] = []
  for label in sorted(groups):
    group = groups[label]
    rounds, extra = divmod(largest, len(group))
    out += group * rounds + [group[i] for i in sorted(rng.permutation(len(group))[:extra])]
  return out


def encode_prompt(tokenizer: Tokenizer, problem: Problem) -> list[int]:
  """Token ids of a problem's prompt.

  Args:
    tokenizer: The tokenizer; its `chat_template` renders chat problems.
    problem: A `Problem` (or anything with `prompt` and an optional `messages`).

  Returns:
    Chat messages rendered with the tokenizer's chat template and encoded (`encode_chat`), or
    the text prompt encoded after BOS.
  """
  messages = getattr(problem, "messages", None)
  if messages:
    return encode_chat(tokenizer, messages)
  return tokenizer.encode(problem.prompt, add_bos=True)


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
