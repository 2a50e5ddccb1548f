"""Chat templates as `transformers` renders them: a checkpoint's Jinja `chat_template`.

`ChatTemplate(source).render(messages, add_generation_prompt=True)` reproduces
`transformers`' `apply_chat_template(..., tokenize=False)`: the same sandboxed Jinja environment
(`trim_blocks`, `lstrip_blocks`, loop controls), the same globals (`raise_exception`,
`strftime_now`), the same `tojson` filter, the declared special tokens as variables, and the
same preparation of the messages. `agpo_jax.tokenizers` finds a checkpoint's template and
encodes what this renders.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
import numpy as np

# The named special tokens `transformers` passes to a chat template as variables
# (`PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES`, its `special_tokens_map`).
TEMPLATE_SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
# Where a checkpoint keeps chat templates besides `tokenizer_config.json`'s `chat_template`;
# when present they take priority over it, as in transformers.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# Names a message's reasoning is passed under; transformers fills `reasoning_content` and
# `thinking` from whichever is set.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
  """A chat template that does not parse, or that failed or refused to render a conversation."""


class _RaisedByTemplate(jinja2.TemplateError):
  """What the template's `raise_exception(message)` raises."""


class _GenerationTag(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it (for
  `return_assistant_tokens_mask`); rendering outputs the body unchanged, in its own scope."""

  tags = {"generation"}

  def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    call = self.call_method("_render_body")
    return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

  def _render_body(self, caller: Callable[[], str]) -> str:
    return caller()


class _TemplateDict:
  """The template's `dict`: builds dicts, without exposing the `dict` type itself."""

  def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)

  def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
  """The template's `namespace`, refusing underscore-prefixed attribute names."""

  def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (Jinja's signature trick)
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name: str, value: Any) -> None:
    _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
      )


def _raise_exception(message: str) -> None:
  raise _RaisedByTemplate(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
  """The template's `tojson`: plain `json.dumps` (Jinja's own escapes HTML and sorts keys)."""
  return json.dumps(
      value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
  )


def _strftime_now(format: str) -> str:  # noqa: A002 (the name templates call it with)
  return datetime.datetime.now().strftime(format)


def _jinja_environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
  """A fresh environment configured as transformers' `_compile_jinja_template` configures it."""
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
  )
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  env.globals["dict"] = _TemplateDict()
  env.globals["namespace"] = _TemplateNamespace
  return env


def _plain_data(value: Any) -> Any:
  """`value` rebuilt from plain JSON-like types (a fresh copy: templates cannot change the
  caller's messages), as transformers' `_plain_template_data` does; other objects become a
  placeholder naming their type."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, Mapping):
    return {_plain_data(k): _plain_data(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain_data(item) for item in value]
  if isinstance(value, tuple):
    return tuple(_plain_data(item) for item in value)
  if isinstance(value, np.generic):  # np.bool_(False) must stay falsy
    return _plain_data(value.item())
  return f"<{type(value).__name__}>"


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """`messages` as transformers hands them to a template: plain dicts, keys whose value is None
  dropped, and the reasoning of a message under both `reasoning_content` and `thinking`."""
  if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
    raise ValueError(f"messages must be a sequence of message dicts, got {type(messages).__name__}")
  if not messages:
    raise ValueError("cannot render an empty conversation: give at least one message")
  out = []
  for index, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise ValueError(f"message {index} is a {type(message).__name__}, not a dict")
    if not isinstance(message.get("role"), str):
      raise ValueError(f"message {index} needs a string 'role'")
    message = _plain_data({k: v for k, v in message.items() if v is not None})
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is not None:
      message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    out.append(message)
  return out


def _template_line(error: BaseException) -> str:
  """' (template line N)' for the innermost template frame of `error`'s traceback, else ''."""
  frames = traceback.extract_tb(error.__traceback__)
  lines = [frame.lineno for frame in frames if frame.filename == "<template>"]
  return f" (template line {lines[-1]})" if lines else ""


class ChatTemplate:
  """A checkpoint's own Jinja chat template, rendered exactly as `transformers` renders it.

  The environment, globals and filters are those of transformers' `_compile_jinja_template`: an
  `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the `loopcontrols`
  extension and the `{% generation %}` tag, `raise_exception`, `strftime_now`, a restricted
  `dict` and `namespace`, and a `tojson` filter that is plain `json.dumps` (`ensure_ascii`,
  `indent`, `separators`, `sort_keys` arguments). `render` passes what `apply_chat_template`
  passes: `messages`, `tools`, `documents`, `add_generation_prompt` and the named special tokens
  (`bos_token`, `eos_token`, ...).

  Attributes:
    source: the Jinja source.
    origin: where the source was read from, named in errors.
    special_tokens: the template variables `bos_token`, `eos_token`, ... (only those declared).
  """

  def __init__(
      self,
      source: str,
      origin: str = "<string>",
      special_tokens: Mapping[str, str] | None = None,
  ):
    """Compiles `source`.

    Args:
      source: the template text.
      origin: where it came from (a file and key), named in errors.
      special_tokens: variables such as `{"bos_token": "<|begin_of_text|>"}`.

    Raises:
      ChatTemplateError: the template does not parse (the error names `origin` and the line).
    """
    if not isinstance(source, str):
      raise ChatTemplateError(
          f"chat template {origin} must be a string, got {type(source).__name__}"
      )
    self.source = source
    self.origin = origin
    self.special_tokens = dict(special_tokens or {})
    try:
      self._template = _jinja_environment().from_string(source)
    except jinja2.TemplateSyntaxError as error:
      raise ChatTemplateError(
          f"chat template {origin} does not parse: template line {error.lineno}: {error.message}"
      ) from error

  def render(
      self,
      messages: Sequence[Mapping[str, Any]],
      add_generation_prompt: bool = True,
      tools: Sequence[Mapping[str, Any]] | None = None,
      documents: Sequence[Mapping[str, Any]] | None = None,
      **variables: Any,
  ) -> str:
    """The prompt string for `messages`, as `tokenizer.apply_chat_template(messages,
    tokenize=False, ...)` renders it.

    Args:
      messages: dicts with 'role' and usually 'content' (any roles and keys the template reads;
        keys whose value is None are dropped, as transformers drops them).
      add_generation_prompt: end with the header that opens the assistant's turn.
      tools: JSON-schema dicts of callable tools, or None.
      documents: dicts for retrieval-augmented templates, or None.
      **variables: further template variables; they override the special tokens.

    Returns:
      The rendered text.

    Raises:
      ValueError: `messages`, `tools` or `documents` are malformed.
      ChatTemplateError: the template called `raise_exception` or failed; the error names the
        template's origin and line.
    """
    chat = _template_messages(messages)
    for name, items in (("tools", tools), ("documents", documents)):
      if items is None:
        continue
      for index, item in enumerate(items):
        if not isinstance(item, Mapping):
          raise ValueError(f"{name}[{index}] must be a dict, got {type(item).__name__}")
    try:
      return self._template.render(
          messages=chat,
          tools=_plain_data(None if tools is None else list(tools)),
          documents=_plain_data(None if documents is None else list(documents)),
          add_generation_prompt=add_generation_prompt,
          **_plain_data({**self.special_tokens, **variables}),
      )
    except _RaisedByTemplate as error:
      raise ChatTemplateError(
          f"chat template {self.origin}{_template_line(error)} refused the conversation: {error}"
      ) from error
    except Exception as error:  # noqa: BLE001 (re-raised with the template's origin and line)
      raise ChatTemplateError(
          f"chat template {self.origin} failed{_template_line(error)}: "
          f"{type(error).__name__}: {error}"
      ) from error


def read_chat_templates(
    directory: pathlib.Path, tokenizer_config: Mapping[str, Any]
) -> dict[str, tuple[str, str]]:
  """The checkpoint's chat templates by name, each as (source, where it was read from).

  As transformers reads them: `chat_template.jinja` (named 'default') and
  `additional_chat_templates/*.jinja` (named by file) when any exists, else
  `tokenizer_config.json`'s `chat_template`: a string ('default'), or a list of
  `{"name": ..., "template": ...}`.
  """
  templates = {}
  default_file = directory / CHAT_TEMPLATE_FILE
  if default_file.is_file():
    templates["default"] = (default_file.read_text(encoding="utf-8"), str(default_file))
  extra_dir = directory / CHAT_TEMPLATE_DIR
  if extra_dir.is_dir():
    for file in sorted(extra_dir.glob("*.jinja")):
      templates[file.name.removesuffix(".jinja")] = (file.read_text(encoding="utf-8"), str(file))
  if templates:
    return templates
  config_path = directory / "tokenizer_config.json"
  value = tokenizer_config.get("chat_template")
  if value is None:
    return {}
  if isinstance(value, str):
    return {"default": (value, f"{config_path} (key 'chat_template')")}
  if not isinstance(value, list):
    raise ValueError(
        f"{config_path}: 'chat_template' must be a string or a list of "
        f"{{'name': ..., 'template': ...}}, got {type(value).__name__}"
    )
  for index, entry in enumerate(value):
    if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("template"), str)):
      raise ValueError(
          f"{config_path}: 'chat_template'[{index}] must be {{'name': str, 'template': str}}"
      )
    where = f"{config_path} (key 'chat_template', entry {entry['name']!r})"
    templates[entry["name"]] = (entry["template"], where)
  return templates
