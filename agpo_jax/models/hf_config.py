"""Hugging Face `config.json` <-> `ModelConfig` (Qwen2 / Qwen2.5, Qwen3, Llama-3.x).

`model_config_from_hf` turns a `config.json` dict into a `ModelConfig`, refusing every option
the decoder does not implement (naming the field and the file); `hf_config_from_model_config`
goes back; `check_compatible` compares a given `ModelConfig` with a checkpoint's. The tensors
are `hf`'s (and the GGUF importer reuses both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agpo_jax.models.config import DTYPES, ModelConfig

CONFIG_FILE = "config.json"
MODEL_TYPES = ("qwen2", "qwen3", "llama")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "llama": "LlamaForCausalLM"}
_TORCH_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
# Fields of a ModelConfig that come from config.json (the rest are run choices).
_ARCH_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
                "mlp_dim", "rope_theta", "rope_scaling_factor", "rms_eps", "qkv_bias", "qk_norm",
                "tie_embeddings")
_ROPE_SCALING_FIELDS = ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len")


# --------------------------------------------------------------------------- config.json


def _field(config: Mapping[str, Any], key: str, source: str, default: Any = ...) -> Any:
  value = config.get(key, None)
  if value is None:
    if default is ...:
      raise ValueError(f"{source}: required field {key!r} is missing")
    return default
  return value


def _rope_settings(config: Mapping[str, Any], source: str) -> dict[str, Any]:
  """rope_theta and Llama-3.1 scaling from either the classic keys (`rope_theta`,
  `rope_scaling`) or transformers 5's `rope_parameters`."""
  theta = config.get("rope_theta")
  scaling = config.get("rope_scaling")
  where = "rope_scaling"
  parameters = config.get("rope_parameters")
  if parameters is not None:
    if not isinstance(parameters, Mapping) or any(isinstance(v, Mapping)
                                                  for v in parameters.values()):
      raise ValueError(f"{source}: rope_parameters={parameters!r}: per-layer-type rotary "
                       "settings are not supported")
    theta = parameters.get("rope_theta", theta)
    if parameters.get("rope_type", parameters.get("type", "default")) != "default":
      scaling, where = parameters, "rope_parameters"
  out: dict[str, Any] = {"rope_theta": float(10_000.0 if theta is None else theta),
                         "rope_scaling_factor": 0.0}
  if not scaling:
    return out
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return out
  if rope_type != "llama3":
    raise ValueError(f"{source}: {where}.rope_type={rope_type!r} is not supported (only "
                     "'llama3' frequency scaling is implemented)")
  keys = {"rope_scaling_factor": "factor", "rope_low_freq_factor": "low_freq_factor",
          "rope_high_freq_factor": "high_freq_factor",
          "rope_original_max_len": "original_max_position_embeddings"}
  for ours, theirs in keys.items():
    if scaling.get(theirs) is None:
      raise ValueError(f"{source}: {where}.{theirs} is missing (required for rope_type "
                       "'llama3')")
    out[ours] = scaling[theirs]
  out["rope_original_max_len"] = int(out["rope_original_max_len"])
  for key in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
    out[key] = float(out[key])
  if out["rope_scaling_factor"] <= 0:
    raise ValueError(f"{source}: {where}.factor must be positive, got "
                     f"{out['rope_scaling_factor']}")
  if out["rope_high_freq_factor"] <= out["rope_low_freq_factor"]:
    raise ValueError(f"{source}: {where}.high_freq_factor ({out['rope_high_freq_factor']}) must "
                     f"exceed low_freq_factor ({out['rope_low_freq_factor']})")
  return out


def model_config_from_hf(config: Mapping[str, Any], *, source: str = CONFIG_FILE,
                         use_config_dtype: bool = False, **overrides: Any) -> ModelConfig:
  """A `ModelConfig` from a Hugging Face `config.json` (model_type qwen2, qwen3 or llama).

  Reads both the classic keys (`rope_theta`, `rope_scaling`, `torch_dtype`) and transformers
  5's (`rope_parameters`, `dtype`).

  Args:
    config: the parsed `config.json`.
    source: where it came from, for error messages.
    use_config_dtype: take `param_dtype` from the file's `torch_dtype` (default: float32).
    **overrides: `ModelConfig` fields to set on top (run choices such as `scan_layers`,
      `remat`, `dtype`, `max_seq_len`, `param_dtype`).

  Returns:
    The model configuration.

  Raises:
    ValueError: an unsupported `model_type` or option (sliding-window attention in use,
      `mlp_bias`, an output-projection bias, an activation other than SiLU, rotary scaling other
      than 'llama3', ...), a missing required field, or an unknown override; each names the
      field and `source`.
  """
  model_type = config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{source}: model_type={model_type!r} is not supported; expected one of "
                     f"{MODEL_TYPES}")
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
  if unknown:
    raise ValueError(f"unknown ModelConfig field(s) in overrides: {sorted(unknown)}")
  act = config.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ValueError(f"{source}: hidden_act={act!r} is not supported (only silu)")
  if config.get("mlp_bias"):
    raise ValueError(f"{source}: mlp_bias=true is not supported (the MLP has no biases)")
  partial = config.get("partial_rotary_factor")
  if partial is not None and partial != 1.0:
    raise ValueError(f"{source}: partial_rotary_factor={partial!r} is not supported")
  num_layers = int(_field(config, "num_hidden_layers", source))
  layer_types = config.get("layer_types")
  if layer_types and any(t != "full_attention" for t in layer_types):
    raise ValueError(f"{source}: layer_types={list(layer_types)!r}: sliding-window attention is "
                     "not supported")
  if (config.get("use_sliding_window") and config.get("sliding_window") is not None
      and int(config.get("max_window_layers") or 0) < num_layers):
    raise ValueError(
        f"{source}: use_sliding_window=true with max_window_layers="
        f"{config.get('max_window_layers')} < num_hidden_layers={num_layers}: sliding-window "
        "attention is not supported")

  d_model = int(_field(config, "hidden_size", source))
  num_heads = int(_field(config, "num_attention_heads", source))
  head_dim = config.get("head_dim")
  if head_dim is None:
    if d_model % num_heads:
      raise ValueError(f"{source}: head_dim is missing and hidden_size={d_model} is not a "
                       f"multiple of num_attention_heads={num_heads}")
    head_dim = d_model // num_heads
  attention_bias = bool(config.get("attention_bias", False))
  if model_type == "qwen2":
    qkv_bias = True  # Qwen2 hard-codes q/k/v biases and no o_proj bias.
  elif attention_bias:
    raise ValueError(f"{source}: attention_bias=true puts a bias on o_proj too ({model_type}), "
                     "which the decoder does not have")
  else:
    qkv_bias = False

  fields: dict[str, Any] = dict(
      vocab_size=int(_field(config, "vocab_size", source)),
      num_layers=num_layers,
      d_model=d_model,
      num_heads=num_heads,
      num_kv_heads=int(_field(config, "num_key_value_heads", source, num_heads)),
      head_dim=int(head_dim),
      mlp_dim=int(_field(config, "intermediate_size", source)),
      rms_eps=float(_field(config, "rms_norm_eps", source, 1e-6)),
      qkv_bias=qkv_bias,
      qk_norm=model_type == "qwen3",
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
      **_rope_settings(config, source))
  if config.get("max_position_embeddings") is not None:
    fields["max_seq_len"] = int(config["max_position_embeddings"])
  if use_config_dtype:
    key = "torch_dtype" if config.get("torch_dtype") is not None else "dtype"
    dtype = str(_field(config, key, source)).removeprefix("torch.")
    if dtype not in DTYPES:
      raise ValueError(f"{source}: {key}={dtype!r}; expected one of {DTYPES}")
    fields["param_dtype"] = dtype
  fields.update(overrides)
  try:
    return ModelConfig(**fields)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from e


def hf_model_type(cfg: ModelConfig) -> str:
  """The HF family that expresses `cfg`: qwen3 if QK-norm, qwen2 if QKV bias, else llama."""
  if cfg.position != "rope":
    raise ValueError(f"model.position={cfg.position!r} has no Hugging Face family (Qwen and "
                     "Llama use rotary positions)")
  if cfg.qk_norm and cfg.qkv_bias:
    raise ValueError("model.qk_norm with model.qkv_bias has no Hugging Face family (Qwen3's "
                     "attention_bias also puts a bias on o_proj)")
  if cfg.qk_norm:
    return "qwen3"
  return "qwen2" if cfg.qkv_bias else "llama"


def hf_config_from_model_config(cfg: ModelConfig, torch_dtype: str | None = None) -> dict:
  """The `config.json` dict that `model_config_from_hf` reads back as `cfg` (classic keys,
  read by transformers 4.x and 5.x alike)."""
  model_type = hf_model_type(cfg)
  out: dict[str, Any] = {
      "architectures": [ARCHITECTURES[model_type]],
      "model_type": model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.rms_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None,
      "tie_word_embeddings": cfg.tie_embeddings,
      "torch_dtype": torch_dtype or cfg.param_dtype,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
      "use_cache": True,
  }
  if cfg.rope_scaling_factor:
    out["rope_scaling"] = {"rope_type": "llama3", "factor": cfg.rope_scaling_factor,
                           "low_freq_factor": cfg.rope_low_freq_factor,
                           "high_freq_factor": cfg.rope_high_freq_factor,
                           "original_max_position_embeddings": cfg.rope_original_max_len}
  if model_type == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  else:
    out.update(use_sliding_window=False, sliding_window=None,
               max_window_layers=cfg.num_layers)
    if model_type == "qwen3":
      out["attention_bias"] = False
  return out


def check_compatible(model_cfg: ModelConfig, from_file: ModelConfig, source: str) -> None:
  names = list(_ARCH_FIELDS)
  if from_file.rope_scaling_factor or model_cfg.rope_scaling_factor:
    names += _ROPE_SCALING_FIELDS
  diffs = [f"model.{n}: given {getattr(model_cfg, n)!r}, {source} has "
           f"{getattr(from_file, n)!r}" for n in names
           if getattr(model_cfg, n) != getattr(from_file, n)]
  if diffs:
    raise ValueError("model_cfg does not match the checkpoint: " + "; ".join(diffs))
