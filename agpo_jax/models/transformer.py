"""Decoder-only transformer for the Qwen2 / Qwen2.5 / Qwen3 / Llama-3 families, in Flax linen.

RMSNorm, rotary embeddings (with Llama-3.1 frequency scaling), grouped-query attention with
optional QKV bias and QK-norm, SwiGLU MLP, tied or untied embeddings. Every parameter declares
its logical axes (`embed`, `q_heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`, `norm`);
`agpo_jax.sharding.rules` maps them to mesh axes.

One forward function serves training and sampling. Without a cache it is a causal pass over
`[batch, seq]`. With a `KVCache` the new tokens are written at `cache.index` and attend to every
valid slot at or before their own: prefill is a call with the whole (left-padded) prompt, a decode
step a call with one token. Because prompts are left-padded to a common length, every row writes
the same slot at each step, so the cache index is one scalar.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from agpo_jax.models.config import ModelConfig

Array = jax.Array

# Logical axes of the KV cache arrays k and v: [layers, batch, kv_heads, cache_seq, head_dim].
CACHE_AXES = ("layers", "batch", "kv_heads", "cache_seq", "head_dim")
_NEG_INF = float(jnp.finfo(jnp.float32).min)  # finite, so fully masked rows stay finite



def _constrain_rows(x: Array, rows_sharding: Any) -> Array:
  """Pin hidden states `[B, T, D]` to `rows_sharding` (rows over the data-parallel axes,
  features whole); None leaves the layout to the compiler.

  Without it, XLA lets the residual stream inherit the embedding table's layout (`embed`
  split over fsdp), so under pure FSDP every device would compute the MLP and logits of all the
  rows of its group: measured 5.6x the temporary memory of the same step on a data-parallel
  mesh. Constraining the block inputs and the head's input restores "each device its own rows".
  """
  return x if rows_sharding is None else jax.lax.with_sharding_constraint(x, rows_sharding)


class KVCache(struct.PyTreeNode):
  """Keys and values of every layer, plus which slots hold real tokens.

  Attributes:
    k, v: `[layers, batch, kv_heads, max_len, head_dim]`.
    valid: `[batch, max_len]` bool; False for left padding and unwritten slots.
    index: `[]` int32, the next slot to write.
  """

  k: Array
  v: Array
  valid: Array
  index: Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[3]

  def repeat(self, n: int) -> "KVCache":
    """Each row `n` times, consecutively: row b becomes rows b*n .. b*n+n-1."""
    return self.replace(k=jnp.repeat(self.k, n, axis=1), v=jnp.repeat(self.v, n, axis=1),
                        valid=jnp.repeat(self.valid, n, axis=0))


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
           init: Any, dtype: str) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(dtype))


def _kernel_init(fan_in: int):
  # Fan-in scaled normal: keeps activations O(1) at any width (HF checkpoints bring their own).
  return nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))


class RMSNorm(nn.Module):
  eps: float
  param_dtype: str
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones,
                   self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * scale.astype(jnp.float32)).astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> Array:
  """Inverse frequencies `[head_dim // 2]`, with Llama-3.1 scaling when configured."""
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32)
                                       / cfg.head_dim))
  if not cfg.rope_scaling_factor:
    return inv_freq
  factor = cfg.rope_scaling_factor
  low_wavelen = cfg.rope_original_max_len / cfg.rope_low_freq_factor
  high_wavelen = cfg.rope_original_max_len / cfg.rope_high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = ((cfg.rope_original_max_len / wavelen - cfg.rope_low_freq_factor)
            / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor))
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotate `x [batch, seq, heads, head_dim]` by `positions [batch, seq]` (HF half-split layout)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               cache: tuple[Array, Array, Array | int] | None, cache_index: Array | None):
    """x `[B, T, D]`, mask `[B, T, S]` -> (out `[B, T, D]`, updated cache or None).

    `cache` is (k, v, layer): the stacked keys and values of every layer
    `[L, B, KV, S, hd]` and this layer's index. The T new keys and values are written into
    the stack at (layer, cache_index) and the stack is returned, so that a caller carrying it
    through the layers (and a decode loop carrying it through steps) updates one buffer in
    place instead of rebuilding a second stacked cache.
    """
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = _kernel_init(d)
    wq = _param(self, "q_proj", (d, h, hd), ("embed", "q_heads", "head_dim"), init,
                cfg.param_dtype)
    wk = _param(self, "k_proj", (d, kv, hd), ("embed", "kv_heads", "head_dim"), init,
                cfg.param_dtype)
    wv = _param(self, "v_proj", (d, kv, hd), ("embed", "kv_heads", "head_dim"), init,
                cfg.param_dtype)
    wo = _param(self, "o_proj", (h, hd, d), ("q_heads", "head_dim", "embed"),
                _kernel_init(h * hd), cfg.param_dtype)
    q = jnp.einsum("btd,dhk->bthk", x, wq.astype(dtype))
    k = jnp.einsum("btd,dhk->bthk", x, wk.astype(dtype))
    v = jnp.einsum("btd,dhk->bthk", x, wv.astype(dtype))
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "q_bias", (h, hd), ("q_heads", "head_dim"), zeros,
                     cfg.param_dtype).astype(dtype)
      k = k + _param(self, "k_bias", (kv, hd), ("kv_heads", "head_dim"), zeros,
                     cfg.param_dtype).astype(dtype)
      v = v + _param(self, "v_bias", (kv, hd), ("kv_heads", "head_dim"), zeros,
                     cfg.param_dtype).astype(dtype)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_eps, cfg.param_dtype, "head_dim", name="q_norm")(q)
      k = RMSNorm(cfg.rms_eps, cfg.param_dtype, "head_dim", name="k_norm")(k)
    if cfg.position == "rope":  # 'learned' positions were added to the embedding instead
      inv_freq = rope_frequencies(cfg)
      q = apply_rope(q, positions, inv_freq)
      k = apply_rope(k, positions, inv_freq)
    k = k.transpose(0, 2, 1, 3)  # [B, KV, T, hd]: the cache layout
    v = v.transpose(0, 2, 1, 3)

    new_cache = None
    if cache is not None:
      cache_k, cache_v, layer = cache
      start = (layer, 0, 0, cache_index, 0)
      cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
      cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
      k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)
      v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)
      new_cache = (cache_k, cache_v)

    b, t = x.shape[:2]
    q = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(dtype)).astype(jnp.float32)
    scores = scores / math.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v.astype(dtype)).reshape(b, t, h, hd)
    return jnp.einsum("bthk,hkd->btd", out, wo.astype(dtype)), new_cache


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    d, m = cfg.d_model, cfg.mlp_dim
    gate = _param(self, "gate_proj", (d, m), ("embed", "mlp"), _kernel_init(d), cfg.param_dtype)
    up = _param(self, "up_proj", (d, m), ("embed", "mlp"), _kernel_init(d), cfg.param_dtype)
    down = _param(self, "down_proj", (m, d), ("mlp", "embed"), _kernel_init(m), cfg.param_dtype)
    hidden = jax.nn.silu(x @ gate.astype(dtype)) * (x @ up.astype(dtype))
    return hidden @ down.astype(dtype)


class Block(nn.Module):
  """Pre-norm decoder block. Signature fits `nn.scan`: (carry, scanned, *broadcast).

  Without a cache the carry is the hidden states `x` and `layer` is None. With one, the carry
  is (x, k, v) with the whole stacked cache and `layer` is this block's index (the scanned
  input): the block writes its new keys and values into the stack in place.
  """

  cfg: ModelConfig
  rows_sharding: Any = None  # see `_constrain_rows`

  @nn.compact
  def __call__(self, carry, layer, positions: Array, mask: Array, cache_index):
    cfg = self.cfg
    if layer is None:
      x, cache = carry, None
    else:
      x, cache_k, cache_v = carry
      cache = (cache_k, cache_v, layer)
    x = _constrain_rows(x, self.rows_sharding)
    attn_out, new_cache = Attention(cfg, name="attn")(
        RMSNorm(cfg.rms_eps, cfg.param_dtype, name="attn_norm")(x), positions, mask,
        cache, cache_index)
    x = x + attn_out
    x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_eps, cfg.param_dtype, name="mlp_norm")(x))
    return (x if new_cache is None else (x, *new_cache)), None


class Transformer(nn.Module):
  """The decoder. `rows_sharding`: where the hidden states live under a mesh (a
  `NamedSharding` with rows over the data-parallel axes, from `sharding.rules.batch_sharding`),
  passed by the sharded sampler and train steps; None on one device."""

  cfg: ModelConfig
  rows_sharding: Any = None

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, input_mask: Array,
               cache: KVCache | None = None, return_hidden: bool = False):
    """Run the decoder.

    Args:
      tokens: `[B, T]` int32.
      positions: `[B, T]` int32 rotary positions (left padding: count only real tokens).
      input_mask: `[B, T]` bool, False for padding.
      cache: optional `KVCache`; the T new tokens are written at `cache.index`.
      return_hidden: return the final normed hidden states `[B, T, D]` instead of logits,
        so a caller can project only the positions it needs (see `logits_from_hidden`).

    Returns:
      (`[B, T, V]` float32 logits or `[B, T, D]` hidden states, updated cache or None).
    """
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    # A tied embedding doubles as the output projection, so it gets the projection's scale.
    embed_std = 1.0 / math.sqrt(cfg.d_model) if cfg.tie_embeddings else 1.0
    embed = _param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                   nn.initializers.normal(stddev=embed_std), cfg.param_dtype)
    x = jnp.take(embed, tokens, axis=0).astype(dtype)
    if cfg.position == "learned":  # absolute positions (left-padding aware); no RoPE then
      table = _param(self, "pos_embed", (cfg.max_seq_len, cfg.d_model), ("seq", "embed"),
                     nn.initializers.normal(stddev=embed_std), cfg.param_dtype)
      x = x + jnp.take(table, positions, axis=0).astype(dtype)

    t = tokens.shape[1]
    if cache is None:
      causal = jnp.tril(jnp.ones((t, t), bool))
      mask = causal[None] & input_mask[:, None, :]
      cache_index = None
    else:
      cache_index = cache.index
      valid = jax.lax.dynamic_update_slice(cache.valid, input_mask, (0, cache_index))
      query_slot = cache_index + jnp.arange(t)
      causal = jnp.arange(cache.max_len)[None, :] <= query_slot[:, None]  # [T, S]
      mask = causal[None] & valid[:, None, :]

    block = Block
    if cfg.remat:
      block = nn.remat(Block, prevent_cse=not cfg.scan_layers, static_argnums=())
    # With a cache, the whole stacked k and v travel in the carry and each layer writes its
    # slot in place (a scanned-in, scanned-out cache would be a second full cache in memory).
    carry = x if cache is None else (x, cache.k, cache.v)
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      layers = None if cache is None else jnp.arange(cfg.num_layers, dtype=jnp.int32)
      carry, _ = scanned(cfg, self.rows_sharding, name="layers")(carry, layers, positions, mask,
                                                                 cache_index)
    else:
      for i in range(cfg.num_layers):
        carry, _ = block(cfg, self.rows_sharding, name=f"layer_{i}")(
            carry, None if cache is None else i, positions, mask, cache_index)
    x = carry if cache is None else carry[0]

    x = _constrain_rows(RMSNorm(cfg.rms_eps, cfg.param_dtype, name="final_norm")(x),
                        self.rows_sharding)
    if not cfg.tie_embeddings:
      _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
             _kernel_init(cfg.d_model), cfg.param_dtype)
    new_cache = None
    if cache is not None:
      new_cache = cache.replace(k=carry[1], v=carry[2], valid=valid, index=cache.index + t)
    if return_hidden:
      return x, new_cache
    return logits_from_hidden(cfg, self.variables["params"], x), new_cache


def init_params(cfg: ModelConfig, rng: Array) -> dict:
  """Random parameters as a plain pytree of arrays (logical-axis metadata stripped)."""
  return nn.meta.unbox(jax.jit(functools.partial(_boxed_init, cfg))(rng))


def _boxed_init(cfg: ModelConfig, rng: Array) -> dict:
  tokens = jnp.zeros((1, 1), jnp.int32)
  return Transformer(cfg).init(rng, tokens, tokens, jnp.ones((1, 1), bool))["params"]


def abstract_params(cfg: ModelConfig) -> dict:
  """`jax.ShapeDtypeStruct` tree of the parameters, without allocating them."""
  return nn.meta.unbox(jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.key(0)))


def param_logical_axes(cfg: ModelConfig) -> dict:
  """`PartitionSpec` of logical axis names for every parameter (same tree as the params)."""
  return nn.get_partition_spec(jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.key(0)))


def forward(cfg: ModelConfig, params: dict, tokens: Array, positions: Array, input_mask: Array,
            cache: KVCache | None = None, return_hidden: bool = False,
            rows_sharding: Any = None):
  """Functional entry point: `Transformer(cfg, rows_sharding).apply` on a plain params tree."""
  return Transformer(cfg, rows_sharding).apply({"params": params}, tokens, positions,
                                               input_mask, cache, return_hidden)


def logits_from_hidden(cfg: ModelConfig, params: dict, hidden: Array) -> Array:
  """Project final hidden states `[..., D]` to float32 logits `[..., V]`."""
  dtype = jnp.dtype(cfg.dtype)
  if cfg.tie_embeddings:
    logits = jnp.einsum("...d,vd->...v", hidden, nn.meta.unbox(params["embed"]).astype(dtype))
  else:
    logits = jnp.einsum("...d,dv->...v", hidden, nn.meta.unbox(params["lm_head"]).astype(dtype))
  return logits.astype(jnp.float32)


def positions_from_mask(input_mask: Array) -> Array:
  """Rotary positions for a left-padded batch: 0, 1, ... over the real tokens of each row."""
  return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)
