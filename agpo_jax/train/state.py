"""The train state and everything an update does to it, shared by the RL and SFT steps.

A step is a pure jitted function `(state, batch) -> (state, metrics)`. Each update accumulates
gradients over `num_microbatches` slices with the loss's `(loss_sum, denominator)` pair, so the
update equals the one computed on the whole mini-batch at once
(`grad = sum_k grad(loss_sum_k) / sum_k denominator_k`).

The update guard (`apply_if_finite`) leaves params and optimizer state untouched, and counts the
skip in `state.skipped` / `state.consecutive_skips`, when the loss or any gradient is
non-finite, when the update would make a parameter non-finite, or when the gradient norm is a
spike: above `UpdateGuard.spike_factor` times the median of the last `GRAD_NORM_WINDOW`
accepted norms (kept in the state, so the guard checkpoints and resumes exactly). The loop
stops the run when too many skips come in a row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agpo_jax import configs
from agpo_jax.algorithms import losses
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding import rules
from agpo_jax.sharding.rules import StepShardings

Array = jax.Array

GRAD_NORM_WINDOW = 32  # accepted gradient norms the spike guard takes its median over


@dataclasses.dataclass(frozen=True)
class UpdateGuard:
  """When `apply_if_finite` skips a finite update: its gradient norm exceeds `spike_factor`
  times the median of the recent accepted norms, once `spike_warmup` norms are recorded.

  `spike_factor=0` disables the spike check (non-finite updates are always skipped). Static
  (hashable) and part of `TrainState`'s tree structure, like `tx`: it comes from the config,
  is not saved, and the jitted steps compile it in.
  """

  spike_factor: float = 0.0
  spike_warmup: int = 8

  def __post_init__(self):
    if not self.spike_factor >= 0.0:  # also refuses NaN
      raise ValueError(f"spike_factor must be >= 0 (0 disables), got {self.spike_factor}")
    if self.spike_factor and self.spike_factor <= 1.0:
      raise ValueError(f"spike_factor must be > 1 (or 0 to disable), got {self.spike_factor}: "
                       "at <= 1 every norm above the median would be skipped")
    if self.spike_warmup < 1:
      raise ValueError(f"spike_warmup must be >= 1, got {self.spike_warmup}")

  @classmethod
  def from_config(cls, cfg: Any, prefix: str) -> UpdateGuard:
    """The guard of a config block with `spike_factor` and `spike_warmup` (`config.train`,
    `config.sft`); `prefix` ("train", "sft") names the block in errors."""
    try:
      return cls(spike_factor=float(cfg.spike_factor), spike_warmup=int(cfg.spike_warmup))
    except ValueError as error:
      raise configs.ConfigError(f"config.{prefix}: {error} (config.{prefix}.spike_factor="
                                f"{cfg.spike_factor}, config.{prefix}.spike_warmup="
                                f"{cfg.spike_warmup})") from error


class TrainState(struct.PyTreeNode):
  """Everything an update changes. `tx` and `guard` are static (not saved; rebuilt from the
  config)."""

  step: Array  # [] int32: train steps taken
  params: Any
  opt_state: Any
  skipped: Array  # [] int32: updates skipped (non-finite, or a gradient-norm spike), in total
  consecutive_skips: Array  # [] int32: ... in a row, up to now
  grad_norms: Array  # [GRAD_NORM_WINDOW] float32: ring buffer of recent accepted grad norms
  grad_norm_count: Array  # [] int32: accepted norms recorded so far (next slot: count % W)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  guard: UpdateGuard = struct.field(pytree_node=False, default=UpdateGuard())

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation,
             guard: UpdateGuard | None = None) -> "TrainState":
    """A fresh state; `guard` defaults to `UpdateGuard()` (no spike check)."""
    # Separate buffers: the step donates the state, and one buffer cannot be donated twice.
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
    return cls(step=zero(), params=params, opt_state=tx.init(params), skipped=zero(),
               consecutive_skips=zero(),
               grad_norms=jnp.zeros((GRAD_NORM_WINDOW,), jnp.float32),
               grad_norm_count=zero(), tx=tx, guard=guard or UpdateGuard())


SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={cfg.schedule!r} is not one of {SCHEDULES}")
  warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
  decay_steps = max(total_steps - cfg.warmup_steps, 1)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_ratio)
  else:
    after = optax.linear_schedule(cfg.lr, cfg.lr * cfg.end_lr_ratio, decay_steps)
  if cfg.warmup_steps <= 0:
    return after
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: Any, total_updates: int) -> optax.GradientTransformation:
  """AdamW under the schedule, after global-norm clipping."""
  adamw = optax.adamw(learning_rate_schedule(cfg, total_updates), b1=cfg.b1, b2=cfg.b2,
                      eps=cfg.eps, weight_decay=cfg.weight_decay)
  if cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
  return adamw


def grad_norm_median(grad_norms: Array, count: Array) -> Array:
  """Median of the recorded entries of a `grad_norms` window (`count` recorded so far; at
  most the window's length are kept); +inf when none are."""
  window = grad_norms.shape[0]
  n = jnp.minimum(count, window)
  ordered = jnp.sort(jnp.where(jnp.arange(window) < n, grad_norms, jnp.inf))
  low = ordered[jnp.maximum(n - 1, 0) // 2]
  high = ordered[jnp.minimum(n // 2, window - 1)]
  return jnp.where(n > 0, 0.5 * (low + high), jnp.inf)


def is_spike(state: TrainState, grad_norm: Array) -> Array:
  """Whether `grad_norm` is a spike under `state.guard` (False while warming up)."""
  guard = state.guard
  if not guard.spike_factor:
    return jnp.zeros((), bool)
  median = grad_norm_median(state.grad_norms, state.grad_norm_count)
  return (state.grad_norm_count >= guard.spike_warmup) & (grad_norm > guard.spike_factor * median)


def apply_if_finite(state: TrainState, grads: Any, loss: Array) -> tuple[TrainState, Array]:
  """One optimizer update, or none when the loss or any gradient is non-finite, when the
  gradient norm is a spike (`is_spike`), or when the update would make a parameter non-finite
  (finite gradients under an absurd learning rate). Returns (state, whether it was applied).

  An applied update's gradient norm enters the window `is_spike` compares with; zero norms
  (an update with nothing to learn from, e.g. every group without reward spread) do not, so
  that a run of them cannot make every later update look like a spike.
  """
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  grad_norm = optax.tree.norm(grads)
  # Zeroed gradients keep NaNs out of the (discarded) update's arithmetic.
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
  updates, new_opt_state = state.tx.update(safe_grads, state.opt_state, state.params)
  # Gradients are float32 (summed over micro-batches); optimizer moments stay in the dtype
  # they were created in (the parameters'), so the state's types never change under scan.
  new_opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_opt_state,
                               state.opt_state)
  new_params = optax.apply_updates(state.params, updates)
  accept = finite & ~is_spike(state, grad_norm) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
  record = accept & (grad_norm > 0)
  slot = state.grad_norm_count % state.grad_norms.shape[0]
  grad_norms = jnp.where(record, state.grad_norms.at[slot].set(grad_norm.astype(jnp.float32)),
                         state.grad_norms)
  return state.replace(
      params=keep(new_params, state.params),
      opt_state=keep(new_opt_state, state.opt_state),
      skipped=state.skipped + (~accept).astype(jnp.int32),
      consecutive_skips=jnp.where(accept, 0, state.consecutive_skips + 1),
      grad_norms=grad_norms,
      grad_norm_count=state.grad_norm_count + record.astype(jnp.int32),
  ), accept


def split_rows(tree: Any, parts: int) -> Any:
  """Leading axis N -> [parts, N / parts] on every leaf; part k holds rows k, k + parts, ...

  Strided, not contiguous: batch rows are split over the data-parallel devices in contiguous
  blocks, so a strided part draws rows from every block and each micro-batch (or mini-batch)
  keeps every device busy. Which rows share a part changes no micro-batched gradient (they are
  summed) and is one arbitrary partition among others for mini-batches.
  """
  def split(x):
    if x.shape[0] % parts:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {parts} parts")
    return jnp.swapaxes(x.reshape(x.shape[0] // parts, parts, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, tree)


def unsplit_rows(x: Array) -> Array:
  """Inverse of `split_rows` for one leaf: [parts, N / parts, ...] -> [N, ...] in row order."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def step_shardings(model_cfg: ModelConfig, tx: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh, guard: UpdateGuard | None = None) -> StepShardings:
  """Everything the jitted steps need to run with explicit shardings on `mesh` (for a state
  created with the same `tx` and `guard`)."""
  abstract = jax.eval_shape(lambda p: TrainState.create(p, tx, guard),
                            transformer.abstract_params(model_cfg))
  return StepShardings(state=rules.train_state_shardings(abstract, model_cfg, mesh),
                       batch=rules.batch_sharding(mesh), replicated=rules.replicated(mesh))


def create_state(params: Any, tx: optax.GradientTransformation,
                 shardings: StepShardings | None = None,
                 guard: UpdateGuard | None = None) -> TrainState:
  """`TrainState.create`, with the optimizer state created in place on the mesh when
  `shardings` is given (no device ever holds a whole moment tensor); `shardings` must come
  from `step_shardings` with the same `tx` and `guard`."""
  if shardings is None:
    return TrainState.create(params, tx, guard)
  return jax.jit(lambda p: TrainState.create(p, tx, guard), in_shardings=(shardings.params,),
                 out_shardings=shardings.state)(params)


def rows_sharding(shardings: StepShardings | None) -> Any:
  """The sharding the model pins its hidden states to (None without a mesh)."""
  return None if shardings is None else shardings.batch


def jit_step(step, shardings: StepShardings | None):
  """`step(state, batch) -> (state, metrics)` jitted with the state donated, and with explicit
  in / out shardings under a mesh."""
  if shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  return jax.jit(step, in_shardings=(shardings.state, shardings.batch),
                 out_shardings=(shardings.state, shardings.replicated), donate_argnums=(0,))


def accumulate_gradients(loss_fn, params: Any, batch: Any, num_microbatches: int):
  """Sum `grad(loss_sum)` and `denominator` over micro-batches, then divide once.

  `loss_fn(params, microbatch) -> (loss_sum, (denominator, metrics))`, metrics accumulated
  with `losses.combine_metrics`. Returns (loss, grads, metrics).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:
    (loss_sum, (denom, metrics)), grads = grad_fn(params, batch)
  else:
    micro = split_rows(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], micro)
    (loss_sum, (denom, metrics)), grads = grad_fn(params, first)

    def body(carry, mb):
      loss_sum, denom, metrics, grads = carry
      (l, (d, m)), g = grad_fn(params, mb)
      return (loss_sum + l, denom + d, losses.combine_metrics(metrics, m),
              jax.tree.map(jnp.add, grads, g)), None

    rest = jax.tree.map(lambda x: x[1:], micro)
    (loss_sum, denom, metrics, grads), _ = jax.lax.scan(
        body, (loss_sum, denom, metrics, grads), rest)
  denom = jnp.maximum(denom, 1e-8)  # an all-dropped batch has loss 0, not 0/0
  grads = jax.tree.map(lambda g: g / denom, grads)
  return loss_sum / denom, grads, metrics
