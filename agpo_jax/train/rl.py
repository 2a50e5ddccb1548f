"""The RL loop, top to bottom: sample -> grade -> advantages -> update -> log / checkpoint.

    for step in range(start, steps):
        graded     = source.next(params, fold_in(rng, step))     (rollouts.py: sample, grade)
        advantages = compute_advantages(graded.shaped, config.algo)
        state, metrics = update(state, batch)                    (rl_step.py: jitted)
        log, checkpoint, maybe evaluate

Everything random derives from `(config.seed, step)`, and the prompt order from
`(config.seed, epoch)`, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from agpo_jax import checkpointing, configs, sampling
from agpo_jax.algorithms import advantages as adv_lib
from agpo_jax.algorithms.token_mass import group_shared_tokens, token_mass_metrics
from agpo_jax.metrics import MetricsWriter
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding import multihost, rules
from agpo_jax.tasks import PromptIterator
from agpo_jax.tasks.problem import balance_by_label
from agpo_jax.tokenizers import Tokenizer
from agpo_jax.train import rl_step, rollouts
from agpo_jax.train import state as state_lib
from agpo_jax.train.state_io import SkipWatch, restore_state, save_state, state_meta


@dataclasses.dataclass
class RLResult:
  params: Any
  steps_done: int
  interrupted: bool  # stopped by SIGTERM (a checkpoint was saved)


class _Terminate:
  """Turns SIGTERM into a flag the loop checks after each step (then saves and exits)."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc_info):
    signal.signal(signal.SIGTERM, self._previous)


def _train_state(config, model_cfg, init_params, mesh=None):
  """(fresh TrainState, step shardings or None); created sharded on `mesh` when given."""
  updates = config.train.steps * config.train.num_minibatches * config.train.epochs
  tx = state_lib.make_optimizer(config.optim, updates)
  guard = state_lib.UpdateGuard.from_config(config.train, "train")
  shardings = None if mesh is None else state_lib.step_shardings(model_cfg, tx, mesh, guard)
  return state_lib.create_state(init_params, tx, shardings, guard), shardings


def restore_rl_params(config: config_dict.ConfigDict, workdir: pathlib.Path,
                      model_cfg: ModelConfig, init_params: Any,
                      mesh: jax.sharding.Mesh | None = None) -> tuple[Any, int] | None:
  """(params, step) of the newest RL checkpoint in `workdir` that verifies, or None if there
  is none (`checkpointing.CorruptCheckpoint` if none of them verifies).

  Restored straight into the shardings of `mesh` (any mesh, whatever the saving one was)."""
  if not (workdir / "checkpoints").exists():
    return None
  with checkpointing.Checkpointer(workdir / "checkpoints") as ckpt:
    if ckpt.latest_step() is None:
      return None
    rng = jax.random.key(config.seed, impl=config.prng_impl)  # only its structure is used
    state, _, _ = restore_state(ckpt, _train_state(config, model_cfg, init_params, mesh)[0],
                                {"model": model_cfg.checkpoint_signature()}, rng)
  return state.params, int(state.step)


def _check_config(config: config_dict.ConfigDict, mesh: jax.sharding.Mesh | None) -> None:
  """Refuse, before any work, what the loop cannot run (each message names the config key)."""
  cfg = config.train
  batch_rows = cfg.batch_prompts * config.sampling.num_samples
  if batch_rows % (cfg.num_minibatches * cfg.num_microbatches):
    raise configs.ConfigError(
        f"train.batch_prompts * sampling.num_samples = {batch_rows} must divide into "
        f"train.num_minibatches x train.num_microbatches = "
        f"{cfg.num_minibatches} x {cfg.num_microbatches}")
  configs.require_choice(config, "algo.name", adv_lib.estimator_names())
  if mesh is not None and cfg.batch_prompts % rules.data_parallel_size(mesh):
    raise configs.ConfigError(
        f"train.batch_prompts={cfg.batch_prompts} must be a multiple of the mesh's "
        f"data-parallel size (mesh data x fsdp = {rules.data_parallel_size(mesh)})")


class _Updater:
  """Numpy rows of this process -> the jitted update: global arrays under a mesh, the old
  (pre-update) log-probs when a batch takes several updates, reference log-probs for KL."""

  def __init__(self, config, model_cfg, temperature, shardings, ref_params, mesh):
    cfg = config.train
    self.mesh, self.ref_params = mesh, ref_params
    self.needs_old_logp = cfg.num_minibatches * cfg.epochs > 1
    self.step_fn = rl_step.make_rl_step(model_cfg, config.loss, cfg, temperature, shardings)
    self.logprob_fn = rl_step.make_logprob_fn(model_cfg, temperature, cfg.num_microbatches,
                                              shardings)

  def __call__(self, state, batch: rl_step.RLBatch, num_rows: int):
    if self.mesh is not None:
      batch = multihost.host_to_global(batch, self.mesh, num_rows)
    m = batch.completion_mask.shape[1]
    rows = (batch.tokens, batch.input_mask, batch.positions, m)
    if self.needs_old_logp:
      batch = batch.replace(old_logp=self.logprob_fn(state.params, *rows))
    if self.ref_params is not None:
      batch = batch.replace(ref_logp=self.logprob_fn(self.ref_params, *rows))
    state, metrics = self.step_fn(state, batch)
    return state, jax.device_get(metrics)


def _step_metrics(config, graded: rollouts.GradedBatch, adv_metrics: dict, update_s: float,
                  lr: float) -> dict:
  """What a step logs besides the update's own metrics."""
  rewards, lengths = graded.rewards, graded.lengths
  generated = int(lengths.sum())
  accuracy = float(np.mean(adv_lib.is_correct(rewards, config.algo)))
  metrics = {(k if k.startswith("tokens/") else f"algo/{k}"): float(v)
             for k, v in adv_metrics.items()}
  metrics.update({f"verifier/{k}": float(v) for k, v in graded.verifier_stats.items()})
  metrics.update(
      reward=float(np.mean(rewards)), accuracy=accuracy,
      shaped_reward=float(np.mean(graded.shaped)), lr=lr,
      response_length_mean=float(np.mean(lengths)), response_length_max=int(np.max(lengths)),
      truncated_fraction=float(np.mean(graded.truncated)),
      sample_s=graded.sample_s, verify_s=graded.verify_s, update_s=update_s,
      sample_tokens_per_s=generated / max(graded.sample_s, 1e-9),
      update_tokens_per_s=graded.update_tokens / max(update_s, 1e-9))
  return metrics


def train_rl(config: config_dict.ConfigDict, workdir: pathlib.Path, model_cfg: ModelConfig,
             tokenizer: Tokenizer, problems: Sequence[Any], verifier: Any,
             init_params: Any, evaluate_fn: Callable[[Any, int], dict] | None = None,
             mesh: jax.sharding.Mesh | None = None,
             sampler: sampling.Sampler | None = None) -> RLResult:
  """Train `init_params` with the configured algorithm; resumes from `workdir` if possible.

  With a `mesh` (params already sharded on it), the state is created sharded, sampler and
  step are jitted with explicit shardings, and under several processes each one samples and
  verifies its own share of the prompts (see `rollouts.RolloutSource`); each process then
  feeds its own rows to the update. `sampler` defaults to `Sampler.from_config`.
  """
  cfg = config.train
  _check_config(config, mesh)
  sampler = sampler or sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  updates_per_step = cfg.num_minibatches * cfg.epochs
  lr = state_lib.learning_rate_schedule(config.optim, cfg.steps * updates_per_step)
  state, shardings = _train_state(config, model_cfg, init_params, mesh)
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  if cfg.get("balance_labels", False):
    try:
      problems = balance_by_label(problems, config.seed)
    except ValueError as e:
      raise configs.ConfigError(f"config.train.balance_labels=True: {e} (a label task such as "
                                "task.name='relevance' has them)") from None
    logging.info("RL prompts balanced by gold label: %d problems", len(problems))
  iterator = PromptIterator(len(problems), cfg.batch_prompts, seed=config.seed)
  # This process's prompts of each batch (all of them on one process).
  mine = slice(None) if mesh is None else multihost.process_rows(cfg.batch_prompts, mesh)
  update = _Updater(config, model_cfg, sampler.sampling.scoring_temperature, shardings,
                    init_params if config.loss.kl_coef else None, mesh)
  batch_rows = cfg.batch_prompts * config.sampling.num_samples

  with checkpointing.Checkpointer(workdir / "checkpoints", max_to_keep=cfg.max_to_keep) as ckpt, \
      _Terminate() as terminate:
    if ckpt.latest_step() is not None:
      state, iterator_state, rng = restore_state(ckpt, state, state_meta(model_cfg, iterator),
                                                 rng)
      iterator = PromptIterator(len(problems), cfg.batch_prompts, config.seed, iterator_state)
      logging.info("resumed from step %d in %s", int(state.step), workdir)
    skips = SkipWatch(ckpt, cfg.max_consecutive_skips, "train")
    source = rollouts.make_rollout_source(config, sampler, verifier, tokenizer, problems,
                                          iterator, mine)
    start = int(state.step)
    with MetricsWriter(workdir, cfg.steps, start_step=start, stdout_every=cfg.log_every,
                       progress_keys=("reward", "accuracy"),
                       enabled=jax.process_index() == 0) as writer:
      for step in range(start, cfg.steps):
        # Sample and grade (each process its own prompts; the whole batch's rewards).
        graded = source.next(state.params, jax.random.fold_in(rng, step))

        # Advantages from the whole batch (REINFORCE++ whitens over all groups); dropped
        # completions leave the loss entirely.
        advantages, loss_mask = adv_lib.compute_advantages(graded.shaped, config.algo,
                                                           graded.valid)
        adv_metrics = adv_lib.advantage_metrics(graded.shaped, advantages, loss_mask,
                                                config.algo, graded.valid)
        loss_mask = np.asarray(loss_mask) & graded.keep
        local, rollout = graded.local_groups, graded.rollout
        token_mask = None
        if config.algo.name == "agpo" and config.algo.agpo.get("mask_shared_tokens", False):
          token_mask = ~group_shared_tokens(np.asarray(rollout.tokens),
                                            np.asarray(rollout.lengths),
                                            config.sampling.num_samples)
        batch = rl_step.build_batch(rollout, np.asarray(advantages)[local], loss_mask[local],
                                    token_mask)
        if cfg.get("token_mass_metrics", True):  # where the advantage mass lands (this process's rows)
          adv_metrics.update({f"tokens/{k}": v for k, v in token_mass_metrics(
              np.asarray(rollout.tokens), np.asarray(rollout.lengths),
              np.asarray(rollout.truncated), np.asarray(advantages)[local].reshape(-1),
              loss_mask[local].reshape(-1), config.sampling.num_samples, token_mask).items()})

        # Update.
        started = time.perf_counter()
        state, metrics = update(state, batch, batch_rows)
        update_s = time.perf_counter() - started

        # Log.
        metrics.update(_step_metrics(config, graded, adv_metrics, update_s,
                                     float(lr(step * updates_per_step))))
        if evaluate_fn is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
          metrics.update({f"eval/{k}": v for k, v in evaluate_fn(state.params, step + 1).items()})
        writer.write(step + 1, metrics)

        # Checkpoint (never mid-way through skipped updates, nor a non-finite state); stop on
        # SIGTERM or on a run of skipped updates.
        saved = False
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or terminate.requested:
          saved = save_state(ckpt, state, state_meta(model_cfg, iterator), rng)
        if terminate.requested:
          if saved:
            logging.warning("SIGTERM: checkpoint saved at step %d; exiting", step + 1)
          else:
            logging.warning("SIGTERM: no checkpoint saved at step %d (the newest good one is "
                            "step %s); exiting", step + 1, ckpt.last_verified_step)
          return RLResult(state.params, step + 1, interrupted=True)
        skips.after_step(step + 1, state, int(metrics["updates_skipped"]),
                         float(metrics["grad_norm"]))
  return RLResult(state.params, int(state.step), interrupted=False)
