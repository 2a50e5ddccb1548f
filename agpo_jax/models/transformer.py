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
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from agpo_jax.models import paged
from agpo_jax.models.attention import attend, attend_cache
from agpo_jax.models.config import ModelConfig

Array = jax.Array

# Logical axes of each layer's cache arrays: keys transposed [batch, kv_heads, head_dim,
# cache_seq] (see `Attention`), values [batch, kv_heads, cache_seq, head_dim].
K_CACHE_AXES = ("batch", "kv_heads", "head_dim", "cache_seq")
V_CACHE_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")



def _constrain_rows(x: Array, rows_sharding: Any) -> Array:
  """Pin hidden states `[B, T, D]` to `rows_sharding` (rows over the data-parallel axes,
  features whole); None leaves the layout to the compiler.

  Without it, XLA lets the residual stream inherit the embedding table's layout (`embed`
  split over fsdp), so under pure FSDP every device would compute the MLP and logits of all the
  rows of its group: measured 5.6x the temporary memory of the same step on a data-parallel
  mesh. Constraining the block inputs and the head's input restores "each device its own rows".
  """
  return x if rows_sharding is None else jax.lax.with_sharding_constraint(x, rows_sharding)


class SharedPrefix(struct.PyTreeNode):
  """The prompts' keys and values, read by groups of consecutive decode rows.

  The sampler prefills each prompt once; its G sample rows then attend to this one copy
  (`attend_cache`) instead of G forked copies: the fork writes nothing, and a decode step reads
  each prompt's keys once per group rather than once per row.

  Attributes:
    k: tuple of `num_layers` arrays `[prompts, kv_heads, head_dim, prompt_len]`.
    v: tuple of `num_layers` arrays `[prompts, kv_heads, prompt_len, head_dim]`.
    valid: `[prompts, prompt_len]` bool; False for left padding.
    group: rows per prompt: decode rows `b*group .. b*group + group-1` read prompt b.
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]
  valid: Array
  group: int = struct.field(pytree_node=False, default=1)

  def take(self, rows: Array) -> "SharedPrefix":
    """The prefix of decode `rows` (indices into the batch), one copy per row (group 1)."""
    pick = lambda x: x[rows // self.group]  # noqa: E731
    return SharedPrefix(k=tuple(map(pick, self.k)), v=tuple(map(pick, self.v)),
                        valid=pick(self.valid), group=1)


class KVCache(struct.PyTreeNode):
  """Keys and values of every layer, plus which slots hold real tokens.

  One buffer per layer rather than one stacked `[L, ...]` array: a decode step then reads each
  layer's keys and values where they lie. Slicing a layer out of a stacked cache made XLA copy
  it into a fresh buffer before every attention matmul (two copies per layer and step).

  Attributes:
    k: tuple of `num_layers` arrays `[batch, kv_heads, head_dim, max_len]` (keys transposed:
      see `Attention`).
    v: tuple of `num_layers` arrays `[batch, kv_heads, max_len, head_dim]`.
    valid: `[batch, max_len]` bool; False for left padding and unwritten slots.
    index: `[]` int32, the next slot to write.
    prefix: optional `SharedPrefix` every row also attends to, before its own slots (the
      sampler's prompts; the cache then holds the generated tokens only).
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]
  valid: Array
  index: Array
  prefix: SharedPrefix | None = None

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
    v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
    dtype = jnp.dtype(cfg.dtype)
    return cls(k=tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)),
               v=tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)),
               valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.v[0].shape[2]

  def shared(self, group: int) -> SharedPrefix:
    """This cache's keys, values and valid slots as a `SharedPrefix` read by groups of `group`
    rows (the sampler's prompt cache)."""
    return SharedPrefix(k=self.k, v=self.v, valid=self.valid, group=group)

  def take(self, rows: Array) -> "KVCache":
    """The cache of `rows` (indices into the batch), in that order."""
    pick = lambda x: x[rows]  # noqa: E731
    return self.replace(k=tuple(map(pick, self.k)), v=tuple(map(pick, self.v)),
                        valid=pick(self.valid),
                        prefix=None if self.prefix is None else self.prefix.take(rows))


class LayerCache(NamedTuple):
  """One layer's part of a `KVCache`, as a block reads and updates it: its own `k`, `v` and,
  with a shared prefix, the prefix's keys, values and valid slots (read only)."""

  k: Array
  v: Array
  prefix_k: Array | None = None
  prefix_v: Array | None = None
  prefix_valid: Array | None = None


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
  rows_sharding: Any = None  # under a mesh: Pallas kernels run per shard (`per_shard`)

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               cache: LayerCache | paged.PagedLayer | None, cache_index: Array | None,
               fresh: bool = False):
    """x `[B, T, D]`, mask `[B, T, S]` -> (out `[B, T, D]`, updated `LayerCache` or None).

    `cache` is this layer's `LayerCache`, its k and v their own buffers: the T new keys and
    values are written at `cache_index` and the queries attend to the buffers directly (and to
    the cache's shared prefix, if any), so a decode loop carrying them updates them in place
    and reads them without a copy. With `fresh` (a prefill into an empty cache) the queries
    attend to the T new keys alone and `mask` is `[B, T, T]`: the empty slots cost nothing.
    A `paged.PagedLayer` (a decode step, T = 1) takes the new key and value at the token's
    position and the paged-attention kernel reads the row's slots up to it; `mask` is unused.
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
    b, t = x.shape[:2]
    q = q.reshape(b, t, kv, h // kv, hd)
    if isinstance(cache, paged.PagedLayer):  # a decode step: one token per row
      new_cache, out = paged.step(cache, q[:, 0], k[:, 0], v[:, 0], positions[:, 0],
                                  self.rows_sharding)
    else:
      out, new_cache = _attend_dense(cfg, self.rows_sharding, q, k, v, mask, cache,
                                     cache_index, fresh)
    out = out.reshape(b, t, h, hd)
    return jnp.einsum("bthk,hkd->btd", out, wo.astype(dtype)), new_cache


def _attend_dense(cfg: ModelConfig, rows_sharding: Any, q: Array, k: Array, v: Array,
                  mask: Array, cache: LayerCache | None, cache_index: Array | None,
                  fresh: bool) -> tuple[Array, LayerCache | None]:
  """`Attention` without a cache or over a `LayerCache`: (out, the updated cache or None)."""
  if cache is None or fresh:
    out = attend(q, k, v, mask, cfg.attention, rows_sharding)
  if cache is None:
    return out, None
  # Keys are stored transposed, [B, KV, hd, S]: a decode step's scores are then one plain
  # batched matmul q @ k over the cache (on one CPU core, 30 layers of SmolLM2 at 64 rows
  # x 192 slots: 32 ms against 152 ms for the same einsum over [B, KV, S, hd] keys).
  cache_k = jax.lax.dynamic_update_slice(
      cache.k, k.transpose(0, 2, 3, 1).astype(cache.k.dtype), (0, 0, 0, cache_index))
  cache_v = jax.lax.dynamic_update_slice(
      cache.v, v.transpose(0, 2, 1, 3).astype(cache.v.dtype), (0, 0, cache_index, 0))
  if not fresh:
    prefix = None
    if cache.prefix_k is not None:
      prefix = (cache.prefix_k, cache.prefix_v, cache.prefix_valid)
    out = attend_cache(q, cache_k, cache_v, mask, prefix)
  return out, cache._replace(k=cache_k, v=cache_v)


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

  Without a cache the carry is the hidden states `x`. With one, the carry is (x, LayerCache)
  with this layer's keys and values (`forward_cached`), which the block updates in place.
  """

  cfg: ModelConfig
  rows_sharding: Any = None  # see `_constrain_rows`

  @nn.compact
  def __call__(self, carry, unused, positions: Array, mask: Array, cache_index,
               fresh: bool = False):
    del unused  # the scanned input slot of `nn.scan`
    cfg = self.cfg
    x, cache = carry if isinstance(carry, tuple) else (carry, None)
    x = _constrain_rows(x, self.rows_sharding)
    attn_out, new_cache = Attention(cfg, self.rows_sharding, name="attn")(
        RMSNorm(cfg.rms_eps, cfg.param_dtype, name="attn_norm")(x), positions, mask,
        cache, cache_index, fresh)
    x = x + attn_out
    x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_eps, cfg.param_dtype, name="mlp_norm")(x))
    return (x if new_cache is None else (x, new_cache)), None


class Transformer(nn.Module):
  """The decoder. `rows_sharding`: where the hidden states live under a mesh (a
  `NamedSharding` with rows over the data-parallel axes, from `sharding.rules.batch_sharding`),
  passed by the sharded sampler and train steps; None on one device."""

  cfg: ModelConfig
  rows_sharding: Any = None

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, input_mask: Array,
               return_hidden: bool = False):
    """Causal pass over `[B, T]` (training, scoring; `forward_cached` runs with a cache).

    Args:
      tokens: `[B, T]` int32.
      positions: `[B, T]` int32 positions (left padding: count only real tokens).
      input_mask: `[B, T]` bool, False for padding.
      return_hidden: return the final normed hidden states `[B, T, D]` instead of logits,
        so a caller can project only the positions it needs (see `logits_from_hidden`).

    Returns:
      (`[B, T, V]` float32 logits or `[B, T, D]` hidden states, None).
    """
    cfg = self.cfg
    x = _embed(cfg, self, tokens, positions)
    t = tokens.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & input_mask[:, None, :]
    block = Block
    if cfg.remat:
      block = nn.remat(Block, prevent_cse=not cfg.scan_layers, static_argnums=())
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 4,
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.rows_sharding, name="layers")(x, None, positions, mask, None)
    else:
      for i in range(cfg.num_layers):
        x, _ = block(cfg, self.rows_sharding, name=f"layer_{i}")(x, None, positions, mask, None)
    x = _constrain_rows(RMSNorm(cfg.rms_eps, cfg.param_dtype, name="final_norm")(x),
                        self.rows_sharding)
    if not cfg.tie_embeddings:
      _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
             _kernel_init(cfg.d_model), cfg.param_dtype)
    if return_hidden:
      return x, None
    return logits_from_hidden(cfg, self.variables["params"], x), None


def _embed(cfg: ModelConfig, module: nn.Module, tokens: Array, positions: Array) -> Array:
  """Token embeddings (plus learned absolute positions), in the compute dtype."""
  dtype = jnp.dtype(cfg.dtype)
  # A tied embedding doubles as the output projection, so it gets the projection's scale.
  embed_std = 1.0 / math.sqrt(cfg.d_model) if cfg.tie_embeddings else 1.0
  embed = _param(module, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                 nn.initializers.normal(stddev=embed_std), cfg.param_dtype)
  x = jnp.take(embed, tokens, axis=0).astype(dtype)
  if cfg.position == "learned":  # absolute positions (left-padding aware); no RoPE then
    table = _param(module, "pos_embed", (cfg.max_seq_len, cfg.d_model), ("seq", "embed"),
                   nn.initializers.normal(stddev=embed_std), cfg.param_dtype)
    x = x + jnp.take(table, positions, axis=0).astype(dtype)
  return x


def layer_params(cfg: ModelConfig, params: dict, layer: int) -> dict:
  """The parameters of block `layer` (a slice of the stacked tree under `scan_layers`)."""
  if cfg.scan_layers and "layers" in params:
    return jax.tree.map(lambda x: x[layer], nn.meta.unbox(params["layers"]))
  return params[f"layer_{layer}"]


def unstack_layers(cfg: ModelConfig, params: dict) -> dict:
  """The same parameters with the blocks as `layer_0 .. layer_{L-1}` (a no-op without
  `scan_layers`); `forward_cached` accepts either tree.

  A decode loop calls this once, outside the loop: inside it, XLA copies a static slice of the
  stacked weights into a fresh buffer at every step (on SmolLM2-135M, every block weight once
  per token: 570 ms a step on one CPU core against 520 ms with the blocks unstacked first).
  """
  if not cfg.scan_layers or "layers" not in params:
    return params
  rest = {k: v for k, v in params.items() if k != "layers"}
  return {**rest, **{f"layer_{i}": layer_params(cfg, params, i) for i in range(cfg.num_layers)}}


def forward_cached(cfg: ModelConfig, params: dict, tokens: Array, positions: Array,
                   input_mask: Array, cache: KVCache | paged.PagedCache,
                   return_hidden: bool = False,
                   rows_sharding: Any = None, fresh: bool = False):
  """The decoder over a `KVCache`: the T new tokens are written at `cache.index` and attend to
  every valid slot at or before their own (prefill: the whole left-padded prompt; a decode
  step: one token). With a `cache.prefix` they also attend to all of its valid slots, which
  come before the cache's own. Same parameters and results as `forward`.

  The layers run unrolled whatever `cfg.scan_layers` (a scanned model's block parameters are
  sliced per layer), each on its own cache buffers, which a decode loop then updates and reads
  in place. `fresh`: the cache is empty and the new tokens start at slot 0 (a prefill); they
  then attend among themselves only, so prefill works on the prompt's slots, not the cache's.
  A `paged.PagedCache` (`model.attention="splash"` decode) takes one token per row, written at
  its position; `input_mask` is then unused.
  """
  dtype = jnp.dtype(cfg.dtype)
  x = jnp.take(nn.meta.unbox(params["embed"]), tokens, axis=0).astype(dtype)
  if cfg.position == "learned":
    x = x + jnp.take(nn.meta.unbox(params["pos_embed"]), positions, axis=0).astype(dtype)
  if isinstance(cache, paged.PagedCache):
    return _forward_paged(cfg, params, x, positions, cache, return_hidden, rows_sharding)
  t = tokens.shape[1]
  valid = jax.lax.dynamic_update_slice(cache.valid, input_mask, (0, cache.index))
  if fresh:
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & input_mask[:, None, :]
  else:
    query_slot = cache.index + jnp.arange(t)
    causal = jnp.arange(cache.max_len)[None, :] <= query_slot[:, None]  # [T, S]
    mask = causal[None] & valid[:, None, :]
  prefix = cache.prefix
  if prefix is not None and fresh:
    raise ValueError("a fresh (prefill) pass writes a cache of its own: no shared prefix")
  block = Block(cfg, rows_sharding)
  ks, vs = [], []
  for i in range(cfg.num_layers):
    layer = LayerCache(cache.k[i], cache.v[i])
    if prefix is not None:
      layer = layer._replace(prefix_k=prefix.k[i], prefix_v=prefix.v[i],
                             prefix_valid=prefix.valid)
    (x, layer), _ = block.apply({"params": layer_params(cfg, params, i)}, (x, layer), None,
                                positions, mask, cache.index, fresh)
    ks.append(layer.k)
    vs.append(layer.v)
  new_cache = cache.replace(k=tuple(ks), v=tuple(vs), valid=valid, index=cache.index + t)
  return _head(cfg, params, x, return_hidden, rows_sharding), new_cache


def _forward_paged(cfg: ModelConfig, params: dict, x: Array, positions: Array,
                   cache: paged.PagedCache, return_hidden: bool, rows_sharding: Any):
  """`forward_cached`'s decode step over a `paged.PagedCache`, from the embedded tokens."""
  block = Block(cfg, rows_sharding)
  layers = []
  for i in range(cfg.num_layers):
    (x, layer), _ = block.apply({"params": layer_params(cfg, params, i)}, (x, cache.layer(i)),
                                None, positions, None, None)
    layers.append(layer)
  new_cache = cache.replace(k=tuple(l.k for l in layers), v=tuple(l.v for l in layers))
  return _head(cfg, params, x, return_hidden, rows_sharding), new_cache


def _head(cfg: ModelConfig, params: dict, x: Array, return_hidden: bool,
          rows_sharding: Any) -> Array:
  """The final norm, then the logits unless `return_hidden`."""
  x = RMSNorm(cfg.rms_eps, cfg.param_dtype).apply({"params": params["final_norm"]}, x)
  x = _constrain_rows(x, rows_sharding)
  return x if return_hidden else logits_from_hidden(cfg, params, x)


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
  boxed = jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.key(0))
  return nn.get_partition_spec(boxed)


def forward(cfg: ModelConfig, params: dict, tokens: Array, positions: Array, input_mask: Array,
            cache: KVCache | None = None, return_hidden: bool = False,
            rows_sharding: Any = None):
  """Functional entry point: `Transformer(cfg, rows_sharding).apply` on a plain params tree,
  or `forward_cached` when a cache is given. Returns (logits or hidden states, cache or None).
  """
  if cache is not None:
    return forward_cached(cfg, params, tokens, positions, input_mask, cache, return_hidden,
                          rows_sharding)
  return Transformer(cfg, rows_sharding).apply({"params": params}, tokens, positions,
                                               input_mask, return_hidden)


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
