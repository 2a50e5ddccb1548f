"""Tasks: where prompts and reference answers come from.

A task exposes `split(name) -> list[Problem]`; a `Problem` carries an id, the prompt (text
or chat messages) and a `Reference` for the verifier. `encode_prompt` turns a problem into
token ids with the tokenizer's chat template when the problem is a conversation.
"""

from __future__ import annotations

from typing import Any

from agpo_jax.tasks.testbed import MultiplicationTask, Problem, testbed_config
from agpo_jax.tokenizers import Tokenizer, encode_chat

TASKS = {"multiplication": MultiplicationTask}


def make_task(cfg: Any):
  """The task named by `config.task.name`."""
  if cfg.name not in TASKS:
    raise ValueError(f"config.task.name={cfg.name!r} is not one of {sorted(TASKS)}")
  return TASKS[cfg.name](cfg)


def encode_prompt(tokenizer: Tokenizer, problem: Any) -> list[int]:
  """Token ids of a problem's prompt: chat messages through the template, text as is."""
  messages = getattr(problem, "messages", None)
  if messages:
    return encode_chat(tokenizer, messages)
  return tokenizer.encode(problem.prompt, add_bos=True)


__all__ = ["TASKS", "MultiplicationTask", "Problem", "encode_prompt", "make_task",
           "testbed_config"]
