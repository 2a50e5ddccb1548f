"""Tokenizers behind one small interface, and the chat templates that feed them.

Three tokenizers satisfy `Tokenizer`:

- `CharTokenizer`: one id per character of a fixed alphabet, for the embedded testbed.
- `SentencePieceTokenizer`: a SentencePiece `.model` (Llama-2 style base models).
- `HFTokenizer`: a Hugging Face `tokenizer.json` (Qwen2.5, Llama-3), with bos / eos / pad, stop
  ids and the checkpoint's own chat template read from the `tokenizer_config.json`,
  `special_tokens_map.json`, `generation_config.json` and `chat_template.jinja` next to it.

Chat templates come in two kinds:

- the checkpoint's own Jinja template (`ChatTemplate`, template name 'hf'), rendered exactly as
  `transformers`' `apply_chat_template` renders it, so prompts are token-identical to it;
- hand-written per-family fallbacks ('qwen', 'llama3', 'plain') for tokenizers without one.

`chat_render.render_chat` renders a fallback (or a `ChatTemplate`), `render_tokenizer_chat`
renders with whatever template a tokenizer uses, and `encode_chat` renders and encodes, so
that chat markers such as `<|im_start|>` become their single special ids.

`load_tokenizer(cfg)` builds a tokenizer from the `tokenizer_config()` ConfigDict.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers
from absl import logging
from ml_collections import config_dict

from agpo_jax.chat_template import (  # noqa: F401 (ChatTemplateError is re-exported)
    CHAT_TEMPLATE_FILE,
    TEMPLATE_SPECIAL_TOKENS,
    ChatTemplate,
    ChatTemplateError,
    read_chat_templates,
)

TOKENIZER_KINDS = ("char", "sentencepiece", "hf")
# The hand-written fallback templates `render_chat` knows by name.
CHAT_TEMPLATES = ("qwen", "llama3", "plain")
# The template name of a checkpoint's own Jinja chat template (`ChatTemplate`).
HF_CHAT_TEMPLATE = "hf"
# What `config.tokenizer.chat_template` accepts.
CHAT_TEMPLATE_CHOICES = ("auto", HF_CHAT_TEMPLATE, *CHAT_TEMPLATES)
CHAT_ROLES = ("system", "user", "assistant")

# Qwen2.5 (base and instruct) inserts this system turn when the conversation has none.
# Qwen2.5-Math-Instruct's own template uses "Please reason step by step, and put your final
# answer within \\boxed{}." instead: pass it as an explicit system message to reproduce that.
QWEN_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Tokens that end an assistant turn or a document; each one present in a vocabulary is a stop id.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
# Tokens a chat template writes literally; a template may only be used when its markers are
# single tokens of the vocabulary, otherwise they would be encoded as ordinary text.
_TEMPLATE_MARKERS = types.MappingProxyType({
    "qwen": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "plain": (),
})
# Fallback eos for a bare tokenizer.json without config files, in order of preference.
_CONVENTIONAL_EOS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of agpo_jax needs from a tokenizer.

  Attributes:
    vocab_size: size of the id space the tokenizer can produce (1 + its largest id). A model's
      embedding must have at least this many rows; it may have more (Qwen2.5 pads to 151,936).
    pad_id: id used to pad batches (masked out, never trained on).
    bos_id: id prepended by `encode(..., add_bos=True)`, or None when the model uses no BOS.
    eos_id: the tokenizer's end-of-sequence id.
    stop_ids: ids that end generation: eos plus every turn / document terminator the vocabulary
      has (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<|end_of_text|>`).
    chat_template: name of the chat template: 'qwen', 'llama3' or 'plain' (the fallbacks of
      `render_chat`), or 'hf' for the checkpoint's own template, which such a tokenizer carries
      as its `jinja_chat_template` attribute (a `ChatTemplate`; only `HFTokenizer` has one).
  """

  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int
  stop_ids: tuple[int, ...]
  chat_template: str

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Token ids of `text`; special-token strings in `text` map to their single ids.

    With `add_bos`, `bos_id` is prepended unless the text already encodes to a leading BOS
    (a rendered llama3 prompt), and nothing is prepended when `bos_id` is None.
    """
    ...

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
    """Text of the 1-D `ids`; decodes all of them (it does not stop at eos)."""
    ...

  def id_to_token(self, token_id: int) -> str:
    """The token string of `token_id` (ValueError outside the vocabulary)."""
    ...

  def token_to_id(self, token: str) -> int | None:
    """The id of the single token `token`, or None if it is not in the vocabulary."""
    ...


def _check_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> list[int]:
  """`ids` as a list of Python ints, after checking they are 1-D and inside the vocabulary."""
  array = np.asarray(ids, dtype=np.int64)
  if array.ndim != 1:
    raise ValueError(f"decode expects a 1-D sequence of ids, got shape {array.shape}")
  outside = array[(array < 0) | (array >= vocab_size)]
  if outside.size:
    raise ValueError(f"token id {int(outside[0])} is outside the vocabulary [0, {vocab_size})")
  return array.tolist()


def _with_bos(ids: list[int], bos_id: int | None, add_bos: bool) -> list[int]:
  """Prepends `bos_id` when asked, unless it is None or already leads `ids`."""
  if add_bos and bos_id is not None and (not ids or ids[0] != bos_id):
    return [bos_id, *ids]
  return ids


def _present_ids(token_to_id: Callable[[str], int | None], tokens: Sequence[str]) -> list[int]:
  """Ids of those `tokens` that are in the vocabulary, in order."""
  return [i for i in map(token_to_id, tokens) if i is not None]


def _unique(ids: Sequence[int]) -> tuple[int, ...]:
  """`ids` without repeats, first occurrence order kept."""
  return tuple(dict.fromkeys(ids))


def _resolve_chat_template(
    requested: str,
    token_to_id: Callable[[str], int | None],
    has_own_template: bool = False,
    owner: str = "this tokenizer",
) -> str:
  """The template name to use: `requested`, or the one 'auto' implies.

  'auto' picks the tokenizer's own template ('hf') when it has one, else 'qwen' for ChatML
  vocabularies (`<|im_start|>`), 'llama3' for Llama-3 ones (`<|start_header_id|>`), and 'plain'
  otherwise. 'hf' needs the tokenizer's own template; a fallback template must have all its
  markers in the vocabulary.

  Args:
    requested: `config.tokenizer.chat_template`, one of `CHAT_TEMPLATE_CHOICES`.
    token_to_id: the tokenizer's `token_to_id`.
    has_own_template: whether the tokenizer carries the checkpoint's own Jinja template.
    owner: what the tokenizer was read from, for the error when 'hf' has no template.

  Returns:
    'hf', 'qwen', 'llama3' or 'plain'.
  """
  if requested == "auto":
    if has_own_template:
      return HF_CHAT_TEMPLATE
    if token_to_id("<|im_start|>") is not None:
      return "qwen"
    if token_to_id("<|start_header_id|>") is not None:
      return "llama3"
    return "plain"
  if requested == HF_CHAT_TEMPLATE:
    if not has_own_template:
      raise ValueError(
          f"config.tokenizer.chat_template='hf' asks for the checkpoint's own chat template, but "
          f"{owner} has none; use 'auto' or one of {', '.join(CHAT_TEMPLATES)}"
      )
    return requested
  if requested not in CHAT_TEMPLATES:
    raise ValueError(
        f"unknown chat template {requested!r} (config.tokenizer.chat_template); valid: "
        f"{', '.join(CHAT_TEMPLATE_CHOICES)}"
    )
  missing = [t for t in _TEMPLATE_MARKERS[requested] if token_to_id(t) is None]
  if missing:
    raise ValueError(
        f"chat template {requested!r} needs the special tokens {missing} in the vocabulary"
    )
  return requested


_WORD = re.compile(r"[a-z0-9]+")


class CharTokenizer:
  """One id per character of `alphabet`, and optionally one per whole word of `words`, for the
  embedded tasks.

  Ids are fixed: pad = 0, bos = 1, eos = 2, `alphabet[i]` is `3 + i`, and `words[j]` (if any)
  is `3 + len(alphabet) + j`. Special tokens are named `<pad>`, `<bos>`, `<eos>` (by
  `id_to_token` and `decode(skip_special=False)`), but `encode` never reads them from text.
  Without words, `encode` reads its input strictly character by character; with words, each
  maximal run of `[a-z0-9]` that is one of `words` is a single token and everything else is
  spelled character by character, so `decode(encode(text)) == text` either way. Words give a
  small model a short sequence with one token per catalogue word (the relevance task's
  `RelevanceTask.words`), while unseen words still encode.
  """

  SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")

  def __init__(self, alphabet: str, chat_template: str = "auto", words: Sequence[str] = ()):
    if not alphabet:
      raise ValueError("CharTokenizer needs a non-empty alphabet")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
      raise ValueError(f"alphabet {alphabet!r} repeats the characters {repeated}")
    words = tuple(words)
    bad = [w for w in words if not _WORD.fullmatch(w) or len(w) < 2
           or set(w) - set(alphabet)]
    if bad:
      raise ValueError(f"words {bad[:5]} are not runs of 2 or more [a-z0-9] characters of the "
                       f"alphabet {alphabet!r}")
    if len(set(words)) != len(words):
      raise ValueError(f"words repeat {sorted({w for w in words if words.count(w) > 1})[:5]}")
    self.alphabet, self.words = alphabet, words
    self._tokens = (*self.SPECIAL_TOKENS, *alphabet, *words)
    self._ids = {token: i for i, token in enumerate(self._tokens)}
    self.vocab_size = len(self._tokens)
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.stop_ids = (self.eos_id,)
    self.chat_template = _resolve_chat_template(
        chat_template, self.token_to_id, owner="the char tokenizer"
    )

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids, position = [], 0
    for match in (_WORD.finditer(text) if self.words else ()):
      ids += self._spell(text, position, match.start())
      word_id = self._ids.get(match.group()) if len(match.group()) > 1 else None
      ids += [word_id] if word_id is not None else self._spell(text, *match.span())
      position = match.end()
    ids += self._spell(text, position, len(text))
    return _with_bos(ids, self.bos_id, add_bos)

  def _spell(self, text: str, start: int, end: int) -> list[int]:
    ids = []
    for position in range(start, end):
      token_id = self._ids.get(text[position])
      if token_id is None:
        raise ValueError(
            f"character {text[position]!r} (position {position} of {text!r}) is not in the "
            f"alphabet {self.alphabet!r}"
        )
      ids.append(token_id)
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
    num_special = len(self.SPECIAL_TOKENS)
    return "".join(
        self._tokens[i]
        for i in _check_ids(ids, self.vocab_size)
        if not (skip_special and i < num_special)
    )

  def id_to_token(self, token_id: int) -> str:
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
    return self._tokens[token_id]

  def token_to_id(self, token: str) -> int | None:
    return self._ids.get(token)


class SentencePieceTokenizer:
  """A SentencePiece `.model`.

  bos / eos / pad are the model's own ids. A model trained without a pad id (SentencePiece's
  default, and Llama-2's) pads with eos; a model without an eos id is rejected. Chat markers
  must be `user_defined_symbols` to be recognised in text (SentencePiece never parses control
  symbols out of text). `decode(skip_special=True)` drops control pieces (bos, eos, pad) and the
  chat markers / stop tokens of the vocabulary.
  """

  def __init__(self, model_path: str | os.PathLike[str], chat_template: str = "auto"):
    model_path = pathlib.Path(model_path)
    if not model_path.is_file():
      raise FileNotFoundError(f"SentencePiece model {str(model_path)!r} does not exist")
    self._sp = spm.SentencePieceProcessor(model_file=str(model_path))
    self.vocab_size = self._sp.get_piece_size()
    if self._sp.eos_id() < 0:
      raise ValueError(f"SentencePiece model {str(model_path)!r} has no eos id")
    self.eos_id = self._sp.eos_id()
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
    self.stop_ids = _unique([self.eos_id, *_present_ids(self.token_to_id, _STOP_TOKENS)])
    markers = [t for names in _TEMPLATE_MARKERS.values() for t in names]
    self._control_ids = frozenset(i for i in range(self.vocab_size) if self._sp.is_control(i))
    marker_ids = _present_ids(self.token_to_id, markers)
    self._special_ids = self._control_ids | frozenset([*self.stop_ids, *marker_ids])
    self.chat_template = _resolve_chat_template(
        chat_template, self.token_to_id, owner=f"SentencePiece model {str(model_path)!r}"
    )

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    return _with_bos(self._sp.encode(text), self.bos_id, add_bos)

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
    ids = _check_ids(ids, self.vocab_size)
    if skip_special:
      return self._sp.decode([i for i in ids if i not in self._special_ids])
    # SentencePiece decodes control pieces to nothing, so spell them out between the runs of
    # ordinary pieces; each run is decoded on its own, as it was encoded on its own.
    parts, run = [], []
    for i in ids:
      if i in self._control_ids:
        parts += [self._sp.decode(run), self._sp.id_to_piece(i)]
        run = []
      else:
        run.append(i)
    return "".join([*parts, self._sp.decode(run)])

  def id_to_token(self, token_id: int) -> str:
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
    return self._sp.id_to_piece(token_id)

  def token_to_id(self, token: str) -> int | None:
    token_id = self._sp.piece_to_id(token)
    # piece_to_id answers unk_id for pieces it does not know.
    if token_id == self._sp.unk_id() and token != self._sp.id_to_piece(token_id):
      return None
    return token_id


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  """The JSON object in `path`, or {} when the file does not exist."""
  if not path.is_file():
    return {}
  with path.open(encoding="utf-8") as f:
    try:
      value = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(
          f"{path} is not valid JSON: line {error.lineno} column {error.colno}: {error.msg}"
      ) from error
  if not isinstance(value, dict):
    raise ValueError(f"{path} must hold a JSON object, not a {type(value).__name__}")
  return value


def _token_content(value: Any) -> str | None:
  """A special token as `tokenizer_config.json` writes it: a string, {"content": ...}, or null."""
  if isinstance(value, Mapping):
    return value.get("content")
  return value


def _id_list(value: Any, path: pathlib.Path, key: str, vocab_size: int) -> list[int]:
  """A `generation_config.json` id field (int, list of ints, or null) as a list of valid ids."""
  if value is None:
    return []
  ids = [value] if not isinstance(value, list) else value
  for token_id in ids:
    if isinstance(token_id, bool) or not isinstance(token_id, int):
      raise ValueError(f"{path}: {key} must be an int or a list of ints, got {value!r}")
    if not 0 <= token_id < vocab_size:
      raise ValueError(
          f"{path}: {key} {token_id} is outside the tokenizer's vocabulary [0, {vocab_size})"
      )
  return list(ids)


def _template_special_tokens(
    tokenizer_config: Mapping[str, Any], special_tokens_map: Mapping[str, Any]
) -> dict[str, str]:
  """The named special tokens transformers passes to a chat template (its `special_tokens_map`).

  They come from `tokenizer_config.json`; `special_tokens_map.json` (a legacy file) is read, and
  overrides it, only when `tokenizer_config.json` has no `added_tokens_decoder`, as
  transformers' `from_pretrained` does. Tokens declared null are left out.
  """
  declared = {key: tokenizer_config.get(key) for key in TEMPLATE_SPECIAL_TOKENS}
  if "added_tokens_decoder" not in tokenizer_config:
    declared.update({k: v for k, v in special_tokens_map.items() if k in TEMPLATE_SPECIAL_TOKENS})
  contents = {key: _token_content(value) for key, value in declared.items()}
  return {key: str(content) for key, content in contents.items() if content is not None}


class HFTokenizer:
  """A Hugging Face `tokenizer.json`, read with the `tokenizers` library.

  `path` is the `tokenizer.json` file or the directory holding it. Special tokens come from the
  files next to it, each optional:

  - bos: `bos_token` of `tokenizer_config.json`, else of `special_tokens_map.json`, else None.
    (`generation_config.json`'s bos is not used: Qwen2.5 lists one there but never prepends it.)
  - eos: `eos_token` of those two files, else the first `eos_token_id` of
    `generation_config.json`, else the first of `<|endoftext|>`, `<|end_of_text|>`, `</s>`,
    `<eos>` in the vocabulary.
  - pad: `pad_token` of those two files, else `pad_token_id` of `generation_config.json`, else
    eos (Llama-3 has no pad token).
  - stop ids: eos, every `eos_token_id` of `generation_config.json` (an int or a list), and the
    turn / document terminators present in the vocabulary.
  - chat template: the checkpoint's own, as transformers finds it (`chat_template.jinja`, else
    `tokenizer_config.json`'s `chat_template`; of several named templates, the one named
    'default'). With `chat_template='auto'` it is used when present ('hf'), else a fallback is
    picked from the vocabulary; 'hf' requires it; 'qwen', 'llama3', 'plain' ignore it. The
    template in use is `jinja_chat_template` (None for a fallback). Only 'default' is kept:
    transformers would switch to a template named 'tool_use' when given tools.

  Added tokens (`<|im_start|>`, `<|eot_id|>`, ...) always encode to their single ids; BOS is
  added only by `add_bos`, never by the tokenizer's own post-processor.
  """

  def __init__(self, path: str | os.PathLike[str], chat_template: str = "auto"):
    path = pathlib.Path(path)
    json_path = path / "tokenizer.json" if path.is_dir() else path
    if not json_path.is_file():
      raise FileNotFoundError(f"HF tokenizer file {str(json_path)!r} does not exist")
    self._tokenizer = hf_tokenizers.Tokenizer.from_file(str(json_path))
    self._tokenizer.encode_special_tokens = False  # match special-token strings in the text
    self.vocab_size = max(self._tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    directory = json_path.parent
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    special_tokens_map = _read_json(directory / "special_tokens_map.json")
    declared = [tokenizer_config, special_tokens_map]
    generation_path = directory / "generation_config.json"
    generation = _read_json(generation_path)

    def declared_id(field: str) -> int | None:
      for config in declared:
        token = _token_content(config.get(field))
        if token is not None:
          token_id = self.token_to_id(token)
          if token_id is None:
            raise ValueError(f"{field} {token!r} declared in {directory} is not in {json_path}")
          return token_id
      return None

    generation_eos = _id_list(
        generation.get("eos_token_id"), generation_path, "eos_token_id", self.vocab_size
    )
    eos_candidates = [declared_id("eos_token"), *generation_eos[:1]]
    eos_candidates += _present_ids(self.token_to_id, _CONVENTIONAL_EOS)
    eos_candidates = [i for i in eos_candidates if i is not None]
    if not eos_candidates:
      raise ValueError(f"cannot tell the eos token of {json_path}: declare eos_token in "
                       f"{directory / 'tokenizer_config.json'}")
    self.eos_id = eos_candidates[0]
    self.bos_id = declared_id("bos_token")
    pad_id = declared_id("pad_token")
    if pad_id is None:
      pad_ids = _id_list(
          generation.get("pad_token_id"), generation_path, "pad_token_id", self.vocab_size
      )
      pad_id = pad_ids[0] if pad_ids else None
    self.pad_id = self.eos_id if pad_id is None else pad_id
    self.stop_ids = _unique(
        [self.eos_id, *generation_eos, *_present_ids(self.token_to_id, _STOP_TOKENS)]
    )

    templates = (
        read_chat_templates(directory, tokenizer_config)
        if chat_template in ("auto", HF_CHAT_TEMPLATE) else {}
    )
    if templates and "default" not in templates:
      raise ValueError(
          f"{directory} has the chat templates {sorted(templates)} but none named 'default'; "
          f"set config.tokenizer.chat_template to one of {', '.join(CHAT_TEMPLATES)}"
      )
    self.chat_template = _resolve_chat_template(
        chat_template, self.token_to_id, has_own_template=bool(templates),
        owner=f"{directory} (no {CHAT_TEMPLATE_FILE}, no 'chat_template' in "
              f"tokenizer_config.json)",
    )
    self.jinja_chat_template: ChatTemplate | None = None
    if self.chat_template == HF_CHAT_TEMPLATE:
      source, origin = templates["default"]
      self.jinja_chat_template = ChatTemplate(
          source, origin, _template_special_tokens(tokenizer_config, special_tokens_map)
      )
      logging.info("chat template: the checkpoint's own, from %s", origin)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    return _with_bos(ids, self.bos_id, add_bos)

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
    ids = _check_ids(ids, self.vocab_size)
    return self._tokenizer.decode(ids, skip_special_tokens=skip_special)

  def id_to_token(self, token_id: int) -> str:
    token = self._tokenizer.id_to_token(token_id)
    if token is None:
      raise ValueError(f"token id {token_id} is not in the vocabulary")
    return token

  def token_to_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)


def load_tokenizer(cfg: config_dict.ConfigDict) -> Tokenizer:
  """Builds the tokenizer described by `cfg` (see `tokenizer_config`)."""
  if cfg.kind == "char":
    return CharTokenizer(cfg.alphabet, chat_template=cfg.chat_template,
                         words=str(cfg.get("words", "")).split())
  if cfg.kind not in TOKENIZER_KINDS:
    raise ValueError(f"unknown tokenizer kind {cfg.kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
  if not cfg.path:
    raise ValueError(f"tokenizer kind {cfg.kind!r} needs tokenizer.path")
  if cfg.kind == "sentencepiece":
    return SentencePieceTokenizer(cfg.path, chat_template=cfg.chat_template)
  return HFTokenizer(cfg.path, chat_template=cfg.chat_template)
