"""The train state and everything an update does to it, shared by the RL and SFT steps.

A step is a pure jitted function `(state, batch) -> (state, metrics)`. Each update accumulates
gradients over `num_microbatches` slices with the loss's `(loss_sum, denominator)` pair, so the
update equals the one computed on the whole mini-batch at once
(`grad = sum_k grad(loss_sum_k) / sum_k denominator_k`).

A non-finite loss or gradient leaves params and optimizer state untouched and is counted in
`state.skipped` / `state.consecutive_skips`; the loop stops the run when too many come in a row.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agpo_jax.algorithms import losses
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding import rules
from agpo_jax.sharding.rules import StepShardings

Array = jax.Array


class TrainState(struct.PyTreeNode):
  """Everything an update changes. `tx` is static (not saved; rebuilt from the config)."""

  step: Array  # [] int32: train steps taken
  params: Any
  opt_state: Any
  skipped: Array  # [] int32: updates skipped for non-finite loss / gradients, in total
  consecutive_skips: Array  # [] int32: ... in a row, up to now
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation) -> "TrainState":
    # Separate buffers: the step donates the state, and one buffer cannot be donated twice.
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
    return cls(step=zero(), params=params, opt_state=tx.init(params), skipped=zero(),
               consecutive_skips=zero(), tx=tx)


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


def apply_if_finite(state: TrainState, grads: Any, loss: Array) -> tuple[TrainState, Array]:
  """One optimizer update, or none when the loss or any gradient is non-finite."""
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  # Zeroed gradients keep NaNs out of the (discarded) update's arithmetic.
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
  updates, new_opt_state = state.tx.update(safe_grads, state.opt_state, state.params)
  # Gradients are float32 (summed over micro-batches); optimizer moments stay in the dtype
  # they were created in (the parameters'), so the state's types never change under scan.
  new_opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_opt_state,
                               state.opt_state)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  skip = (~finite).astype(jnp.int32)
  return state.replace(
      params=keep(new_params, state.params),
      opt_state=keep(new_opt_state, state.opt_state),
      skipped=state.skipped + skip,
      consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1),
  ), finite


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
                   mesh: jax.sharding.Mesh) -> StepShardings:
  """Everything the jitted steps need to run with explicit shardings on `mesh`."""
  abstract = jax.eval_shape(lambda p: TrainState.create(p, tx),
                            transformer.abstract_params(model_cfg))
  return StepShardings(state=rules.train_state_shardings(abstract, model_cfg, mesh),
                       batch=rules.batch_sharding(mesh), replicated=rules.replicated(mesh))


def create_state(params: Any, tx: optax.GradientTransformation,
                 shardings: StepShardings | None = None) -> TrainState:
  """`TrainState.create`, with the optimizer state created in place on the mesh when
  `shardings` is given (no device ever holds a whole moment tensor)."""
  if shardings is None:
    return TrainState.create(params, tx)
  return jax.jit(lambda p: TrainState.create(p, tx), in_shardings=(shardings.params,),
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
