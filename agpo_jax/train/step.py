"""Train state, optimizer, and the pure jitted steps: `(state, batch) -> (state, metrics)`.

The RL step takes one rollout batch and applies `epochs x num_minibatches` optimizer updates.
Each update accumulates gradients over `num_microbatches` slices with the loss's
`(loss_sum, denominator)` pair, so the update equals the one computed on the whole mini-batch
at once (`grad = sum_k grad(loss_sum_k) / sum_k denominator_k`).

A non-finite loss or gradient leaves params and optimizer state untouched and is counted in
`state.skipped` / `state.consecutive_skips`; the loop stops the run when too many come in a row.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from ml_collections import config_dict

from agpo_jax.algorithms import losses
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig

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


def optim_config(lr: float = 3e-4) -> config_dict.ConfigDict:
  """The `config.optim` block: AdamW with warm-up, a schedule and gradient clipping."""
  return config_dict.ConfigDict(dict(
      lr=lr,
      schedule="constant",  # constant | cosine | linear (after warm-up)
      warmup_steps=0,
      end_lr_ratio=0.0,  # cosine / linear decay to lr * end_lr_ratio at the last step
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip=1.0,  # global-norm clip; 0 disables
  ))


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


def _apply_if_finite(state: TrainState, grads: Any, loss: Array) -> tuple[TrainState, Array]:
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


def _split(tree: Any, parts: int) -> Any:
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


def _unsplit(x: Array) -> Array:
  """Inverse of `_split` for one leaf: [parts, N / parts, ...] -> [N, ...] in row order."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


class StepShardings(struct.PyTreeNode):
  """Explicit shardings for the jitted steps (from `parallel.step_shardings`); without them
  the steps run where their inputs are and the compiler picks output shardings."""

  state: Any  # a TrainState of NamedShardings
  batch: Any  # a NamedSharding: rows over the data-parallel axes (a prefix of any batch)
  replicated: Any  # a NamedSharding: metrics and scalars

  @property
  def params(self) -> Any:
    return self.state.params


def create_state(params: Any, tx: optax.GradientTransformation,
                 shardings: StepShardings | None = None) -> TrainState:
  """`TrainState.create`, with the optimizer state created in place on the mesh when
  `shardings` is given (no device ever holds a whole moment tensor)."""
  if shardings is None:
    return TrainState.create(params, tx)
  return jax.jit(lambda p: TrainState.create(p, tx), in_shardings=(shardings.params,),
                 out_shardings=shardings.state)(params)


def rows_sharded(fn, row_sharding: Any):
  """`fn`, traced with the model's hidden states pinned to `row_sharding` (see
  `transformer.activation_sharding`)."""

  @functools.wraps(fn)
  def traced(*args):
    with transformer.activation_sharding(row_sharding):
      return fn(*args)

  return traced


def _jit_step(step, shardings: StepShardings | None):
  if shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  return jax.jit(rows_sharded(step, shardings.batch),
                 in_shardings=(shardings.state, shardings.batch),
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
    micro = _split(batch, num_microbatches)
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


# ---------------------------------------------------------------------------------------------
# RL


class RLBatch(struct.PyTreeNode):
  """One rollout batch, `N` rows of prompt (left-padded to P) + completion (M tokens).

  Attributes:
    tokens, input_mask, positions: `[N, P + M]`.
    completion_mask: `[N, M]` bool, tokens that enter the loss (generated tokens of kept rows).
    advantages: `[N]`.
    sampler_logp: `[N, M]` the sampler's log-probs.
    old_logp: `[N, M]` the trainer's log-probs before this batch's first update, or None:
      with one update per batch the policy is still the sampling policy, so the step uses the
      current log-probs (stop-gradient) and skips a forward pass.
    ref_logp: `[N, M]` reference-policy log-probs, or None (no KL term).
  """

  tokens: Array
  input_mask: Array
  positions: Array
  completion_mask: Array
  advantages: Array
  sampler_logp: Array
  old_logp: Array | None = None
  ref_logp: Array | None = None


def completion_logprobs(model_cfg: ModelConfig, params: Any, tokens: Array, input_mask: Array,
                        positions: Array, completion_len: int, temperature: float,
                        with_entropy: bool = False) -> tuple[Array, Array | None]:
  """Log-probs `[N, M]` (and entropies) of the last `completion_len` tokens of each row.

  Only the positions that predict completion tokens are projected to the vocabulary.
  Logits are divided by the sampling temperature so trainer and sampler score the same law.
  """
  hidden, _ = transformer.forward(model_cfg, params, tokens, positions, input_mask,
                                  return_hidden=True)
  hidden = hidden[:, -completion_len - 1:-1]
  logits = transformer.logits_from_hidden(model_cfg, params, hidden) / temperature
  targets = tokens[:, -completion_len:]
  logp = losses.token_logprobs(logits, targets)
  entropy = losses.token_entropy(logits) if with_entropy else None
  return logp, entropy


def rl_config() -> config_dict.ConfigDict:
  """The `config.train` block for RL."""
  return config_dict.ConfigDict(dict(
      steps=150,
      batch_prompts=64,  # prompts per rollout batch (each sampled G = sampling.num_samples times)
      num_minibatches=1,  # optimizer updates per epoch over the rollout batch
      num_microbatches=1,  # gradient-accumulation slices per update
      epochs=1,  # passes over the rollout batch
      log_every=1,
      checkpoint_every=50,
      max_to_keep=2,
      eval_every=0,  # held-out pass@k every this many steps during RL (0: only at the end)
      eval_problems=200,  # ... on the first this many problems of config.eval.split
      eval_n=16,  # ... with this many samples each (other settings from config.eval)
      max_consecutive_skips=5,  # stop the run after this many non-finite updates in a row
  ))


def make_rl_step(model_cfg: ModelConfig, loss_cfg: Any, train_cfg: Any, temperature: float,
                 shardings: StepShardings | None = None):
  """The jitted RL step `(state, batch) -> (state, metrics)` for one rollout batch."""
  with_entropy = True  # entropy is always logged; it is cheap next to the forward pass

  def loss_fn(params, mb: RLBatch):
    m = mb.completion_mask.shape[1]
    logp, entropy = completion_logprobs(model_cfg, params, mb.tokens, mb.input_mask,
                                        mb.positions, m, temperature, with_entropy)
    old_logp = jax.lax.stop_gradient(logp) if mb.old_logp is None else mb.old_logp
    loss_sum, denom, metrics = losses.policy_loss(
        logp, old_logp, mb.ref_logp, mb.advantages, mb.completion_mask, loss_cfg,
        sampler_logp=mb.sampler_logp, entropy=entropy, max_len=m)
    return loss_sum, (denom, metrics)

  def update(state: TrainState, minibatch: RLBatch):
    loss, grads, metrics = accumulate_gradients(loss_fn, state.params, minibatch,
                                                train_cfg.num_microbatches)
    grad_norm = optax.tree.norm(grads)
    state, applied = _apply_if_finite(state, grads, loss)
    return state, (loss, grad_norm, applied, metrics)

  def step(state: TrainState, batch: RLBatch):
    minibatches = _split(batch, train_cfg.num_minibatches)

    def one_epoch(state, _):
      return jax.lax.scan(update, state, minibatches)

    state, (loss, grad_norm, applied, metrics) = jax.lax.scan(
        one_epoch, state, None, length=train_cfg.epochs)
    # Per-update values have leading [epochs, minibatches] axes: report the last update's
    # loss and gradient norm, and loss diagnostics summed over every update.
    summed = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), metrics)
    totals = functools.reduce(losses.combine_metrics,
                              [jax.tree.map(lambda x, i=i: x[i], summed)
                               for i in range(train_cfg.epochs * train_cfg.num_minibatches)])
    out = losses.summarize_metrics(totals)
    out.update(loss=loss.reshape(-1)[-1], grad_norm=grad_norm.reshape(-1)[-1],
               updates_skipped=jnp.sum(~applied), skipped_total=state.skipped,
               consecutive_skips=state.consecutive_skips)
    return state.replace(step=state.step + 1), out

  return _jit_step(step, shardings)


def make_logprob_fn(model_cfg: ModelConfig, temperature: float, num_microbatches: int = 1,
                    shardings: StepShardings | None = None):
  """Jitted `(params, tokens, input_mask, positions, completion_len) -> logp [N, M]`.

  Used for old (pre-update) and reference log-probs; micro-batched like the update so it fits
  in the same memory.
  """

  def logprobs(params, tokens, input_mask, positions, completion_len):
    def one(args):
      return completion_logprobs(model_cfg, params, *args, completion_len, temperature)[0]
    if num_microbatches == 1:
      return one((tokens, input_mask, positions))
    micro = _split((tokens, input_mask, positions), num_microbatches)
    return _unsplit(jax.lax.map(one, micro))

  if shardings is None:
    return jax.jit(logprobs, static_argnums=(4,))
  rows = shardings.batch
  return jax.jit(rows_sharded(logprobs, rows), static_argnums=(4,),
                 in_shardings=(shardings.params, rows, rows, rows), out_shardings=rows)


# ---------------------------------------------------------------------------------------------
# SFT


class SFTBatch(struct.PyTreeNode):
  """Demonstrations: `tokens`, `input_mask`, `positions` `[N, T]`; `target_mask` `[N, T]` marks
  the tokens whose prediction is trained (the answer, not the prompt)."""

  tokens: Array
  input_mask: Array
  positions: Array
  target_mask: Array


def sft_loss(model_cfg: ModelConfig, params: Any, batch: SFTBatch):
  """Summed negative log-likelihood of the target tokens and their count."""
  logits, _ = transformer.forward(model_cfg, params, batch.tokens, batch.positions,
                                  batch.input_mask)
  logp = losses.token_logprobs(logits[:, :-1], batch.tokens[:, 1:])
  mask = batch.target_mask[:, 1:]
  return -jnp.sum(jnp.where(mask, logp, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def make_sft_step(model_cfg: ModelConfig, num_microbatches: int = 1,
                  shardings: StepShardings | None = None):
  """The jitted SFT step `(state, batch) -> (state, metrics)`."""

  def loss_fn(params, batch):
    nll_sum, count = sft_loss(model_cfg, params, batch)
    return nll_sum, (count, {})

  def step(state: TrainState, batch: SFTBatch):
    loss, grads, _ = accumulate_gradients(loss_fn, state.params, batch, num_microbatches)
    grad_norm = optax.tree.norm(grads)
    state, applied = _apply_if_finite(state, grads, loss)
    return state.replace(step=state.step + 1), {"loss": loss, "grad_norm": grad_norm,
                                                "skipped_total": state.skipped}

  return _jit_step(step, shardings)
