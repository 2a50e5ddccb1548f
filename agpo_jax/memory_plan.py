"""Per-device memory plan of an RL run: what each accelerator holds, before anything starts.

    python -m agpo_jax.memory_plan --preset qwen2.5-math-7b --devices v4-64 \
        --mesh fsdp=-1 --mesh fsdp=-1,tensor=4

`plan_memory` counts, per device, for a model config, a mesh (axis sizes; it may be larger than
this machine) and the run's shapes:

  resident  params, AdamW state (and reference params when the KL term is on): the loop keeps
            them on the devices through both phases below.
  train     gradients, the rollout batch, activations of one micro-batch's forward + backward,
            FSDP's gathered weights.
  sample    the KV cache and the decode / prefill working sets.

Train and sample are separate jitted calls that never overlap, so the peak is
`resident + max(train phase, sample phase)`.

What is exact and what is estimated:

  * params, optimizer state, gradients, the rollout batch and the KV cache are exact byte counts
    of arrays the code allocates, derived from `parallel.param_specs` (the same rule table the
    run shards with) and the shapes the sampler / train step use (tested against real shards
    and a real `KVCache`).
  * activations, working sets and FSDP gathers are estimates: which intermediates XLA keeps is
    its choice. The per-layer terms below were read off XLA's buffer assignment for this
    model's train step and sampler (XLA:CPU, jax 0.10) and the totals are tested against
    `memory_analysis()` of compiled steps, on one device and on 8 fake devices under data
    parallelism and pure FSDP (the step pins hidden states to rows over data x fsdp, see
    `transformer.activation_sharding`, so both split rows alike). TPU and GPU compilers fuse
    more, so they usually keep less; treat the estimates as upper-ish, not exact.

Numbers that matter, all measured on XLA:CPU and described where they are used:

  * the prompt pass scores every prompt position against the whole cache (prompt + response
    slots), not just the prompt: its one-layer working set is 4x what it needs at 1k + 3k.
  * the sampler's decode updates the donated cache in place (the layer scan carries the stacked
    cache and each layer writes its own slot); besides the cache a step holds one layer's keys
    and values (read out of the stack), the logits' working set and the rollout buffers. When
    the query heads split over `tensor` and the KV heads do not (e.g. 4 query and 2 KV heads on
    tensor=4), the partitioner also re-lays-out the cache once per step: one more k-sized stack
    (measured 0.75x the cache on XLA:CPU, where otherwise 0.3x).
  * with `train.num_microbatches == 2` the step holds two micro-batches of activations: the
    remaining 1-step scan is unrolled and the two independent forward passes overlap.
  * `sampling.rollout_chunks` splits each rollout batch into that many generate calls: the
    sample phase holds the cache of batch / rollout_chunks rows. `min_rollout_chunks` finds the
    smallest that fits.

TPU names: `v4-N` and `v5p-N` count TensorCores, two per chip, so a v4-64 is 32 chips and a
v5p-32 is 16 chips (cloud.google.com/tpu/docs/types-topologies, /v4, /v5p); v5e and v6e chips
have one TensorCore, so their names count chips. `DEVICES` holds the HBM per chip.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from agpo_jax import parallel
from agpo_jax.models import transformer
from agpo_jax.models.config import PRESETS, ModelConfig, resolve_model_config
from agpo_jax.sampling import bucket_length

GiB = 1 << 30

# HBM per chip, nominal. TPU: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (v4 "32 GiB"; v5e
# "16 GB", v5p "95 GB", v6e "32 GB", taken here as GiB). GPUs: the product names (an H100 80GB
# reports about 79.6 GiB, an H200 about 140 GiB); JAX on GPU preallocates only 75% of it
# unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
DEVICES: dict[str, int] = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "v6e": 32 * GiB,
    "a100-40gb": 40 * GiB,
    "a100-80gb": 80 * GiB,
    "h100-80gb": 80 * GiB,
    "h200": 140 * GiB,
}
# TensorCores per chip, for accelerator names that count TensorCores ("v4-64" = 32 chips).
TENSORCORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_ALIASES = {"v5litepod": "v5e", "h100": "h100-80gb", "a100": "a100-80gb"}

_F32 = 4
# Live float32 [rows, completion, vocab] arrays at the train step's peak: the logits, their
# log-softmax (entropy and log-probs) and the gradient flowing back into them (measured: ~3).
TRAIN_LOGIT_COPIES = 3
# Live float32 [rows, vocab] arrays in one decode step: the carried logits, filtered logits,
# the top-p sort and its cumulative sums, random bits, log-softmax (measured: ~8 with top-p).
DECODE_LOGIT_COPIES = 8


class PlanDoesNotFit(MemoryError):
  """A plan's peak exceeds the device memory; the message lists every component."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one run configuration (see the module docstring for what is exact).

  Resident through both phases: `params`, `opt_state`, `ref_params`.
  Train phase: `train_batch` and `train_gather` throughout; during a backward pass `grads`
  (one float32 gradient tree, two with micro-batches: the accumulator and the micro-batch's)
  plus `activations`; during the optimizer update `update_temp` (the gradients and the
  update's temporaries: two gradient trees, measured).
  Sample phase, per generate call of `sample_rows` rows: `kv_cache` (updated in place),
  `decode_extra` (the decode step's working set and rollout buffers), `prefill_working` (one
  layer of the prompt pass), `prompt_cache` (the cache of the prompts before it is forked G
  ways), `sample_gather`.

  `replan(**changes)` re-plans with some of `plan_memory`'s arguments changed.
  """

  model: str
  axis_sizes: tuple[tuple[str, int], ...]
  num_params: int
  param_dtype: str
  dtype: str
  remat: bool
  prompt_len: int  # after the sampler's power-of-two bucketing
  response_len: int
  rows_per_step: int
  rows_per_update: int
  micro_batch_rows: int
  micro_rows_per_device: int
  sample_rows: int
  sample_rows_per_device: int
  num_samples: int
  params: int
  opt_state: int
  ref_params: int
  grads: int
  update_temp: int
  train_batch: int
  activations: int
  train_gather: int
  kv_cache: int
  decode_extra: int
  prefill_working: int
  prompt_cache: int
  sample_gather: int
  notes: tuple[str, ...] = ()
  # plan_memory's arguments, for `replan`.
  inputs: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def replan(self, **changes) -> "MemoryPlan":
    """The plan of the same run with some of `plan_memory`'s keyword arguments changed."""
    if not self.inputs:
      raise ValueError("this plan does not record its inputs (not made by plan_memory)")
    kwargs = dict(self.inputs, **changes)
    return plan_memory(kwargs.pop("model_cfg"), kwargs.pop("axis_sizes"), **kwargs)

  @property
  def rollout_chunks(self) -> int:
    """Generate calls per rollout batch this plan's `sample_rows` corresponds to (1 when a
    call samples the whole batch or more, e.g. evaluation calls)."""
    if self.sample_rows >= self.rows_per_step or self.rows_per_step % self.sample_rows:
      return 1
    return self.rows_per_step // self.sample_rows

  @property
  def resident(self) -> int:
    return self.params + self.opt_state + self.ref_params

  @property
  def train_total(self) -> int:
    return (self.resident + self.train_batch + self.train_gather
            + max(self.grads + self.activations, self.update_temp))

  @property
  def prefill_peak(self) -> int:
    # The prompts' cache, then one layer at a time; at the end the forked cache coexists with it.
    return self.prompt_cache + max(self.prefill_working, self.kv_cache)

  @property
  def decode_peak(self) -> int:
    return self.kv_cache + self.decode_extra

  @property
  def sample_total(self) -> int:
    return self.resident + self.sample_gather + max(self.prefill_peak, self.decode_peak)

  @property
  def peak(self) -> int:
    return max(self.train_total, self.sample_total)

  @property
  def mesh(self) -> dict[str, int]:
    return dict(self.axis_sizes)

  def components(self) -> list[tuple[str, int]]:
    """(label, bytes) of every component and total, in table order."""
    opt_dtype = self.param_dtype
    return [
        (f"params ({self.param_dtype})", self.params),
        (f"AdamW mu + nu ({opt_dtype})", self.opt_state),
        ("reference params (KL)", self.ref_params),
        ("= resident in both phases", self.resident),
        ("train: gradients" + (" + accumulator" if self.rows_per_update
                               > self.micro_batch_rows else "") + " (float32)", self.grads),
        (f"train: activations, remat {'on' if self.remat else 'off'}", self.activations),
        ("train: optimizer update (grads + temporaries)", self.update_temp),
        ("train: rollout batch arrays", self.train_batch),
        ("train: FSDP-gathered weights", self.train_gather),
        ("= train total", self.train_total),
        ("sample: KV cache (updated in place)", self.kv_cache),
        ("sample: decode working set (one layer's k/v, logits)", self.decode_extra),
        ("sample: prompt cache before the G-way fork", self.prompt_cache),
        ("sample: prefill working set (one layer)", self.prefill_working),
        ("sample: FSDP-gathered weights", self.sample_gather),
        ("= sample total", self.sample_total),
        ("= peak", self.peak),
    ]

  def format(self, device_bytes: int | None = None) -> str:
    """A readable table in GiB per device (with the device capacity and verdict if given)."""
    mesh = " ".join(f"{k}={v}" for k, v in self.axis_sizes)
    micro = self.rows_per_update // self.micro_batch_rows
    lines = [
        f"{self.model}: {_count(self.num_params)} params, params {self.param_dtype}, "
        f"compute {self.dtype}; mesh {mesh}",
        f"  train: {self.rows_per_step} rows/step, {self.rows_per_update} rows/update in "
        f"{micro} micro-batch(es) of {self.micro_batch_rows} rows "
        f"({self.micro_rows_per_device}/device), sequence {self.prompt_len} + "
        f"{self.response_len}",
        f"  sample: {self.sample_rows} rows per generate call "
        f"({self.sample_rows_per_device}/device; rollout_chunks {self.rollout_chunks}), "
        f"cache length {self.prompt_len + self.response_len}",
    ]
    width = max(len(label) for label, _ in self.components())
    for label, value in self.components():
      lines.append(f"  {label:<{width}}  {value / GiB:10.2f} GiB")
    if device_bytes is not None:
      verdict = "fits" if self.peak <= device_bytes else "DOES NOT FIT"
      lines.append(f"  {'device capacity':<{width}}  {device_bytes / GiB:10.2f} GiB  -> {verdict}")
    lines.extend(f"  note: {n}" for n in self.notes)
    return "\n".join(lines)


def _count(n: int) -> str:
  """12,345 / 1.54B: exact below a million, else to three significant decimals."""
  if n < 1_000_000:
    return f"{n:,}"
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def check_fits(plan: MemoryPlan, device_bytes: int, fraction: float = 1.0) -> MemoryPlan:
  """Raise `PlanDoesNotFit` unless the plan's peak fits in `fraction` of `device_bytes`.

  The message lists every component and, when more rollout chunks and/or remat would make the
  plan fit, says which config keys to set (see `suggest`).
  """
  usable = int(device_bytes * fraction)
  if plan.peak > usable:
    lines = [f"{label}: {value / GiB:.2f} GiB ({value} bytes)"
             for label, value in plan.components()]
    hint = suggest(plan, usable)
    raise PlanDoesNotFit(
        f"peak {plan.peak / GiB:.2f} GiB per device exceeds the {usable / GiB:.2f} GiB usable "
        f"of {device_bytes / GiB:.2f} GiB ({plan.peak} > {usable} bytes); "
        f"mesh {plan.mesh}; " + "; ".join(lines)
        + (f"; suggestion: {hint}" if hint else
           "; no rollout_chunks, remat or num_microbatches setting fits: use more devices, "
           "another mesh, or fewer rows"))
  return plan


def rollout_chunk_options(batch_prompts: int, dp: int) -> list[int]:
  """Valid `sampling.rollout_chunks` for a batch: each generate call must hold a whole number
  of prompts per data-parallel device, so the divisors of batch_prompts / dp, ascending."""
  if batch_prompts % dp:
    raise ValueError(f"{batch_prompts} prompts do not split over the {dp} data-parallel "
                     "devices (mesh data x fsdp)")
  per_device = batch_prompts // dp
  return [c for c in range(1, per_device + 1) if per_device % c == 0]


def min_rollout_chunks(plan_for_chunks: Callable[[int], MemoryPlan], batch_prompts: int,
                       dp: int, device_bytes: int) -> int | None:
  """Smallest `sampling.rollout_chunks` whose plan (`plan_for_chunks(chunks)`) has its peak
  within `device_bytes`, among `rollout_chunk_options`; None if none does (e.g. the train
  phase alone does not fit)."""
  for chunks in rollout_chunk_options(batch_prompts, dp):
    if plan_for_chunks(chunks).peak <= device_bytes:
      return chunks
  return None


def min_rollout_chunks_from_config(config: Any, axis_sizes: dict[str, int], device_bytes: int,
                                   **kwargs) -> int | None:
  """`min_rollout_chunks` for a run config; kwargs go to `plan_from_config` (prompt_len,
  tokenizer_vocab_size)."""
  plan = plan_from_config(config, axis_sizes, **kwargs)
  return min_rollout_chunks(lambda c: plan_from_config(config, axis_sizes, rollout_chunks=c,
                                                       **kwargs),
                            config.train.batch_prompts, _dp(plan.mesh), device_bytes)


def _dp(axis_sizes: dict[str, int]) -> int:
  return axis_sizes.get("data", 1) * axis_sizes.get("fsdp", 1)


def suggest(plan: MemoryPlan, device_bytes: int) -> str | None:
  """Config settings under which the run fits in `device_bytes`, as command-line flags.

  Tries, in order, and returns the first that fits: more rollout chunks alone (the fewest
  that fit); remat (if off), with the fewest rollout chunks that then fit; more gradient
  micro-batches (the fewest that fit), with chunks; remat and micro-batches, with chunks. None
  if nothing fits, or if the plan does not record its inputs. Only sampling of the rollout
  batch is chunked: a plan whose `sample_rows` exceeds the rollout batch (an evaluation call)
  gets no chunk suggestion.
  """
  if not plan.inputs or plan.peak <= device_bytes:
    return None
  dp = _dp(plan.mesh)
  try:
    chunk_options = rollout_chunk_options(plan.rows_per_step // plan.num_samples, dp)
  except ValueError:
    chunk_options = [1]
  current_chunks = plan.rollout_chunks
  num_micro = plan.rows_per_update // plan.micro_batch_rows
  micro_options = [m for m in range(num_micro + 1, plan.rows_per_update // dp + 1)
                   if plan.rows_per_update % m == 0 and (plan.rows_per_update // m) % dp == 0]

  def with_chunks(p: MemoryPlan) -> tuple[MemoryPlan, int | None] | None:
    """The plan `p` with the fewest rollout chunks (>= the current) that fit, or None."""
    if p.peak <= device_bytes:
      return p, None
    if p.train_total > device_bytes or plan.sample_rows > plan.rows_per_step:
      return None
    for chunks in chunk_options:
      if chunks > current_chunks:
        chunked = p.replan(sample_rows=plan.rows_per_step // chunks)
        if chunked.peak <= device_bytes:
          return chunked, chunks
    return None

  remats = [False] if plan.remat else [False, True]
  candidates = ([(remat, None) for remat in remats]
                + [(remat, micro) for remat in remats for micro in micro_options])
  for remat, micro in candidates:
    changes = {}
    if remat:
      changes["remat"] = True
    if micro is not None:
      changes["micro_batch_rows"] = plan.rows_per_update // micro
    found = with_chunks(plan.replan(**changes) if changes else plan)
    if found is None:
      continue
    flags = ["--config.model.remat=True"] if remat else []
    if micro is not None:
      flags.append(f"--config.train.num_microbatches={micro}")
    if found[1] is not None:
      flags.append(f"--config.sampling.rollout_chunks={found[1]}")
    return " ".join(flags)
  return None


# ---------------------------------------------------------------------------------------------
# Parameters


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
class _ParamBytes:
  num_params: int
  shard: int  # bytes of one device's shard of every parameter
  shard_elements: int  # ... in elements
  layer_shard: int  # ... of the decoder blocks only
  gather_unit: int  # bytes of the largest unit (one block, embedding, LM head) all-gathered


@functools.lru_cache(maxsize=64)
def _param_bytes(cfg: ModelConfig, axis_items: tuple[tuple[str, int], ...]) -> _ParamBytes:
  axis_sizes = dict(axis_items)
  shapes = transformer.abstract_params(cfg)
  specs = parallel.param_specs(cfg, axis_sizes)
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
  return _ParamBytes(num_params, shard, elements, layer_shard, max(units.values()))


# ---------------------------------------------------------------------------------------------
# Activations, caches


def _local(n: int, parts: int) -> int:
  """Size of a dimension on one device: split when it divides (as `logical_spec` does)."""
  return n // parts if n % parts == 0 else n


def _per_device(rows: int, parts: int, what: str) -> int:
  if rows % parts:
    raise ValueError(f"{what}: {rows} rows do not split over the {parts} data-parallel devices "
                     "(mesh data x fsdp)")
  return rows // parts


def layer_residuals(cfg: ModelConfig, rows: int, seq: int, tensor: int) -> int:
  """Bytes one decoder block keeps for its backward pass (no remat), for `rows` local rows.

  Read off XLA's buffer assignment of the train step (the scan's stacked residuals):
    RMSNorms   4 float32 [B, T, D] (x and x * rsqrt for both norms) + 2 outputs in compute
               dtype + 4 float32 [B, T] statistics
    attention  q and the attention output [B, T, H, hd], k and v [B, KV, T, hd] in compute
               dtype; softmax probabilities [B, H, T, T] in float32 and again in compute
               dtype (no flash kernel: `Attention` materialises the scores); 2 float32
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
  attn = (rows * seq * hd * (2 * h + 2 * kv) * c + rows * h * seq * seq * (_F32 + c)
          + rows * h * seq * 2 * _F32)
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


def kv_cache_bytes(cfg: ModelConfig, rows: int, cache_len: int, tensor: int = 1) -> int:
  """Bytes of one device's part of `KVCache.zeros(cfg, rows, cache_len)` (k, v, valid, index).

  `rows` are this device's rows; KV heads are split over `tensor` when they divide.
  """
  kv = _local(cfg.num_kv_heads, tensor)
  kv_bytes = cfg.num_layers * rows * kv * cache_len * cfg.head_dim * np.dtype(cfg.dtype).itemsize
  return 2 * kv_bytes + rows * cache_len + 4  # k and v, valid (bool), index (int32)


def prefill_working_set(cfg: ModelConfig, prompts: int, prompt_len: int, cache_len: int,
                        tensor: int = 1) -> int:
  """One block of the prompt pass (forward only): scores against the whole cache, q/k/v, MLP."""
  c = np.dtype(cfg.dtype).itemsize
  h = _local(cfg.num_heads, tensor)
  kv = _local(cfg.num_kv_heads, tensor)
  f = _local(cfg.mlp_dim, tensor)
  scores = prompts * h * prompt_len * cache_len * (_F32 + c) + prompts * prompt_len * cache_len
  qkv = prompts * prompt_len * cfg.head_dim * (2 * h + 2 * kv) * c
  mlp = 3 * prompts * prompt_len * f * c
  stream = prompts * prompt_len * cfg.d_model * (2 * _F32 + 2 * c)
  return scores + qkv + mlp + stream


def decode_extra_bytes(cfg: ModelConfig, rows: int, cache_len: int, response_len: int,
                       tensor: int = 1) -> int:
  """What a decode step holds besides the donated cache (updated in place), on one device.

  One layer's k and v read out of the stacked cache, DECODE_LOGIT_COPIES float32 [rows, V],
  one layer's scores and the rollout buffers. When the query heads split over `tensor` and the
  KV heads do not, the cache (replicated over tensor) does not match the grouped queries'
  layout: XLA re-lays it out every step, an all-gather of one whole k or v stack (measured on
  8 fake devices: temp 0.75x the cache instead of 0.3x; with neither split, no re-layout).
  """
  c = np.dtype(cfg.dtype).itemsize
  kv = _local(cfg.num_kv_heads, tensor)
  layer_kv = 2 * rows * kv * cache_len * cfg.head_dim * c
  relayout = 0
  if _kv_relayout(cfg, tensor):
    relayout = cfg.num_layers * layer_kv // 2
  logits = DECODE_LOGIT_COPIES * rows * _local(cfg.vocab_size, tensor) * _F32
  scores = rows * _local(cfg.num_heads, tensor) * cache_len * (_F32 + c)
  buffers = rows * response_len * (4 + 4) + rows * 9  # tokens, log-probs; lengths, done, ...
  return layer_kv + relayout + logits + scores + buffers


def _kv_relayout(cfg: ModelConfig, tensor: int) -> bool:
  return tensor > 1 and cfg.num_heads % tensor == 0 and cfg.num_kv_heads % tensor != 0


def train_batch_bytes(rows: int, prompt_len: int, response_len: int, old_logp: bool,
                      ref_logp: bool) -> int:
  """One device's part of the `RLBatch` of a step (`rl.build_batch`)."""
  seq = prompt_len + response_len
  per_row = seq * (4 + 1 + 4)  # tokens, input_mask, positions
  per_row += response_len * (1 + 4 + 4 * old_logp + 4 * ref_logp)  # masks, log-probs
  return rows * (per_row + 4)  # + advantages


# ---------------------------------------------------------------------------------------------
# The plan


def plan_memory(model_cfg: ModelConfig, axis_sizes: dict[str, int], *, prompt_len: int,
                response_len: int, rows_per_step: int, rows_per_update: int | None = None,
                micro_batch_rows: int | None = None, sample_rows: int | None = None,
                num_samples: int = 1, remat: bool | None = None, ref_params: bool = False,
                old_logp: bool | None = None, min_prompt_bucket: int = 8,
                name: str | None = None) -> MemoryPlan:
  """Per-device bytes of a run (see the module docstring).

  Args:
    model_cfg: the model; its `param_dtype` / `dtype` fix the storage and compute dtypes.
    axis_sizes: {"data", "fsdp", "tensor"} mesh axis sizes (no -1; see `parallel.mesh_shape`).
    prompt_len: longest prompt; the sampler pads prompts to `bucket_length(prompt_len)`.
    response_len: `sampling.max_new_tokens`; rollouts are always this long (padded).
    rows_per_step: rollout rows per step (`train.batch_prompts * sampling.num_samples`).
    rows_per_update: rows per optimizer update (rows_per_step / train.num_minibatches).
    micro_batch_rows: rows per gradient-accumulation slice (global, over all devices).
    sample_rows: rows of one `Sampler.generate` call (default rows_per_step: the whole rollout
      batch in one call; rows_per_step / sampling.rollout_chunks with chunks).
    num_samples: G; the prompt pass runs on sample_rows / G prompts.
    remat: default `model_cfg.remat`.
    ref_params: a reference model is kept (loss.kl_coef > 0).
    old_logp: the batch carries old log-probs (more than one update per step); default: when
      rows_per_update < rows_per_step.
  """
  inputs = dict(model_cfg=model_cfg, axis_sizes=dict(axis_sizes), prompt_len=prompt_len,
                response_len=response_len, rows_per_step=rows_per_step,
                rows_per_update=rows_per_update, micro_batch_rows=micro_batch_rows,
                sample_rows=sample_rows, num_samples=num_samples, remat=remat,
                ref_params=ref_params, old_logp=old_logp, min_prompt_bucket=min_prompt_bucket,
                name=name)
  axis_sizes = {a: int(axis_sizes.get(a, 1)) for a in parallel.MESH_AXES}
  if any(v <= 0 for v in axis_sizes.values()):
    raise ValueError(f"mesh axis sizes must be positive, got {axis_sizes}")
  remat = model_cfg.remat if remat is None else bool(remat)
  rows_per_update = rows_per_step if rows_per_update is None else rows_per_update
  micro_batch_rows = rows_per_update if micro_batch_rows is None else micro_batch_rows
  sample_rows = rows_per_step if sample_rows is None else sample_rows
  if rows_per_step % rows_per_update or rows_per_update % micro_batch_rows:
    raise ValueError(f"rows_per_step {rows_per_step}, rows_per_update {rows_per_update} and "
                     f"micro_batch_rows {micro_batch_rows} must each divide the one before")
  if sample_rows % num_samples:
    raise ValueError(f"sample_rows {sample_rows} is not a multiple of num_samples {num_samples}")
  old_logp = rows_per_update < rows_per_step if old_logp is None else old_logp
  num_micro = rows_per_update // micro_batch_rows
  dp = axis_sizes["data"] * axis_sizes["fsdp"]
  tensor = axis_sizes["tensor"]
  prompt = bucket_length(prompt_len, min_prompt_bucket)
  cache_len = prompt + response_len
  notes = []

  pb = _param_bytes(model_cfg, tuple(sorted(axis_sizes.items())))
  params = pb.shard
  opt_state = 2 * params + 2 * 4  # optax.adamw: mu and nu in the param dtype; 2 int32 counts
  # `accumulate_gradients` divides by a float32 denominator: gradients are float32 whatever
  # the parameter dtype; the AdamW moments stay in the parameter dtype (`_apply_if_finite`).
  grad_tree = pb.shard_elements * _F32
  grads = grad_tree * (2 if num_micro > 1 else 1)
  step_rows = _per_device(rows_per_step, dp, "rollout batch")
  micro_rows = _per_device(micro_batch_rows, dp, "micro-batch")
  n = _per_device(sample_rows, dp, "sampled rows")
  prompts = -(-(sample_rows // num_samples) // dp)
  activations = train_activations(model_cfg, micro_rows, prompt, response_len, tensor, remat,
                                  pb.layer_shard)
  if num_micro == 2:
    activations *= 2
    notes.append("num_microbatches = 2: the two micro-batches' activations overlap "
                 "(measured on XLA:CPU); 1 or >= 3 micro-batches avoid it")
  gather = pb.gather_unit if axis_sizes["fsdp"] > 1 else 0
  if tensor > 1 and model_cfg.num_kv_heads % tensor:
    notes.append(f"{model_cfg.num_kv_heads} KV heads do not split over tensor={tensor}: every "
                 "tensor device holds the whole cache of its rows"
                 + (" and decode re-lays it out every step (the query heads do split)"
                    if _kv_relayout(model_cfg, tensor) else ""))
  if tensor > 1 and model_cfg.num_heads % tensor:
    notes.append(f"{model_cfg.num_heads} query heads do not split over tensor={tensor}: "
                 "attention is not split over tensor")
  plan = MemoryPlan(
      model=name or _model_name(model_cfg), axis_sizes=tuple(axis_sizes.items()),
      num_params=pb.num_params, param_dtype=model_cfg.param_dtype, dtype=model_cfg.dtype,
      remat=remat, prompt_len=prompt, response_len=response_len, rows_per_step=rows_per_step,
      rows_per_update=rows_per_update, micro_batch_rows=micro_batch_rows,
      micro_rows_per_device=micro_rows, sample_rows=sample_rows, sample_rows_per_device=n,
      num_samples=num_samples, params=params, opt_state=opt_state,
      ref_params=params if ref_params else 0, grads=grads, update_temp=2 * grad_tree,
      train_batch=train_batch_bytes(step_rows, prompt, response_len, old_logp, ref_params),
      activations=activations, train_gather=2 * gather,
      kv_cache=kv_cache_bytes(model_cfg, n, cache_len, tensor),
      decode_extra=decode_extra_bytes(model_cfg, n, cache_len, response_len, tensor),
      prefill_working=prefill_working_set(model_cfg, prompts, prompt, cache_len, tensor),
      prompt_cache=kv_cache_bytes(model_cfg, prompts, cache_len, tensor),
      sample_gather=gather, notes=tuple(notes), inputs=inputs)
  return plan


def _model_name(cfg: ModelConfig) -> str:
  for name, preset in PRESETS.items():
    if dataclasses.replace(cfg, param_dtype=preset.param_dtype, dtype=preset.dtype,
                           remat=preset.remat) == preset:
      return name
  return f"custom model ({cfg.num_layers} layers, d_model {cfg.d_model})"


def plan_from_config(config: Any, axis_sizes: dict[str, int], *, prompt_len: int | None = None,
                     sample_rows: int | None = None, tokenizer_vocab_size: int | None = None,
                     rollout_chunks: int | None = None) -> MemoryPlan:
  """The plan of a run config (an `ml_collections` config as `configs/*.py` return).

  Reads: config.model (via `resolve_model_config`; its `remat`, `param_dtype`, `dtype`),
  config.train.batch_prompts / num_minibatches / num_microbatches / epochs,
  config.sampling.num_samples / max_new_tokens / min_prompt_bucket / rollout_chunks (default
  1), config.loss.kl_coef, and the prompt length from `prompt_len`, else
  config.sampling.max_prompt_len if the config has it, else the longest prompt the model's
  context leaves (`model.max_seq_len - max_new_tokens`). `axis_sizes` may hold a -1 only if
  it also holds "devices" (the count).

  A generate call samples `batch_prompts * num_samples / rollout_chunks` rows, unless
  `sample_rows` is given; `rollout_chunks` overrides the config's.
  """
  model_cfg = resolve_model_config(config.model, tokenizer_vocab_size)
  train, samp = config.train, config.sampling
  if prompt_len is None:
    prompt_len = samp.get("max_prompt_len", None) if hasattr(samp, "get") else None
  if prompt_len is None:
    prompt_len = model_cfg.max_seq_len - samp.max_new_tokens
  if prompt_len <= 0:
    raise ValueError(f"prompt length {prompt_len} must be positive (model.max_seq_len "
                     f"{model_cfg.max_seq_len}, sampling.max_new_tokens {samp.max_new_tokens})")
  axis_sizes = dict(axis_sizes)
  devices = axis_sizes.pop("devices", None)
  if any(v == -1 for v in axis_sizes.values()):
    if devices is None:
      raise ValueError("axis_sizes with -1 needs a 'devices' count")
    axis_sizes = dict(zip(parallel.MESH_AXES, parallel.mesh_shape(axis_sizes, devices)))
  rows_per_step = train.batch_prompts * samp.num_samples
  rows_per_update = rows_per_step // train.num_minibatches
  if rollout_chunks is None:
    rollout_chunks = samp.get("rollout_chunks", 1) if hasattr(samp, "get") else 1
  if sample_rows is None:
    if rollout_chunks <= 0 or train.batch_prompts % rollout_chunks:
      raise ValueError(f"sampling.rollout_chunks={rollout_chunks} must divide "
                       f"train.batch_prompts={train.batch_prompts}")
    sample_rows = rows_per_step // rollout_chunks
  kl = bool(config.get("loss", {}).get("kl_coef", 0.0)) if hasattr(config, "get") else False
  epochs = train.get("epochs", 1) if hasattr(train, "get") else 1
  return plan_memory(
      model_cfg, axis_sizes, prompt_len=prompt_len, response_len=samp.max_new_tokens,
      rows_per_step=rows_per_step, rows_per_update=rows_per_update,
      micro_batch_rows=rows_per_update // train.num_microbatches, sample_rows=sample_rows,
      num_samples=samp.num_samples, ref_params=kl,
      old_logp=train.num_minibatches * epochs > 1,
      min_prompt_bucket=samp.get("min_prompt_bucket", 8) if hasattr(samp, "get") else 8,
      name=config.model.preset if "preset" in config.model else None)


# ---------------------------------------------------------------------------------------------
# Devices and the command line


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  kind: str
  chips: int
  bytes_per_chip: int

  def __str__(self) -> str:
    return f"{self.chips} x {self.kind} ({self.bytes_per_chip / GiB:.0f} GiB each)"


def parse_devices(spec: str) -> DeviceSpec:
  """"v4-64" (64 TensorCores = 32 chips), "v5p-32", "v5e-16", "8xh100-80gb", "h100-80gb:8"."""
  text = spec.strip().lower()
  count = None
  if "x" in text.split("-")[0] and text.split("x", 1)[0].isdigit():
    count_text, text = text.split("x", 1)
    count = int(count_text)
  elif ":" in text:
    text, count_text = text.split(":", 1)
    count = int(count_text)
  kind = _ALIASES.get(text, text)
  if kind not in DEVICES:
    name, _, cores = text.rpartition("-")
    name = _ALIASES.get(name, name)
    if name not in TENSORCORES_PER_CHIP or not cores.isdigit():
      raise ValueError(f"unknown device {spec!r}; known: {sorted(DEVICES)} (TPUs as "
                       "v4-64 / v5p-32 / v5e-16, GPUs as 8xh100-80gb)")
    per_chip = TENSORCORES_PER_CHIP[name]
    if int(cores) % per_chip:
      raise ValueError(f"{spec}: {cores} TensorCores is not a whole number of chips")
    return DeviceSpec(name, int(cores) // per_chip, DEVICES[name])
  return DeviceSpec(kind, count or 1, DEVICES[kind])


def parse_mesh(text: str, chips: int) -> dict[str, int]:
  """"fsdp=-1,tensor=4" -> {"data": 1, "fsdp": chips // 4, "tensor": 4} (unnamed axes are 1;
  fsdp takes the remaining chips unless another axis is -1)."""
  given = {}
  for part in filter(None, text.replace(" ", "").split(",")):
    key, _, value = part.partition("=")
    if key not in parallel.MESH_AXES:
      raise ValueError(f"mesh axis {key!r} is not one of {parallel.MESH_AXES}")
    given[key] = int(value)
  sizes = dict(data=1, fsdp=1, tensor=1)
  sizes.update(given)
  if -1 not in sizes.values() and "fsdp" not in given:
    sizes["fsdp"] = -1
  return dict(zip(parallel.MESH_AXES, parallel.mesh_shape(sizes, chips)))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m agpo_jax.memory_plan",
      description="Per-device memory plan of an RL run (defaults: the reference protocol).")
  parser.add_argument("--preset", default="qwen2.5-math-7b", choices=sorted(PRESETS))
  parser.add_argument("--devices", default="v4-64",
                      help="v4-64, v5p-32, 8xh100-80gb, ... (TPU v4/v5p names count "
                           "TensorCores: v4-64 = 32 chips)")
  parser.add_argument("--mesh", action="append",
                      help="e.g. fsdp=-1 or fsdp=-1,tensor=4 (repeatable; default: pure fsdp "
                           "and fsdp x tensor=2, 4, 8)")
  parser.add_argument("--param-dtype", default=None, help="default: the preset's (float32)")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (default bfloat16)")
  parser.add_argument("--prompt-len", type=int, default=1024)
  parser.add_argument("--response-len", type=int, default=3072)
  parser.add_argument("--batch-prompts", type=int, default=1024)
  parser.add_argument("--num-samples", type=int, default=8)
  parser.add_argument("--num-minibatches", type=int, default=4)
  parser.add_argument("--micro-rows-per-device", type=int, default=1,
                      help="rows per device per micro-batch (sets num_microbatches)")
  parser.add_argument("--remat", choices=("on", "off", "both"), default="both")
  parser.add_argument("--kl", action="store_true", help="keep reference params (KL term)")
  parser.add_argument("--rollout-chunks", type=int, default=0,
                      help="sampling.rollout_chunks to plan (default: the smallest that fits)")
  parser.add_argument("--device-gib", type=float, default=0.0,
                      help="usable GiB per chip (default: the device's nominal HBM; on GPUs JAX "
                           "preallocates 75%% unless XLA_PYTHON_CLIENT_MEM_FRACTION is set)")
  parser.add_argument("--verbose", action="store_true", help="print every plan's table")
  args = parser.parse_args(argv)

  device = parse_devices(args.devices)
  preset = PRESETS[args.preset]
  model_cfg = dataclasses.replace(preset, param_dtype=args.param_dtype or preset.param_dtype,
                                  dtype=args.dtype)
  meshes = args.mesh or ["fsdp=-1"] + [f"fsdp=-1,tensor={t}" for t in (2, 4, 8)
                                        if device.chips % t == 0 and device.chips > t]
  rows_per_step = args.batch_prompts * args.num_samples
  rows_per_update = rows_per_step // args.num_minibatches
  remats = {"on": [True], "off": [False], "both": [True, False]}[args.remat]
  cap = int(args.device_gib * GiB) if args.device_gib > 0 else device.bytes_per_chip
  print(f"{args.preset}, {device}; {args.batch_prompts} prompts x {args.num_samples} samples "
        f"= {rows_per_step} rows/step, {rows_per_update} rows/update, "
        f"{args.micro_rows_per_device} row(s)/device per micro-batch; prompt {args.prompt_len} "
        f"+ response {args.response_len}; params {model_cfg.param_dtype}, compute "
        f"{model_cfg.dtype}")
  print("GiB per device. sample@1 = the whole rollout batch in one generate call; chunks = "
        "the smallest sampling.rollout_chunks that fits (or the one given), sample@chunks its "
        "sample phase, peak the larger phase.")
  print(f"{'mesh':<20}{'remat':<6}{'micro':>6}{'resident':>9}{'train':>8}{'sample@1':>9}"
        f"{'chunks':>7}{'sample@chunks':>14}{'peak':>8}  verdict on {cap / GiB:.4g} GiB")
  for mesh_text in meshes:
    try:
      axis_sizes = parse_mesh(mesh_text, device.chips)
    except ValueError as e:
      print(f"{mesh_text:<20}skipped: {e}")
      continue
    dp = axis_sizes["data"] * axis_sizes["fsdp"]
    micro_rows = min(args.micro_rows_per_device * dp, rows_per_update)
    label = " ".join(f"{k}={v}" for k, v in axis_sizes.items() if v > 1) or "1 device"
    for remat in remats:
      def plan_for(chunks, remat=remat):
        return plan_memory(
            model_cfg, axis_sizes, prompt_len=args.prompt_len, response_len=args.response_len,
            rows_per_step=rows_per_step, rows_per_update=rows_per_update,
            micro_batch_rows=micro_rows, sample_rows=rows_per_step // chunks,
            num_samples=args.num_samples, remat=remat, ref_params=args.kl, name=args.preset)
      try:
        whole = plan_for(1)
        if args.rollout_chunks:
          chunks = args.rollout_chunks
          plan = plan_for(chunks)
        else:
          chunks = min_rollout_chunks(plan_for, args.batch_prompts, dp, cap)
          plan = plan_for(chunks if chunks else rollout_chunk_options(args.batch_prompts,
                                                                      dp)[-1])
      except ValueError as e:
        print(f"{label:<20}{'on' if remat else 'off':<6}skipped: {e}")
        continue
      if plan.peak <= cap:
        verdict = f"fits with rollout_chunks={plan.rollout_chunks}"
      elif plan.train_total > cap:
        verdict = "DOES NOT FIT: the train phase alone exceeds the device"
      else:
        verdict = (f"DOES NOT FIT even at rollout_chunks={plan.rollout_chunks} "
                   f"({plan.sample_rows_per_device} row(s)/device per call)")
      g = lambda b: f"{b / GiB:.2f}"  # noqa: E731
      print(f"{label:<20}{'on' if remat else 'off':<6}"
            f"{rows_per_update // plan.micro_batch_rows:>6}{g(plan.resident):>9}"
            f"{g(plan.train_total):>8}{g(whole.sample_total):>9}"
            f"{(chunks or '-')!s:>7}{g(plan.sample_total):>14}{g(plan.peak):>8}  {verdict}")
      if args.verbose:
        print(plan.format(cap))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
