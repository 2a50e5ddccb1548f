"""Pretrained weights named by the config: `config.model.checkpoint`.

    model_cfg = pretrained.model_config(config.model, tokenizer.vocab_size)
    params = pretrained.load_params(config.model, model_cfg, mesh)   # sharded on the mesh

A checkpoint is a Hugging Face directory (`config.json` + `model.safetensors` or shards with
`model.safetensors.index.json`; `models.hf`) or a `.gguf` file (`models.gguf`, dequantised).
Its architecture replaces the preset; `config.model` may still set the numerics (`dtype`,
`param_dtype`, `remat`, `scan_layers`, `max_seq_len`), and a shape field that disagrees with
the checkpoint is an error naming it. Tensors stream one at a time into their sharded
placement, so no device (and no host) ever holds the whole model twice.

The tokenizer of an HF directory is the directory itself (`tokenizer.kind=hf`, `tokenizer.path`
empty = the checkpoint); a GGUF file's tokenizer is rebuilt from its metadata into
`WORKDIR/tokenizer` (`tokenizer_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax

from agpo_jax import configs
from agpo_jax.models.config import NON_SHAPE_KEYS, ModelConfig, resolve_model_config
from agpo_jax.sharding import rules

# `config.model` fields a checkpoint's own architecture does not fix.
NUMERICS = ("dtype", "param_dtype", "remat", "scan_layers", "max_seq_len", "attention")


def checkpoint_format(path: str | pathlib.Path) -> str:
  """'hf' for a directory with config.json, 'gguf' for a .gguf file; ConfigError otherwise."""
  path = pathlib.Path(path)
  if path.is_dir() and (path / "config.json").is_file():
    return "hf"
  if path.is_file() and path.suffix == ".gguf":
    return "gguf"
  raise configs.ConfigError(
      f"config.model.checkpoint={str(path)!r} is neither a Hugging Face checkpoint directory "
      "(with config.json) nor a .gguf file")


def _architecture(path: pathlib.Path) -> ModelConfig:
  if checkpoint_format(path) == "hf":
    from agpo_jax.models import hf

    return hf.model_config_from_hf(json.loads((path / "config.json").read_text()))
  from agpo_jax.models import gguf

  return gguf.model_config_from_gguf(path)


def model_config(model: Any, tokenizer_vocab_size: int | None = None) -> ModelConfig:
  """The run's `ModelConfig`: the checkpoint's architecture when `model.checkpoint` is set
  (with `model`'s numerics), else the preset with `model`'s overrides."""
  if not model.get("checkpoint"):
    return resolve_model_config(model, tokenizer_vocab_size)
  path = pathlib.Path(model.checkpoint)
  cfg = _architecture(path)
  overrides = {k: v for k, v in dict(model).items()
               if k not in NON_SHAPE_KEYS and v is not None}
  conflicts = [f"model.{k}={v!r} (the checkpoint has {getattr(cfg, k)!r})"
               for k, v in overrides.items() if k not in NUMERICS and getattr(cfg, k) != v]
  if conflicts:
    raise configs.ConfigError(
        f"config.model.checkpoint={str(path)!r} fixes the architecture; these overrides "
        f"disagree with it: {', '.join(conflicts)}")
  if tokenizer_vocab_size is not None and tokenizer_vocab_size > cfg.vocab_size:
    raise configs.ConfigError(
        f"the tokenizer has {tokenizer_vocab_size} ids but the checkpoint {path} embeds only "
        f"{cfg.vocab_size}: config.tokenizer does not belong to this checkpoint")
  return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in NUMERICS})


def load_params(model: Any, model_cfg: ModelConfig, mesh: jax.sharding.Mesh | None = None
                ) -> Any:
  """The checkpoint's parameters in `model_cfg`'s layout and dtype, placed with the rule
  table's sharding on `mesh` (one device's default placement without one)."""
  path = pathlib.Path(model.checkpoint)
  shardings = None if mesh is None else rules.param_shardings(model_cfg, mesh)
  if checkpoint_format(path) == "hf":
    from agpo_jax.models import hf

    loaded_cfg, params = hf.load_hf_checkpoint(path, dtype=model_cfg.param_dtype,
                                               shardings=shardings, model_cfg=model_cfg)
  else:
    from agpo_jax.models import gguf

    loaded_cfg, params = gguf.load_gguf_checkpoint(path, dtype=model_cfg.param_dtype,
                                                   shardings=shardings,
                                                   scan_layers=model_cfg.scan_layers)
  if loaded_cfg.checkpoint_signature() != model_cfg.checkpoint_signature():
    raise ValueError(f"{path}: loaded a model that differs from the one planned: "
                     f"{loaded_cfg} != {model_cfg}")
  return params


def tokenizer_dir(model: Any, tokenizer: Any, workdir: pathlib.Path) -> str:
  """Where the tokenizer of a run with `config.model.checkpoint` comes from: `tokenizer.path`
  when set, else the checkpoint directory (HF), or its GGUF metadata rebuilt into
  `workdir/tokenizer` (once; reused after)."""
  if tokenizer.get("path"):
    return tokenizer.path
  path = pathlib.Path(model.checkpoint)
  if checkpoint_format(path) == "hf":
    return str(path)
  from agpo_jax.models import gguf

  out = pathlib.Path(workdir) / "tokenizer"
  if not (out / "tokenizer.json").is_file():
    gguf.tokenizer_dir_from_gguf(path, out)
  return str(out)
