"""Advantage estimators: worked tables, an independent NumPy reference, properties."""

import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agpo_jax.algorithms import advantages as adv_lib
from agpo_jax.algorithms.advantages import (
  advantage_metrics,
  compute_advantages,
  get_advantage_fn,
  group_rewards,
)
from agpo_jax.algorithms.defaults import algo_config

ALL_ESTIMATORS = (
  "grpo",
  "dr_grpo",
  "rloo",
  "reinforce_pp",
  "reinforce_pp_baseline",
  "psr",
  "nsr",
  "w_reinforce",
  "a_grae",
  "agpo",
)
AGPO_VARIANTS = ("reference", "nsr_plus_group", "weighted_rarity")
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


def config(name: str, variant: str = "reference"):
  cfg = algo_config()
  cfg.name = name
  cfg.agpo.variant = variant
  return cfg


@functools.cache
def _jitted_estimator(name: str, variant: str):
  cfg = config(name, variant)
  return jax.jit(lambda rewards, mask: compute_advantages(rewards, cfg, mask))


def advantages_of(rewards, name, variant="reference", mask=None):
  rewards = np.asarray(rewards, np.float32)
  mask = np.ones(rewards.shape, bool) if mask is None else mask
  adv, loss_mask = _jitted_estimator(name, variant)(rewards, mask)
  return np.asarray(adv), np.asarray(loss_mask)


# --- The AGPO table of docs/ALGORITHMS.md (G = 8, defaults).

AGPO_DOC_TABLE = [  # (correct out of 8, A+, A-)
  (0, None, -1.000),
  (1, 2.616, -1.374),
  (2, 1.721, -1.574),
  (4, 0.995, -1.995),
  (6, 0.574, -2.721),
  (7, 0.374, -3.616),
  (8, 0.0, None),
]


@pytest.mark.parametrize("num_correct, a_pos, a_neg", AGPO_DOC_TABLE)
def test_agpo_matches_documented_table(num_correct, a_pos, a_neg):
  rewards = np.zeros((1, 8), np.float32)
  rewards[0, :num_correct] = 1.0
  adv, loss_mask = advantages_of(rewards, "agpo")
  assert loss_mask.all()
  np.testing.assert_allclose(adv[0, :num_correct], a_pos if a_pos is not None else [], atol=1e-3)
  np.testing.assert_allclose(adv[0, num_correct:], a_neg if a_neg is not None else [], atol=1e-3)


def test_agpo_table_in_one_batch_with_shuffled_positions():
  # The same table, all groups in one batch, correct answers at random positions:
  # groups must not leak into each other and position must not matter.
  rng = np.random.default_rng(0)
  rewards = np.stack([rng.permutation([1.0] * k + [0.0] * (8 - k)) for k, _, _ in AGPO_DOC_TABLE])
  adv, _ = advantages_of(rewards, "agpo")
  for row, (_, a_pos, a_neg) in enumerate(AGPO_DOC_TABLE):
    if a_pos is not None:
      np.testing.assert_allclose(adv[row][rewards[row] == 1], a_pos, atol=1e-3)
    if a_neg is not None:
      np.testing.assert_allclose(adv[row][rewards[row] == 0], a_neg, atol=1e-3)


# --- A hand-checked table for every estimator. Groups (G = 4): one correct, three correct,
# all wrong, all correct. Batch mean accuracy P̄ = 1/2, batch (population) std 1/2.

TABLE_REWARDS = np.array([[1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
ZERO = [0.0] * 4
CORRECT = TABLE_REWARDS == 1
# reinforce_pp_baseline: group-centred values whitened by their batch std sqrt(3/32).
_W = 1 / math.sqrt(3 / 32)
# a_grae, group of 3/4 correct: GRPO ±(0.5, 1.5) times P̄/(2√p) + (1 − P̄)/(2(1 − √p)).
_S = 0.5 / (2 * math.sqrt(0.75)) + 0.5 / (2 * (1 - math.sqrt(0.75)))
# agpo reference, p = 1/4 and 3/4: sqrt(σ² + δ²) = sqrt(0.75 + 0.01).
_D = math.sqrt(0.76)

HAND_TABLE = {
  # (name, variant): (advantages, loss_mask)
  ("grpo", None): ([[1.5, -0.5, -0.5, -0.5], [0.5, 0.5, -1.5, 0.5], ZERO, ZERO], None),
  ("dr_grpo", None): ([[0.75, -0.25, -0.25, -0.25], [0.25, 0.25, -0.75, 0.25], ZERO, ZERO], None),
  ("rloo", None): ([[1, -1 / 3, -1 / 3, -1 / 3], [1 / 3, 1 / 3, -1, 1 / 3], ZERO, ZERO], None),
  ("reinforce_pp", None): ([[1, -1, -1, -1], [1, 1, -1, 1], [-1] * 4, [1] * 4], None),
  ("reinforce_pp_baseline", None): (
    [
      [0.75 * _W, -0.25 * _W, -0.25 * _W, -0.25 * _W],
      [0.25 * _W, 0.25 * _W, -0.75 * _W, 0.25 * _W],
      ZERO,
      ZERO,
    ],
    None,
  ),
  ("psr", None): ([[1, 0, 0, 0], [1, 1, 0, 1], ZERO, [1] * 4], CORRECT),
  ("nsr", None): ([[0, -1, -1, -1], [0, 0, -1, 0], [-1] * 4, ZERO], ~CORRECT),
  ("w_reinforce", None): ([[0.1, -1, -1, -1], [0.1, 0.1, -1, 0.1], [-1] * 4, [0.1] * 4], None),
  # group 1/4: √p = 1/2 so the reweighting factor is exactly 1; positives × min(1, P̄/α) = 1/2.
  ("a_grae", None): (
    [
      [0.75, -0.5, -0.5, -0.5],
      [0.5 * _S * 0.5, 0.5 * _S * 0.5, -1.5 * _S, 0.5 * _S * 0.5],
      ZERO,
      ZERO,
    ],
    None,
  ),
  ("agpo", "reference"): (
    [
      [1.5 / _D, -0.5 / _D - 1, -0.5 / _D - 1, -0.5 / _D - 1],
      [0.5 / _D, 0.5 / _D, -1.5 / _D - 1, 0.5 / _D],
      [-1] * 4,
      ZERO,
    ],
    None,
  ),
  ("agpo", "nsr_plus_group"): ([[1.5, -1, -1, -1], [0.5, 0.5, -1, 0.5], [-1] * 4, ZERO], None),
  ("agpo", "weighted_rarity"): (
    [
      [math.sqrt(3), -1, -1, -1],
      [math.sqrt(1 / 3), math.sqrt(1 / 3), -1, math.sqrt(1 / 3)],
      [-1] * 4,
      ZERO,
    ],
    None,
  ),
}


@pytest.mark.parametrize("name, variant", list(HAND_TABLE))
def test_hand_checked_table(name, variant):
  expected_adv, expected_mask = HAND_TABLE[(name, variant)]
  adv, loss_mask = advantages_of(TABLE_REWARDS, name, variant or "reference")
  # Hand values ignore ε = 1e-6, hence rtol.
  np.testing.assert_allclose(adv, expected_adv, rtol=1e-4, atol=1e-5)
  expected_mask = np.ones_like(CORRECT) if expected_mask is None else expected_mask
  np.testing.assert_array_equal(loss_mask, expected_mask)


def test_hand_table_covers_every_estimator_and_variant():
  assert {name for name, _ in HAND_TABLE} == set(ALL_ESTIMATORS) == set(adv_lib.estimator_names())
  assert {v for name, v in HAND_TABLE if name == "agpo"} == set(AGPO_VARIANTS)


# --- An independent NumPy reference (explicit loops over groups), checked on random graded
# rewards with random validity masks.


def _np_group_stats(values):
  return values.mean(), values.std(), (values.std(ddof=1) if len(values) > 1 else 0.0)


def numpy_reference(rewards, mask, name, variant="reference", cfg=None):
  cfg = cfg or config(name, variant)
  num_groups, _ = rewards.shape
  adv = np.zeros(rewards.shape)
  keep = mask.copy()
  valid = rewards[mask]
  batch_mean_c = np.clip(valid.mean(), 0, 1) if valid.size else 0.0
  correct = rewards >= cfg.correct_threshold
  if name in ("reinforce_pp", "reinforce_pp_baseline"):
    centred = rewards.copy()
    if name == "reinforce_pp_baseline":
      for i in range(num_groups):
        centred[i, mask[i]] -= rewards[i, mask[i]].mean() if mask[i].any() else 0.0
    values = centred[mask]
    spread = values.max() - values.min() if values.size else 0.0
    std = values.std() if values.size else 0.0
    adv = np.where(mask, (centred - values.mean()) / (std + cfg.eps) if spread > 1e-7 else 0.0, 0.0)
    return adv, keep
  for i in range(num_groups):
    m = mask[i]
    if not m.any():
      continue
    c, ok = rewards[i, m], correct[i, m]
    n = len(c)
    flat = c.max() == c.min()
    mean, _, std1 = _np_group_stats(c)
    grpo = np.zeros(n) if flat else (c - mean) / (std1 + cfg.eps)
    pm = 2 * c - 1
    p = np.clip(mean, 0, 1)
    if name == "grpo":
      out = grpo
    elif name == "dr_grpo":
      out = np.zeros(n) if flat else c - mean
    elif name == "rloo":
      out = np.array([c[j] - np.delete(c, j).mean() for j in range(n)]) if n > 1 else np.zeros(n)
    elif name == "psr":
      out, keep[i, m] = np.where(ok, pm, 0), ok
    elif name == "nsr":
      out, keep[i, m] = np.where(ok, 0, pm), ~ok
    elif name == "w_reinforce":
      out = np.where(ok, cfg.w_reinforce.lambda_pos * pm, pm)
    elif name == "a_grae":
      sp = math.sqrt(p)
      out = batch_mean_c * grpo / (2 * (sp + cfg.eps)) + (1 - batch_mean_c) * grpo / (
        2 * (1 - sp + cfg.eps)
      )
      out = np.where(out > 0, out * min(1.0, batch_mean_c / cfg.a_grae.alpha), out)
    elif variant == "reference":
      g = (
        np.zeros(n)
        if pm.max() == pm.min()
        else (pm - pm.mean()) / math.sqrt(pm.var() + cfg.agpo.delta**2)
      )
      out = np.where(ok, cfg.agpo.lambda_pos * g, g + cfg.agpo.r_neg)
    elif variant == "nsr_plus_group":
      out = np.where(ok, cfg.agpo.lambda_pos * grpo, pm)
    else:
      rarity = math.sqrt((1 - p) / p) if p > 0 else math.inf
      out = np.where(ok, min(cfg.agpo.lambda_pos * rarity, cfg.agpo.max_pos), pm)
    adv[i, m] = out
  return np.where(keep, adv, 0.0), keep


ALL_CASES = [(n, "reference") for n in ALL_ESTIMATORS] + [("agpo", v) for v in AGPO_VARIANTS[1:]]


@pytest.mark.parametrize("name, variant", ALL_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_matches_numpy_reference_on_graded_masked_rewards(name, variant, seed):
  rng = np.random.default_rng(seed)
  # Graded rewards on a coarse grid so groups with ties and zero spread occur too.
  rewards = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(6, 5)).astype(np.float32)
  rewards[0] = 0.0
  rewards[1] = 1.0
  mask = rng.random((6, 5)) > 0.25
  mask[2] = [True, False, False, False, False]  # a group of one
  mask[3] = False  # an empty group
  adv, keep = advantages_of(rewards, name, variant, mask)
  expected_adv, expected_keep = numpy_reference(rewards, mask, name, variant)
  np.testing.assert_allclose(adv, expected_adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(keep, expected_keep)


def test_non_default_constants_are_used():
  cfg = config("agpo")
  cfg.agpo.update(delta=0.3, r_neg=-0.5, lambda_pos=2.0)
  cfg.correct_threshold = 1.0
  rewards = np.array([[1, 0.75, 0, 0, 0.5]], np.float32)
  mask = np.ones_like(rewards, bool)
  adv, _ = compute_advantages(rewards, cfg)
  np.testing.assert_allclose(adv, numpy_reference(rewards, mask, "agpo", cfg=cfg)[0], atol=1e-5)
  # At threshold 1 the reward 0.75 takes the negative branch (g + R_neg, not λ_pos·g).
  cfg.correct_threshold = 0.5
  adv_at_half, _ = compute_advantages(rewards, cfg)
  np.testing.assert_allclose(adv_at_half[0, 1], 2 * (adv[0, 1] + 0.5), rtol=1e-5)


# --- Properties.


# Property inputs have one fixed shape (so the jitted estimators compile once); groups of
# every size from 0 to 8 come from the validity mask.
PROPERTY_SHAPE = (4, 8)
binary_rewards = hnp.arrays(np.float32, PROPERTY_SHAPE, elements=st.sampled_from([0.0, 1.0]))
validity_masks = hnp.arrays(bool, PROPERTY_SHAPE)


@PROPERTY_SETTINGS
@given(rewards=binary_rewards, mask=validity_masks, name=st.sampled_from(["grpo", "dr_grpo"]))
def test_grpo_family_sums_to_zero_in_groups_with_spread(rewards, mask, name):
  adv, _ = advantages_of(rewards, name, mask=mask)
  for row in range(rewards.shape[0]):
    valid = rewards[row][mask[row]]
    if valid.size and valid.max() > valid.min():
      assert abs(adv[row].sum()) < 1e-5
      assert (adv[row][mask[row]] != 0).all()


@PROPERTY_SETTINGS
@given(
  rewards=hnp.arrays(
    np.float32, PROPERTY_SHAPE, elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
  ),
  scale=st.floats(0.5, 10.0),
  shift=st.floats(-5.0, 5.0),
)
def test_grpo_is_invariant_to_positive_affine_rescaling(rewards, scale, shift):
  adv, _ = advantages_of(rewards, "grpo")
  rescaled, _ = advantages_of(scale * rewards + shift, "grpo")
  np.testing.assert_allclose(rescaled, adv, atol=1e-3)


@PROPERTY_SETTINGS
@given(rewards=binary_rewards, mask=validity_masks)
def test_agpo_negative_mass_exceeds_positive_mass(rewards, mask):
  adv, _ = advantages_of(rewards, "agpo", mask=mask)
  for row in range(rewards.shape[0]):
    valid = mask[row]
    if (rewards[row][valid] == 0).any():
      negative_mass = -adv[row][valid & (adv[row] < 0)].sum()
      positive_mass = adv[row][valid & (adv[row] > 0)].sum()
      assert negative_mass > positive_mass


@PROPERTY_SETTINGS
@given(mask=validity_masks, value=st.sampled_from([0.0, 1.0]))
def test_uniform_groups(mask, value):
  rewards = np.full(PROPERTY_SHAPE, value, np.float32)
  agpo_adv, _ = advantages_of(rewards, "agpo", mask=mask)
  grpo_adv, _ = advantages_of(rewards, "grpo", mask=mask)
  assert (grpo_adv == 0.0).all()
  # All wrong: exactly R_neg under AGPO; all correct: exactly 0.
  expected = algo_config().agpo.r_neg if value == 0 else 0.0
  assert (agpo_adv[mask] == expected).all() and (agpo_adv[~mask] == 0).all()


@PROPERTY_SETTINGS
@given(data=st.data(), case=st.sampled_from(ALL_CASES))
def test_masked_entries_do_not_change_other_advantages(data, case):
  name, variant = case
  grid = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
  rewards = data.draw(hnp.arrays(np.float32, PROPERTY_SHAPE, elements=grid))
  mask = data.draw(validity_masks)
  other = np.where(mask, rewards, data.draw(hnp.arrays(np.float32, PROPERTY_SHAPE, elements=grid)))
  adv, keep = advantages_of(rewards, name, variant, mask)
  other_adv, other_keep = advantages_of(other, name, variant, mask)
  np.testing.assert_array_equal(adv, other_adv)
  np.testing.assert_array_equal(keep, other_keep)
  assert (adv[~mask] == 0).all() and not keep[~mask].any()


# --- API and plumbing.


@pytest.mark.parametrize("name, variant", ALL_CASES)
def test_jit_matches_eager(name, variant):
  cfg = config(name, variant)
  mask = np.ones_like(TABLE_REWARDS, bool)
  mask[0, 1] = False
  jitted = jax.jit(lambda r, m: compute_advantages(r, cfg, m))(TABLE_REWARDS, mask)
  eager = compute_advantages(TABLE_REWARDS, cfg, mask)
  np.testing.assert_allclose(jitted[0], eager[0], atol=1e-6)
  np.testing.assert_array_equal(jitted[1], eager[1])


def test_get_advantage_fn_returns_the_registered_function():
  assert get_advantage_fn("agpo") is adv_lib.agpo
  assert get_advantage_fn("grpo") is adv_lib.grpo


def test_unknown_estimator_names_the_value_and_the_valid_names():
  with pytest.raises(ValueError, match=r"'gspo'.*'agpo'.*'w_reinforce'"):
    get_advantage_fn("gspo")
  with pytest.raises(ValueError, match="'gspo'"):
    compute_advantages(TABLE_REWARDS, config("gspo"))


def test_unknown_agpo_variant_raises():
  with pytest.raises(ValueError, match=r"'mystery'.*'reference'"):
    compute_advantages(TABLE_REWARDS, config("agpo", "mystery"))


def test_register_estimator_rejects_duplicates():
  with pytest.raises(ValueError, match="grpo"):
    adv_lib.register_estimator("grpo")(adv_lib.dr_grpo)


def test_group_rewards():
  flat = np.arange(6, dtype=np.float32)
  np.testing.assert_array_equal(group_rewards(flat, 3), [[0, 1, 2], [3, 4, 5]])
  with pytest.raises(ValueError, match="group_size=4"):
    group_rewards(flat, 4)


def test_advantage_metrics_on_the_hand_table():
  cfg = config("agpo")
  adv, keep = compute_advantages(TABLE_REWARDS, cfg)
  metrics = {k: float(v) for k, v in advantage_metrics(TABLE_REWARDS, adv, keep, cfg).items()}
  assert metrics["zero_spread_fraction"] == 0.5
  assert metrics["all_wrong_fraction"] == 0.25
  assert metrics["all_correct_fraction"] == 0.25
  assert metrics["accuracy"] == 0.5
  assert metrics["kept_fraction"] == 1.0
  np.testing.assert_allclose(metrics["positive_mass"], 1.5 / _D + 3 * 0.5 / _D, rtol=1e-5)
  np.testing.assert_allclose(
    metrics["negative_mass"], 3 * (0.5 / _D + 1) + (1.5 / _D + 1) + 4, rtol=1e-5
  )


def test_advantage_metrics_respect_masks():
  cfg = config("psr")
  mask = np.ones_like(TABLE_REWARDS, bool)
  mask[2] = False  # the all-wrong group disappears
  adv, keep = compute_advantages(TABLE_REWARDS, cfg, mask)
  metrics = {k: float(v) for k, v in advantage_metrics(TABLE_REWARDS, adv, keep, cfg, mask).items()}
  assert metrics["zero_spread_fraction"] == pytest.approx(1 / 3)
  assert metrics["all_wrong_fraction"] == 0.0
  assert metrics["accuracy"] == pytest.approx(8 / 12)
  assert metrics["kept_fraction"] == pytest.approx(8 / 12)
  assert metrics["positive_mass"] == 8.0 and metrics["negative_mass"] == 0.0


def test_algo_defaults_hold_every_documented_constant():
  cfg = algo_config()
  assert cfg.name == "agpo" and cfg.eps == 1e-6 and cfg.correct_threshold == 0.5
  assert cfg.agpo.to_dict() == dict(
    variant="reference", delta=0.1, r_neg=-1.0, lambda_pos=1.0, max_pos=10.0,
    mask_shared_tokens=False,
  )
  assert cfg.w_reinforce.lambda_pos == 0.1
  assert cfg.a_grae.alpha == 1.0
