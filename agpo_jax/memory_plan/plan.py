"""The memory plan of one run: `MemoryPlan`, assembled by `plan_memory` or `plan_from_config`.

`plan_memory` adds up the byte counts of `estimates` for a model, a mesh and the run's shapes;
`plan_from_config` reads those shapes from a run config (`agpo_jax.defaults.base_config`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

from agpo_jax.memory_plan import estimates
from agpo_jax.memory_plan.estimates import GiB
from agpo_jax.models.config import PRESETS, ModelConfig, resolve_model_config
from agpo_jax.sampling import bucket_length, compactions_used, uses_paged_cache
from agpo_jax.sharding import rules


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one run configuration (see `agpo_jax.memory_plan` for what is exact).

  Resident through both phases: `params`, `opt_state`, `ref_params`.
  Train phase: `train_batch` and `train_gather` throughout; during a backward pass `grads`
  (one float32 gradient tree, two with micro-batches: the accumulator and the micro-batch's)
  plus `activations`; during the optimizer update `update_temp` (the gradients and the
  update's temporaries: two gradient trees, measured).
  Sample phase, per generate call of `sample_rows` rows: `prompt_cache` (the prompts' keys and
  values, shared by each prompt's G rows, held through decode), `prefill_working` (one layer
  of the prompt pass), `kv_cache` (each row's cache of its generated tokens, updated in
  place; with the paged cache, its pool of pages), `decode_extra` (the decode step's working
  set and rollout buffers), `sample_gather`.

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
    # The prompts' cache, filled one layer at a time.
    return self.prompt_cache + self.prefill_working

  @property
  def decode_peak(self) -> int:
    return self.prompt_cache + self.kv_cache + self.decode_extra

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
        ("sample: prompt cache (shared by each prompt's rows)", self.prompt_cache),
        ("sample: prefill working set (one layer)", self.prefill_working),
        ("sample: KV cache of the generated tokens (updated in place)", self.kv_cache),
        ("sample: decode working set (weights unstacked, logits, compacted caches)",
         self.decode_extra),
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


def _per_device(rows: int, parts: int, what: str) -> int:
  if rows % parts:
    raise ValueError(f"{what}: {rows} rows do not split over the {parts} data-parallel devices "
                     "(mesh data x fsdp)")
  return rows // parts


def plan_memory(model_cfg: ModelConfig, axis_sizes: dict[str, int], *, prompt_len: int,
                response_len: int, rows_per_step: int, rows_per_update: int | None = None,
                micro_batch_rows: int | None = None, sample_rows: int | None = None,
                num_samples: int = 1, remat: bool | None = None, ref_params: bool = False,
                old_logp: bool | None = None, min_prompt_bucket: int = 8,
                name: str | None = None, max_compactions: int = 0) -> MemoryPlan:
  """Per-device bytes of a run (see `agpo_jax.memory_plan`).

  Args:
    model_cfg: the model; its `param_dtype` / `dtype` fix the storage and compute dtypes.
    axis_sizes: {"data", "fsdp", "tensor"} mesh axis sizes (no -1; see `rules.mesh_shape`).
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
    min_prompt_bucket: the sampler's smallest prompt bucket (`sampling.min_prompt_bucket`).
    name: the model's name in the table; default: its preset's, if it is one.
    max_compactions: `sampling.max_compactions` (the decode loop's compacted caches; they
      exist on one device only).

  Returns:
    The plan, which records these arguments for `MemoryPlan.replan`.
  """
  inputs = dict(model_cfg=model_cfg, axis_sizes=dict(axis_sizes), prompt_len=prompt_len,
                response_len=response_len, rows_per_step=rows_per_step,
                rows_per_update=rows_per_update, micro_batch_rows=micro_batch_rows,
                sample_rows=sample_rows, num_samples=num_samples, remat=remat,
                ref_params=ref_params, old_logp=old_logp, min_prompt_bucket=min_prompt_bucket,
                name=name, max_compactions=max_compactions)
  axis_sizes = {a: int(axis_sizes.get(a, 1)) for a in rules.MESH_AXES}
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

  pb = estimates.param_bytes(model_cfg, tuple(sorted(axis_sizes.items())))
  params = pb.shard
  grad_tree = estimates.grad_tree_bytes(pb)
  grads = grad_tree * (2 if num_micro > 1 else 1)
  step_rows = _per_device(rows_per_step, dp, "rollout batch")
  micro_rows = _per_device(micro_batch_rows, dp, "micro-batch")
  n = _per_device(sample_rows, dp, "sampled rows")
  prompts = -(-(sample_rows // num_samples) // dp)
  activations = estimates.train_activations(model_cfg, micro_rows, prompt, response_len, tensor,
                                            remat, pb.layer_shard)
  if num_micro == 2:
    activations *= 2
    notes.append("num_microbatches = 2: the two micro-batches' activations overlap "
                 "(measured on XLA:CPU); 1 or >= 3 micro-batches avoid it")
  gather = pb.gather_unit if axis_sizes["fsdp"] > 1 else 0
  one_device = math.prod(axis_sizes.values()) == 1
  if uses_paged_cache(model_cfg):
    kv_cache = estimates.paged_cache_bytes(model_cfg, prompts, n, prompt, response_len, tensor)
    compactions = 0  # a compaction gathers page-table rows: no cache copy
    table = estimates.page_table_bytes(n, prompt, response_len)
    if table > estimates.PAGE_TABLE_WARN_BYTES:
      notes.append(f"paged decode: each device's page table is {table / 1024:.0f} KiB, and the "
                   "TPU kernel holds it in scalar memory (about 1 MiB): fewer rows per generate "
                   "call (sampling.rollout_chunks) shrink it")
  else:
    kv_cache = estimates.kv_cache_bytes(model_cfg, n, response_len, tensor)
    compactions = compactions_used(max_compactions, response_len, one_device)
  if tensor > 1 and model_cfg.num_kv_heads % tensor:
    notes.append(f"{model_cfg.num_kv_heads} KV heads do not split over tensor={tensor}: every "
                 "tensor device holds the whole cache of its rows"
                 + (" and decode re-lays it out every step (the query heads do split)"
                    if estimates.kv_relayout(model_cfg, tensor) else ""))
  if tensor > 1 and model_cfg.num_heads % tensor:
    notes.append(f"{model_cfg.num_heads} query heads do not split over tensor={tensor}: "
                 "attention is not split over tensor")
  return MemoryPlan(
      model=name or _model_name(model_cfg), axis_sizes=tuple(axis_sizes.items()),
      num_params=pb.num_params, param_dtype=model_cfg.param_dtype, dtype=model_cfg.dtype,
      remat=remat, prompt_len=prompt, response_len=response_len, rows_per_step=rows_per_step,
      rows_per_update=rows_per_update, micro_batch_rows=micro_batch_rows,
      micro_rows_per_device=micro_rows, sample_rows=sample_rows, sample_rows_per_device=n,
      num_samples=num_samples, params=params, opt_state=estimates.opt_state_bytes(params),
      ref_params=params if ref_params else 0, grads=grads, update_temp=2 * grad_tree,
      train_batch=estimates.train_batch_bytes(step_rows, prompt, response_len, old_logp,
                                              ref_params),
      activations=activations, train_gather=2 * gather,
      kv_cache=kv_cache,
      decode_extra=estimates.decode_extra_bytes(
          model_cfg, n, cache_len, response_len, tensor, pb.layer_shard, compactions,
          unstacked=one_device),
      prefill_working=estimates.prefill_working_set(model_cfg, prompts, prompt, cache_len,
                                                    tensor),
      prompt_cache=estimates.kv_cache_bytes(model_cfg, prompts, prompt, tensor, index=False),
      sample_gather=gather, notes=tuple(notes), inputs=inputs)


def _model_name(cfg: ModelConfig) -> str:
  for name, preset in PRESETS.items():
    if dataclasses.replace(cfg, param_dtype=preset.param_dtype, dtype=preset.dtype,
                           remat=preset.remat) == preset:
      return name
  return f"custom model ({cfg.num_layers} layers, d_model {cfg.d_model})"


def plan_from_config(config: Any, axis_sizes: dict[str, int], *, prompt_len: int | None = None,
                     sample_rows: int | None = None, tokenizer_vocab_size: int | None = None,
                     rollout_chunks: int | None = None,
                     model_cfg: ModelConfig | None = None) -> MemoryPlan:
  """The plan of a run config (an `ml_collections` config as `configs/*.py` return).

  Reads config.model (via `resolve_model_config`; its `preset`, `remat`, `param_dtype`,
  `dtype`), config.train.batch_prompts / num_minibatches / num_microbatches / epochs,
  config.sampling.num_samples / max_new_tokens / min_prompt_bucket / rollout_chunks (1 when
  the config predates the key) and config.loss.kl_coef.

  Args:
    config: the run config (every block of `agpo_jax.defaults.base_config`).
    axis_sizes: mesh axis sizes; may hold a -1 only if it also holds "devices" (the count).
    prompt_len: the longest prompt; default: the longest the model's context leaves
      (`model.max_seq_len - sampling.max_new_tokens`).
    sample_rows: rows of one generate call; default:
      `batch_prompts * num_samples / rollout_chunks`.
    tokenizer_vocab_size: the tokenizer's id space (see `resolve_model_config`).
    rollout_chunks: overrides `config.sampling.rollout_chunks`.
    model_cfg: the model, when the caller has it (a pretrained checkpoint's architecture);
      default: `resolve_model_config(config.model)`.

  Returns:
    The plan (see `plan_memory`).
  """
  if model_cfg is None:
    model_cfg = resolve_model_config(config.model, tokenizer_vocab_size)
  train, samp = config.train, config.sampling
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
    axis_sizes = dict(zip(rules.MESH_AXES, rules.mesh_shape(axis_sizes, devices)))
  rows_per_step = train.batch_prompts * samp.num_samples
  rows_per_update = rows_per_step // train.num_minibatches
  if rollout_chunks is None:
    rollout_chunks = samp.get("rollout_chunks", 1)  # configs written before the key: one call
  if sample_rows is None:
    if rollout_chunks <= 0 or train.batch_prompts % rollout_chunks:
      raise ValueError(f"sampling.rollout_chunks={rollout_chunks} must divide "
                       f"train.batch_prompts={train.batch_prompts}")
    sample_rows = rows_per_step // rollout_chunks
  return plan_memory(
      model_cfg, axis_sizes, prompt_len=prompt_len, response_len=samp.max_new_tokens,
      rows_per_step=rows_per_step, rows_per_update=rows_per_update,
      micro_batch_rows=rows_per_update // train.num_microbatches, sample_rows=sample_rows,
      num_samples=samp.num_samples, ref_params=bool(config.loss.kl_coef),
      old_logp=train.num_minibatches * train.epochs > 1,
      min_prompt_bucket=samp.min_prompt_bucket, max_compactions=samp.get("max_compactions", 2),
      name=(pathlib.Path(config.model.checkpoint).name if config.model.get("checkpoint")
            else config.model.preset))
