"""Attention over a causal pass and over a decode cache.

`attend` is the attention of a causal pass over `T` tokens (training, scoring, prefill), behind
one switch, `ModelConfig.attention`: the reference einsums, `jax.nn.dot_product_attention`
(cuDNN's fused kernel on a GPU), or Pallas splash attention (TPU; its interpreter elsewhere).
`attend_cache` is a decode step's attention over a row's own cache plus a prompt cache its
group shares (`transformer.SharedPrefix`), one softmax over both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

Array = jax.Array

NEG_INF = float(jnp.finfo(jnp.float32).min)  # finite, so fully masked rows stay finite


def per_shard(fn: Callable, rows_sharding: Any, kv_heads: int, in_dims: tuple[str, ...],
              out_dims: str | tuple[str, ...]) -> Callable:
  """`fn` run on each device's rows (and KV heads) in a `shard_map` under a mesh; `fn` itself
  on one device (`rows_sharding` None). Pallas TPU kernels need it: the compiler cannot
  partition a Mosaic kernel ("Please wrap the call in a shard_map").

  `in_dims` / `out_dims`: one letter per dimension of each argument / output, "r" rows (split
  like `rows_sharding`'s first dimension), "h" KV heads (split over the mesh's other axes when
  `kv_heads` divides by their size, as the sharding rules split them), "." whole.
  """
  if rows_sharding is None:
    return fn
  mesh = rows_sharding.mesh
  rows = rows_sharding.spec[0]
  rows_axes = rows if isinstance(rows, tuple) else (rows,)
  rest = tuple(a for a in mesh.axis_names if a not in rows_axes and mesh.shape[a] > 1)
  heads = rest if rest and kv_heads % math.prod(mesh.shape[a] for a in rest) == 0 else None

  def spec(dims: str) -> PartitionSpec:
    return PartitionSpec(*({"r": rows, "h": heads}.get(d) for d in dims))

  out_specs = spec(out_dims) if isinstance(out_dims, str) else tuple(map(spec, out_dims))
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(map(spec, in_dims)), out_specs=out_specs,
                       check_vma=False)


def attend(q: Array, k: Array, v: Array, mask: Array, impl: str = "xla",
           rows_sharding: Any = None) -> Array:
  """Grouped-query attention of a causal pass over `T` tokens (training, scoring, prefill).

  Args:
    q: `[B, T, KV, G, hd]` queries, G per KV head.
    k, v: `[B, T, KV, hd]`.
    mask: `[B, T, T]` bool, True where a query may attend (causal and key not padding).
    impl: `ModelConfig.attention`: "xla" (the reference: einsums, scores materialised),
      "dot_product_attention" (`jax.nn.dot_product_attention`, which picks cuDNN's fused
      kernel on a GPU when it can), "cudnn" (that kernel or an error), "splash" (the Pallas
      splash-attention kernel: TPU; its interpreter elsewhere, for tests).
    rows_sharding: where the rows live under a mesh (None on one device): splash then runs
      on each device's rows and KV heads (`per_shard`).
  Returns:
    `[B, T, KV, G, hd]`; softmax in float32 on the reference path.
  """
  b, t, kv, g, hd = q.shape
  # Every query may see itself: a left-padding query would otherwise have no key at all, and
  # kernels leave such rows undefined. Real queries never see padding keys, so this changes
  # nothing a real position computes.
  mask = mask | jnp.eye(t, dtype=bool)[None]
  if impl in ("dot_product_attention", "cudnn"):
    out = jax.nn.dot_product_attention(
        q.reshape(b, t, kv * g, hd), k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None],
        implementation=None if impl == "dot_product_attention" else "cudnn")
    return out.reshape(b, t, kv, g, hd)
  if impl == "splash":
    return per_shard(_splash_attention, rows_sharding, kv, ("r.h..", "r.h.", "r.h.", "r."),
                     "r.h..")(q, k, v, mask[:, -1, :])
  dtype = q.dtype
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(dtype)).astype(jnp.float32)
  scores = scores / math.sqrt(hd)
  scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype))


_SPLASH_BLOCK = 128


def _splash_kernel(seq: int, group: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
      splash_attention_kernel as splash, splash_attention_mask as splash_mask)
  block = _SPLASH_BLOCK
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((seq, seq))] * group)
  # Built at every trace (not cached): a kernel made under one trace holds its arrays.
  return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash_attention(q: Array, k: Array, v: Array, valid: Array) -> Array:
  """`attend` through splash attention: causal, with padding as a second segment (left
  padding and real tokens never attend to each other). The sequence is padded at the end to
  the kernel's block; on a backend without TPUs the kernel runs in Pallas' interpreter."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
      splash_attention_kernel as splash)
  b, t, kv, g, hd = q.shape
  seq = -(-t // _SPLASH_BLOCK) * _SPLASH_BLOCK
  pad = ((0, 0), (0, seq - t))
  segments = jnp.pad(valid.astype(jnp.int32), pad)  # 1 real, 0 padding (left or end)
  kernel = _splash_kernel(seq, g, jax.default_backend() != "tpu")
  qs = jnp.pad(q * (1.0 / math.sqrt(hd)), pad + ((0, 0),) * 3).transpose(0, 2, 3, 1, 4)
  ks = jnp.pad(k.astype(q.dtype), pad + ((0, 0),) * 2).transpose(0, 2, 1, 3)
  vs = jnp.pad(v.astype(q.dtype), pad + ((0, 0),) * 2).transpose(0, 2, 1, 3)

  def one(q_bk, k_bk, v_bk, seg):  # [G, S, hd], [S, hd], [S, hd], [S]
    return kernel(q_bk, k_bk, v_bk, segment_ids=splash.SegmentIds(q=seg, kv=seg))

  per_head = jax.vmap(one, in_axes=(0, 0, 0, None))
  out = jax.vmap(per_head)(qs, ks, vs, segments)  # [B, KV, G, S, hd]
  return out.transpose(0, 3, 1, 2, 4)[:, :t]


def attend_cache(q: Array, cache_k: Array, cache_v: Array, mask: Array,
                 prefix: tuple[Array, Array, Array] | None = None) -> Array:
  """`attend` over one layer's cache: keys `[B, KV, hd, S]` (transposed), values
  `[B, KV, S, hd]`; q `[B, T, KV, G, hd]`, mask `[B, T, S]` -> `[B, T, KV, G, hd]`.

  `prefix` (k `[Bp, KV, hd, P]`, v `[Bp, KV, P, hd]`, valid `[Bp, P]`) is a shared prefix
  (`SharedPrefix`) every query also attends to, rows `b*R .. b*R + R-1` (R = B / Bp) reading
  prefix b: the R rows' queries meet its keys in one matmul, so the prefix is read once per
  group. One softmax spans prefix and cache (their maxima and sums combined).
  """
  b, t, kv, g, hd = q.shape
  dtype = q.dtype
  scale = 1.0 / math.sqrt(hd)
  qm = q.transpose(0, 2, 1, 3, 4).reshape(b, kv, t * g, hd)
  scores = jnp.matmul(qm, cache_k.astype(dtype)).astype(jnp.float32) * scale
  scores = scores.reshape(b, kv, t, g, -1)
  scores = jnp.where(mask[:, None, :, None, :], scores, NEG_INF)
  if prefix is None:
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, kv, t * g, -1)
    out = jnp.matmul(probs, cache_v.astype(dtype)).reshape(b, kv, t, g, hd)
    return out.transpose(0, 2, 1, 3, 4)
  prefix_k, prefix_v, prefix_valid = prefix
  bp, p = prefix_k.shape[0], prefix_k.shape[-1]
  r = b // bp

  def to_rows(x: Array) -> Array:  # [Bp, KV, R, T, G, ...] -> [B, KV, T, G, ...]
    x = x.reshape(bp, kv, r, t, g, *x.shape[5:]).swapaxes(1, 2)
    return x.reshape(b, kv, t, g, *x.shape[5:])

  def to_groups(x: Array) -> Array:  # [B, KV, T, G, ...] -> [Bp, KV, R, T, G, ...]
    return x.reshape(bp, r, kv, t, g, *x.shape[4:]).swapaxes(1, 2)

  qp = to_groups(q.transpose(0, 2, 1, 3, 4)).reshape(bp, kv, r * t * g, hd)
  prefix_scores = jnp.matmul(qp, prefix_k.astype(dtype)).astype(jnp.float32) * scale
  prefix_scores = prefix_scores.reshape(bp, kv, r, t, g, p)
  prefix_scores = jnp.where(prefix_valid[:, None, None, None, None, :], prefix_scores, NEG_INF)
  top = jnp.maximum(jnp.max(scores, axis=-1), to_rows(jnp.max(prefix_scores, axis=-1)))
  weights = jnp.exp(scores - top[..., None])
  prefix_weights = jnp.exp(prefix_scores - to_groups(top)[..., None])
  total = jnp.sum(weights, axis=-1) + to_rows(jnp.sum(prefix_weights, axis=-1))
  out = jnp.matmul(weights.astype(dtype).reshape(b, kv, t * g, -1), cache_v.astype(dtype))
  prefix_out = jnp.matmul(prefix_weights.astype(dtype).reshape(bp, kv, r * t * g, p),
                          prefix_v.astype(dtype))
  out = (out.reshape(b, kv, t, g, hd).astype(jnp.float32)
         + to_rows(prefix_out.reshape(bp, kv, r, t, g, hd)).astype(jnp.float32))
  return (out / total[..., None]).astype(dtype).transpose(0, 2, 1, 3, 4)
