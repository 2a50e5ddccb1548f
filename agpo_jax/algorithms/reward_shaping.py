"""Reward-side options from DAPO: dynamic sampling, the overlong penalty, overlong filtering.

Pure functions. ``zero_spread_groups`` and ``overlong_penalty`` are ``jnp`` (they also accept
NumPy arrays); the dynamic-sampling selection runs on the host between rollouts, so it is
NumPy and returns indices the loop uses to gather its own rollout arrays.

How the loop uses them, in order:
  1. ``rewards, keep = shape_rewards(rewards, lengths, truncated, cfg.reward, max_len)``
  2. with ``reward.dynamic_sampling``: ``select_groups_with_spread`` over successive rollout
     batches until it returns ``target`` groups (or ``dynamic_sampling_max_batches`` is hit),
     then ``gather_groups``.
  3. ``advantages, loss_mask = compute_advantages(grouped_rewards, cfg.algo, mask)`` and
     ``loss_mask &= keep``: a filtered (truncated) completion still counts in its group's
     baseline, as in DAPO, but contributes nothing to the loss.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def zero_spread_groups(rewards: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Groups whose valid rewards are all equal (including groups with < 2 valid entries).

  Args:
    rewards: ``[num_groups, G]``.
    mask: ``[num_groups, G]`` bool, True for valid completions; None means all valid.
  Returns:
    ``[num_groups]`` bool.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
  group_max = jnp.max(jnp.where(mask, rewards, -jnp.inf), axis=-1)
  group_min = jnp.min(jnp.where(mask, rewards, jnp.inf), axis=-1)
  # Exact equality on purpose: verifier rewards take a few exact values, and any real
  # difference, however small, gives GRPO a non-zero signal.
  return ~(group_max > group_min)


def select_groups_with_spread(
  reward_batches: Sequence[np.ndarray],
  target_num_groups: int,
  masks: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
  """DAPO dynamic sampling: pick groups with reward spread, in order, up to a target count.

  Call it again with one more rollout batch appended until the selected total reaches
  ``target_num_groups``; being pure, it re-selects from scratch each time.

  Args:
    reward_batches: rollout batches in sampling order, each ``[num_groups_b, G]``.
    target_num_groups: how many groups one training batch needs.
    masks: optional validity masks, one per batch (``[num_groups_b, G]`` bool or None).
  Returns:
    one int array per batch: the indices of its selected groups. Their total length is
    ``min(target_num_groups, groups with spread available)``.
  """
  masks = [None] * len(reward_batches) if masks is None else masks
  selection, remaining = [], target_num_groups
  for rewards, mask in zip(reward_batches, masks, strict=True):
    has_spread = ~np.asarray(zero_spread_groups(rewards, mask))
    chosen = np.flatnonzero(has_spread)[: max(remaining, 0)]
    selection.append(chosen)
    remaining -= len(chosen)
  return selection


def gather_groups(
  batches: Sequence[Any], selection: Sequence[np.ndarray], group_size: int = 1
) -> Any:
  """Concatenates the selected groups of several rollout batches (pytrees of arrays).

  Args:
    batches: pytrees with identical structure; every leaf has leading axis
      ``num_groups_b * group_size`` (the flat, group-major sampler layout) or
      ``num_groups_b`` when ``group_size == 1``.
    selection: the output of ``select_groups_with_spread``.
    group_size: G for the flat layout; 1 for a ``[num_groups, G, ...]`` layout.
  Returns:
    one pytree whose leaves have leading axis ``total_selected * group_size``.
  """

  def take(batch: Any, groups: np.ndarray) -> Any:
    rows = (groups[:, None] * group_size + np.arange(group_size)).reshape(-1)
    return jax.tree.map(lambda leaf: np.asarray(leaf)[rows], batch)

  picked = [take(batch, groups) for batch, groups in zip(batches, selection, strict=True)]
  return jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=0), *picked)


def overlong_penalty(lengths: jax.Array, max_len: int, cache_len: int) -> jax.Array:
  """DAPO's soft overlong punishment, added to the reward.

  ``0`` if ``|o| <= L_max − L_cache``; ``((L_max − L_cache) − |o|) / L_cache`` (a linear ramp
  from 0 to −1) up to ``L_max``; ``−1`` beyond.

  Args:
    lengths: completion lengths ``|o|``, any shape.
    max_len: ``L_max``.
    cache_len: ``L_cache``, with ``0 < L_cache <= L_max``.
  Returns:
    float32 penalties, same shape as ``lengths``.
  """
  if not 0 < cache_len <= max_len:
    raise ValueError(
      f"overlong cache_len must satisfy 0 < cache_len <= max_len; got {cache_len=}, {max_len=}"
    )
  lengths = jnp.asarray(lengths, jnp.float32)
  expected_len = max_len - cache_len
  ramp = (expected_len - lengths) / cache_len
  return jnp.where(lengths <= expected_len, 0.0, jnp.where(lengths <= max_len, ramp, -1.0))


def overlong_keep_mask(truncated: jax.Array) -> jax.Array:
  """Overlong filtering: False for truncated completions, which then leave the loss."""
  return ~jnp.asarray(truncated, bool)


def shape_rewards(
  rewards: jax.Array,
  lengths: jax.Array,
  truncated: jax.Array,
  cfg: ml_collections.ConfigDict,
  max_len: int,
) -> tuple[jax.Array, jax.Array]:
  """Applies the reward options enabled in ``cfg`` (the ``reward`` config).

  Args:
    rewards, lengths, truncated: matching shapes (flat ``[N]`` or ``[num_groups, G]``).
    cfg: ``reward_config()``.
    max_len: ``L_max``, the sampler's maximum completion length.
  Returns:
    ``(rewards, keep)``: shaped float32 rewards and a bool mask to AND into the loss mask.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if cfg.overlong_penalty:
    rewards = rewards + overlong_penalty(lengths, max_len, cfg.overlong_cache_len)
  if cfg.overlong_filter:
    keep = overlong_keep_mask(truncated)
  else:
    keep = jnp.ones(rewards.shape, bool)
  return rewards, keep
