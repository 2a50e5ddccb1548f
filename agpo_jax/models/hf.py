"""Hugging Face safetensors checkpoints in and out (Qwen2 / Qwen2.5, Qwen3, Llama-3.x).

Three parts, each usable on its own (the GGUF importer reuses the first two; the first lives in
`hf_config`):

- `model_config_from_hf` turns a `config.json` dict into a `ModelConfig`, refusing every option
  the decoder does not implement (naming the field and the file), and
  `hf_config_from_model_config` goes back.
- `hf_tensor_specs` maps each HF tensor name to our parameter path (and layer, for a scanned
  stack), with the reshape / transpose between the two layouts (`HFTensor.to_param`,
  `HFTensor.from_param`); `assemble_params` builds the parameter tree from any source of
  HF-named tensors, one leaf at a time, placing each with its sharding.
- `load_hf_checkpoint` / `save_hf_checkpoint` read and write a checkpoint directory
  (`config.json`, `model.safetensors` or shards with `model.safetensors.index.json`, tokenizer
  files), so that `transformers.AutoModelForCausalLM.from_pretrained` loads what we write.

Tensors are read with `safetensors` into numpy (memory-mapped), never with torch. Rotary
embeddings use the HF half-split layout on both sides, so q / k need no permutation.

Layout (HF `nn.Linear` weights are `[out, in]`; ours put the input first, per head):

  q_proj.weight [h*hd, d]  -> attn/q_proj [d, h, hd]      (transpose, reshape)
  k/v_proj.weight          -> attn/k_proj, v_proj [d, kv, hd]
  o_proj.weight [d, h*hd]  -> attn/o_proj [h, hd, d]
  q/k/v_proj.bias [n*hd]   -> attn/q_bias ... [n, hd]
  gate/up_proj [m, d]      -> mlp/gate_proj, up_proj [d, m];  down_proj [d, m] -> [m, d]
  lm_head.weight [V, d]    -> lm_head [d, V];  embed_tokens.weight [V, d] -> embed [V, d]
  *norm.weight             -> .../scale
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from safetensors import safe_open
from safetensors.numpy import save_file

from agpo_jax.models import transformer
from agpo_jax.models.config import DTYPES, ModelConfig
from agpo_jax.models.hf_config import (  # noqa: F401  (part of this module's API)
    CONFIG_FILE,
    check_compatible,
    hf_config_from_model_config,
    hf_model_type,
    model_config_from_hf,
)

SAFETENSORS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Copied from `tokenizer_dir` by `save_hf_checkpoint` when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json")
# Non-parameter buffers some exporters store; skipped on import.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_TENSOR_DTYPES = ("F64", "F32", "F16", "BF16")


# --------------------------------------------------------------------------- tensor names


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """One tensor of a Hugging Face checkpoint and where it lives in our parameter tree.

  Attributes:
    name: HF tensor name, e.g. `model.layers.3.self_attn.q_proj.weight`.
    path: keys of our parameter leaf, e.g. `("layers", "attn", "q_proj")` (scanned layers) or
      `("layer_3", "attn", "q_proj")`.
    layer: index into the leaf's leading `layers` axis when layers are scanned, else None.
    hf_shape: shape in the checkpoint.
    shape: shape in our layout (one layer's slice of a stacked leaf).
    transpose: the HF matrix is `[out, in]` and is transposed before the reshape.
  """

  name: str
  path: tuple[str, ...]
  layer: int | None
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transpose: bool

  def to_param(self, x: np.ndarray) -> np.ndarray:
    """The HF tensor `x` (shape `hf_shape`) in our layout (shape `shape`)."""
    x = np.asarray(x)
    return (x.T if self.transpose else x).reshape(self.shape)

  def from_param(self, x: Any) -> np.ndarray:
    """Our array `x` (shape `shape`) as the HF tensor (shape `hf_shape`), contiguous."""
    x = np.asarray(x)
    if self.transpose:
      return np.ascontiguousarray(x.reshape(self.hf_shape[::-1]).T)
    return np.ascontiguousarray(x.reshape(self.hf_shape))


def _layer_tensors(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], tuple, tuple, bool]]:
  """(HF suffix, our sub-path, HF shape, our shape, transpose) of one decoder layer."""
  d, h, kv, hd, m = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  out = [("self_attn.q_proj.weight", ("attn", "q_proj"), (h * hd, d), (d, h, hd), True),
         ("self_attn.k_proj.weight", ("attn", "k_proj"), (kv * hd, d), (d, kv, hd), True),
         ("self_attn.v_proj.weight", ("attn", "v_proj"), (kv * hd, d), (d, kv, hd), True),
         ("self_attn.o_proj.weight", ("attn", "o_proj"), (d, h * hd), (h, hd, d), True)]
  if cfg.qkv_bias:
    out += [("self_attn.q_proj.bias", ("attn", "q_bias"), (h * hd,), (h, hd), False),
            ("self_attn.k_proj.bias", ("attn", "k_bias"), (kv * hd,), (kv, hd), False),
            ("self_attn.v_proj.bias", ("attn", "v_bias"), (kv * hd,), (kv, hd), False)]
  if cfg.qk_norm:
    out += [("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), (hd,), (hd,), False),
            ("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), (hd,), (hd,), False)]
  out += [("mlp.gate_proj.weight", ("mlp", "gate_proj"), (m, d), (d, m), True),
          ("mlp.up_proj.weight", ("mlp", "up_proj"), (m, d), (d, m), True),
          ("mlp.down_proj.weight", ("mlp", "down_proj"), (d, m), (m, d), True),
          ("input_layernorm.weight", ("attn_norm", "scale"), (d,), (d,), False),
          ("post_attention_layernorm.weight", ("mlp_norm", "scale"), (d,), (d,), False)]
  return out


def hf_tensor_specs(cfg: ModelConfig) -> dict[str, HFTensor]:
  """Every tensor a checkpoint of `cfg` holds, by HF name, in checkpoint order.

  `lm_head.weight` is absent when the embeddings are tied.
  """
  v, d = cfg.vocab_size, cfg.d_model
  specs = [HFTensor("model.embed_tokens.weight", ("embed",), None, (v, d), (v, d), False)]
  for i in range(cfg.num_layers):
    for suffix, sub, hf_shape, shape, transpose in _layer_tensors(cfg):
      path, layer = (("layers", *sub), i) if cfg.scan_layers else ((f"layer_{i}", *sub), None)
      specs.append(HFTensor(f"model.layers.{i}.{suffix}", path, layer, hf_shape, shape,
                            transpose))
  specs.append(HFTensor("model.norm.weight", ("final_norm", "scale"), None, (d,), (d,), False))
  if not cfg.tie_embeddings:
    specs.append(HFTensor("lm_head.weight", ("lm_head",), None, (v, d), (d, v), True))
  return {s.name: s for s in specs}


def is_ignored_tensor(name: str) -> bool:
  """Buffers that are not parameters (rotary inverse frequencies)."""
  return name.endswith(IGNORED_SUFFIXES)


def _tree_get(tree: Any, path: tuple[str, ...], what: str) -> Any:
  node = tree
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      raise ValueError(f"{what} has no entry {'/'.join(path)}")
    node = node[key]
  return node


def _tree_set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _by_leaf(specs: Iterable[HFTensor]) -> dict[tuple[str, ...], list[HFTensor]]:
  leaves: dict[tuple[str, ...], list[HFTensor]] = {}
  for spec in specs:
    leaves.setdefault(spec.path, []).append(spec)
  return leaves


def assemble_params(cfg: ModelConfig, read: Callable[[str], np.ndarray], *,
                    shardings: Any = None) -> dict:
  """The parameter tree of `cfg`, built from HF-named tensors one leaf at a time.

  Each leaf is assembled on the host from its tensors (`read(name)` for each, converted to
  `cfg.param_dtype` and to our layout; a scanned leaf stacks its layers' tensors), placed with
  `jax.device_put` (with its sharding when `shardings`, a pytree of `Sharding`s like the
  params, is given), and its host copy dropped before the next leaf is read. Peak host memory
  is one leaf, never the whole checkpoint.

  Args:
    cfg: the model configuration; its `scan_layers` and `param_dtype` fix the layout.
    read: returns the HF tensor of a name (shape `HFTensor.hf_shape`, any float dtype).
    shardings: optional shardings of the leaves.

  Returns:
    The params pytree (same structure as `transformer.abstract_params(cfg)`).
  """
  dtype = jnp.dtype(cfg.param_dtype)
  params: dict = {}
  for path, specs in _by_leaf(hf_tensor_specs(cfg).values()).items():
    if specs[0].layer is None:
      host = np.ascontiguousarray(specs[0].to_param(np.asarray(read(specs[0].name)))
                                  .astype(dtype))
    else:
      host = np.empty((len(specs), *specs[0].shape), dtype)
      for spec in specs:
        host[spec.layer] = spec.to_param(np.asarray(read(spec.name)))
    sharding = None if shardings is None else _tree_get(shardings, path, "shardings")
    leaf = jax.device_put(host, sharding)
    del host
    _tree_set(params, path, leaf)
  return params


# --------------------------------------------------------------------------- import


def _tensor_files(directory: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str] | None]:
  """The safetensors files of a checkpoint, and the index's weight map when sharded."""
  index = directory / INDEX_FILE
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted({directory / f for f in weight_map.values()})
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from e
    missing = [str(f) for f in files if not f.exists()]
    if missing:
      raise ValueError(f"{index} lists shard file(s) that do not exist: {missing}")
    return files, weight_map
  single = directory / SAFETENSORS_FILE
  if single.exists():
    return [single], None
  raise FileNotFoundError(f"{directory}: neither {SAFETENSORS_FILE} nor {INDEX_FILE} found "
                          "(only safetensors checkpoints are supported)")


def _read_config(directory: pathlib.Path) -> dict:
  path = directory / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: a Hugging Face checkpoint directory needs it")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON: {e}") from e


def load_hf_checkpoint(directory: str | os.PathLike, *, dtype: str | None = None,
                       shardings: Any = None, model_cfg: ModelConfig | None = None
                       ) -> tuple[ModelConfig, dict]:
  """Read a Hugging Face safetensors checkpoint into our parameter tree.

  Every tensor header is checked before any data is read: an unknown tensor name, a missing
  tensor, a tensor of the wrong shape or a non-float tensor is a ValueError naming it and its
  file. `lm_head.weight` stored beside tied embeddings is skipped (with a warning), and
  `rotary_emb.inv_freq` buffers are ignored. Tensors are then read one leaf at a time (see
  `assemble_params`).

  Args:
    directory: holds `config.json` and `model.safetensors` or the shards listed in
      `model.safetensors.index.json`.
    dtype: storage dtype of the returned parameters (default: `model_cfg.param_dtype`, or
      float32 without a `model_cfg`).
    shardings: optional pytree of `NamedSharding`s like the params (e.g.
      `agpo_jax.sharding.rules.param_shardings(cfg, mesh)`); each leaf is placed with its own.
    model_cfg: the configuration to load into (run choices such as `scan_layers`, `remat`,
      compute `dtype`, `max_seq_len` are taken from it); its architecture must match
      `config.json`'s, else a ValueError names each differing field.

  Returns:
    (model config, params).
  """
  directory = pathlib.Path(directory)
  config_path = directory / CONFIG_FILE
  from_file = model_config_from_hf(_read_config(directory), source=str(config_path))
  if model_cfg is not None:
    check_compatible(model_cfg, from_file, str(config_path))
    cfg = model_cfg
  else:
    cfg = from_file
  if dtype is not None:
    cfg = dataclasses.replace(cfg, param_dtype=str(jnp.dtype(dtype)))
  specs = hf_tensor_specs(cfg)

  files, weight_map = _tensor_files(directory)
  with contextlib.ExitStack() as stack:
    handles, where = {}, {}
    for path in files:
      handles[path] = handle = stack.enter_context(safe_open(str(path), framework="numpy"))
      for name in handle.keys():
        if name in where:
          raise ValueError(f"tensor {name!r} appears in both {where[name]} and {path}")
        where[name] = path
    if weight_map is not None:
      absent = sorted(n for n, f in weight_map.items() if where.get(n) != directory / f)
      if absent:
        raise ValueError(f"{directory / INDEX_FILE} lists tensor(s) not in the named shard: "
                         f"{absent[:5]}")
    skip = set()
    for name, path in where.items():
      if is_ignored_tensor(name):
        skip.add(name)
      elif name == "lm_head.weight" and cfg.tie_embeddings:
        logging.warning("%s: lm_head.weight ignored: config.json ties the embeddings", path)
        skip.add(name)
      elif name not in specs:
        raise ValueError(f"unknown tensor {name!r} in {path} (not a parameter of a "
                         f"{cfg.num_layers}-layer {hf_model_type(cfg)} model)")
      else:
        tensor = handles[path].get_slice(name)
        shape, tensor_dtype = tuple(tensor.get_shape()), tensor.get_dtype()
        if shape != specs[name].hf_shape:
          raise ValueError(f"tensor {name!r} in {path} has shape {shape}, expected "
                           f"{specs[name].hf_shape}")
        if tensor_dtype not in _FLOAT_TENSOR_DTYPES:
          raise ValueError(f"tensor {name!r} in {path} has dtype {tensor_dtype}; expected a "
                           f"float type {_FLOAT_TENSOR_DTYPES}")
    missing = [name for name in specs if name not in where]
    if missing:
      shown = ", ".join(repr(n) for n in missing[:5])
      more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
      raise ValueError(f"{directory}: missing tensor(s) {shown}{more}")

    def read(name: str) -> np.ndarray:
      return handles[where[name]].get_tensor(name)

    params = assemble_params(cfg, read, shardings=shardings)
  logging.info("loaded %s (%d tensors, %s) from %s", hf_model_type(cfg), len(specs),
               cfg.param_dtype, directory)
  return cfg, params


# --------------------------------------------------------------------------- export


def _check_params(cfg: ModelConfig, params: Any) -> None:
  expected = jax.tree_util.tree_flatten_with_path(transformer.abstract_params(cfg))[0]
  given = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  expected_paths = {p for p, _ in expected}
  extra = [jax.tree_util.keystr(p) for p in given if p not in expected_paths]
  if extra:
    raise ValueError(f"params have leaves the model config does not: {extra[:5]}")
  for path, want in expected:
    if path not in given:
      raise ValueError(f"params are missing {jax.tree_util.keystr(path)}")
    if tuple(np.shape(given[path])) != want.shape:
      raise ValueError(f"params{jax.tree_util.keystr(path)} has shape "
                       f"{tuple(np.shape(given[path]))}, the model config says {want.shape}")


def _host_tensor(spec: HFTensor, leaf: Any, dtype: np.dtype) -> np.ndarray:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    raise ValueError(f"parameter {'/'.join(spec.path)} is not fully addressable by this "
                     "process: gather the parameters to one host before exporting")
  x = leaf if spec.layer is None else leaf[spec.layer]
  return spec.from_param(np.asarray(x).astype(dtype))


def save_hf_checkpoint(directory: str | os.PathLike, model_cfg: ModelConfig, params: Any, *,
                       tokenizer_dir: str | os.PathLike | None = None,
                       max_shard_bytes: int = 5 * 2**30, dtype: str | None = None,
                       extra_config: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Write `params` as a Hugging Face checkpoint that `transformers` loads.

  Writes `config.json` (model_type qwen3 if QK-norm, qwen2 if QKV bias, else llama), the
  tensors as `model.safetensors`, or as `model-0000i-of-0000n.safetensors` shards with
  `model.safetensors.index.json` when they exceed `max_shard_bytes`, and copies the tokenizer
  files (`TOKENIZER_FILES`) found in `tokenizer_dir`. Weight files of an earlier export in
  `directory` are removed first, so that no stale file shadows the new ones. Tensors are
  converted one at a time; the host holds at most one shard's tensors.

  Args:
    directory: output directory (created if needed).
    model_cfg: the configuration `params` belong to.
    params: the parameter pytree (fully addressable arrays, or numpy).
    tokenizer_dir: directory holding `tokenizer.json` etc. to ship beside the weights.
    max_shard_bytes: largest shard size (a single larger tensor gets a shard of its own).
    dtype: storage dtype of the written tensors (default: `model_cfg.param_dtype`).
    extra_config: more `config.json` fields (e.g. `bos_token_id`, `eos_token_id`); a key the
      export writes itself is refused.

  Returns:
    The output directory.
  """
  directory = pathlib.Path(directory)
  dtype_name = str(jnp.dtype(dtype or model_cfg.param_dtype))
  if dtype_name not in DTYPES:
    raise ValueError(f"dtype={dtype_name!r}; expected one of {DTYPES}")
  np_dtype = jnp.dtype(dtype_name)
  _check_params(model_cfg, params)
  hf_config = hf_config_from_model_config(model_cfg, torch_dtype=dtype_name)
  if extra_config:
    clash = sorted(set(extra_config) & set(hf_config))
    if clash:
      raise ValueError(f"extra_config may not set fields the export writes: {clash}")
    hf_config.update(extra_config)
  tokenizer_files = []
  if tokenizer_dir is not None:
    tokenizer_dir = pathlib.Path(tokenizer_dir)
    tokenizer_files = [tokenizer_dir / f for f in TOKENIZER_FILES
                       if (tokenizer_dir / f).is_file()]
    if not any(f.name in ("tokenizer.json", "tokenizer.model", "vocab.json")
               for f in tokenizer_files):
      raise ValueError(f"tokenizer_dir={str(tokenizer_dir)!r} holds no tokenizer.json, "
                       "tokenizer.model or vocab.json")

  specs = list(hf_tensor_specs(model_cfg).values())
  shards: list[list[HFTensor]] = [[]]
  used = 0
  for spec in specs:
    size = math.prod(spec.hf_shape) * np_dtype.itemsize
    if shards[-1] and used + size > max_shard_bytes:
      shards.append([])
      used = 0
    shards[-1].append(spec)
    used += size
  total = sum(math.prod(s.hf_shape) * np_dtype.itemsize for s in specs)

  directory.mkdir(parents=True, exist_ok=True)
  stale = [p for p in directory.iterdir()
           if p.name in (SAFETENSORS_FILE, INDEX_FILE)
           or re.fullmatch(r"model-\d+-of-\d+\.safetensors", p.name)]
  for path in stale:
    logging.info("removing %s of an earlier export", path)
    path.unlink()
  names = ([SAFETENSORS_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  weight_map = {}
  for file_name, shard in zip(names, shards):
    tensors = {}
    for spec in shard:
      leaf = _tree_get(params, spec.path, "params")
      tensors[spec.name] = _host_tensor(spec, leaf, np_dtype)
      weight_map[spec.name] = file_name
    save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
    del tensors
  if len(shards) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
  (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
  for path in tokenizer_files:
    shutil.copyfile(path, directory / path.name)
  logging.info("wrote %s checkpoint (%d tensors in %d file(s), %s) to %s",
               hf_config["model_type"], len(specs), len(shards), dtype_name, directory)
  return directory
