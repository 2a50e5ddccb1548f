"""Model configuration and presets: the one description of a model's shapes.

`ModelConfig` fixes every shape and numerical choice of the decoder. Parameter init, the
abstract parameter tree used to restore checkpoints and the parameter shardings are all derived
from it (see `transformer.py` and `agpo_jax.sharding.rules`), never written down a second time.
"""

from __future__ import annotations

import dataclasses
from typing import Any


DTYPES = ("float32", "bfloat16", "float16")
POSITIONS = ("rope", "learned")
ATTENTION = ("xla", "dot_product_attention", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a Qwen2 / Qwen2.5 / Qwen3 / Llama-3 style decoder.

  Attributes:
    vocab_size: rows of the embedding (and columns of the LM head).
    num_layers: decoder blocks.
    d_model: residual stream width.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention; divides num_heads).
    head_dim: width of one head.
    mlp_dim: hidden width of the SwiGLU MLP.
    position: 'rope' (rotary embeddings on queries and keys: every supported checkpoint family)
      or 'learned' (an absolute position embedding of max_seq_len rows added to the token
      embedding, no rotation: the testbed, where it generalises far better; not exportable).
    rope_theta: rotary base frequency.
    rope_scaling_factor: Llama-3.1 style frequency scaling (0 disables it).
    rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len: its other constants.
    rms_eps: RMSNorm epsilon.
    qkv_bias: bias on the q/k/v projections (Qwen2 / Qwen2.5).
    qk_norm: per-head RMSNorm on queries and keys before RoPE (Qwen3).
    tie_embeddings: the LM head reuses the embedding matrix.
    max_seq_len: longest sequence the model is meant for (prompt + response).
    param_dtype: storage dtype of the parameters.
    dtype: compute dtype of activations; softmax and logits are always float32.
    remat: rematerialise each block in the backward pass (trades compute for memory).
    scan_layers: run the blocks under `nn.scan` (one compiled block, fast compiles for deep
      models); parameters then carry a leading `layers` axis.
    attention: the attention kernel of causal passes (training, scoring, prefill):
      "xla" (reference einsums, every backend), "dot_product_attention"
      (`jax.nn.dot_product_attention`: cuDNN's fused kernel on a GPU when it applies, XLA
      otherwise), "cudnn" (that kernel or an error), "splash" (the TPU kernels: Pallas
      splash attention for causal passes and Pallas paged attention over a paged cache for
      decode steps, `models.paged`, per device under a mesh; their interpreters elsewhere).
      Other values decode with XLA matmuls over the dense cache.
  """

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  position: str = "rope"
  rope_theta: float = 10_000.0
  rope_scaling_factor: float = 0.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  rms_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  max_seq_len: int = 4096
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = True
  attention: str = "xla"

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                 "head_dim", "mlp_dim", "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads ({self.num_heads}) must be a multiple of "
                       f"model.num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim must be even for rotary embeddings, got {self.head_dim}")
    if self.attention not in ATTENTION:
      raise ValueError(f"model.attention={self.attention!r}; expected one of {ATTENTION}")
    if self.position not in POSITIONS:
      raise ValueError(f"model.position={self.position!r}; expected one of {POSITIONS}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; expected one of {DTYPES}")

  def checkpoint_signature(self) -> dict:
    """The fields that fix the parameter tree (shapes, dtypes, layout).

    A checkpoint whose signature differs cannot be restored into this model. Compute dtype,
    remat and max_seq_len change how the model runs, not what it stores, so they may differ.
    """
    fields = dataclasses.asdict(self)
    for free in ("dtype", "remat", "max_seq_len", "attention"):
      if not (free == "max_seq_len" and self.position == "learned"):  # it sizes a table then
        fields.pop(free)
    if fields["position"] == "rope":  # checkpoints written before the option existed restore
      fields.pop("position")
    return fields

  @property
  def num_params(self) -> int:
    """Parameter count, from the shapes alone."""
    attn = self.d_model * self.head_dim * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * self.head_dim
    mlp = 3 * self.d_model * self.mlp_dim
    block = attn + mlp + 2 * self.d_model
    embed = self.vocab_size * self.d_model
    head = 0 if self.tie_embeddings else embed
    positions = self.max_seq_len * self.d_model if self.position == "learned" else 0
    return self.num_layers * block + embed + head + positions + self.d_model


# Real shapes of the public checkpoints (from their config.json). A preset fixes shapes and
# numerics only; it brings no weights.
PRESETS: dict[str, ModelConfig] = {
    # The embedded testbed: about 137k parameters; the embedding grows to the tokenizer's size.
    # Learned absolute positions: with RoPE the same model, after the same warm start, reaches
    # held-out pass@1 14% on multiplication, with learned positions 35-38% (experiments/README.md).
    "testbed": ModelConfig(vocab_size=16, num_layers=2, d_model=64, num_heads=4, num_kv_heads=4,
                           head_dim=16, mlp_dim=256, position="learned", max_seq_len=64),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151_936, num_layers=24, d_model=896, num_heads=14,
                                num_kv_heads=2, head_dim=64, mlp_dim=4864,
                                rope_theta=1_000_000.0, rms_eps=1e-6, qkv_bias=True,
                                tie_embeddings=True, max_seq_len=32_768),
    "qwen2.5-math-1.5b": ModelConfig(vocab_size=151_936, num_layers=28, d_model=1536,
                                     num_heads=12, num_kv_heads=2, head_dim=128, mlp_dim=8960,
                                     rope_theta=10_000.0, rms_eps=1e-6, qkv_bias=True,
                                     tie_embeddings=True, max_seq_len=4096),
    "qwen2.5-math-7b": ModelConfig(vocab_size=152_064, num_layers=28, d_model=3584,
                                   num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18_944,
                                   rope_theta=10_000.0, rms_eps=1e-6, qkv_bias=True,
                                   tie_embeddings=False, max_seq_len=4096),
    "qwen3-4b": ModelConfig(vocab_size=151_936, num_layers=36, d_model=2560, num_heads=32,
                            num_kv_heads=8, head_dim=128, mlp_dim=9728, rope_theta=1_000_000.0,
                            rms_eps=1e-6, qk_norm=True, tie_embeddings=True, max_seq_len=40_960),
    "llama-3.1-8b": ModelConfig(vocab_size=128_256, num_layers=32, d_model=4096, num_heads=32,
                                num_kv_heads=8, head_dim=128, mlp_dim=14_336,
                                rope_theta=500_000.0, rope_scaling_factor=8.0,
                                rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                                rope_original_max_len=8192, rms_eps=1e-5, max_seq_len=131_072),
}


# Keys of a `config.model` block that are not `ModelConfig` fields.
NON_SHAPE_KEYS = ("preset", "checkpoint")


def resolve_model_config(cfg: Any, tokenizer_vocab_size: int | None = None) -> ModelConfig:
  """Build a `ModelConfig` from a `config.model` block (preset + overrides).

  Args:
    cfg: ConfigDict (or mapping) with `preset` and optional overrides.
    tokenizer_vocab_size: the tokenizer's id space. Unless `model.vocab_size` is set
      explicitly, the embedding grows to cover it (real checkpoints pad their vocabulary
      beyond the tokenizer's, so for them the preset's size wins).
  """
  preset = cfg["preset"]
  if preset not in PRESETS:
    raise ValueError(f"model.preset={preset!r} is not a known preset; choose one of "
                     f"{sorted(PRESETS)}")
  overrides = {k: v for k, v in dict(cfg).items()
               if k not in NON_SHAPE_KEYS and v is not None}
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
  if unknown:
    raise ValueError(f"unknown model config field(s): {sorted('model.' + k for k in unknown)}")
  if tokenizer_vocab_size is not None and "vocab_size" not in overrides:
    overrides["vocab_size"] = max(PRESETS[preset].vocab_size, tokenizer_vocab_size)
  return dataclasses.replace(PRESETS[preset], **overrides)
