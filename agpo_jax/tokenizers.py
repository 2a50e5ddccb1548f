"""Tokenizers behind one small interface, and the chat templates that feed them.

Three tokenizers satisfy `Tokenizer`:

- `CharTokenizer`: one id per character of a fixed alphabet, for the embedded testbed.
- `SentencePieceTokenizer`: a SentencePiece `.model` (Llama-2 style base models).
- `HFTokenizer`: a Hugging Face `tokenizer.json` (Qwen2.5, Llama-3), with bos / eos / pad read
  from the `tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json` next
  to it.

`render_chat` turns a conversation into the exact prompt string a model family was trained on
('qwen', 'llama3' or 'plain'), and `encode_chat` renders with the tokenizer's template and
encodes, so that chat markers such as `<|im_start|>` become their single special ids.

`load_tokenizer(cfg)` builds a tokenizer from the `tokenizer_config()` ConfigDict.
"""

from __future__ import annotations

import json
import os
import pathlib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers
from ml_collections import config_dict

TOKENIZER_KINDS = ("char", "sentencepiece", "hf")
CHAT_TEMPLATES = ("qwen", "llama3", "plain")
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
    chat_template: name of the chat template for `render_chat` ('qwen', 'llama3' or 'plain').
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


def _resolve_chat_template(requested: str, token_to_id: Callable[[str], int | None]) -> str:
  """The template name to use: `requested`, or the one the vocabulary implies for 'auto'.

  'auto' picks 'qwen' for ChatML vocabularies (`<|im_start|>`), 'llama3' for Llama-3 ones
  (`<|start_header_id|>`), and 'plain' otherwise. An explicit template must have all its markers
  in the vocabulary.
  """
  if requested == "auto":
    if token_to_id("<|im_start|>") is not None:
      return "qwen"
    if token_to_id("<|start_header_id|>") is not None:
      return "llama3"
    return "plain"
  if requested not in CHAT_TEMPLATES:
    raise ValueError(
        f"unknown chat template {requested!r}; valid: {', '.join(CHAT_TEMPLATES)} or 'auto'"
    )
  missing = [t for t in _TEMPLATE_MARKERS[requested] if token_to_id(t) is None]
  if missing:
    raise ValueError(
        f"chat template {requested!r} needs the special tokens {missing} in the vocabulary"
    )
  return requested


class CharTokenizer:
  """One id per character of `alphabet`, for the embedded testbed.

  Ids are fixed: pad = 0, bos = 1, eos = 2, and `alphabet[i]` is `3 + i`. Special tokens are
  named `<pad>`, `<bos>`, `<eos>` (by `id_to_token` and `decode(skip_special=False)`), but
  `encode` reads its input strictly character by character.
  """

  SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")

  def __init__(self, alphabet: str, chat_template: str = "auto"):
    if not alphabet:
      raise ValueError("CharTokenizer needs a non-empty alphabet")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
      raise ValueError(f"alphabet {alphabet!r} repeats the characters {repeated}")
    self.alphabet = alphabet
    self._tokens = (*self.SPECIAL_TOKENS, *alphabet)
    self._ids = {token: i for i, token in enumerate(self._tokens)}
    self.vocab_size = len(self._tokens)
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.stop_ids = (self.eos_id,)
    self.chat_template = _resolve_chat_template(chat_template, self.token_to_id)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = []
    for position, char in enumerate(text):
      token_id = self._ids.get(char)
      if token_id is None:
        raise ValueError(
            f"character {char!r} (position {position} of {text!r}) is not in the alphabet "
            f"{self.alphabet!r}"
        )
      ids.append(token_id)
    return _with_bos(ids, self.bos_id, add_bos)

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
    self.chat_template = _resolve_chat_template(chat_template, self.token_to_id)

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
    return json.load(f)


def _token_content(value: Any) -> str | None:
  """A special token as `tokenizer_config.json` writes it: a string, {"content": ...}, or null."""
  if isinstance(value, Mapping):
    return value.get("content")
  return value


def _id_list(value: Any) -> list[int]:
  """A `generation_config.json` id field (int, list of ints, or null) as a list."""
  if value is None:
    return []
  return [value] if isinstance(value, int) else list(value)


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
  - stop ids: eos, every `eos_token_id` of `generation_config.json`, and the turn / document
    terminators present in the vocabulary.

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
    declared = [
        _read_json(directory / "tokenizer_config.json"),
        _read_json(directory / "special_tokens_map.json"),
    ]
    generation = _read_json(directory / "generation_config.json")

    def declared_id(field: str) -> int | None:
      for config in declared:
        token = _token_content(config.get(field))
        if token is not None:
          token_id = self.token_to_id(token)
          if token_id is None:
            raise ValueError(f"{field} {token!r} declared in {directory} is not in {json_path}")
          return token_id
      return None

    generation_eos = _id_list(generation.get("eos_token_id"))
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
      pad_id = generation.get("pad_token_id")
    self.pad_id = self.eos_id if pad_id is None else pad_id
    self.stop_ids = _unique(
        [self.eos_id, *generation_eos, *_present_ids(self.token_to_id, _STOP_TOKENS)]
    )
    self.chat_template = _resolve_chat_template(chat_template, self.token_to_id)

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
    return CharTokenizer(cfg.alphabet, chat_template=cfg.chat_template)
  if cfg.kind not in TOKENIZER_KINDS:
    raise ValueError(f"unknown tokenizer kind {cfg.kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
  if not cfg.path:
    raise ValueError(f"tokenizer kind {cfg.kind!r} needs tokenizer.path")
  if cfg.kind == "sentencepiece":
    return SentencePieceTokenizer(cfg.path, chat_template=cfg.chat_template)
  return HFTokenizer(cfg.path, chat_template=cfg.chat_template)


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
  for index, message in enumerate(messages):
    if message.get("role") not in CHAT_ROLES:
      raise ValueError(
          f"message {index} has role {message.get('role')!r}; valid: {', '.join(CHAT_ROLES)}"
      )
    if not isinstance(message.get("content"), str):
      raise ValueError(f"message {index} needs a string 'content'")


def render_chat(
    template_name: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
) -> str:
  """The prompt string for `messages` (dicts with 'role' and 'content') under a chat template.

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


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
) -> list[int]:
  """`messages` rendered with `tokenizer.chat_template` and encoded, with BOS when the model has
  one (exactly once: llama3 prompts carry it in the text)."""
  text = render_chat(tokenizer.chat_template, messages, add_generation_prompt)
  return tokenizer.encode(text, add_bos=True)
