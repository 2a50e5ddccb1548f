"""The RL loop: sample, verify, estimate advantages, update, log, checkpoint. Top to bottom.

    for step in range(start, steps):
        problems  = next prompts from the task's training split
        rollout   = sampler.generate(params, prompts, G, rng folded with step)
        rewards   = verifier(decoded completions, references)        (+ reward shaping)
        advantages, loss_mask = compute_advantages(rewards [B, G], config.algo)
        state, metrics = rl_step(state, batch)                        (jit: loss, grads, AdamW)
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
from ml_collections import config_dict

from agpo_jax import checkpointing, configs, parallel, sampling
from agpo_jax.algorithms import advantages as adv_lib
from agpo_jax.algorithms import reward_shaping
from agpo_jax.metrics import MetricsWriter
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.tasks import encode_prompt
from agpo_jax.tasks.testbed import PromptIterator
from agpo_jax.tokenizers import Tokenizer
from agpo_jax.train import step as train_step
from agpo_jax.train.state_io import restore_state, save_state, state_meta


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


def build_batch(rollout: sampling.Rollout, advantages: np.ndarray, loss_mask: np.ndarray
                ) -> train_step.RLBatch:
  """Prompt + completion rows for the trainer, with the advantage broadcast per row."""
  tokens = np.concatenate([rollout.prompt_tokens, np.asarray(rollout.tokens)], axis=1)
  completion_mask = np.asarray(rollout.mask)
  input_mask = np.concatenate([rollout.prompt_mask, completion_mask], axis=1)
  return train_step.RLBatch(
      tokens=tokens, input_mask=input_mask,
      positions=np.asarray(transformer.positions_from_mask(input_mask)),
      completion_mask=completion_mask & loss_mask.reshape(-1)[:, None],
      advantages=advantages.reshape(-1).astype(np.float32),
      sampler_logp=np.asarray(rollout.logprobs))


def decode_completions(tokenizer: Tokenizer, rollout: sampling.Rollout) -> list[str]:
  tokens, lengths = np.asarray(rollout.tokens), np.asarray(rollout.lengths)
  return [tokenizer.decode(tokens[i, :lengths[i]]) for i in range(len(lengths))]


def rollout_and_grade(config, sampler, verifier, tokenizer, params, problems, rng, sp):
  """Sample G completions per problem and grade them. Returns (rollout, rewards [B, G], info)."""
  group = config.sampling.num_samples
  started = time.perf_counter()
  prompts = [encode_prompt(tokenizer, p) for p in problems]
  chunks = config.sampling.get("rollout_chunks", 1)
  if len(prompts) % chunks:
    raise configs.ConfigError(
        f"sampling.rollout_chunks={chunks} must divide the {len(prompts)} prompts each "
        "process samples per batch")
  if chunks == 1:
    rollout = sampler.generate(params, prompts, group, rng, sp)
  else:  # one padded length for all chunks, so that their rows concatenate
    size, prompt_len = len(prompts) // chunks, sampler.prompt_length(prompts)
    parts = [sampler.generate(params, prompts[i * size:(i + 1) * size], group,
                              jax.random.fold_in(rng, i), sp, prompt_len)
             for i in range(chunks)]
    rollout = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)
  rollout = jax.block_until_ready(rollout)
  sampled = time.perf_counter()
  references = [p.reference for p in problems for _ in range(group)]
  rewards, statuses = verifier(decode_completions(tokenizer, rollout), references)
  info = {"sample_s": sampled - started, "verify_s": time.perf_counter() - sampled,
          "statuses": statuses, "verifier": dict(verifier.last_stats)}
  return rollout, rewards.reshape(len(problems), group), info


def _train_state(config, model_cfg, init_params, mesh=None):
  """(fresh TrainState, step shardings or None); created sharded on `mesh` when given."""
  updates = config.train.steps * config.train.num_minibatches * config.train.epochs
  tx = train_step.make_optimizer(config.optim, updates)
  shardings = None if mesh is None else parallel.step_shardings(model_cfg, tx, mesh)
  return train_step.create_state(init_params, tx, shardings), shardings


def restore_rl_params(config: config_dict.ConfigDict, workdir: pathlib.Path,
                      model_cfg: ModelConfig, init_params: Any,
                      mesh: jax.sharding.Mesh | None = None) -> tuple[Any, int] | None:
  """(params, step) of the latest RL checkpoint in `workdir`, or None if there is none.

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


def train_rl(config: config_dict.ConfigDict, workdir: pathlib.Path, model_cfg: ModelConfig,
             tokenizer: Tokenizer, problems: Sequence[Any], verifier: Callable,
             init_params: Any, evaluate_fn: Callable[[Any, int], dict] | None = None,
             mesh: jax.sharding.Mesh | None = None) -> RLResult:
  """Train `init_params` with the configured algorithm; resumes from `workdir` if possible.

  With a `mesh` (params already sharded on it), the state is created sharded, sampler and
  step are jitted with explicit shardings, and under several processes each one samples and
  verifies its own share of the prompts: rewards (a few numbers per completion) are gathered
  so that advantages and logged metrics are computed from the whole batch on every process,
  exactly as on one process, and each process then feeds its own rows to the update.
  """
  cfg = config.train
  group = config.sampling.num_samples
  batch_rows = cfg.batch_prompts * group
  if batch_rows % (cfg.num_minibatches * cfg.num_microbatches):
    raise ValueError(f"train.batch_prompts * sampling.num_samples = {batch_rows} must divide "
                     f"into train.num_minibatches x train.num_microbatches = "
                     f"{cfg.num_minibatches} x {cfg.num_microbatches}")
  # An unknown algorithm fails before any work, naming the config key.
  configs.require_choice(config, "algo.name", adv_lib.estimator_names())
  if config.reward.dynamic_sampling and jax.process_count() > 1:
    raise configs.ConfigError("reward.dynamic_sampling=True is not supported with more than "
                              "one process yet (groups would have to move between hosts)")
  if mesh is not None and cfg.batch_prompts % parallel.data_parallel_size(mesh):
    raise configs.ConfigError(
        f"train.batch_prompts={cfg.batch_prompts} must be a multiple of the mesh's "
        f"data-parallel size (mesh data x fsdp = {parallel.data_parallel_size(mesh)})")
  updates_per_step = cfg.num_minibatches * cfg.epochs
  lr = train_step.learning_rate_schedule(config.optim, cfg.steps * updates_per_step)
  state, shardings = _train_state(config, model_cfg, init_params, mesh)
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  iterator = PromptIterator(len(problems), cfg.batch_prompts, seed=config.seed)
  sp = sampling.sampling_params(config.sampling, tokenizer.stop_ids, tokenizer.vocab_size)
  sampler = sampling.Sampler(model_cfg, tokenizer.pad_id, config.sampling.min_prompt_bucket,
                             mesh)
  rl_step = train_step.make_rl_step(model_cfg, config.loss, cfg, sp.temperature or 1.0,
                                    shardings)
  needs_old_logp = updates_per_step > 1
  logprob_fn = train_step.make_logprob_fn(model_cfg, sp.temperature or 1.0,
                                          cfg.num_microbatches, shardings)
  # This process's prompts of each batch (all of them on one process).
  mine = slice(None) if mesh is None else parallel.process_rows(cfg.batch_prompts, mesh)
  ref_params = init_params if config.loss.kl_coef else None

  with checkpointing.Checkpointer(workdir / "checkpoints", max_to_keep=cfg.max_to_keep) as ckpt, \
      _Terminate() as terminate:
    if ckpt.latest_step() is not None:
      state, iterator_state, rng = restore_state(ckpt, state, state_meta(model_cfg, iterator),
                                                 rng)
      iterator = PromptIterator(len(problems), cfg.batch_prompts, config.seed, iterator_state)
      print(f"resumed from step {int(state.step)} in {workdir}")
    start = int(state.step)
    with MetricsWriter(workdir, cfg.steps, start_step=start, stdout_every=cfg.log_every,
                       progress_keys=("reward", "accuracy"),
                       enabled=jax.process_index() == 0) as writer:
      for step in range(start, cfg.steps):
        step_rng = jax.random.fold_in(rng, step)
        problems_now = [problems[i] for i in iterator.next_indices()[mine]]

        # Sample and verify (each process its own prompts); DAPO dynamic sampling draws more
        # batches until enough groups have reward spread (off by default: AGPO learns from
        # all-wrong groups).
        rollout, rewards, info = rollout_and_grade(config, sampler, verifier, tokenizer,
                                                   state.params, problems_now, step_rng, sp)
        local_shape = rewards.shape
        rewards = parallel.allgather_rows(rewards)
        lengths = parallel.allgather_rows(np.asarray(rollout.lengths).reshape(local_shape))
        truncated = parallel.allgather_rows(np.asarray(rollout.truncated).reshape(local_shape))
        info["verifier"] = _reduce_verifier_stats(parallel.allgather_objects(info["verifier"]))
        raw_accuracy = float(np.mean(rewards >= config.algo.correct_threshold))
        shaped, keep = reward_shaping.shape_rewards(rewards, lengths, truncated, config.reward,
                                                    sp.max_new_tokens)
        shaped, keep = np.asarray(shaped), np.asarray(keep)
        valid = np.ones(shaped.shape, bool)
        if config.reward.dynamic_sampling:
          rollout, shaped, keep, valid, info = _dynamic_sampling(
              config, sampler, verifier, tokenizer, state, problems, iterator, rollout, shaped,
              keep, step_rng, sp, info)

        # Advantages from the whole batch (REINFORCE++ whitens over all groups); dropped
        # completions leave the loss entirely.
        advantages, loss_mask = adv_lib.compute_advantages(shaped, config.algo, valid)
        adv_metrics = adv_lib.advantage_metrics(shaped, advantages, loss_mask, config.algo,
                                                valid)
        loss_mask = np.asarray(loss_mask) & keep
        if config.reward.dynamic_sampling:  # one process: the rollout holds every row
          batch = build_batch(rollout, np.asarray(advantages), loss_mask)
        else:
          batch = build_batch(rollout, np.asarray(advantages)[mine], loss_mask[mine])
        update_tokens = int(parallel.allgather_rows(np.sum(batch.input_mask, keepdims=True)
                                                    .reshape(1)).sum())
        if mesh is not None:
          batch = parallel.host_to_global(batch, mesh, rewards.size)
        m = batch.completion_mask.shape[1]
        if needs_old_logp:
          batch = batch.replace(old_logp=logprob_fn(state.params, batch.tokens,
                                                    batch.input_mask, batch.positions, m))
        if ref_params is not None:
          batch = batch.replace(ref_logp=logprob_fn(ref_params, batch.tokens, batch.input_mask,
                                                    batch.positions, m))

        # Update.
        updated = time.perf_counter()
        state, metrics = rl_step(state, batch)
        metrics = jax.device_get(metrics)
        info["update_s"] = time.perf_counter() - updated

        # Log.
        generated = int(lengths.sum())
        metrics.update({f"algo/{k}": float(v) for k, v in adv_metrics.items()})
        metrics.update({f"verifier/{k}": float(v) for k, v in info["verifier"].items()})
        metrics.update(
            reward=float(np.mean(rewards)), accuracy=raw_accuracy,
            shaped_reward=float(np.mean(shaped)), lr=float(lr(step * updates_per_step)),
            response_length_mean=float(np.mean(lengths)),
            response_length_max=int(np.max(lengths)),
            truncated_fraction=float(np.mean(truncated)),
            sample_s=info["sample_s"], verify_s=info["verify_s"], update_s=info["update_s"],
            sample_tokens_per_s=generated / max(info["sample_s"], 1e-9),
            update_tokens_per_s=update_tokens / max(info["update_s"], 1e-9))
        if evaluate_fn is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
          metrics.update({f"eval/{k}": v for k, v in evaluate_fn(state.params, step + 1).items()})
        writer.write(step + 1, metrics)

        # Checkpoint; stop on SIGTERM or on a run of non-finite updates.
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.checkpoint_every == 0 or last or terminate.requested:
          save_state(ckpt, state, state_meta(model_cfg, iterator), rng)
        if terminate.requested:
          print(f"SIGTERM: checkpoint saved at step {step + 1}; exiting")
          return RLResult(state.params, step + 1, interrupted=True)
        if int(metrics["consecutive_skips"]) >= cfg.max_consecutive_skips:
          raise FloatingPointError(
              f"{int(metrics['consecutive_skips'])} consecutive updates had a non-finite loss "
              f"or gradient (step {step + 1}); stopping. Lower optim.lr or check the data; "
              f"the last good state is in {workdir / 'checkpoints'}")
  return RLResult(state.params, int(state.step), interrupted=False)


def _reduce_verifier_stats(per_process: list[dict]) -> dict:
  """One process's `grade_stats` for all: counts and items summed, the slowest process's time,
  the reward averaged over items."""
  if len(per_process) == 1:
    return per_process[0]
  items = sum(p.get("num_items", 0) for p in per_process)
  out = {k: sum(p.get(k, 0) for p in per_process) for k in per_process[0]}
  out["seconds"] = max(p.get("seconds", 0.0) for p in per_process)
  out["items_per_s"] = items / out["seconds"] if out["seconds"] > 0 else 0.0
  out["mean_reward"] = (sum(p.get("mean_reward", 0.0) * p.get("num_items", 0)
                            for p in per_process) / items) if items else 0.0
  return out


def _dynamic_sampling(config, sampler, verifier, tokenizer, state, problems, iterator, rollout,
                      shaped, keep, step_rng, sp, info):
  """DAPO: keep groups with reward spread, drawing more prompts until the batch is full.

  Groups still missing after `reward.dynamic_sampling_max_batches` draws become padding rows
  that are invalid (outside the loss and every statistic), so shapes never change.
  """
  group = config.sampling.num_samples
  target = config.train.batch_prompts
  batches = [(rollout, shaped, keep)]
  for extra in range(1, config.reward.dynamic_sampling_max_batches):
    selection = reward_shaping.select_groups_with_spread([b[1] for b in batches], target)
    if sum(len(s) for s in selection) >= target:
      break
    more = [problems[i] for i in iterator.next_indices()]
    extra_rng = jax.random.fold_in(step_rng, extra)
    r, rewards, more_info = rollout_and_grade(config, sampler, verifier, tokenizer,
                                              state.params, more, extra_rng, sp)
    s, k = reward_shaping.shape_rewards(
        rewards, np.asarray(r.lengths).reshape(rewards.shape),
        np.asarray(r.truncated).reshape(rewards.shape), config.reward, sp.max_new_tokens)
    batches.append((r, np.asarray(s), np.asarray(k)))
    info["sample_s"] += more_info["sample_s"]
    info["verify_s"] += more_info["verify_s"]
  selection = reward_shaping.select_groups_with_spread([b[1] for b in batches], target)
  picked = reward_shaping.gather_groups([b[0] for b in batches], selection, group)
  shaped = np.concatenate([b[1][s] for b, s in zip(batches, selection)])
  keep = np.concatenate([b[2][s] for b, s in zip(batches, selection)])
  missing = target - shaped.shape[0]
  valid = np.ones(shaped.shape, bool)
  if missing:
    # Pad with copies of the first rollout's leading groups, marked invalid.
    filler = reward_shaping.gather_groups([rollout], [np.arange(missing)], group)
    picked = jax.tree.map(lambda a, b: np.concatenate([a, b]), picked, filler)
    shaped = np.concatenate([shaped, np.zeros((missing, group), np.float32)])
    keep = np.concatenate([keep, np.zeros((missing, group), bool)])
    valid = np.concatenate([valid, np.zeros((missing, group), bool)])
  info["dynamic_sampling_batches"] = len(batches)
  info["verifier"]["dynamic_sampling_batches"] = len(batches)
  return picked, shaped, keep, valid, info
