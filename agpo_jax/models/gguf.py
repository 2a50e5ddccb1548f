"""Import a llama.cpp GGUF checkpoint: Llama-architecture weights and the tokenizer they carry.

A GGUF file holds the whole model in one file: its shapes as metadata (`llama.block_count`,
`llama.embedding_length`, ...), its tensors (usually quantised: Q4_1, Q8_0, ...) under llama.cpp's
names, and its tokenizer (vocabulary, merges, token types, special ids, chat template) as more
metadata. The entry points:

- `model_config_from_gguf(path)`: the `ModelConfig` the metadata describes.
- `load_gguf_checkpoint(path)` -> `(ModelConfig, params)`: every tensor dequantised with the
  `gguf` package, reshaped from GGUF's reversed dimension order, q / k rows put back from
  llama.cpp's rotary layout into the HF half-split one `transformer.apply_rope` uses, and laid
  out as our parameter tree.
- `tokenizer_dir_from_gguf(path, out_dir)`: the tokenizer rebuilt as a Hugging Face directory
  (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) that
  `agpo_jax.tokenizers.HFTokenizer` loads. The conversion is the one `transformers` performs for
  GGUF files (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), so both give the same ids.

The model side goes through `models.hf`: GGUF metadata becomes a `config.json`-style dict read by
`hf.model_config_from_hf` (one place that validates architectures), and GGUF tensor names map to
HF tensor names, which `hf.assemble_params` places in our tree (one leaf at a time, with its
sharding).

Only the `llama` architecture (`general.architecture`) and byte-level BPE tokenizers
(`tokenizer.ggml.model = gpt2`: SmolLM2, Llama-3, Qwen2 vocabularies) are supported; anything
else is refused, naming the metadata key. The `gguf` package is an optional dependency
(`pip install gguf`), imported when a file is read.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tokenizers as hf_tokenizers
from absl import logging

from agpo_jax.models import hf
from agpo_jax.models.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama",)
# llama.cpp tensor names -> HF tensor names, outside the blocks (`output.weight` is absent when
# the LM head is tied to the embedding) and inside block N (`blk.N.<key>.weight` ->
# `model.layers.N.<value>.weight`).
GLOBAL_TENSOR_NAMES: Mapping[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_TENSOR_NAMES: Mapping[str, str] = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

# llama.cpp token types (`tokenizer.ggml.token_type`).
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4

# Split patterns for pre-tokenizer names (`tokenizer.ggml.pre`) whose vocabulary was learned on
# other pieces than GPT-2's, as in the table `transformers` uses for GGUF tokenizers. Any other
# name gets GPT-2's byte-level pattern, as in transformers (SmolLM2's `smollm`: its vocabulary has
# no multi-digit tokens, so the one-digit split llama.cpp adds for it changes no ids).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS: Mapping[str, str] = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"),
                    _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}
# Pre-tokenizer names known to use GPT-2's pattern (no warning for them).
_GPT2_STYLE_PRE = ("gpt-2", "smollm", "starcoder", "refact")


def _gguf_module() -> Any:
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from e
  return gguf


def _open(path: pathlib.Path) -> Any:
  """A `gguf.GGUFReader` on `path`, with the file named in any failure."""
  gguf = _gguf_module()
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError / struct errors on a corrupt file
    raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _decode_scalar(part: np.ndarray, value_type: Any) -> Any:
  if value_type == _gguf_module().GGUFValueType.STRING:
    return part.tobytes().decode("utf-8")
  return part.tolist()[0]


_MISSING = object()


def _metadata(reader: Any, key: str, path: pathlib.Path, default: Any = _MISSING) -> Any:
  """The value of metadata `key` (a Python scalar, str or list), or `default` when absent.

  Raises:
    ValueError: `key` is absent and no default was given, or it holds nested arrays.
  """
  field = reader.fields.get(key)
  if field is None or not field.types:
    if default is _MISSING:
      raise ValueError(f"{path}: metadata key {key!r} is missing")
    return default
  if field.types[0] != _gguf_module().GGUFValueType.ARRAY:
    return _decode_scalar(field.parts[field.data[0]], field.types[0])
  if len(field.types) != 2:
    raise ValueError(f"{path}: metadata key {key!r} holds nested arrays, which are not supported")
  return [_decode_scalar(field.parts[i], field.types[1]) for i in field.data]


def _int_metadata(reader: Any, key: str, path: pathlib.Path, default: Any = _MISSING) -> int:
  value = _metadata(reader, key, path, default)
  if isinstance(value, (list, str)) or not float(value).is_integer():
    raise ValueError(f"{path}: metadata key {key!r} = {value!r}; expected one integer "
                     "(per-layer values are not supported)")
  return int(value)


def _hf_config(reader: Any, path: pathlib.Path) -> dict[str, Any]:
  """The `config.json` dict (for `hf.model_config_from_hf`) that the GGUF metadata describes.

  Raises:
    ValueError: another architecture, a missing key, rotary scaling, or partial / unequal
      key and value head widths; each names the metadata key and the file.
  """
  arch = _metadata(reader, "general.architecture", path)
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path}: general.architecture is {arch!r}; only {SUPPORTED_ARCHITECTURES} "
                     "GGUF checkpoints can be imported")
  scaling = _metadata(reader, f"{arch}.rope.scaling.type", path, "none")
  if scaling != "none":
    raise ValueError(f"{path}: {arch}.rope.scaling.type = {scaling!r}; rotary scaling in GGUF "
                     "files is not supported")
  d_model = _int_metadata(reader, f"{arch}.embedding_length", path)
  num_heads = _int_metadata(reader, f"{arch}.attention.head_count", path)
  config: dict[str, Any] = {
      "model_type": arch,
      "hidden_size": d_model,
      "num_hidden_layers": _int_metadata(reader, f"{arch}.block_count", path),
      "num_attention_heads": num_heads,
      "num_key_value_heads": _int_metadata(reader, f"{arch}.attention.head_count_kv", path,
                                           num_heads),
      "intermediate_size": _int_metadata(reader, f"{arch}.feed_forward_length", path),
      "rms_norm_eps": float(_metadata(reader, f"{arch}.attention.layer_norm_rms_epsilon", path)),
      "rope_theta": float(_metadata(reader, f"{arch}.rope.freq_base", path, 10_000.0)),
      "max_position_embeddings": _int_metadata(reader, f"{arch}.context_length", path),
      "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
  }
  if f"{arch}.attention.key_length" in reader.fields:
    config["head_dim"] = _int_metadata(reader, f"{arch}.attention.key_length", path)
  elif d_model % num_heads:
    raise ValueError(f"{path}: {arch}.embedding_length={d_model} is not a multiple of "
                     f"{arch}.attention.head_count={num_heads}")
  head_dim = config.get("head_dim", d_model // num_heads)
  for key in (f"{arch}.attention.value_length", f"{arch}.rope.dimension_count"):
    value = _int_metadata(reader, key, path, head_dim)
    if value != head_dim:
      raise ValueError(f"{path}: {key}={value} differs from the head width {head_dim}; only "
                       "full-width rotary heads with equal key / value widths are supported")
  vocab = len(_metadata(reader, "tokenizer.ggml.tokens", path))
  declared = _int_metadata(reader, f"{arch}.vocab_size", path, vocab)
  if declared != vocab:
    raise ValueError(f"{path}: {arch}.vocab_size={declared} but tokenizer.ggml.tokens lists "
                     f"{vocab} tokens")
  config["vocab_size"] = vocab
  return config


def model_config_from_gguf(path: str | os.PathLike[str], **overrides: Any) -> ModelConfig:
  """The `ModelConfig` a GGUF file's metadata describes.

  Tied embeddings when the file has no `output.weight`; the vocabulary size is the length of
  `tokenizer.ggml.tokens`; `max_seq_len` is `llama.context_length`.

  Args:
    path: the `.gguf` file.
    **overrides: `ModelConfig` fields to set on top (run choices: `param_dtype`, `dtype`,
      `scan_layers`, `remat`, `max_seq_len`).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: not a GGUF file, another architecture (naming `general.architecture`), a
      missing or unsupported metadata key (naming it).
  """
  path = pathlib.Path(path)
  return hf.model_config_from_hf(_hf_config(_open(path), path), source=str(path), **overrides)


def hf_tensor_name(gguf_name: str) -> str | None:
  """The HF tensor name of a llama.cpp tensor name (`blk.3.attn_q.weight` ->
  `model.layers.3.self_attn.q_proj.weight`), or None for a name outside the Llama layout."""
  if gguf_name in GLOBAL_TENSOR_NAMES:
    return GLOBAL_TENSOR_NAMES[gguf_name]
  match = _BLOCK_TENSOR.fullmatch(gguf_name)
  if match is None or match.group(2) not in BLOCK_TENSOR_NAMES:
    return None
  return f"model.layers.{match.group(1)}.{BLOCK_TENSOR_NAMES[match.group(2)]}.weight"


def _gguf_tensor_name(hf_name: str) -> str:
  """The llama.cpp name of an HF tensor name (the inverse of `hf_tensor_name`)."""
  for gguf_name, name in GLOBAL_TENSOR_NAMES.items():
    if name == hf_name:
      return gguf_name
  layer, _, rest = hf_name.removeprefix("model.layers.").partition(".")
  kind = {v: k for k, v in BLOCK_TENSOR_NAMES.items()}[rest.removesuffix(".weight")]
  return f"blk.{layer}.{kind}.weight"


def unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's q / k row permutation.

  llama.cpp's converter reorders the output rows of `q_proj` / `k_proj` (HF layout `[out, in]`)
  so that each head's rotary pairs are interleaved:
  `w.reshape(n_heads, 2, hd // 2, *rest).swapaxes(1, 2).reshape(w.shape)`. This is its inverse,
  giving back the half-split layout of HF (and of `transformer.apply_rope`).
  """
  rows = w.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"{rows} rows cannot hold {n_heads} heads of even width")
  # Read the permuted rows as [head, hd // 2, 2] and swap back to [head, 2, hd // 2].
  return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _gguf_shape(tensor: Any) -> tuple[int, ...]:
  """A GGUF tensor's shape in numpy (row-major) order: GGUF lists dims fastest first."""
  return tuple(int(n) for n in reversed(tensor.shape.tolist()))


def _dequantize(tensor: Any, path: pathlib.Path) -> np.ndarray:
  """One GGUF tensor as float32, in numpy order."""
  try:
    values = _gguf_module().quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise ValueError(f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, "
                     f"which the gguf package cannot dequantise ({e})") from e
  shape = _gguf_shape(tensor)
  if values.size != math.prod(shape):
    raise ValueError(f"{path}: tensor {tensor.name!r} dequantises to {values.size} values, not "
                     f"the {math.prod(shape)} of its shape {shape}")
  return np.asarray(values, np.float32).reshape(shape)


def _listed(names: list[str]) -> str:
  return f"{names[:10]}{f' and {len(names) - 10} more' if len(names) > 10 else ''}"


def load_gguf_checkpoint(path: str | os.PathLike[str], *, dtype: str = "float32",
                         shardings: Any = None, scan_layers: bool = True
                         ) -> tuple[ModelConfig, dict]:
  """Read a Llama-architecture GGUF checkpoint into our parameter tree.

  Every tensor name and shape is checked before any data is read. Quantised tensors are
  dequantised to float32 and then cast to `dtype`.

  Args:
    path: the `.gguf` file.
    dtype: storage dtype of the parameters (`param_dtype` of the returned config; its compute
      `dtype` stays the default, as for `hf.load_hf_checkpoint`).
    shardings: optional params-like pytree of `jax.sharding.NamedSharding` (e.g.
      `agpo_jax.sharding.rules.param_shardings(cfg, mesh)`), computed by the caller for the
      same `scan_layers`; each leaf is placed with its own. Without it leaves go to the default
      device.
    scan_layers: stack the layers along a leading axis (`ModelConfig.scan_layers`).

  Returns:
    `(cfg, params)`: the `ModelConfig` from the file's metadata and the parameters, with the
    tree, shapes and dtypes of `transformer.init_params(cfg, ...)`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: another architecture (naming `general.architecture`), a missing or unsupported
      metadata key (naming it), unknown, missing or misshapen tensors (naming them), a tensor
      type the gguf package cannot dequantise.
  """
  path = pathlib.Path(path)
  reader = _open(path)
  cfg = hf.model_config_from_hf(_hf_config(reader, path), source=str(path), param_dtype=dtype,
                                scan_layers=scan_layers)
  specs = hf.hf_tensor_specs(cfg)
  tensors: dict[str, Any] = {}  # HF name -> GGUF tensor
  unknown = []
  for tensor in reader.tensors:
    name = hf_tensor_name(tensor.name)
    if name not in specs:
      unknown.append(tensor.name)
      continue
    if _gguf_shape(tensor) != specs[name].hf_shape:
      raise ValueError(f"{path}: tensor {tensor.name!r} has shape {_gguf_shape(tensor)} (GGUF "
                       f"dims {tensor.shape.tolist()}); the metadata implies "
                       f"{specs[name].hf_shape}")
    tensors[name] = tensor
  if "rope_freqs.weight" in unknown:
    raise ValueError(f"{path}: tensor 'rope_freqs.weight' (Llama-3.1 rotary frequency factors) "
                     "is not supported")
  if unknown:
    raise ValueError(f"{path}: {len(unknown)} tensor(s) that are not parameters of a "
                     f"{cfg.num_layers}-layer Llama model: {_listed(sorted(unknown))}")
  missing = [_gguf_tensor_name(n) for n in specs if n not in tensors]
  if missing:
    raise ValueError(f"{path}: {len(missing)} tensor(s) missing: {_listed(missing)}")

  def read(name: str) -> np.ndarray:
    w = _dequantize(tensors[name], path)
    if name.endswith("self_attn.q_proj.weight"):
      return unpermute_rotary_rows(w, cfg.num_heads)
    if name.endswith("self_attn.k_proj.weight"):
      return unpermute_rotary_rows(w, cfg.num_kv_heads)
    return w

  params = hf.assemble_params(cfg, read, shardings=shardings)
  logging.info("Loaded %s: %d layers, d_model %d, %d parameters (%s)", path, cfg.num_layers,
               cfg.d_model, cfg.num_params, dtype)
  return cfg, params


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table of byte-level BPE vocabularies."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      table[byte] = chr(byte)
    else:
      table[byte] = chr(256 + extra)
      extra += 1
  return table


def _build_tokenizer(reader: Any, path: pathlib.Path) -> hf_tokenizers.Tokenizer:
  """The `tokenizers.Tokenizer` a GGUF file's `tokenizer.ggml.*` metadata describes.

  As `transformers` builds it: a byte-level BPE over the file's vocabulary (tokens not written
  in the byte alphabet are respelled into it) and merges, GPT-2's byte-level pre-tokenizer (or
  the split pattern `tokenizer.ggml.pre` names), the byte-level decoder, and as added tokens the
  CONTROL tokens (special) and USER_DEFINED tokens (not special).
  """
  kind = _metadata(reader, "tokenizer.ggml.model", path)
  if kind != "gpt2":
    raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') "
                     "tokenizers can be rebuilt")
  tokens = _metadata(reader, "tokenizer.ggml.tokens", path)
  types = _metadata(reader, "tokenizer.ggml.token_type", path, [_TOKEN_NORMAL] * len(tokens))
  if len(types) != len(tokens):
    raise ValueError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for "
                     f"{len(tokens)} tokens")
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  vocab: dict[str, int] = {}
  for index, token in enumerate(tokens):
    if not set(token) <= alphabet:
      token = "".join(spelling[b] for b in token.encode("utf-8"))
    if token in vocab:
      raise ValueError(f"{path}: tokenizer.ggml.tokens repeats {token!r} (ids {vocab[token]} "
                       f"and {index})")
    vocab[token] = index
  merges = []
  for index, merge in enumerate(_metadata(reader, "tokenizer.ggml.merges", path)):
    pair = tuple(merge.split(" "))
    if len(pair) != 2:
      raise ValueError(f"{path}: tokenizer.ggml.merges[{index}] = {merge!r} is not two tokens "
                       "separated by one space")
    merges.append(pair)

  tokenizer = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE(
      vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
      end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False))
  pre = _metadata(reader, "tokenizer.ggml.pre", path, "default")
  split = _PRE_TOKENIZER_SPLITS.get(pre)
  if split is None:
    if pre not in _GPT2_STYLE_PRE:
      logging.warning("%s: tokenizer.ggml.pre=%r is not a known pre-tokenizer; using GPT-2's "
                      "byte-level pattern (as transformers does)", path, pre)
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(
        add_prefix_space=False, trim_offsets=True, use_regex=True)
  else:
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.Sequence([
        hf_tokenizers.pre_tokenizers.Split(hf_tokenizers.Regex(split), behavior="isolated"),
        hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  tokenizer.decoder = hf_tokenizers.decoders.ByteLevel()
  tokenizer.post_processor = hf_tokenizers.processors.TemplateProcessing(
      single="$A", pair="$A $B:1")
  # A CONTROL token outside the byte alphabet is a llama.cpp mislabel that the BPE vocabulary
  # does not hold under that spelling; adding it would grow the vocabulary, so it is skipped.
  control = [hf_tokenizers.AddedToken(t, special=True, normalized=False)
             for t, token_type in zip(tokens, types)
             if token_type == _TOKEN_CONTROL and set(t) <= alphabet]
  user = [hf_tokenizers.AddedToken(t, special=False, normalized=False)
          for t, token_type in zip(tokens, types)
          if token_type == _TOKEN_USER_DEFINED and t in vocab]
  tokenizer.add_special_tokens(control)
  tokenizer.add_tokens(user)
  return tokenizer


def tokenizer_dir_from_gguf(path: str | os.PathLike[str],
                            out_dir: str | os.PathLike[str]) -> pathlib.Path:
  """Write the tokenizer of a GGUF file as a Hugging Face tokenizer directory.

  Files written into `out_dir` (created if needed):

  - `tokenizer.json`: see `_build_tokenizer`.
  - `tokenizer_config.json`: `bos_token`, `eos_token`, `pad_token`, `unk_token` (from
    `tokenizer.ggml.*_token_id`), `add_bos_token` / `add_eos_token`, and `chat_template` (from
    `tokenizer.chat_template`), when the file has them.
  - `generation_config.json`: `bos_token_id`, `eos_token_id`, `pad_token_id`.

  Returns:
    `out_dir`, for `agpo_jax.tokenizers.HFTokenizer(out_dir)`.
  """
  path, out_dir = pathlib.Path(path), pathlib.Path(out_dir)
  reader = _open(path)
  tokenizer = _build_tokenizer(reader, path)
  tokens = _metadata(reader, "tokenizer.ggml.tokens", path)

  config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                            "clean_up_tokenization_spaces": False}
  generation: dict[str, Any] = {}
  for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                    ("pad", "padding_token_id"), ("unk", "unknown_token_id")):
    token_id = _metadata(reader, f"tokenizer.ggml.{key}", path, None)
    if token_id is None:
      continue
    if not 0 <= token_id < len(tokens):
      raise ValueError(f"{path}: tokenizer.ggml.{key}={token_id} is outside the "
                       f"{len(tokens)}-token vocabulary")
    config[f"{name}_token"] = tokens[token_id]
    if name != "unk":
      generation[f"{name}_token_id"] = token_id
  for name in ("add_bos_token", "add_eos_token"):
    flag = _metadata(reader, f"tokenizer.ggml.{name}", path, None)
    if flag is not None:
      config[name] = bool(flag)
  template = _metadata(reader, "tokenizer.chat_template", path, None)
  if template is not None:
    config["chat_template"] = template
  arch = _metadata(reader, "general.architecture", path)
  context = _metadata(reader, f"{arch}.context_length", path, None)
  if context is not None:
    config["model_max_length"] = int(context)

  out_dir.mkdir(parents=True, exist_ok=True)
  for name, content in (("tokenizer_config.json", config),
                        ("generation_config.json", generation)):
    (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
  # tokenizer.json last and by rename: its presence marks a complete directory.
  partial = out_dir / "tokenizer.json.tmp"
  tokenizer.save(str(partial))
  os.replace(partial, out_dir / "tokenizer.json")
  logging.info("Wrote the tokenizer of %s (%d tokens) to %s", path, len(tokens), out_dir)
  return out_dir
