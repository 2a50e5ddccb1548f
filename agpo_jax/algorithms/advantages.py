"""Advantage estimators: pure ``jnp`` functions of group rewards, registered by name.

Layout: ``rewards[num_groups, G]`` (one row per prompt; ``group_rewards`` builds it from the
sampler's flat, group-major order) and a validity mask ``[num_groups, G]`` (bool) that is
False for dropped or invalid completions. Invalid entries never enter a group or batch
statistic and always get advantage 0.

Every estimator has the signature ``fn(rewards, mask, cfg) -> (advantages, loss_mask)`` with
``cfg`` the ``algo`` config (``defaults.algo_config()``); ``loss_mask`` is False for
completions the estimator drops (PSR drops the incorrect, NSR the correct): they contribute
neither to the numerator nor to the token count of the loss.

Two readings of a reward ``c`` in ``[0, 1]`` (binary or graded), per docs/ALGORITHMS.md:
  * as a value: GRPO-style estimators use ``r = c``; AGPO and the NSR family (psr, nsr,
    w_reinforce) use ``r = 2c − 1``, which is ±1 for binary rewards;
  * as a verdict: ``correct = c >= cfg.correct_threshold`` (default 0.5) picks the branch
    (positive vs negative formula, kept vs dropped). For binary rewards any threshold in
    ``(0, 1]`` gives the same result.
Group accuracy ``p`` is the group mean of ``c`` (clipped to ``[0, 1]``, since shaped rewards
may be negative).
"""

import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from agpo_jax.algorithms.reward_shaping import zero_spread_groups

Config = ml_collections.ConfigDict
Estimator = Callable[[jax.Array, jax.Array, Config], tuple[jax.Array, jax.Array]]

_ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
  """Decorator adding ``fn(rewards, mask, cfg) -> (advantages, loss_mask)`` to the registry."""

  def register(fn: Estimator) -> Estimator:
    if name in _ESTIMATORS:
      raise ValueError(f"Advantage estimator {name!r} is already registered")
    _ESTIMATORS[name] = fn
    return fn

  return register


def estimator_names() -> tuple[str, ...]:
  return tuple(sorted(_ESTIMATORS))


def get_advantage_fn(name: str) -> Estimator:
  if name not in _ESTIMATORS:
    raise ValueError(
      f"Unknown advantage estimator {name!r}; valid names: {list(estimator_names())}"
      " (DAPO is a preset of grpo: defaults.algorithm_preset('dapo'))"
    )
  return _ESTIMATORS[name]


def group_rewards(flat_rewards: jax.Array, group_size: int) -> jax.Array:
  """``[N]`` in group-major order (prompt-major, G samples each) -> ``[N // G, G]``.

  The inverse is ``x.reshape(-1)``.
  """
  flat_rewards = jnp.asarray(flat_rewards)
  if flat_rewards.ndim != 1 or flat_rewards.shape[0] % group_size:
    raise ValueError(
      f"Expected flat rewards [N] with N divisible by {group_size=}, got shape {flat_rewards.shape}"
    )
  return flat_rewards.reshape(-1, group_size)


def compute_advantages(
  rewards: jax.Array, cfg: Config, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Runs the estimator ``cfg.name``.

  Args:
    rewards: ``[num_groups, G]`` rewards ``c`` in ``[0, 1]`` (graded allowed).
    cfg: the ``algo`` config.
    mask: ``[num_groups, G]`` bool validity mask; None means all valid.
  Returns:
    ``(advantages [num_groups, G] float32, loss_mask [num_groups, G] bool)``; advantages
    are 0 wherever ``loss_mask`` is False, and ``loss_mask`` implies ``mask``.
  """
  estimator = get_advantage_fn(cfg.name)
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 2:
    raise ValueError(
      f"Expected rewards [num_groups, G], got shape {rewards.shape}; see group_rewards"
    )
  mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
  advantages, loss_mask = estimator(rewards, mask, cfg)
  loss_mask = loss_mask & mask
  return jnp.where(loss_mask, advantages, 0.0), loss_mask


# --- Masked statistics. Everything is [num_groups, G]; statistics keep a trailing axis of 1.


def _valid_count(mask: jax.Array) -> jax.Array:
  return jnp.sum(mask, axis=-1, keepdims=True, dtype=jnp.float32)


def group_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the valid entries of each group, ``[num_groups, 1]`` (0 for an empty group)."""
  return jnp.sum(jnp.where(mask, x, 0.0), axis=-1, keepdims=True) / jnp.maximum(
    _valid_count(mask), 1.0
  )


def group_centered(x: jax.Array, mask: jax.Array) -> jax.Array:
  """``x − group_mean(x)`` on valid entries, 0 elsewhere."""
  # Exactly 0 in zero-spread groups: a rounded mean (e.g. of three 0.1s) would otherwise
  # leave residues of ~1e-8 that GRPO's division by (0 + ε) inflates to a real signal.
  flat = zero_spread_groups(x, mask)[:, None]
  return jnp.where(mask & ~flat, x - group_mean(x, mask), 0.0)


def group_variance(x: jax.Array, mask: jax.Array, ddof: int) -> jax.Array:
  """Variance of the valid entries of each group, ``[num_groups, 1]``; 0 if < ddof + 1 entries."""
  squares = jnp.sum(group_centered(x, mask) ** 2, axis=-1, keepdims=True)
  return squares / jnp.maximum(_valid_count(mask) - ddof, 1.0)


def batch_whiten(x: jax.Array, mask: jax.Array, eps: float) -> jax.Array:
  """``(x − mean) / (std + ε)`` over all valid entries of the batch (population std)."""
  flat_x, flat_mask = x.reshape(1, -1), mask.reshape(1, -1)
  std = jnp.sqrt(group_variance(flat_x, flat_mask, ddof=0))
  return (group_centered(flat_x, flat_mask) / (std + eps)).reshape(x.shape)


def is_correct(rewards: jax.Array, cfg: Config) -> jax.Array:
  return rewards >= cfg.correct_threshold


def group_accuracy(rewards: jax.Array, mask: jax.Array) -> jax.Array:
  """``p``: the group mean of ``c``, clipped to ``[0, 1]``, ``[num_groups, 1]``."""
  return jnp.clip(group_mean(rewards, mask), 0.0, 1.0)


def plus_minus_one(rewards: jax.Array) -> jax.Array:
  """``r = 2c − 1``: the ±1 rescaling AGPO and the NSR family use."""
  return 2.0 * rewards - 1.0


# --- Estimators.


@register_estimator("grpo")
def grpo(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """``A_i = (r_i − μ) / (σ₁ + ε)``, ``r = c``, ``σ₁`` the sample std (ddof = 1).

  A group of one (or with zero spread) gets 0.
  """
  std = jnp.sqrt(group_variance(rewards, mask, ddof=1))
  return group_centered(rewards, mask) / (std + cfg.eps), mask


@register_estimator("dr_grpo")
def dr_grpo(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """``A_i = r_i − μ``, ``r = c``: GRPO without the std division (Dr. GRPO)."""
  return group_centered(rewards, mask), mask


@register_estimator("rloo")
def rloo(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """``A_i = r_i − mean_{j≠i} r_j = n/(n−1) · (r_i − μ)``, ``r = c``, n valid in the group.

  A group of one has no leave-one-out baseline and gets 0.
  """
  n = _valid_count(mask)
  return n / jnp.maximum(n - 1.0, 1.0) * group_centered(rewards, mask), mask


@register_estimator("reinforce_pp")
def reinforce_pp(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """``A_i = (r_i − mean_batch) / (std_batch + ε)``, ``r = c``: whitened over the batch."""
  return batch_whiten(rewards, mask, cfg.eps), mask


@register_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(
  rewards: jax.Array, mask: jax.Array, cfg: Config
) -> tuple[jax.Array, jax.Array]:
  """``A = whiten_batch(r_i − μ_group)``, ``r = c``: group baseline, then batch whitening."""
  return batch_whiten(group_centered(rewards, mask), mask, cfg.eps), mask


@register_estimator("psr")
def psr(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """Positive-sample reinforcement: ``A_i = r_i = 2c_i − 1`` (+1) if correct, else dropped."""
  correct = is_correct(rewards, cfg)
  return jnp.where(correct, plus_minus_one(rewards), 0.0), mask & correct


@register_estimator("nsr")
def nsr(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """Negative-sample reinforcement: ``A_i = r_i = 2c_i − 1`` (−1) if incorrect, else dropped."""
  correct = is_correct(rewards, cfg)
  return jnp.where(correct, 0.0, plus_minus_one(rewards)), mask & ~correct


@register_estimator("w_reinforce")
def w_reinforce(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """``A_i = λ · r_i`` (λ) if correct, ``r_i`` (−1) if incorrect; ``r = 2c − 1``.

  No baseline, no normalisation; ``λ = cfg.w_reinforce.lambda_pos`` (default 0.1).
  """
  r = plus_minus_one(rewards)
  return jnp.where(is_correct(rewards, cfg), cfg.w_reinforce.lambda_pos * r, r), mask


@register_estimator("a_grae")
def a_grae(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """GRPO advantage ``A`` reweighted by training progress ``P̄`` (batch mean accuracy):

      A ← P̄·A / (2(√p + ε)) + (1 − P̄)·A / (2(1 − √p + ε))
      A ← A · min(1, P̄/α)   for A > 0

  ``p`` the group accuracy, ``α = cfg.a_grae.alpha``.
  """
  advantages, _ = grpo(rewards, mask, cfg)
  sqrt_p = jnp.sqrt(group_accuracy(rewards, mask))
  progress = group_accuracy(rewards.reshape(1, -1), mask.reshape(1, -1))
  weight = progress / (2 * (sqrt_p + cfg.eps)) + (1 - progress) / (2 * (1 - sqrt_p + cfg.eps))
  advantages = weight * advantages
  positive_scale = jnp.minimum(1.0, progress / cfg.a_grae.alpha)
  return jnp.where(advantages > 0, advantages * positive_scale, advantages), mask


def agpo_reference(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """AGPO, reference form: negative-dominant, with variance-scaled positives.

      r_i = 2 c_i − 1
      g_i = (r_i − μ) / sqrt(σ² + δ²)      (σ with ddof = 0)
      A_i = λ_pos · g_i                    if c_i is correct
      A_i = g_i + R_neg                    otherwise

  Since Σ_i g_i = 0, with binary rewards and λ_pos = 1 a group's negative mass exceeds
  its positive mass by ``|R_neg|`` per incorrect completion, and an all-wrong group gets
  exactly ``R_neg`` where GRPO gives 0. ``δ`` bounds the positives of rare correct
  answers; they shrink as ``p → 1``. Constants: ``cfg.agpo.{delta, r_neg, lambda_pos}``.
  """
  agpo_cfg = cfg.agpo
  r = plus_minus_one(rewards)
  group_std = jnp.sqrt(group_variance(r, mask, ddof=0) + agpo_cfg.delta**2)
  g = group_centered(r, mask) / group_std
  correct = is_correct(rewards, cfg)
  return jnp.where(correct, agpo_cfg.lambda_pos * g, g + agpo_cfg.r_neg), mask


def agpo_nsr_plus_group(
  rewards: jax.Array, mask: jax.Array, cfg: Config
) -> tuple[jax.Array, jax.Array]:
  """AGPO variant: ``A⁺ = λ_pos · (c_i − p)/(σ₁ + ε)`` (GRPO's), ``A⁻ = r_i = 2c_i − 1`` (NSR)."""
  group_term, _ = grpo(rewards, mask, cfg)
  correct = is_correct(rewards, cfg)
  return jnp.where(correct, cfg.agpo.lambda_pos * group_term, plus_minus_one(rewards)), mask


def agpo_weighted_rarity(
  rewards: jax.Array, mask: jax.Array, cfg: Config
) -> tuple[jax.Array, jax.Array]:
  """AGPO variant: ``A⁺ = min(λ_pos · sqrt((1 − p)/p), max_pos)``, ``A⁻ = r_i = 2c_i − 1``."""
  p = group_accuracy(rewards, mask)
  # p = 0 with a correct answer only happens for shaped (negative) rewards: treat as rarest.
  rarity = jnp.where(p > 0, jnp.sqrt((1.0 - p) / jnp.where(p > 0, p, 1.0)), jnp.inf)
  positive = jnp.minimum(cfg.agpo.lambda_pos * rarity, cfg.agpo.max_pos)
  return jnp.where(is_correct(rewards, cfg), positive, plus_minus_one(rewards)), mask


_AGPO_VARIANTS = types.MappingProxyType(
  {
    "reference": agpo_reference,
    "nsr_plus_group": agpo_nsr_plus_group,
    "weighted_rarity": agpo_weighted_rarity,
  }
)


@register_estimator("agpo")
def agpo(rewards: jax.Array, mask: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """AGPO; ``cfg.agpo.variant`` picks ``reference`` (``agpo_reference``, the documented form),
  ``nsr_plus_group`` or ``weighted_rarity`` (two other readings of the abstract)."""
  variant = cfg.agpo.variant
  if variant not in _AGPO_VARIANTS:
    raise ValueError(f"Unknown AGPO variant {variant!r}; valid variants: {list(_AGPO_VARIANTS)}")
  return _AGPO_VARIANTS[variant](rewards, mask, cfg)


# --- Diagnostics.


def advantage_metrics(
  rewards: jax.Array,
  advantages: jax.Array,
  loss_mask: jax.Array,
  cfg: Config,
  mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Scalar diagnostics of one batch of advantages (computed once per batch, not per
  micro-batch, so they need no accumulation).

  Args:
    rewards, advantages, loss_mask: ``[num_groups, G]`` (the inputs and outputs of
      ``compute_advantages``).
    cfg: the ``algo`` config.
    mask: the validity mask given to ``compute_advantages``.
  Returns:
    ``zero_spread_fraction``, ``all_wrong_fraction``, ``all_correct_fraction`` (over groups
    with a valid completion), ``accuracy`` (over valid completions), ``kept_fraction``
    (loss_mask over valid), ``positive_mass`` (Σ of positive advantages) and
    ``negative_mass`` (Σ of |negative advantages|) over kept completions.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
  correct = is_correct(rewards, cfg) & mask
  incorrect = ~is_correct(rewards, cfg) & mask
  live_groups = jnp.any(mask, axis=-1)
  num_live = jnp.maximum(jnp.sum(live_groups), 1)

  def group_fraction(flags: jax.Array) -> jax.Array:
    return jnp.sum(flags & live_groups) / num_live

  kept_advantages = jnp.where(loss_mask, advantages, 0.0)
  return {
    "zero_spread_fraction": group_fraction(zero_spread_groups(rewards, mask)),
    "all_wrong_fraction": group_fraction(~jnp.any(correct, axis=-1)),
    "all_correct_fraction": group_fraction(~jnp.any(incorrect, axis=-1)),
    "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(mask), 1),
    "kept_fraction": jnp.sum(loss_mask & mask) / jnp.maximum(jnp.sum(mask), 1),
    "positive_mass": jnp.sum(jnp.maximum(kept_advantages, 0.0)),
    "negative_mass": jnp.sum(jnp.maximum(-kept_advantages, 0.0)),
  }
