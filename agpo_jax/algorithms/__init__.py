"""The math of agpo_jax: advantage estimators, the policy loss, reward shaping, defaults.

Pure functions with no knowledge of models, meshes or files; see docs/ALGORITHMS.md.
"""

from agpo_jax.algorithms.advantages import (
  advantage_metrics,
  compute_advantages,
  estimator_names,
  get_advantage_fn,
  group_rewards,
  register_estimator,
)
from agpo_jax.algorithms.defaults import (
  algo_config,
  algorithm_preset,
  apply_preset,
  loss_config,
  reward_config,
)
from agpo_jax.algorithms.losses import (
  AGGREGATIONS,
  KL_ESTIMATORS,
  combine_metrics,
  kl_penalty,
  policy_loss,
  summarize_metrics,
  token_entropy,
  token_logprobs,
)
from agpo_jax.algorithms.reward_shaping import (
  gather_groups,
  overlong_keep_mask,
  overlong_penalty,
  select_groups_with_spread,
  shape_rewards,
  zero_spread_groups,
)

__all__ = [
  "AGGREGATIONS",
  "KL_ESTIMATORS",
  "advantage_metrics",
  "algo_config",
  "algorithm_preset",
  "apply_preset",
  "combine_metrics",
  "compute_advantages",
  "estimator_names",
  "gather_groups",
  "get_advantage_fn",
  "group_rewards",
  "kl_penalty",
  "loss_config",
  "overlong_keep_mask",
  "overlong_penalty",
  "policy_loss",
  "register_estimator",
  "reward_config",
  "select_groups_with_spread",
  "shape_rewards",
  "summarize_metrics",
  "token_entropy",
  "token_logprobs",
  "zero_spread_groups",
]
