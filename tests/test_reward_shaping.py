"""DAPO reward options (dynamic sampling, overlong penalty and filter), defaults and presets."""

import ml_collections
import numpy as np
import pytest

from agpo_jax.algorithms import advantages
from agpo_jax.algorithms.defaults import (
  algo_config,
  algorithm_preset,
  apply_preset,
  loss_config,
  reward_config,
)
from agpo_jax.algorithms.reward_shaping import (
  gather_groups,
  overlong_penalty,
  select_groups_with_spread,
  shape_rewards,
  zero_spread_groups,
)

SPREAD, FLAT_WRONG, FLAT_RIGHT = [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def test_zero_spread_groups():
  rewards = np.array(
    [SPREAD, FLAT_WRONG, FLAT_RIGHT, [0.5, 0.5, 0.25], [0.5, 0.5, 0.5001]], np.float32
  )
  # Any difference counts as spread: it gives GRPO a non-zero signal.
  np.testing.assert_array_equal(zero_spread_groups(rewards), [False, True, True, False, False])


def test_zero_spread_groups_ignores_invalid_entries():
  rewards = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
  mask = np.array([[True, False, True], [False, True, False], [True, True, False]])
  # valid values {1, 1}; {0} alone (a group of one has no spread); {1, 0}
  np.testing.assert_array_equal(zero_spread_groups(rewards, mask), [True, True, False])


def test_select_groups_with_spread_fills_in_order_up_to_the_target():
  batches = [
    np.array([SPREAD, FLAT_WRONG, SPREAD]),
    np.array([FLAT_RIGHT, SPREAD]),
    np.array([SPREAD, SPREAD]),
  ]
  selection = select_groups_with_spread(batches, target_num_groups=4)
  assert [s.tolist() for s in selection] == [[0, 2], [1], [0]]
  # Not enough yet: everything with spread is taken.
  assert [s.tolist() for s in select_groups_with_spread(batches[:2], 4)] == [[0, 2], [1]]
  # Target already met by the first batch: later batches contribute nothing.
  assert [s.tolist() for s in select_groups_with_spread(batches, 1)] == [[0], [], []]


def test_select_groups_with_spread_uses_masks():
  batches = [np.array([SPREAD, SPREAD])]
  masks = [np.array([[True, True, True], [False, True, True]])]  # 2nd group: valid {0, 0}
  assert [s.tolist() for s in select_groups_with_spread(batches, 2, masks)] == [[0]]


def test_gather_groups_flat_layout():
  group_size = 3
  batches = [
    {"tokens": np.arange(6 * 2).reshape(6, 2), "rewards": np.array(SPREAD + FLAT_WRONG)},
    {"tokens": 100 + np.arange(6 * 2).reshape(6, 2), "rewards": np.array(FLAT_RIGHT + SPREAD)},
  ]
  selection = select_groups_with_spread(
    [b["rewards"].reshape(-1, group_size) for b in batches], target_num_groups=2
  )
  gathered = gather_groups(batches, selection, group_size=group_size)
  np.testing.assert_array_equal(gathered["rewards"], SPREAD + SPREAD)
  np.testing.assert_array_equal(gathered["tokens"][:3], batches[0]["tokens"][:3])
  np.testing.assert_array_equal(gathered["tokens"][3:], batches[1]["tokens"][3:])


def test_gather_groups_grouped_layout():
  batches = [np.array([SPREAD, FLAT_WRONG]), np.array([[0.0, 1.0, 0.0]])]
  gathered = gather_groups(batches, select_groups_with_spread(batches, 5))
  np.testing.assert_array_equal(gathered, [SPREAD, [0.0, 1.0, 0.0]])


def test_overlong_penalty():
  # L_max = 20, L_cache = 4: free up to 16, linear to −1 at 20, −1 beyond.
  lengths = np.array([0, 10, 16, 17, 18, 19, 20, 21, 40])
  expected = [0, 0, 0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
  np.testing.assert_allclose(
    overlong_penalty(lengths, max_len=20, cache_len=4), expected, atol=1e-7
  )


@pytest.mark.parametrize("cache_len", [0, 21])
def test_overlong_penalty_rejects_bad_cache_length(cache_len):
  with pytest.raises(ValueError, match="cache_len"):
    overlong_penalty(np.array([1]), max_len=20, cache_len=cache_len)


def test_shape_rewards():
  rewards = np.array([1.0, 1.0, 0.0, 1.0])
  lengths = np.array([5, 18, 20, 20])
  truncated = np.array([False, False, False, True])
  cfg = reward_config()
  cfg.overlong_cache_len = 4

  shaped, keep = shape_rewards(rewards, lengths, truncated, cfg, max_len=20)  # all off
  np.testing.assert_array_equal(shaped, rewards)
  assert np.asarray(keep).all()

  cfg.overlong_penalty, cfg.overlong_filter = True, True
  shaped, keep = shape_rewards(rewards, lengths, truncated, cfg, max_len=20)
  np.testing.assert_allclose(shaped, [1.0, 0.5, -1.0, 0.0])
  np.testing.assert_array_equal(keep, [True, True, True, False])


def test_reward_defaults_keep_dynamic_sampling_off():
  cfg = reward_config()
  # Off by default: AGPO's negative signal lives in the all-wrong groups it would drop.
  assert cfg.dynamic_sampling is False
  assert cfg.overlong_penalty is False and cfg.overlong_filter is False
  assert cfg.overlong_cache_len > 0 and cfg.dynamic_sampling_max_batches > 0


# --- Presets.


def full_config():
  config = ml_collections.ConfigDict()
  config.algo, config.loss, config.reward = algo_config(), loss_config(), reward_config()
  return config


def test_dapo_preset():
  config = apply_preset(full_config(), "dapo")
  assert config.algo.name == "grpo"
  assert config.loss.eps_high == 0.28 and config.loss.eps_low == 0.2
  assert config.loss.aggregation == "token_mean"
  assert config.reward.dynamic_sampling is True


@pytest.mark.parametrize(
  "name, aggregation",
  [
    ("grpo", "seq_mean_token_mean"),
    ("dr_grpo", "seq_mean_token_sum_norm"),
    ("nsr", "token_mean"),
    ("agpo", "token_mean"),
  ],
)
def test_presets_follow_the_aggregation_table(name, aggregation):
  config = apply_preset(full_config(), name)
  assert config.algo.name == name and config.loss.aggregation == aggregation
  assert config.reward.dynamic_sampling is False


def test_every_estimator_has_a_preset_and_every_preset_a_real_estimator():
  for name in advantages.estimator_names():
    assert algorithm_preset(name)["algo.name"] == name
  assert algorithm_preset("dapo")["algo.name"] in advantages.estimator_names()


def test_presets_are_copies():
  algorithm_preset("dapo")["loss.eps_high"] = 0.5
  assert algorithm_preset("dapo")["loss.eps_high"] == 0.28


def test_unknown_preset_names_the_value():
  with pytest.raises(ValueError, match=r"'ppo'.*'dapo'"):
    algorithm_preset("ppo")
