"""The RL update: one rollout batch -> `epochs x num_minibatches` optimizer updates (jitted).

    batch = build_batch(rollout, advantages, loss_mask)   # numpy rows: prompt + completion
    state, metrics = rl_step(state, batch)                # loss, gradients, AdamW, guard

Log-probs are computed at the sampling temperature so that trainer and sampler score the same
distribution; the loss and its aggregation are `algorithms.losses.policy_loss`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from agpo_jax import sampling
from agpo_jax.algorithms import losses
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding.rules import StepShardings
from agpo_jax.train import state as state_lib

Array = jax.Array


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


def build_batch(rollout: sampling.Rollout, advantages: np.ndarray, loss_mask: np.ndarray,
                token_mask: np.ndarray | None = None) -> RLBatch:
  """Prompt + completion rows for the trainer, with the advantage broadcast per row.

  `loss_mask` `[N]` drops whole rows from the loss; `token_mask` `[N, M]` (optional) single
  generated tokens (they stay in the model's input).
  """
  tokens = np.concatenate([rollout.prompt_tokens, np.asarray(rollout.tokens)], axis=1)
  completion_mask = np.asarray(rollout.mask)
  input_mask = np.concatenate([rollout.prompt_mask, completion_mask], axis=1)
  in_loss = completion_mask & loss_mask.reshape(-1)[:, None]
  if token_mask is not None:
    in_loss = in_loss & np.asarray(token_mask, bool)
  return RLBatch(
      tokens=tokens, input_mask=input_mask,
      positions=np.asarray(transformer.positions_from_mask(input_mask)),
      completion_mask=in_loss,
      advantages=advantages.reshape(-1).astype(np.float32),
      sampler_logp=np.asarray(rollout.logprobs))


def completion_logprobs(model_cfg: ModelConfig, params: Any, tokens: Array, input_mask: Array,
                        positions: Array, completion_len: int, temperature: float,
                        with_entropy: bool = False, rows_sharding: Any = None
                        ) -> tuple[Array, Array | None]:
  """Log-probs `[N, M]` (and entropies) of the last `completion_len` tokens of each row.

  Only the positions that predict completion tokens are projected to the vocabulary.
  Logits are divided by the sampling temperature so trainer and sampler score the same law.
  """
  hidden, _ = transformer.forward(model_cfg, params, tokens, positions, input_mask,
                                  return_hidden=True, rows_sharding=rows_sharding)
  hidden = hidden[:, -completion_len - 1:-1]
  logits = transformer.logits_from_hidden(model_cfg, params, hidden) / temperature
  targets = tokens[:, -completion_len:]
  if not with_entropy:
    return losses.token_logprobs(logits, targets), None
  return losses.token_logprobs_and_entropy(logits, targets)


def make_rl_step(model_cfg: ModelConfig, loss_cfg: Any, train_cfg: Any, temperature: float,
                 shardings: StepShardings | None = None):
  """The jitted RL step `(state, batch) -> (state, metrics)` for one rollout batch."""
  with_entropy = True  # entropy is always logged; it is cheap next to the forward pass
  rows = state_lib.rows_sharding(shardings)

  def loss_fn(params, mb: RLBatch):
    m = mb.completion_mask.shape[1]
    logp, entropy = completion_logprobs(model_cfg, params, mb.tokens, mb.input_mask,
                                        mb.positions, m, temperature, with_entropy, rows)
    if not loss_cfg.entropy_coef:  # logged only: no gradient flows through it
      entropy = jax.lax.stop_gradient(entropy)
    old_logp = jax.lax.stop_gradient(logp) if mb.old_logp is None else mb.old_logp
    loss_sum, denom, metrics = losses.policy_loss(
        logp, old_logp, mb.ref_logp, mb.advantages, mb.completion_mask, loss_cfg,
        sampler_logp=mb.sampler_logp, entropy=entropy, max_len=m)
    return loss_sum, (denom, metrics)

  def update(state: state_lib.TrainState, minibatch: RLBatch):
    loss, grads, metrics = state_lib.accumulate_gradients(loss_fn, state.params, minibatch,
                                                train_cfg.num_microbatches)
    grad_norm = optax.tree.norm(grads)
    state, applied = state_lib.apply_if_finite(state, grads, loss)
    return state, (loss, grad_norm, applied, metrics)

  def step(state: state_lib.TrainState, batch: RLBatch):
    minibatches = state_lib.split_rows(batch, train_cfg.num_minibatches)

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

  return state_lib.jit_step(step, shardings)


def make_logprob_fn(model_cfg: ModelConfig, temperature: float, num_microbatches: int = 1,
                    shardings: StepShardings | None = None):
  """Jitted `(params, tokens, input_mask, positions, completion_len) -> logp [N, M]`.

  Used for old (pre-update) and reference log-probs; micro-batched like the update so it fits
  in the same memory.
  """

  def logprobs(params, tokens, input_mask, positions, completion_len):
    def one(args):
      return completion_logprobs(model_cfg, params, *args, completion_len, temperature,
                                 rows_sharding=state_lib.rows_sharding(shardings))[0]
    if num_microbatches == 1:
      return one((tokens, input_mask, positions))
    micro = state_lib.split_rows((tokens, input_mask, positions), num_microbatches)
    return state_lib.unsplit_rows(jax.lax.map(one, micro))

  if shardings is None:
    return jax.jit(logprobs, static_argnums=(4,))
  rows = shardings.batch
  return jax.jit(logprobs, static_argnums=(4,),
                 in_shardings=(shardings.params, rows, rows, rows), out_shardings=rows)
