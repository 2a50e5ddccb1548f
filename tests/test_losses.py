"""Policy loss: analytic gradients, exact micro-batching, clipping, regularisers, metrics."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agpo_jax.algorithms.advantages import compute_advantages
from agpo_jax.algorithms.defaults import algo_config, loss_config
from agpo_jax.algorithms.losses import (
  AGGREGATIONS,
  Max,
  Mean,
  Min,
  Sum,
  aggregate,
  combine_metrics,
  kl_penalty,
  policy_loss,
  summarize_metrics,
  token_entropy,
  token_logprobs,
  token_logprobs_and_entropy,
)


def loss_cfg(**overrides):
  cfg = loss_config()
  cfg.update(overrides)
  return cfg


PADDED_ROWS = 8  # every single-token batch is padded to this, so eager op caches are reused


def single_token_loss(ratios, advantages, cfg, *, sampler_ratios=None, entropy=None):
  """Loss, metrics and gradients for one-token completions with the given ratios ρ.

  Rows are padded to PADDED_ROWS with masked rows holding extreme log-probs, so every
  test also checks that padding is inert. ``sampler_ratios`` are π_old/π_sampler.
  Returns ``(loss, metrics, d loss/d logp, d loss/d sampler_logp, d loss/d entropy)``,
  the gradients for the real rows only.
  """
  n = len(ratios)

  def pad(values, fill):
    return jnp.concatenate([jnp.asarray(values, jnp.float32), jnp.full(PADDED_ROWS - n, fill)])

  old_logp = jnp.full((PADDED_ROWS, 1), -1.0)
  logp = old_logp + jnp.log(pad(ratios, math.exp(100.0)))[:, None]  # padding ratio e^100
  sampler_logp = (
    old_logp - jnp.log(pad(np.ones(n) if sampler_ratios is None else sampler_ratios, 1.0))[:, None]
  )
  entropy = pad(np.zeros(n) if entropy is None else entropy, 1e3)[:, None]
  mask = (jnp.arange(PADDED_ROWS) < n)[:, None]
  adv = pad(advantages, -1.0)

  def loss(logp, sampler_logp, entropy):
    total, denom, metrics = policy_loss(
      logp, old_logp, None, adv, mask, cfg, sampler_logp=sampler_logp, entropy=entropy
    )
    return total / denom, metrics

  (value, metrics), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
    logp, sampler_logp, entropy
  )
  for grad in grads:
    assert np.isfinite(np.asarray(grad)).all() and (np.asarray(grad)[n:] == 0).all()
  return float(value), metrics, *(np.asarray(g[:n, 0]) for g in grads)


# --- The gradient for a categorical "policy": one token per completion, ratio 1 at the old
# policy, so d/dθ loss = −(1/N) Σ_kept A_i (onehot(a_i) − softmax(θ)).

ACTIONS = np.array([0, 2, 2, 1, 3, 0, 4, 2])
CATEGORICAL_REWARDS = np.array([[1, 0, 0, 0], [1, 1, 0, 1]], np.float32)
# Hand-computed advantages of CATEGORICAL_REWARDS (see tests/test_advantages.py's table) and
# which completions the estimator keeps.
_D = math.sqrt(0.76)
EXPECTED = {
  "grpo": ([1.5, -0.5, -0.5, -0.5, 0.5, 0.5, -1.5, 0.5], [True] * 8),
  "dr_grpo": ([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25], [True] * 8),
  "psr": ([1, 0, 0, 0, 1, 1, 0, 1], CATEGORICAL_REWARDS.reshape(-1) == 1),
  "nsr": ([0, -1, -1, -1, 0, 0, -1, 0], CATEGORICAL_REWARDS.reshape(-1) == 0),
  "w_reinforce": ([0.1, -1, -1, -1, 0.1, 0.1, -1, 0.1], [True] * 8),
  "agpo": (
    [
      1.5 / _D,
      -0.5 / _D - 1,
      -0.5 / _D - 1,
      -0.5 / _D - 1,
      0.5 / _D,
      0.5 / _D,
      -1.5 / _D - 1,
      0.5 / _D,
    ],
    [True] * 8,
  ),
}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("estimator", list(EXPECTED))
def test_categorical_policy_gradient_matches_analytic(estimator, aggregation):
  theta = jnp.asarray(np.random.default_rng(0).normal(size=5), jnp.float32)
  algo = algo_config()
  algo.name = estimator
  advantages, loss_mask = compute_advantages(CATEGORICAL_REWARDS, algo)
  advantages, loss_mask = advantages.reshape(-1), loss_mask.reshape(-1, 1)
  cfg = loss_cfg(aggregation=aggregation)

  def loss(theta):
    logp = jax.nn.log_softmax(theta)[ACTIONS][:, None]
    total, denom, _ = policy_loss(
      logp, jax.lax.stop_gradient(logp), None, advantages, loss_mask, cfg
    )
    return total / denom

  expected_adv, kept = map(np.asarray, EXPECTED[estimator])
  probs = np.asarray(jax.nn.softmax(theta))
  score = np.eye(5)[ACTIONS] - probs  # ∇θ log softmax(θ)[a]
  analytic = -(expected_adv[kept, None] * score[kept]).sum(axis=0) / kept.sum()
  np.testing.assert_allclose(jax.grad(loss)(theta), analytic, rtol=1e-4, atol=1e-6)


# --- Micro-batching: Σ grad(loss_sum_k) / Σ denominator_k equals the full-batch gradient.


def _random_batch(seed, batch=8, seq=6, vocab=7):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, seq + 1, size=batch)
  lengths[1] = 0  # an empty (e.g. dropped) completion
  mask = np.arange(seq)[None, :] < lengths[:, None]
  return dict(
    logits=jnp.asarray(rng.normal(size=(batch, seq, vocab)), jnp.float32),
    targets=jnp.asarray(rng.integers(0, vocab, size=(batch, seq))),
    mask=jnp.asarray(mask),
    old_shift=jnp.asarray(rng.normal(scale=0.3, size=(batch, seq)), jnp.float32),
    ref_shift=jnp.asarray(rng.normal(scale=0.3, size=(batch, seq)), jnp.float32),
    sampler_shift=jnp.asarray(rng.normal(scale=0.5, size=(batch, seq)), jnp.float32),
    advantages=jnp.asarray(rng.normal(size=batch), jnp.float32),
  )


def _loss_terms(logits, b, cfg, rows, max_len):
  """(loss_sum, denominator, metrics) of the rows ``rows`` of batch ``b`` at ``logits``."""
  logp = token_logprobs(logits[rows], b["targets"][rows])
  old_logp = jax.lax.stop_gradient(logp) + b["old_shift"][rows]
  return policy_loss(
    logp,
    old_logp,
    jax.lax.stop_gradient(logp) + b["ref_shift"][rows],
    b["advantages"][rows],
    b["mask"][rows],
    cfg,
    sampler_logp=old_logp + b["sampler_shift"][rows],
    entropy=token_entropy(logits[rows]),
    max_len=max_len,
  )


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_reproduce_full_batch_loss_gradient_and_metrics(aggregation):
  cfg = loss_cfg(
    aggregation=aggregation,
    kl_coef=0.1,
    entropy_coef=0.01,
    tis_cap=1.5,
    dual_clip_c=3.0,
    eps_high=0.28,
  )
  max_len = 10  # L_max, larger than the padded length, as when the batch is trimmed

  def loss_sum(logits, b, rows):
    total, denom, metrics = _loss_terms(logits, b, cfg, rows, max_len)
    return total, (denom, metrics)

  # Eager on purpose: op-by-op compile caches are shared by every mode and seed, where a
  # jit would recompile per mode.
  grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
  for seed in range(3):
    b = _random_batch(seed)
    (full_sum, (full_denom, full_metrics)), full_grad = grad_fn(b["logits"], b, np.arange(8))
    sums, denoms, grads, metrics = 0.0, 0.0, 0.0, None
    # Equal micro-batch sizes keep compiles down; the rows are shuffled so each
    # micro-batch mixes lengths, and row 1 (empty) lands in the first.
    for rows in (np.array([5, 1, 7, 3]), np.array([0, 6, 2, 4])):
      (s, (d, m)), g = grad_fn(b["logits"], b, rows)
      sums, denoms, grads = sums + s, denoms + d, grads + g
      metrics = m if metrics is None else combine_metrics(metrics, m)

    np.testing.assert_allclose(sums / denoms, full_sum / full_denom, rtol=1e-5)
    np.testing.assert_allclose(grads / denoms, full_grad / full_denom, rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(full_grad).max()) > 0  # the check is not vacuous
    full_summary, micro_summary = summarize_metrics(full_metrics), summarize_metrics(metrics)
    assert full_summary.keys() == micro_summary.keys()
    for key in full_summary:
      np.testing.assert_allclose(micro_summary[key], full_summary[key], rtol=1e-5, err_msg=key)


def test_policy_loss_jits():
  b = _random_batch(0)
  cfg = loss_cfg(kl_coef=0.1, entropy_coef=0.01, tis_cap=1.5, aggregation="seq_mean_token_sum_norm")
  rows = np.arange(8)
  eager = _loss_terms(b["logits"], b, cfg, rows, 10)
  jitted = jax.jit(lambda logits: _loss_terms(logits, b, cfg, rows, 10))(b["logits"])
  np.testing.assert_allclose(jitted[:2], eager[:2], rtol=1e-5)
  # Same metric types, names and static fields in and out of jit, and the same values.
  assert jax.tree.structure(jitted[2]) == jax.tree.structure(eager[2])
  jax.tree.map(lambda j, e: np.testing.assert_allclose(j, e, rtol=1e-5), jitted[2], eager[2])


def test_aggregation_values():
  token_loss = np.array(
    [[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0], [99.0] * 4, [0.5, 0.5, 0.5, 0.5]]
  )
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  expected = {
    "token_mean": (1 + 2 + 3 + 4 + 2.0, 8.0),
    # per-sequence means 2, 4, 0.5 over the three non-empty sequences
    "seq_mean_token_mean": (2 + 4 + 0.5, 3.0),
    "seq_mean_token_sum_norm": (12.0, 3 * 16.0),
  }
  for mode, (total, denom) in expected.items():
    got_total, got_denom = aggregate(jnp.asarray(token_loss), jnp.asarray(mask), mode, max_len=16)
    np.testing.assert_allclose([got_total, got_denom], [total, denom], err_msg=mode)


def test_seq_mean_token_sum_norm_defaults_to_the_padded_length():
  logp = jnp.zeros((2, 5))
  mask = jnp.ones((2, 5), bool)
  _, denom, _ = policy_loss(
    logp, logp, None, jnp.ones(2), mask, loss_cfg(aggregation="seq_mean_token_sum_norm")
  )
  assert float(denom) == 10.0


# --- Ratios, clipping, KL at the identity.


@pytest.mark.parametrize("kl_estimator", ["k1", "k2", "k3"])
def test_identical_policies_give_zero_kl_and_unit_ratio(kl_estimator):
  rng = np.random.default_rng(0)
  logp = jnp.asarray(-rng.random((3, 4)) * 3, jnp.float32)
  mask = jnp.asarray(rng.random((3, 4)) > 0.3)
  adv = jnp.asarray([1.0, -2.0, 0.5])
  cfg = loss_cfg(kl_coef=0.5, kl_estimator=kl_estimator)
  total, denom, metrics = policy_loss(logp, logp, logp, adv, mask, cfg, sampler_logp=logp)
  summary = summarize_metrics(metrics)
  assert float(summary["kl_mean"]) == 0.0 and float(summary["approx_kl_mean"]) == 0.0
  assert float(summary["ratio_min"]) == 1.0 and float(summary["ratio_max"]) == 1.0
  assert float(summary["ratio_mean"]) == pytest.approx(1.0)
  assert float(summary["sampler_logp_gap_mean"]) == 0.0
  for key in ("ratio_below", "ratio_above", "clipped_low", "clipped_high"):
    assert float(summary[key + "_fraction"]) == 0.0
  # At ratio 1 the token-mean loss is −(mean advantage over tokens).
  tokens_per_seq = np.asarray(mask).sum(axis=1)
  expected = -(np.asarray(adv) * tokens_per_seq).sum() / tokens_per_seq.sum()
  np.testing.assert_allclose(float(total / denom), expected, rtol=1e-6)


RATIOS = [0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0]


@pytest.mark.parametrize(
  "eps_low, eps_high, below, above", [(0.2, 0.2, 2, 2), (0.2, 0.28, 2, 1), (0.1, 0.5, 3, 1)]
)
def test_clip_counts_are_the_tokens_outside_the_range(eps_low, eps_high, below, above):
  advantages = [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
  _, metrics, *_ = single_token_loss(
    RATIOS, advantages, loss_cfg(eps_low=eps_low, eps_high=eps_high)
  )
  assert float(metrics["ratio_below_fraction"].total) == below
  assert float(metrics["ratio_above_fraction"].total) == above
  outside_low = np.array(RATIOS) < 1 - eps_low
  outside_high = np.array(RATIOS) > 1 + eps_high
  negative = np.array(advantages) < 0
  assert float(metrics["clipped_low_fraction"].total) == (outside_low & negative).sum()
  assert float(metrics["clipped_high_fraction"].total) == (outside_high & ~negative).sum()


def test_padding_is_not_counted():
  # single_token_loss pads with ratio e^100, A = −1 and entropy 1e3: none of it may show.
  cfg = loss_cfg(entropy_coef=0.1, dual_clip_c=3.0)
  value, metrics, *_ = single_token_loss([2.0], [-1.0], cfg, entropy=[0.5])
  assert value == pytest.approx(2.0 - 0.05, rel=1e-6)
  assert float(metrics["ratio_above_fraction"].total) == 1.0
  assert float(metrics["ratio_max"].value) == pytest.approx(2.0)
  assert float(metrics["ratio_min"].value) == pytest.approx(2.0)
  assert float(metrics["token_count"].value) == 1.0 and float(metrics["seq_count"].value) == 1.0
  assert float(metrics["entropy_mean"].total) == pytest.approx(0.5)
  assert float(metrics["dual_clipped_fraction"].total) == 0.0


def test_clipped_surrogate_values_and_gradients():
  # ℓ = −min(ρA, clip(ρ, 0.8, 1.2)A); its gradient vanishes where the clipped branch wins.
  ratios = [2.0, 0.5, 0.5, 2.0, 1.1]
  advantages = [1.0, -1.0, 1.0, -1.0, 2.0]
  token_losses = [-1.2, 0.8, -0.5, 2.0, -2.2]
  value, _, grad, _, _ = single_token_loss(ratios, advantages, loss_cfg())
  assert value == pytest.approx(np.mean(token_losses), rel=1e-5)
  # d/dlogp of −ρA is −ρA (ρ = exp(logp − old)), divided by N = 5 tokens.
  np.testing.assert_allclose(grad, [0.0, 0.0, -0.5 / 5, 2.0 / 5, -2.2 / 5], rtol=1e-5, atol=1e-7)


def test_dual_clip():
  ratios = [5.0, 5.0, 2.0, 0.5]
  advantages = [-1.0, 1.0, -2.0, -1.0]
  # Without dual clip: 5, −1.2, 4, 0.8. With c = 3: A < 0 losses are capped at −cA = 3, 6, 3.
  plain, *_ = single_token_loss(ratios, advantages, loss_cfg())
  value, metrics, grad, _, _ = single_token_loss(ratios, advantages, loss_cfg(dual_clip_c=3.0))
  assert plain == pytest.approx((5 - 1.2 + 4 + 0.8) / 4, rel=1e-6)
  assert value == pytest.approx((3 - 1.2 + 4 + 0.8) / 4, rel=1e-6)
  assert float(metrics["dual_clipped_fraction"].total) == 1.0
  np.testing.assert_allclose(grad, [0.0, 0.0, 4.0 / 4, 0.0], rtol=1e-5, atol=1e-7)


def test_truncated_importance_sampling():
  # old/sampler probability ratios 3 (capped at C = 2) and 0.5; at ρ = 1 with A = 1, ℓ = −w.
  value, metrics, grad, sampler_grad, _ = single_token_loss(
    [1.0, 1.0], [1.0, 1.0], loss_cfg(tis_cap=2.0), sampler_ratios=[3.0, 0.5]
  )
  assert value == pytest.approx(-(2.0 + 0.5) / 2, rel=1e-6)
  np.testing.assert_allclose(grad, [-2.0 / 2, -0.5 / 2], rtol=1e-5)
  assert (sampler_grad == 0).all()  # the weight is a constant
  assert float(metrics["tis_capped_fraction"].total) == 1.0
  assert float(metrics["tis_weight_mean"].total) == pytest.approx(2.5, rel=1e-6)
  assert float(metrics["sampler_logp_gap_mean"].total) == pytest.approx(
    math.log(3) + math.log(2), rel=1e-5
  )
  untruncated, *_ = single_token_loss([1.0, 1.0], [1.0, 1.0], loss_cfg(), sampler_ratios=[3.0, 0.5])
  assert untruncated == pytest.approx(-1.0, rel=1e-6)


def test_entropy_bonus():
  value, metrics, _, _, entropy_grad = single_token_loss(
    [1.0, 1.0], [1.0, 0.0], loss_cfg(entropy_coef=0.1), entropy=[0.7, 0.3]
  )
  # pg: (−1 + 0)/2; bonus: −0.1 · (0.7 + 0.3)/2.
  assert value == pytest.approx(-0.5 - 0.05, rel=1e-6)
  np.testing.assert_allclose(entropy_grad, [-0.05, -0.05], rtol=1e-6)
  assert float(metrics["entropy_mean"].total) == pytest.approx(1.0)


@pytest.mark.parametrize(
  "estimator, expected",
  # log π_θ = log 0.5, log π_ref = log 0.25: d = log 2.
  [("k1", math.log(2)), ("k2", 0.5 * math.log(2) ** 2), ("k3", 0.5 + math.log(0.5) * -1 - 1)],
)
def test_kl_estimators(estimator, expected):
  logp = jnp.full((1, 1), math.log(0.5))
  ref_logp = jnp.full((1, 1), math.log(0.25))
  assert float(kl_penalty(logp, ref_logp, estimator)[0, 0]) == pytest.approx(expected, rel=1e-6)
  # In the loss: zero advantage, ratio 1, so the loss is β·KL.
  total, denom, metrics = policy_loss(
    logp,
    logp,
    ref_logp,
    jnp.zeros(1),
    jnp.ones((1, 1), bool),
    loss_cfg(kl_coef=0.5, kl_estimator=estimator),
  )
  assert float(total / denom) == pytest.approx(0.5 * expected, rel=1e-6)
  assert float(metrics["kl_mean"].total) == pytest.approx(expected, rel=1e-6)


def test_k3_is_accurate_for_close_policies():
  # exp(d) − d − 1 ≈ d²/2 = 5e-9; computed naively in float32 this cancels to exactly 0.
  d = 1e-4
  k3 = kl_penalty(jnp.asarray([0.0]), jnp.asarray([d]), "k3")
  assert float(k3[0]) == pytest.approx(d**2 / 2, rel=1e-2)


def test_no_reference_needed_without_kl():
  logp = jnp.zeros((1, 2))
  _, _, metrics = policy_loss(logp, logp, None, jnp.ones(1), jnp.ones((1, 2), bool), loss_cfg())
  assert "kl_mean" not in metrics and "kl_mean" not in summarize_metrics(metrics)


def test_approx_kl_metric_is_k3_of_old_versus_current():
  value, metrics, *_ = single_token_loss([2.0, 0.5], [0.0, 0.0], loss_cfg())
  expected = (2.0 - 1 - math.log(2.0)) + (0.5 - 1 - math.log(0.5))
  assert float(metrics["approx_kl_mean"].total) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["ratio_min"].value) == pytest.approx(0.5)
  assert float(metrics["ratio_max"].value) == pytest.approx(2.0)


# --- Token helpers.


def test_token_logprobs_is_a_stable_log_softmax_gather():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 11)) * 5 + 1e4  # a large offset overflows a naive softmax
  targets = rng.integers(0, 11, size=(2, 3))
  shifted = logits - logits.max(-1, keepdims=True)
  expected = np.take_along_axis(shifted, targets[..., None], -1)[..., 0] - np.log(
    np.exp(shifted).sum(-1)
  )
  got = token_logprobs(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
  np.testing.assert_allclose(got, expected, atol=2e-3)
  assert (
    token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets)).dtype == jnp.float32
  )


def test_fused_logprobs_and_entropy_match_the_separate_functions():
  rng = np.random.default_rng(1)
  raw = rng.normal(size=(3, 5, 40)) * 4 + 1e4  # a large offset: no cancellation allowed
  raw[0, 0, :30] = -np.inf  # a masked vocabulary
  targets = rng.integers(30, 40, size=(3, 5))
  logits, targets = jnp.asarray(raw, jnp.float32), jnp.asarray(targets)
  logp, entropy = token_logprobs_and_entropy(logits, targets)
  exact = np.asarray(logits, np.float64)  # float64 reference, from the float32 inputs
  shifted = exact - exact.max(-1, keepdims=True)
  logp64 = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  np.testing.assert_allclose(logp, np.take_along_axis(logp64, targets[..., None], -1)[..., 0],
                             atol=1e-5)
  with np.errstate(invalid="ignore"):  # exp(-inf) * -inf is nan before the where drops it
    plogp = np.where(np.isinf(logp64), 0, np.exp(logp64) * logp64)
  np.testing.assert_allclose(entropy, -np.sum(plogp, -1), atol=1e-5)
  logits = logits - 1e4 + 5  # where the separate functions are exact too
  weights = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  fused = jax.grad(lambda z: jnp.sum(sum(token_logprobs_and_entropy(z, targets)) * weights))
  apart = jax.grad(lambda z: jnp.sum((token_logprobs(z, targets) + token_entropy(z)) * weights))
  np.testing.assert_allclose(fused(logits), apart(logits), atol=1e-5)


def test_token_entropy():
  uniform = jnp.zeros((2, 8))
  np.testing.assert_allclose(token_entropy(uniform), [math.log(8)] * 2, rtol=1e-6)
  peaked = jnp.asarray([[0.0, -jnp.inf, -jnp.inf, 0.0]])  # two live tokens, masked vocabulary
  np.testing.assert_allclose(token_entropy(peaked), [math.log(2)], rtol=1e-6)
  grad = jax.grad(lambda x: token_entropy(x).sum())(peaked)
  assert np.isfinite(np.asarray(grad)).all()
  probs = np.array([0.7, 0.2, 0.1])
  np.testing.assert_allclose(
    token_entropy(jnp.log(jnp.asarray(probs))), -(probs * np.log(probs)).sum(), rtol=1e-5
  )


# --- Configuration.


def test_loss_defaults():
  assert loss_config().to_dict() == dict(
    eps_low=0.2,
    eps_high=0.2,
    dual_clip_c=0.0,
    kl_coef=0.0,
    kl_estimator="k3",
    entropy_coef=0.0,
    tis_cap=0.0,
    aggregation="token_mean",
  )


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(aggregation="seq_sum"), r"'seq_sum'.*'token_mean'"),
    (dict(kl_estimator="k4"), r"'k4'.*'k3'"),
    (dict(dual_clip_c=0.5), "dual_clip_c"),
    (dict(kl_coef=0.1), "ref_logp"),
    (dict(tis_cap=2.0), "sampler_logp"),
    (dict(entropy_coef=0.1), "entropy"),
  ],
)
def test_bad_configurations_raise(overrides, message):
  logp = jnp.zeros((1, 2))
  with pytest.raises(ValueError, match=message):
    policy_loss(logp, logp, None, jnp.ones(1), jnp.ones((1, 2), bool), loss_cfg(**overrides))


def test_kl_penalty_and_aggregate_name_bad_values():
  with pytest.raises(ValueError, match="'k0'"):
    kl_penalty(jnp.zeros(1), jnp.zeros(1), "k0")
  with pytest.raises(ValueError, match="'tokens'"):
    aggregate(jnp.zeros((1, 1)), jnp.ones((1, 1), bool), "tokens", 1)


# --- Typed metrics: accumulation over micro-batches and the logged summary.

# Two completions of two tokens (a third, padded position) and one dropped row, with
# old log-prob log ½ everywhere; ρ = π_θ/π_old, s = π_old/π_sampler per token.
WORKED_RATIOS = [[2.0, 0.5], [0.7, 4.0], [1.0, 1.0]]
WORKED_SAMPLER_RATIOS = [[1.0, 3.0], [0.5, 1.0], [1.0, 1.0]]
WORKED_ENTROPY = [[0.1, 0.2], [0.3, 0.4], [0.0, 0.0]]
WORKED_ADVANTAGES = [1.0, -1.0, -1.0]
WORKED_MASK = [[True, True, False], [True, True, False], [False, False, False]]
WORKED_CFG = dict(dual_clip_c=3.0, tis_cap=2.0, kl_coef=0.1, kl_estimator="k1")
# By hand, over the 4 unmasked tokens (ε = 0.2, c = 3, C = 2, π_ref = π_old):
WORKED_SUMMARY = {
  "sampler_logp_gap_mean": (0 + math.log(3) + math.log(2) + 0) / 4,  # |log s|
  "tis_weight_mean": (1 + 2 + 0.5 + 1) / 4,  # min(s, C)
  "tis_capped_fraction": 1 / 4,  # s = 3 > C
  "kl_mean": math.log(2 * 0.5 * 0.7 * 4) / 4,  # k1 = log ρ
  "entropy_mean": (0.1 + 0.2 + 0.3 + 0.4) / 4,
  "ratio_below_fraction": 2 / 4,  # ρ = 0.5, 0.7 < 0.8
  "ratio_above_fraction": 2 / 4,  # ρ = 2, 4 > 1.2
  "clipped_low_fraction": 1 / 4,  # ρ = 0.7 with A < 0
  "clipped_high_fraction": 1 / 4,  # ρ = 2 with A > 0
  "dual_clipped_fraction": 1 / 4,  # ρ = 4 > c with A < 0
  "approx_kl_mean": ((2 + 0.5 + 0.7 + 4) - 4 - math.log(2.8)) / 4,  # ρ − 1 − log ρ
  "ratio_mean": (2 + 0.5 + 0.7 + 4) / 4,
  "ratio_min": 0.5,
  "ratio_max": 4.0,
  # w · −min(ρA, clip(ρ)A), capped at −cA for A < 0: 1·−1.2, 2·−0.5, 0.5·0.8, 1·min(4, 3).
  "pg_loss_mean": (-1.2 - 1.0 + 0.4 + 3.0) / 4,
  "token_count": 4.0,
  "seq_count": 2.0,
}
WORKED_TYPES = dict.fromkeys(WORKED_SUMMARY, Mean) | dict(
  ratio_min=Min, ratio_max=Max, token_count=Sum, seq_count=Sum
)


def worked_example_metrics(rows):
  """``policy_loss`` metrics of the rows ``rows`` of the worked example."""

  def pad(values, fill):  # a third, masked position with an extreme value
    return np.concatenate([np.asarray(values, np.float32)[rows], np.full((len(rows), 1), fill)], 1)

  old_logp = jnp.full((len(rows), 3), math.log(0.5))
  logp = old_logp + jnp.log(pad(WORKED_RATIOS, math.exp(60.0)))
  _, _, metrics = policy_loss(
    logp,
    old_logp,
    old_logp,
    jnp.asarray(WORKED_ADVANTAGES)[rows],
    jnp.asarray(WORKED_MASK)[rows],
    loss_cfg(**WORKED_CFG),
    sampler_logp=old_logp - jnp.log(pad(WORKED_SAMPLER_RATIOS, 1e-20)),
    entropy=jnp.asarray(pad(WORKED_ENTROPY, 1e3)),
  )
  return metrics


def assert_summaries_equal(got, expected):
  assert got.keys() == expected.keys()  # jit, scan and tree.map sort the keys
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)


def test_summary_of_a_worked_example():
  metrics = worked_example_metrics(np.arange(3))
  assert {key: type(metric) for key, metric in metrics.items()} == WORKED_TYPES
  assert all(metric.over == "token_count" for metric in metrics.values() if type(metric) is Mean)
  summary = summarize_metrics(metrics)
  assert summary.keys() == WORKED_SUMMARY.keys()
  for key, expected in WORKED_SUMMARY.items():
    assert float(summary[key]) == pytest.approx(expected, rel=1e-5), key


@pytest.mark.parametrize(
  "split",
  [
    [[0], [1, 2]],  # the min in one micro-batch, the max in the other
    [[2], [1], [0]],  # an empty micro-batch first: inf / −inf / 0 identities
    [[1, 0], [2]],
  ],
)
def test_combined_micro_batches_summarize_to_the_full_batch(split):
  full = summarize_metrics(worked_example_metrics(np.arange(3)))
  parts = [worked_example_metrics(np.asarray(rows)) for rows in split]
  combined = functools.reduce(combine_metrics, parts)
  assert {key: type(metric) for key, metric in combined.items()} == WORKED_TYPES
  assert list(combined) == list(parts[0])  # eager combining keeps the order
  assert_summaries_equal(summarize_metrics(combined), full)
  for key, expected in WORKED_SUMMARY.items():
    assert float(full[key]) == pytest.approx(expected, rel=1e-5), key


def test_metrics_are_a_scan_carry_and_index_like_arrays():
  # As in train.step: combine in a lax.scan over stacked micro-batches, then index updates
  # with tree.map and reduce them.
  parts = [worked_example_metrics(np.asarray([row])) for row in (2, 0, 1)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
  assert isinstance(stacked["ratio_min"], Min) and stacked["ratio_min"].value.shape == (3,)

  @jax.jit
  def scan_combine(stacked):
    first = jax.tree.map(lambda x: x[0], stacked)
    rest = jax.tree.map(lambda x: x[1:], stacked)
    totals, _ = jax.lax.scan(lambda c, m: (combine_metrics(c, m), None), first, rest)
    return totals, summarize_metrics(totals)

  totals, summary = scan_combine(stacked)
  assert jax.tree.structure(totals) == jax.tree.structure(parts[0])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(totals))
  full = summarize_metrics(worked_example_metrics(np.arange(3)))
  assert_summaries_equal(summary, full)
  indexed = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(3)]
  assert_summaries_equal(summarize_metrics(functools.reduce(combine_metrics, indexed)), full)


def test_means_divide_by_their_named_denominator():
  metrics = {
    "token_count": Sum(jnp.float32(8.0)),
    "seq_count": Sum(jnp.float32(2.0)),
    "reward_mean": Mean(jnp.float32(3.0), over="seq_count"),
    "empty_mean": Mean(jnp.float32(0.0), over="empty_count"),
    "empty_count": Sum(jnp.float32(0.0)),  # an empty batch reports 0, not 0/0
    "x_mean": Mean(jnp.float32(4.0)),
  }
  combined = combine_metrics(metrics, metrics)
  assert combined["reward_mean"].over == "seq_count"
  assert_summaries_equal(
    summarize_metrics(combined),
    dict(token_count=16.0, seq_count=4.0, reward_mean=1.5, empty_mean=0.0, empty_count=0.0,
         x_mean=0.5),
  )


def test_combine_metrics_rejects_mismatched_metrics():
  count = Sum(jnp.float32(1.0))
  with pytest.raises(ValueError, match="kl_mean"):
    combine_metrics({"token_count": count}, {"token_count": count, "kl_mean": Mean(0.0)})
  with pytest.raises(TypeError, match="Min.*Max"):
    combine_metrics({"ratio_min": Min(1.0)}, {"ratio_min": Max(1.0)})
  with pytest.raises(ValueError, match="'token_count'.*'seq_count'"):
    combine_metrics({"x": Mean(1.0)}, {"x": Mean(1.0, over="seq_count")})
  with pytest.raises(TypeError, match="Metric"):
    combine_metrics({"token_count": 1.0}, {"token_count": 1.0})
