"""Chat messages to a prompt: the fallback chat templates and the tokenizer's own.

`render_chat` writes messages under a named fallback template ('qwen', 'llama3', 'plain') or a
checkpoint's `ChatTemplate`; `render_tokenizer_chat` picks the tokenizer's template;
`encode_chat` renders and encodes, with the BOS exactly once. The templates' names and markers
live with the tokenizers (`agpo_jax.tokenizers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agpo_jax.chat_template import ChatTemplate
from agpo_jax.tokenizers import (
    CHAT_ROLES,
    CHAT_TEMPLATES,
    HF_CHAT_TEMPLATE,
    QWEN_DEFAULT_SYSTEM_PROMPT,
    Tokenizer,
)


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
  for index, message in enumerate(messages):
    if message.get("role") not in CHAT_ROLES:
      raise ValueError(
          f"message {index} has role {message.get('role')!r}; valid: {', '.join(CHAT_ROLES)}"
      )
    if not isinstance(message.get("content"), str):
      raise ValueError(f"message {index} needs a string 'content'")


def render_chat(
    template_name: str | ChatTemplate,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
) -> str:
  """The prompt string for `messages` (dicts with 'role' and 'content') under a chat template.

  `template_name` is a `ChatTemplate` (a checkpoint's own: `ChatTemplate.render`) or the name
  of a hand-written fallback ('hf' names no template by itself: use `render_tokenizer_chat`):

  - 'qwen': ChatML as Qwen2.5's template writes it. Each message becomes
    `<|im_start|>{role}\\n{content}<|im_end|>\\n`; when the first message is not a system
    message, the system turn `QWEN_DEFAULT_SYSTEM_PROMPT` is inserted first; the generation
    prompt is `<|im_start|>assistant\\n`.
  - 'llama3': Llama-3-Instruct's template. `<|begin_of_text|>`, then per message
    `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content.strip()}<|eot_id|>`; no default
    system turn (Llama-3.1's dated system turn is not written); the generation prompt is
    `<|start_header_id|>assistant<|end_header_id|>\\n\\n`. The string already holds the BOS, so
    `encode(..., add_bos=True)` does not add a second one.
  - 'plain': for base models and the testbed. The contents joined by a blank line (`"\\n\\n"`),
    roles ignored, no special tokens, nothing added for the generation prompt: the model
    continues right after the last content, so the prompt wording ("Question: ...\\nAnswer:")
    belongs to the task.
  """
  if isinstance(template_name, ChatTemplate):
    return template_name.render(messages, add_generation_prompt=add_generation_prompt)
  if template_name == HF_CHAT_TEMPLATE:
    raise ValueError(
        "the 'hf' chat template is the tokenizer's own: render it with "
        "render_tokenizer_chat(tokenizer, messages) or its jinja_chat_template"
    )
  _check_messages(messages)
  if template_name == "qwen":
    turns = list(messages)
    if not turns or turns[0]["role"] != "system":
      turns.insert(0, {"role": "system", "content": QWEN_DEFAULT_SYSTEM_PROMPT})
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
  if template_name == "llama3":
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
        for m in messages
    )
    return text + (
        "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
    )
  if template_name == "plain":
    return "\n\n".join(m["content"] for m in messages)
  raise ValueError(f"unknown chat template {template_name!r}; valid: {', '.join(CHAT_TEMPLATES)}")


def render_tokenizer_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
) -> str:
  """The prompt string for `messages` under `tokenizer`'s chat template: its
  `jinja_chat_template` when `tokenizer.chat_template` is 'hf', else the named fallback."""
  if tokenizer.chat_template == HF_CHAT_TEMPLATE:
    template = getattr(tokenizer, "jinja_chat_template", None)
    if not isinstance(template, ChatTemplate):
      raise ValueError(
          f"{type(tokenizer).__name__} has chat_template 'hf' but no jinja_chat_template"
      )
    return template.render(messages, add_generation_prompt=add_generation_prompt)
  return render_chat(tokenizer.chat_template, messages, add_generation_prompt)


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
) -> list[int]:
  """`messages` rendered with the tokenizer's chat template (`render_tokenizer_chat`) and
  encoded.

  A checkpoint's own template ('hf') is encoded as `transformers`' `apply_chat_template(...,
  tokenize=True)` encodes it, without adding special tokens: the BOS is there exactly when the
  template wrote it. A fallback template's prompt gets the model's BOS, exactly once (llama3
  prompts carry it in the text).
  """
  text = render_tokenizer_chat(tokenizer, messages, add_generation_prompt)
  return tokenizer.encode(text, add_bos=tokenizer.chat_template != HF_CHAT_TEMPLATE)
