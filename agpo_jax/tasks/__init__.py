"""Tasks: where prompts and reference answers come from.

Every task is reached by `config.task.name` through `TASKS`: 'multiplication' (the embedded
testbed, `testbed`), 'countdown' (the second testbed task, a search puzzle, `countdown`),
'arithmetic' (drawn expressions for pretrained chat models, `arithmetic`), 'relevance'
(query-ad relevance labels for search ads, `relevance`)
and one math task per evaluation benchmark ('math500', 'aime24', 'aime25', 'amc23', 'minerva',
'olympiadbench', 'gsm8k'; `math_tasks`). `task_config(name)` is a task's
default `config.task` block and `make_task(config.task)` builds it. A task exposes
`split(name) -> list[Problem]`; a `Problem` (`problem`) carries an id, the prompt (text or chat
messages), the gold answer and its verifier `Reference`. `encode_prompt` turns a problem into
token ids, with the tokenizer's chat template when the problem is a conversation, and
`PromptIterator` is the resumable training order over a split.

Modules: `problem` (the shared types), `testbed`, `countdown`, `arithmetic`, `math_tasks`, `benchmarks` (the JSONL
registry and loader), `math_format` (the math prompt format), `tfds_source` (`tfds:` sources).
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, NamedTuple, Protocol

from ml_collections import config_dict

from agpo_jax import configs
from agpo_jax.tasks.arithmetic import ArithmeticTask, arithmetic_config
from agpo_jax.tasks.countdown import CountdownTask, countdown_config
from agpo_jax.tasks.math_tasks import MATH_TASK_NAMES, MathTask, math_task_config
from agpo_jax.tasks.problem import Problem, PromptIterator, encode_prompt
from agpo_jax.tasks.relevance import RelevanceTask, relevance_config
from agpo_jax.tasks.testbed import MultiplicationTask, testbed_config


class Task(Protocol):
  """What a task offers: its registry name and the problems of each split."""

  name: str

  def split(self, name: str) -> list[Problem]:
    ...


class TaskEntry(NamedTuple):
  """A registered task: how to build it from its config block, and that block's defaults."""

  make: Callable[[config_dict.ConfigDict], Task]
  config: Callable[[], config_dict.ConfigDict]


TASKS = types.MappingProxyType({
    "multiplication": TaskEntry(MultiplicationTask, testbed_config),
    "countdown": TaskEntry(CountdownTask, countdown_config),
    "arithmetic": TaskEntry(ArithmeticTask, arithmetic_config),
    "relevance": TaskEntry(RelevanceTask, relevance_config),
    **{name: TaskEntry(MathTask, functools.partial(math_task_config, name))
       for name in MATH_TASK_NAMES},
})


def task_names() -> list[str]:
  """Every valid `config.task.name`."""
  return list(TASKS)


def _entry(name: Any) -> TaskEntry:
  if name not in TASKS:
    raise configs.ConfigError(f"config.task.name={name!r} is not one of {tuple(TASKS)}")
  return TASKS[name]


def task_config(name: str) -> config_dict.ConfigDict:
  """The default `config.task` block of the task `name`; ConfigError for an unknown name."""
  return _entry(name).config()


def make_task(cfg: config_dict.ConfigDict) -> Task:
  """The task named by `config.task.name`, built from the `config.task` block `cfg`.

  Raises:
    configs.ConfigError: (a ValueError) the name is not registered, naming
      `config.task.name` and the valid names.
  """
  return _entry(cfg.name).make(cfg)


__all__ = [
    "ArithmeticTask",
    "CountdownTask",
    "MATH_TASK_NAMES",
    "TASKS",
    "MathTask",
    "MultiplicationTask",
    "Problem",
    "PromptIterator",
    "RelevanceTask",
    "Task",
    "TaskEntry",
    "arithmetic_config",
    "countdown_config",
    "encode_prompt",
    "make_task",
    "math_task_config",
    "relevance_config",
    "task_config",
    "task_names",
    "testbed_config",
]
