"""Supervised warm start: train on task demonstrations (prompt -> gold answer).

On the embedded testbed this creates the base model that RL starts from. The loss covers the
answer tokens only. Checkpoints go to `workdir`; a finished warm start is reused, an
interrupted one resumes.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct
from ml_collections import config_dict

from agpo_jax import checkpointing
from agpo_jax.algorithms import losses
from agpo_jax.metrics import MetricsWriter
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding import multihost, rules
from agpo_jax.sharding.rules import StepShardings
from agpo_jax.tasks import PromptIterator, encode_prompt
from agpo_jax.tokenizers import Tokenizer
from agpo_jax.train import state as state_lib
from agpo_jax.train.state_io import SkipWatch, restore_state, save_state, state_meta

Array = jax.Array


class SFTBatch(struct.PyTreeNode):
  """Demonstrations: `tokens`, `input_mask`, `positions` `[N, T]`; `target_mask` `[N, T]` marks
  the tokens whose prediction is trained (the answer, not the prompt)."""

  tokens: Array
  input_mask: Array
  positions: Array
  target_mask: Array


def sft_loss(model_cfg: ModelConfig, params: Any, batch: SFTBatch, rows_sharding: Any = None,
             label_smoothing: float = 0.0):
  """Summed cross-entropy of the target tokens and their count.

  With `label_smoothing` = ε the target of each token is (1 - ε) on the demonstrated token plus
  ε spread uniformly over the vocabulary: the warm-started model keeps probability on other
  tokens, as a pretrained model does on a task it was not tuned for (its most likely answer
  better than a sample), which is the regime RL sharpens.
  """
  logits, _ = transformer.forward(model_cfg, params, batch.tokens, batch.positions,
                                  batch.input_mask, rows_sharding=rows_sharding)
  logp = losses.token_logprobs(logits[:, :-1], batch.tokens[:, 1:])
  if label_smoothing:
    uniform = jnp.mean(jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32)), axis=-1)
    logp = (1.0 - label_smoothing) * logp + label_smoothing * uniform
  mask = batch.target_mask[:, 1:]
  return -jnp.sum(jnp.where(mask, logp, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def make_sft_step(model_cfg: ModelConfig, num_microbatches: int = 1,
                  shardings: StepShardings | None = None, label_smoothing: float = 0.0):
  """The jitted SFT step `(state, batch) -> (state, metrics)`."""

  def loss_fn(params, batch):
    nll_sum, count = sft_loss(model_cfg, params, batch, state_lib.rows_sharding(shardings),
                              label_smoothing)
    return nll_sum, (count, {})

  def step(state: state_lib.TrainState, batch: SFTBatch):
    loss, grads, _ = state_lib.accumulate_gradients(loss_fn, state.params, batch,
                                                    num_microbatches)
    grad_norm = optax.tree.norm(grads)
    state, applied = state_lib.apply_if_finite(state, grads, loss)
    return state.replace(step=state.step + 1), {"loss": loss, "grad_norm": grad_norm,
                                                "skipped_total": state.skipped}

  return state_lib.jit_step(step, shardings)


def demonstration_batch(tokenizer: Tokenizer, problems: Sequence[Any], length: int
                        ) -> SFTBatch:
  """Right-padded `prompt + answer + eos` rows; targets are the answer and eos."""
  tokens = np.full((len(problems), length), tokenizer.pad_id, np.int32)
  targets = np.zeros((len(problems), length), bool)
  input_mask = np.zeros((len(problems), length), bool)
  for row, problem in enumerate(problems):
    prompt = encode_prompt(tokenizer, problem)
    answer = tokenizer.encode(problem.answer) + [tokenizer.eos_id]
    sequence = prompt + answer
    if len(sequence) > length:
      raise ValueError(f"demonstration {problem.id!r} has {len(sequence)} tokens > {length}")
    tokens[row, :len(sequence)] = sequence
    input_mask[row, :len(sequence)] = True
    targets[row, len(prompt):len(sequence)] = True
  positions = np.asarray(transformer.positions_from_mask(input_mask))
  return SFTBatch(tokens=tokens, input_mask=input_mask, positions=positions,
                  target_mask=targets)


def train_sft(config: config_dict.ConfigDict, workdir: pathlib.Path, model_cfg: ModelConfig,
              tokenizer: Tokenizer, problems: Sequence[Any], params: Any | None = None,
              mesh: jax.sharding.Mesh | None = None) -> Any:
  """Run (or resume, or reuse) the warm start; returns the trained parameters.

  With a `mesh`, params and optimizer state live sharded on it, the step is jitted with
  explicit shardings and each process builds only its own rows of every batch.
  """
  cfg = config.sft
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
  guard = state_lib.UpdateGuard.from_config(cfg, "sft")
  shardings = None if mesh is None else state_lib.step_shardings(model_cfg, tx, mesh, guard)
  if params is None:
    init_rng = jax.random.fold_in(rng, 0)
    params = (transformer.init_params(model_cfg, init_rng) if mesh is None
              else rules.init_params_sharded(model_cfg, init_rng, mesh))
  state = state_lib.create_state(params, tx, shardings, guard)
  iterator = PromptIterator(len(problems), cfg.batch_size, seed=config.seed)
  length = max(len(encode_prompt(tokenizer, p)) + len(tokenizer.encode(p.answer)) + 1
               for p in problems)

  with checkpointing.Checkpointer(workdir, max_to_keep=1) as ckpt:
    meta = state_meta(model_cfg, iterator)
    if ckpt.latest_step() is not None:
      state, iterator_state = restore_state(ckpt, state, meta)
      iterator = PromptIterator(len(problems), cfg.batch_size, config.seed, iterator_state)
    start = int(state.step)
    if start >= cfg.steps:
      return state.params
    update = make_sft_step(model_cfg, cfg.num_microbatches, shardings,
                           cfg.get("label_smoothing", 0.0))
    mine = slice(None) if mesh is None else multihost.process_rows(cfg.batch_size, mesh)
    skips = SkipWatch(ckpt, cfg.max_consecutive_skips, "sft")
    skipped_before = int(state.skipped)
    lr = state_lib.learning_rate_schedule(cfg.optim, cfg.steps)
    logging.info("SFT warm start: %d steps x %d demonstrations (%s parameters) in %s",
                 cfg.steps, cfg.batch_size, f"{model_cfg.num_params:,}", workdir)
    with MetricsWriter(workdir, cfg.steps, start_step=start, stdout_every=cfg.log_every,
                       progress_keys=("loss",), enabled=jax.process_index() == 0) as writer:
      for step in range(start, cfg.steps):
        started = time.perf_counter()
        indices = iterator.next_indices()[mine]
        batch = demonstration_batch(tokenizer, [problems[i] for i in indices], length)
        if mesh is not None:
          batch = multihost.host_to_global(batch, mesh, cfg.batch_size)
        state, metrics = update(state, batch)
        metrics = jax.device_get(metrics)
        metrics.update(lr=float(lr(step)), step_s=time.perf_counter() - started)
        writer.write(step + 1, metrics)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
          save_state(ckpt, state, state_meta(model_cfg, iterator))
        skips.after_step(step + 1, state, int(metrics["skipped_total"]) - skipped_before,
                         float(metrics["grad_norm"]))
        skipped_before = int(metrics["skipped_total"])
  return state.params
