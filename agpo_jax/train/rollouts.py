"""Where the RL loop's batches come from: prompts -> sampled completions -> graded, shaped.

    source = make_rollout_source(config, sampler, verifier, tokenizer, problems, iterator, mesh)
    graded = source.next(params, step_rng)   # a GradedBatch

`RolloutSource` samples G completions for each of this process's prompts of the next batch,
grades them, and gathers the few numbers per completion that every process needs (rewards,
lengths, truncation flags, verifier counters), so that advantages and logged metrics are
computed from the whole batch on every process exactly as on one. `DynamicSamplingSource`
(DAPO) keeps drawing batches until enough groups have reward spread.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from agpo_jax import configs, sampling
from agpo_jax.algorithms import reward_shaping
from agpo_jax.sharding import multihost
from agpo_jax.tasks import PromptIterator, encode_prompt
from agpo_jax.tokenizers import Tokenizer
from agpo_jax.verifiers import Verdicts


@dataclasses.dataclass(frozen=True)
class GradedBatch:
  """One training batch of B prompts x G completions, sampled and graded.

  Attributes:
    rollout: the completions whose rows this process feeds to the update, prompt-major
      (`local_groups` says which of the B groups they are; all of them on one process).
    local_groups: the groups (prompts) of the batch held in `rollout`.
    rewards, lengths, truncated: `[B, G]` of the whole batch: verifier rewards, generated
      tokens, whether the budget cut the completion.
    shaped: `[B, G]` rewards after shaping (DAPO overlong penalty), what advantages use.
    keep: `[B, G]` completions that may enter the loss (DAPO overlong filter).
    valid: `[B, G]` False for padding groups (dynamic sampling that ran out of draws): outside
      the loss and every statistic.
    update_tokens: prompt + completion tokens of the batch (all processes).
    verifier_stats: the verifier's counters for the batch (all processes).
    sample_s, verify_s: this process's wall time sampling and grading.
    draws: rollout batches drawn to fill this one (1 unless dynamic sampling).
  """

  rollout: sampling.Rollout
  local_groups: slice
  rewards: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray
  shaped: np.ndarray
  keep: np.ndarray
  valid: np.ndarray
  update_tokens: int
  verifier_stats: dict
  sample_s: float
  verify_s: float
  draws: int = 1


def sample_and_grade(sampler: sampling.Sampler, verifier: Any, tokenizer: Tokenizer,
                     params: Any, problems: Sequence[Any], num_samples: int, rng: jax.Array,
                     chunks: int = 1) -> tuple[sampling.Rollout, Verdicts, float, float]:
  """G completions per problem, graded: (rollout, verdicts in rollout row order, sampling
  seconds, grading seconds)."""
  started = time.perf_counter()
  prompts = [encode_prompt(tokenizer, p) for p in problems]
  rollout = jax.block_until_ready(
      sampler.generate_in_chunks(params, prompts, num_samples, rng, chunks))
  sampled = time.perf_counter()
  references = [p.reference for p in problems for _ in range(num_samples)]
  verdicts = verifier.grade(sampling.decode_completions(tokenizer, rollout), references)
  return rollout, verdicts, sampled - started, time.perf_counter() - sampled


def reduce_verifier_stats(per_process: list[dict]) -> dict:
  """Several processes' `Verdicts.stats` as one: counts and items summed, the slowest
  process's time, the reward averaged over items."""
  if len(per_process) == 1:
    return per_process[0]
  items = sum(p.get("num_items", 0) for p in per_process)
  out = {k: sum(p.get(k, 0) for p in per_process) for k in per_process[0]}
  out["seconds"] = max(p.get("seconds", 0.0) for p in per_process)
  out["items_per_s"] = items / out["seconds"] if out["seconds"] > 0 else 0.0
  out["mean_reward"] = (sum(p.get("mean_reward", 0.0) * p.get("num_items", 0)
                            for p in per_process) / items) if items else 0.0
  return out


class RolloutSource:
  """Each `next(params, rng)` samples and grades the next batch of the prompt iterator.

  Every process draws the same prompt indices and samples its own block of them
  (`local_groups`); the per-completion numbers are gathered from all processes.
  """

  def __init__(self, config: Any, sampler: sampling.Sampler, verifier: Any,
               tokenizer: Tokenizer, problems: Sequence[Any], iterator: PromptIterator,
               local_groups: slice = slice(None)):
    self.config, self.sampler, self.verifier, self.tokenizer = config, sampler, verifier, tokenizer
    self.problems, self.iterator, self.local_groups = problems, iterator, local_groups
    self.num_samples = config.sampling.num_samples

  def _draw(self, params: Any, rng: jax.Array, indices: np.ndarray) -> GradedBatch:
    """Sample and grade `indices`' problems (this process's block of them), gather, shape."""
    group = self.num_samples
    mine = [self.problems[i] for i in indices[self.local_groups]]
    rollout, verdicts, sample_s, verify_s = sample_and_grade(
        self.sampler, self.verifier, self.tokenizer, params, mine, group, rng,
        self.config.sampling.get("rollout_chunks", 1))
    shape = (len(mine), group)
    tokens = (np.asarray(rollout.prompt_mask).sum(axis=1) + np.asarray(rollout.lengths))
    (rewards, lengths, truncated, tokens), stats = multihost.gather_step(
        [verdicts.rewards.reshape(shape), np.asarray(rollout.lengths).reshape(shape),
         np.asarray(rollout.truncated).reshape(shape), tokens.reshape(shape)],
        verdicts.stats)
    shaped, keep = reward_shaping.shape_rewards(rewards, lengths, truncated, self.config.reward,
                                                self.sampler.sampling.max_new_tokens)
    return GradedBatch(
        rollout=rollout, local_groups=self.local_groups, rewards=rewards, lengths=lengths,
        truncated=truncated, shaped=np.asarray(shaped), keep=np.asarray(keep),
        valid=np.ones(rewards.shape, bool), update_tokens=int(tokens.sum()),
        verifier_stats=reduce_verifier_stats(stats), sample_s=sample_s, verify_s=verify_s)

  def next(self, params: Any, rng: jax.Array) -> GradedBatch:
    return self._draw(params, rng, self.iterator.next_indices())


class DynamicSamplingSource(RolloutSource):
  """DAPO dynamic sampling: keep the groups whose rewards differ, drawing more batches (with
  `fold_in(rng, draw)`) until `train.batch_prompts` groups are kept or
  `reward.dynamic_sampling_max_batches` batches were drawn. Groups still missing become
  padding groups that are invalid (outside the loss and every statistic), so shapes never
  change. One process only (groups would have to move between hosts).

  The logged reward, accuracy, lengths and truncation describe the first draw (fresh
  prompts, as without dynamic sampling); the update trains on the kept groups.
  """

  def next(self, params: Any, rng: jax.Array) -> GradedBatch:
    target = self.config.train.batch_prompts
    group = self.num_samples
    draws = [super().next(params, rng)]
    for extra in range(1, self.config.reward.dynamic_sampling_max_batches):
      selection = reward_shaping.select_groups_with_spread([d.shaped for d in draws], target)
      if sum(len(s) for s in selection) >= target:
        break
      draws.append(super().next(params, jax.random.fold_in(rng, extra)))
    selection = reward_shaping.select_groups_with_spread([d.shaped for d in draws], target)
    picked = reward_shaping.gather_groups([d.rollout for d in draws], selection, group)
    shaped = np.concatenate([d.shaped[s] for d, s in zip(draws, selection)])
    keep = np.concatenate([d.keep[s] for d, s in zip(draws, selection)])
    valid = np.ones(shaped.shape, bool)
    missing = target - shaped.shape[0]
    if missing:  # pad with copies of the first draw's leading groups, marked invalid
      filler = reward_shaping.gather_groups([draws[0].rollout], [np.arange(missing)], group)
      picked = jax.tree.map(lambda a, b: np.concatenate([a, b]), picked, filler)
      shaped = np.concatenate([shaped, np.zeros((missing, group), np.float32)])
      keep = np.concatenate([keep, np.zeros((missing, group), bool)])
      valid = np.concatenate([valid, np.zeros((missing, group), bool)])
    tokens = int(np.asarray(picked.prompt_mask).sum() + np.asarray(picked.lengths).sum())
    first = draws[0]
    return dataclasses.replace(
        first, rollout=picked, local_groups=slice(None), shaped=shaped, keep=keep,
        valid=valid, update_tokens=tokens, draws=len(draws),
        verifier_stats={**first.verifier_stats, "dynamic_sampling_batches": len(draws)},
        sample_s=sum(d.sample_s for d in draws), verify_s=sum(d.verify_s for d in draws))


def make_rollout_source(config: Any, sampler: sampling.Sampler, verifier: Any,
                        tokenizer: Tokenizer, problems: Sequence[Any], iterator: PromptIterator,
                        local_groups: slice = slice(None)) -> RolloutSource:
  """The rollout source `config.reward.dynamic_sampling` asks for."""
  if not config.reward.dynamic_sampling:
    return RolloutSource(config, sampler, verifier, tokenizer, problems, iterator, local_groups)
  if jax.process_count() > 1:
    raise configs.ConfigError("reward.dynamic_sampling=True is not supported with more than "
                              "one process yet (groups would have to move between hosts)")
  return DynamicSamplingSource(config, sampler, verifier, tokenizer, problems, iterator)
