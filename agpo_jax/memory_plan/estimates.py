"""Bytes one device holds, as pure functions of a `ModelConfig`, a mesh and the run's sizes.

Parameter, optimizer-state and gradient shards, the rollout batch and the KV cache are exact
byte counts; activations and the sampler's working sets are estimates read off XLA's buffer
assignment (see `agpo_jax.memory_plan`). Numbers that matter, all measured on XLA:CPU and
described where they are used:

  * the prompt pass scores the prompt's positions among themselves (not against the cache's
    empty response slots).
  * the sampler's decode updates its cache of generated tokens in place and reads the prompts'
    shared cache where it lies (one buffer per layer); besides the caches it holds the blocks'
    weights unstacked once, the logits' working set, the rollout buffers and, on one device,
    its compacted caches. When
    the query heads split over `tensor` and the KV heads do not (e.g. 4 query and 2 KV heads on
    tensor=4), the partitioner also re-lays-out the cache once per step: one more k-sized stack
    (measured 0.75x the cache on XLA:CPU, where otherwise 0.3x).
  * with `train.num_microbatches == 2` the step holds two micro-batches of activations: the
    remaining 1-step scan is unrolled and the two independent forward passes overlap (applied
    by `plan.plan_memory`).
  * `sampling.rollout_chunks` splits each rollout batch into that many generate calls: the
    sample phase holds the cache of batch / rollout_chunks rows (`fit.min_rollout_chunks` finds
    the smallest that fits).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from agpo_jax.models import paged, transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding import rules

GiB = 1 << 30

_F32 = 4
# Live float32 [rows, completion, vocab] arrays at the train step's peak: the logits, their
# log-softmax (entropy and log-probs) and the gradient flowing back into them (measured: ~3).
TRAIN_LOGIT_COPIES = 3
# Live float32 [rows, vocab] arrays in one decode step: the carried logits, filtered logits,
# the top-p sort and its cumulative sums, random bits, log-softmax (measured: ~8 with top-p).
DECODE_LOGIT_COPIES = 8


# ---------------------------------------------------------------------------------------------
# Parameters, optimizer state, gradients


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def shard_elements(shape: Sequence[int], spec: PartitionSpec, axis_sizes: dict[str, int]) -> int:
  """Elements of one device's shard of an array of `shape` under `spec`."""
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  n = 1
  for dim, entry in zip(shape, entries):
    parts = math.prod(axis_sizes[a] for a in _axes(entry))
    if dim % parts:
      raise ValueError(f"dimension {dim} of {tuple(shape)} does not split {parts} ways ({spec})")
    n *= dim // parts
  return n


@dataclasses.dataclass(frozen=True)
class ParamBytes:
  """One device's share of a model's parameters (see `param_bytes`)."""

  num_params: int
  shard: int  # bytes of one device's shard of every parameter
  shard_elements: int  # ... in elements
  layer_shard: int  # ... of the decoder blocks only
  gather_unit: int  # bytes of the largest unit (one block, embedding, LM head) all-gathered


@functools.lru_cache(maxsize=64)
def param_bytes(cfg: ModelConfig, axis_items: tuple[tuple[str, int], ...]) -> ParamBytes:
  """Parameter count and one device's parameter bytes under `rules.param_specs`.

  Args:
    cfg: the model; its `param_dtype` is the storage dtype.
    axis_items: the mesh axis sizes as sorted (axis, size) pairs (hashable, for the cache).
  """
  axis_sizes = dict(axis_items)
  shapes = transformer.abstract_params(cfg)
  specs = rules.param_specs(cfg, axis_sizes)
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  num_params = shard = elements = layer_shard = 0
  units: dict[str, int] = {}
  for (path, leaf), spec in zip(flat_shapes, flat_specs, strict=True):
    itemsize = np.dtype(leaf.dtype).itemsize
    local = shard_elements(leaf.shape, spec, axis_sizes)
    size = local * itemsize
    elements += local
    num_params += math.prod(leaf.shape)
    shard += size
    top = str(getattr(path[0], "key", path[0]))
    block = top == "layers" or top.startswith("layer_")
    if block:
      layer_shard += size
    fsdp = axis_sizes.get("fsdp", 1) if "fsdp" in {a for e in spec for a in _axes(e)} else 1
    gathered = size * fsdp
    if top == "layers":  # scanned: one step of the scan gathers one layer
      gathered //= cfg.num_layers
    units[top] = units.get(top, 0) + gathered
  return ParamBytes(num_params, shard, elements, layer_shard, max(units.values()))


def opt_state_bytes(param_shard: int) -> int:
  """`optax.adamw` state of a `param_shard`-byte parameter shard: mu and nu in the parameter
  dtype, and two int32 step counts."""
  return 2 * param_shard + 2 * 4


def grad_tree_bytes(params: ParamBytes) -> int:
  """One device's shard of one gradient tree: `accumulate_gradients` divides by a float32
  denominator, so gradients are float32 whatever the parameter dtype (the AdamW moments stay
  in the parameter dtype, `_apply_if_finite`)."""
  return params.shard_elements * _F32


# ---------------------------------------------------------------------------------------------
# Activations, caches, the rollout batch


def _local(n: int, parts: int) -> int:
  """Size of a dimension on one device: split when it divides (as `logical_spec` does)."""
  return n // parts if n % parts == 0 else n


def flash_attention(cfg: ModelConfig) -> bool:
  """Whether causal passes run a fused kernel that never materialises the `[B, H, T, T]`
  scores (`model.attention` "cudnn" or "splash"; "dot_product_attention" may fall back to
  XLA's, so it is counted as materialised)."""
  return cfg.attention in ("cudnn", "splash")


def layer_residuals(cfg: ModelConfig, rows: int, seq: int, tensor: int) -> int:
  """Bytes one decoder block keeps for its backward pass (no remat), for `rows` local rows.

  Read off XLA's buffer assignment of the train step (the scan's stacked residuals):
    RMSNorms   4 float32 [B, T, D] (x and x * rsqrt for both norms) + 2 outputs in compute
               dtype + 4 float32 [B, T] statistics
    attention  q and the attention output [B, T, H, hd], k and v [B, KV, T, hd] in compute
               dtype; softmax probabilities [B, H, T, T] in float32 and again in compute
               dtype (unless a flash kernel is on: `flash_attention`); 2 float32
               [B, H, T] softmax statistics
    MLP        6 [B, T, mlp] in compute dtype (gate and up projections, sigmoid, silu,
               product, ...)
  Heads and MLP units are split over `tensor` when they divide.
  """
  c = np.dtype(cfg.dtype).itemsize
  d, hd = cfg.d_model, cfg.head_dim
  h = _local(cfg.num_heads, tensor)
  kv = _local(cfg.num_kv_heads, tensor)
  f = _local(cfg.mlp_dim, tensor)
  norms = rows * seq * (d * (4 * _F32 + 2 * c) + 4 * _F32)
  scores = 0 if flash_attention(cfg) else rows * h * seq * seq * (_F32 + c)
  attn = rows * seq * hd * (2 * h + 2 * kv) * c + scores + rows * h * seq * 2 * _F32
  mlp = 6 * rows * seq * f * c
  return norms + attn + mlp


def train_activations(cfg: ModelConfig, rows: int, prompt_len: int, response_len: int,
                      tensor: int = 1, remat: bool | None = None,
                      layer_weight_bytes: int = 0) -> int:
  """Peak activation bytes of one micro-batch's forward + backward on one device.

  `rows` local rows of `prompt_len + response_len` tokens; log-probs are taken on the last
  `response_len` positions only (`completion_logprobs` projects just those to the vocabulary).

    no remat  L x (one block's residuals)  + one block's working set in the backward
    remat     L x (the block input [B, T, D]) + one block's residuals, recomputed
    both      + TRAIN_LOGIT_COPIES float32 [B, M, V] + the [B, T, T] mask + the final norm

  `layer_weight_bytes`: the blocks' parameter shard; without remat and with parameters stored
  in a wider dtype than the compute dtype, the scan also keeps each block's weights cast to the
  compute dtype.
  """
  remat = cfg.remat if remat is None else remat
  seq = prompt_len + response_len
  c = np.dtype(cfg.dtype).itemsize
  p = np.dtype(cfg.param_dtype).itemsize
  per_layer = layer_residuals(cfg, rows, seq, tensor)
  if remat:
    saved = cfg.num_layers * rows * seq * cfg.d_model * c
  else:
    saved = cfg.num_layers * per_layer
    if c < p:
      saved += layer_weight_bytes * c // p
  vocab = _local(cfg.vocab_size, tensor)
  logits = TRAIN_LOGIT_COPIES * rows * response_len * vocab * _F32
  mask = rows * seq * seq  # bool [B, T, T]
  final = rows * seq * cfg.d_model * (2 * _F32 + c) + rows * response_len * cfg.d_model * c
  return saved + per_layer + logits + mask + final


def kv_cache_bytes(cfg: ModelConfig, rows: int, cache_len: int, tensor: int = 1,
                   index: bool = True) -> int:
  """Bytes of one device's part of `KVCache.zeros(cfg, rows, cache_len)` (k, v, valid, index),
  or without `index` of a `SharedPrefix` of the same shape (the sampler's prompt cache).

  `rows` are this device's rows; KV heads are split over `tensor` when they divide.
  """
  kv = _local(cfg.num_kv_heads, tensor)
  kv_bytes = cfg.num_layers * rows * kv * cache_len * cfg.head_dim * np.dtype(cfg.dtype).itemsize
  return 2 * kv_bytes + rows * cache_len + 4 * index  # k and v, valid (bool), index (int32)


def paged_cache_bytes(cfg: ModelConfig, prompts: int, rows: int, prompt_len: int,
                      response_len: int, tensor: int = 1) -> int:
  """Bytes of one device's paged decode cache (`models.paged.from_prefix`, with
  `model.attention="splash"`) for its `prompts` and `rows`: every layer's pool of the prompts'
  pages and each row's own pages, keys and values (KV heads split over `tensor` when they
  divide), and the page table. It replaces the dense cache of generated tokens; compacting it
  copies page-table rows only."""
  prompt_pages, own_pages = paged.pages_per_row(prompt_len, response_len)
  pages = prompts * prompt_pages + rows * own_pages
  page = 2 * cfg.num_layers * _local(cfg.num_kv_heads, tensor) * paged.PAGE_SIZE * cfg.head_dim
  return (pages * page * np.dtype(cfg.dtype).itemsize
          + page_table_bytes(rows, prompt_len, response_len))


# The paged-attention kernel loads a device's whole page table into TPU scalar memory (SMEM:
# about 1 MiB per core up to v6e, as vLLM's and PyTorch/XLA's TPU backends found); the plan
# warns past half of it.
PAGE_TABLE_WARN_BYTES = 512 * 1024


def page_table_bytes(rows: int, prompt_len: int, response_len: int) -> int:
  """Bytes of one device's page table (int32) for `rows` rows."""
  return rows * paged.table_width(prompt_len, response_len) * 4


def prefill_working_set(cfg: ModelConfig, prompts: int, prompt_len: int, cache_len: int,
                        tensor: int = 1) -> int:
  """One block of the prompt pass (forward only): the prompt's scores among its own tokens (a
  fresh prefill attends to the new keys, not to the cache's empty slots), q/k/v, MLP.
  `cache_len` is kept for callers; the working set no longer depends on it."""
  del cache_len
  c = np.dtype(cfg.dtype).itemsize
  h = _local(cfg.num_heads, tensor)
  kv = _local(cfg.num_kv_heads, tensor)
  f = _local(cfg.mlp_dim, tensor)
  scores = prompts * prompt_len * prompt_len  # the mask
  if not flash_attention(cfg):
    scores += prompts * h * prompt_len * prompt_len * (_F32 + c)
  qkv = prompts * prompt_len * cfg.head_dim * (2 * h + 2 * kv) * c
  mlp = 3 * prompts * prompt_len * f * c
  stream = prompts * prompt_len * cfg.d_model * (2 * _F32 + 2 * c)
  return scores + qkv + mlp + stream


def compacted_cache_bytes(cfg: ModelConfig, rows: int, cache_len: int, response_len: int,
                          max_compactions: int, tensor: int = 1) -> int:
  """What the decode loop's compactions add to its caches (`sampling.decode`, one device).

  The largest compacted cache holds half the rows over prompt and generated slots (each row
  takes a copy of its prompt's cache). It is gathered one layer at a time while the first
  phase's per-layer buffers die, so it costs one layer's part plus whatever it needs beyond
  the first phase's cache of generated tokens; XLA reuses the same buffers for the smaller
  phases after it.
  """
  if not max_compactions:
    return 0
  c = np.dtype(cfg.dtype).itemsize
  per_slot = 2 * _local(cfg.num_kv_heads, tensor) * cfg.head_dim * c * cfg.num_layers
  half = (rows // 2) * cache_len * per_slot
  return max(0, half - rows * response_len * per_slot) + half // cfg.num_layers


def decode_extra_bytes(cfg: ModelConfig, rows: int, cache_len: int, response_len: int,
                       tensor: int = 1, block_weight_bytes: int = 0,
                       max_compactions: int = 0, unstacked: bool = False) -> int:
  """What a decode step holds besides its caches (updated or read in place), on one device.

  DECODE_LOGIT_COPIES float32 [rows, V], one layer's scores and the rollout buffers; on one
  device (`unstacked`), the blocks' weights unstacked once before the loop
  (`block_weight_bytes`, when the layers are scanned) and the compacted caches
  (`max_compactions`). Each layer's keys and values are read in place. When the query heads split
  over `tensor` and the KV heads do not, the cache (replicated over tensor) does not match
  the grouped queries' layout: XLA re-lays it out every step, an all-gather of one whole k or
  v stack (measured on 8 fake devices).
  """
  c = np.dtype(cfg.dtype).itemsize
  kv = _local(cfg.num_kv_heads, tensor)
  layer_kv = 2 * rows * kv * cache_len * cfg.head_dim * c
  relayout = 0
  if kv_relayout(cfg, tensor):
    relayout = cfg.num_layers * layer_kv // 2
  compacted = weights = 0
  if unstacked:
    compacted = compacted_cache_bytes(cfg, rows, cache_len, response_len, max_compactions,
                                      tensor)
    weights = block_weight_bytes if cfg.scan_layers else 0
  logits = DECODE_LOGIT_COPIES * rows * _local(cfg.vocab_size, tensor) * _F32
  scores = rows * _local(cfg.num_heads, tensor) * cache_len * (_F32 + c)
  buffers = rows * response_len * (4 + 4) + rows * 9  # tokens, log-probs; lengths, done, ...
  return relayout + compacted + weights + logits + scores + buffers


def kv_relayout(cfg: ModelConfig, tensor: int) -> bool:
  """Whether decode re-lays-out the cache every step: the query heads split over `tensor`
  and the KV heads do not."""
  return tensor > 1 and cfg.num_heads % tensor == 0 and cfg.num_kv_heads % tensor != 0


def train_batch_bytes(rows: int, prompt_len: int, response_len: int, old_logp: bool,
                      ref_logp: bool) -> int:
  """One device's part of the `RLBatch` of a step (`rl.build_batch`)."""
  seq = prompt_len + response_len
  per_row = seq * (4 + 1 + 4)  # tokens, input_mask, positions
  per_row += response_len * (1 + 4 + 4 * old_logp + 4 * ref_logp)  # masks, log-probs
  return rows * (per_row + 4)  # + advantages
