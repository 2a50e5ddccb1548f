"""The clipped policy loss, its regularisers, aggregation, and token-level helpers.

``policy_loss`` returns ``(loss_sum, denominator, metrics)``. The loss of a batch is
``loss_sum / denominator``, and the pair is defined so that micro-batches accumulate exactly:

    loss = Σ_k loss_sum_k / Σ_k denominator_k,   grad = Σ_k ∇loss_sum_k / Σ_k denominator_k

gives the full-batch loss and gradient for every aggregation mode, because each denominator
is a count that does not depend on the parameters, and each mode's numerator is a sum over
sequences:

| mode                      | loss_sum                      | denominator                 |
|---------------------------|-------------------------------|-----------------------------|
| token_mean                | Σ_{i,t} ℓ                     | Σ_i |o_i|  (unmasked tokens) |
| seq_mean_token_mean       | Σ_i (Σ_t ℓ / |o_i|)           | N                           |
| seq_mean_token_sum_norm   | Σ_{i,t} ℓ                     | N · L_max                   |

N counts the sequences with at least one unmasked token, so dropped completions (PSR/NSR,
overlong filtering) and padding rows are in neither the numerator nor the denominator.

Metrics are typed: ``policy_loss`` returns a dict from each logged name to a ``Metric`` leaf
that says how it accumulates over micro-batches and how it is reported:

| type                | combine (micro-batches) | summarize                                      |
|---------------------|-------------------------|------------------------------------------------|
| ``Sum(value)``      | add                     | the total (``token_count``, ``seq_count``)     |
| ``Mean(total, over)`` | add                   | ``total / max(metrics[over], 1)``, ``over`` a  |
|                     |                         | ``Sum`` (``token_count`` unless told)          |
| ``Min(value)``      | minimum                 | the minimum                                    |
| ``Max(value)``      | maximum                 | the maximum                                    |

A fraction is a ``Mean`` of 0/1 flags. ``combine_metrics`` maps each leaf's ``combine`` over
two micro-batches' dicts, and ``summarize_metrics`` finalises each leaf to a scalar under the
same name. The leaves hold plain arrays, so the dicts are pytrees that pass through ``jit``,
``scan`` carries and ``jax.tree.map``.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

Config = ml_collections.ConfigDict

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
TOKEN_COUNT = "token_count"


class Metric(struct.PyTreeNode):
  """A policy-loss metric: how it accumulates over micro-batches and how it is reported."""

  def combine(self, other: "Metric") -> "Metric":
    """This metric over two disjoint micro-batches, ``self``'s and ``other``'s."""
    raise NotImplementedError

  def finalize(self, metrics: Mapping[str, "Metric"]) -> jax.Array:
    """The reported scalar; ``metrics`` holds the metrics it may be normalised by."""
    raise NotImplementedError

  def _check_kind(self, other: "Metric") -> None:
    if type(other) is not type(self):
      raise TypeError(f"Cannot combine {type(self).__name__} with {type(other).__name__}")


class Sum(Metric):
  """A total (e.g. of tokens): added over micro-batches, reported as is.

  Attributes:
    value: the total.
  """

  value: jax.Array

  def combine(self, other: "Sum") -> "Sum":
    self._check_kind(other)
    return Sum(self.value + other.value)

  def finalize(self, metrics: Mapping[str, Metric]) -> jax.Array:
    del metrics
    return self.value


class Mean(Metric):
  """An average: the total is added over micro-batches, then divided by another metric.

  Attributes:
    total: the sum of the averaged quantity (of 0/1 flags for a fraction).
    over: the name of the ``Sum`` metric to divide by, clamped to at least 1 so an empty
      batch reports 0; ``token_count`` (the unmasked tokens) unless told.
  """

  total: jax.Array
  over: str = struct.field(pytree_node=False, default=TOKEN_COUNT)

  def combine(self, other: "Mean") -> "Mean":
    self._check_kind(other)
    if other.over != self.over:
      raise ValueError(f"Cannot combine means over {self.over!r} and {other.over!r}")
    return self.replace(total=self.total + other.total)

  def finalize(self, metrics: Mapping[str, Metric]) -> jax.Array:
    return self.total / jnp.maximum(metrics[self.over].finalize(metrics), 1.0)


class Min(Metric):
  """A minimum over tokens (``+inf`` when there are none).

  Attributes:
    value: the minimum.
  """

  value: jax.Array

  def combine(self, other: "Min") -> "Min":
    self._check_kind(other)
    return Min(jnp.minimum(self.value, other.value))

  def finalize(self, metrics: Mapping[str, Metric]) -> jax.Array:
    del metrics
    return self.value


class Max(Metric):
  """A maximum over tokens (``-inf`` when there are none).

  Attributes:
    value: the maximum.
  """

  value: jax.Array

  def combine(self, other: "Max") -> "Max":
    self._check_kind(other)
    return Max(jnp.maximum(self.value, other.value))

  def finalize(self, metrics: Mapping[str, Metric]) -> jax.Array:
    del metrics
    return self.value


Metrics = dict[str, Metric]


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``log softmax(logits)[target]``, in float32.

  Args:
    logits: ``[..., V]`` (any float dtype).
    targets: ``[...]`` int token ids.
  Returns:
    ``[...]`` float32 log-probabilities.
  """
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def token_logprobs_and_entropy(logits: jax.Array, targets: jax.Array
                               ) -> tuple[jax.Array, jax.Array]:
  """``token_logprobs`` and ``token_entropy`` from one pass over the vocabulary: one
  log-sum-exp serves both (``H = lse − Σ_v p_v z_v``), where the two functions apart normalise
  the ``[..., V]`` logits twice."""
  logits = logits.astype(jnp.float32)
  # Shifted by the row max: H = lse − Σ p z then cancels no large offset.
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  probs = jnp.exp(logits - lse[..., None])
  # 0 · (−inf) = 0 for masked logits, substituted inside the product (finite gradient).
  expected = jnp.sum(probs * jnp.where(probs > 0, logits, 0.0), axis=-1)
  return picked - lse, lse - expected


def token_entropy(logits: jax.Array) -> jax.Array:
  """``H = −Σ_v p_v log p_v`` of ``softmax(logits)``, in float32, ``[..., V] -> [...]``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.exp(logp)
  # 0 · log 0 = 0 for -inf logits; substituting 0 inside (not outside) the product also
  # keeps the gradient finite there.
  return -jnp.sum(probs * jnp.where(probs > 0, logp, 0.0), axis=-1)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(π_θ ‖ π_ref) from samples of π_θ.

  k1 = log π_θ − log π_ref
  k2 = ½ (log π_θ − log π_ref)²
  k3 = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1   (≥ 0, unbiased, low variance)
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"Unknown KL estimator {estimator!r}; valid estimators: {list(KL_ESTIMATORS)}")
  log_ratio = logp - ref_logp
  if estimator == "k1":
    return log_ratio
  if estimator == "k2":
    return 0.5 * log_ratio**2
  # expm1 keeps k3 accurate when the policies are close and exp(d) − 1 would cancel.
  return jnp.expm1(-log_ratio) + log_ratio


def aggregate(
  token_loss: jax.Array, mask: jax.Array, mode: str, max_len: int
) -> tuple[jax.Array, jax.Array]:
  """``[batch, seq]`` per-token losses -> ``(loss_sum, denominator)`` (see the module table)."""
  if mode not in AGGREGATIONS:
    raise ValueError(f"Unknown loss aggregation {mode!r}; valid modes: {list(AGGREGATIONS)}")
  token_loss = jnp.where(mask, token_loss, 0.0)
  lengths = jnp.sum(mask, axis=-1, dtype=jnp.float32)
  num_seqs = jnp.sum(lengths > 0, dtype=jnp.float32)
  if mode == "token_mean":
    return jnp.sum(token_loss), jnp.sum(lengths)
  if mode == "seq_mean_token_mean":
    return jnp.sum(jnp.sum(token_loss, axis=-1) / jnp.maximum(lengths, 1.0)), num_seqs
  return jnp.sum(token_loss), num_seqs * max_len


def _check_config(cfg: Config) -> None:
  if cfg.aggregation not in AGGREGATIONS:
    raise ValueError(
      f"Unknown loss aggregation {cfg.aggregation!r}; valid modes: {list(AGGREGATIONS)}"
    )
  if cfg.kl_estimator not in KL_ESTIMATORS:
    raise ValueError(
      f"Unknown KL estimator {cfg.kl_estimator!r}; valid estimators: {list(KL_ESTIMATORS)}"
    )
  if cfg.dual_clip_c and cfg.dual_clip_c <= 1.0:
    raise ValueError(f"dual_clip_c must be 0 (off) or > 1, got {cfg.dual_clip_c}")


def policy_loss(
  logp: jax.Array,
  old_logp: jax.Array,
  ref_logp: jax.Array | None,
  advantages: jax.Array,
  mask: jax.Array,
  cfg: Config,
  *,
  sampler_logp: jax.Array | None = None,
  entropy: jax.Array | None = None,
  max_len: int | None = None,
) -> tuple[jax.Array, jax.Array, Metrics]:
  """Clipped surrogate + KL + entropy bonus, aggregated as ``(loss_sum, denominator)``.

  Per token, with ``ρ = exp(logp − old_logp)``:

      ℓ = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)
      ℓ = min(ℓ, −c·A)                     for A < 0, if dual_clip_c = c > 0
      ℓ = w·ℓ,  w = sg(min(exp(old_logp − sampler_logp), C))     if tis_cap = C > 0
      ℓ = ℓ + β·KL_k(π_θ ‖ π_ref) − η·H                         if β, η > 0

  The TIS weight multiplies the policy-gradient term only: it corrects for the sampler's
  numerics differing from the trainer's, which the on-policy regularisers do not estimate.

  Args:
    logp: ``[batch, seq]`` log-probs of the completion tokens under the current policy.
    old_logp: ``[batch, seq]`` the same under the policy that produced the batch (trainer
      numerics); treated as a constant.
    ref_logp: ``[batch, seq]`` under the reference policy, or None when ``kl_coef == 0``.
    advantages: ``[batch]``, broadcast over the completion's tokens.
    mask: ``[batch, seq]`` bool, True for completion tokens that enter the loss; it must
      already exclude completions the estimator dropped (``token_mask & loss_mask[:, None]``).
    cfg: the ``loss`` config (``defaults.loss_config()``).
    sampler_logp: ``[batch, seq]`` log-probs reported by the sampler; needed by TIS, and
      gives the sampler-vs-trainer gap metric when present.
    entropy: ``[batch, seq]`` per-token entropy of π_θ (``token_entropy``), differentiable;
      needed when ``entropy_coef > 0``, reported when present.
    max_len: ``L_max`` for ``seq_mean_token_sum_norm``; defaults to ``seq``. It must be the
      same for every micro-batch.
  Returns:
    ``(loss_sum, denominator, metrics)``, metrics a dict of ``Metric`` leaves keyed by the
    name they are logged under (see the module docstring).
  """
  _check_config(cfg)
  if cfg.kl_coef and ref_logp is None:
    raise ValueError("kl_coef > 0 needs ref_logp")
  if cfg.tis_cap and sampler_logp is None:
    raise ValueError("tis_cap > 0 needs sampler_logp")
  if cfg.entropy_coef and entropy is None:
    raise ValueError("entropy_coef > 0 needs the per-token entropy")
  mask = jnp.asarray(mask, bool)
  logp, old_logp = logp.astype(jnp.float32), jax.lax.stop_gradient(old_logp).astype(jnp.float32)
  adv = jnp.asarray(advantages, jnp.float32)[:, None]

  # Masked positions (padding) may hold arbitrary log-probs; zeroing their log-ratio
  # keeps exp() finite there, so no inf · 0 = NaN reaches the sums or the gradient.
  log_ratio = jnp.where(mask, logp - old_logp, 0.0)
  ratio = jnp.exp(log_ratio)
  low, high = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
  pg_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, low, high) * adv)
  if cfg.dual_clip_c:
    pg_loss = jnp.where(adv < 0, jnp.minimum(pg_loss, -cfg.dual_clip_c * adv), pg_loss)

  masked_sum = lambda x: jnp.sum(jnp.where(mask, x, 0.0))  # noqa: E731
  metrics = {}
  if sampler_logp is not None:
    sampler_gap = jnp.where(mask, old_logp - sampler_logp.astype(jnp.float32), 0.0)
    metrics["sampler_logp_gap_mean"] = Mean(jnp.sum(jnp.abs(sampler_gap)))
  if cfg.tis_cap:
    tis_weight = jax.lax.stop_gradient(jnp.minimum(jnp.exp(sampler_gap), cfg.tis_cap))
    pg_loss = tis_weight * pg_loss
    metrics["tis_weight_mean"] = Mean(masked_sum(tis_weight))
    metrics["tis_capped_fraction"] = Mean(
      jnp.sum(mask & (jnp.exp(sampler_gap) > cfg.tis_cap), dtype=jnp.float32)
    )

  token_loss = pg_loss
  if cfg.kl_coef:
    # Masked like the ratio: padding log-probs must not overflow exp() in k3.
    kl = kl_penalty(jnp.where(mask, logp, 0.0), jnp.where(mask, ref_logp, 0.0), cfg.kl_estimator)
    token_loss = token_loss + cfg.kl_coef * kl
    metrics["kl_mean"] = Mean(masked_sum(kl))
  if entropy is not None:
    entropy = entropy.astype(jnp.float32)
    metrics["entropy_mean"] = Mean(masked_sum(entropy))
    if cfg.entropy_coef:
      token_loss = token_loss - cfg.entropy_coef * entropy

  max_len = logp.shape[-1] if max_len is None else max_len
  loss_sum, denominator = aggregate(token_loss, mask, cfg.aggregation, max_len)
  metrics.update(_ratio_metrics(ratio, log_ratio, adv, mask, cfg))
  metrics["pg_loss_mean"] = Mean(masked_sum(pg_loss))
  metrics[TOKEN_COUNT] = Sum(jnp.sum(mask, dtype=jnp.float32))
  metrics["seq_count"] = Sum(jnp.sum(jnp.any(mask, axis=-1), dtype=jnp.float32))
  return loss_sum, denominator, metrics


def _ratio_metrics(
  ratio: jax.Array, log_ratio: jax.Array, adv: jax.Array, mask: jax.Array, cfg: Config
) -> Metrics:
  """Ratio and clipping diagnostics (no gradient); the fractions are over unmasked tokens.

  * ``ratio_below_fraction`` / ``ratio_above_fraction``: ρ < 1 − ε_low / ρ > 1 + ε_high.
  * ``clipped_low_fraction``: A < 0 and ρ < 1 − ε_low; ``clipped_high_fraction``: A > 0 and
    ρ > 1 + ε_high. Exactly the tokens where the clipped branch wins the min, so their
    gradient is zero.
  * ``dual_clipped_fraction``: A < 0 and ρ > c, where the dual clip caps the loss.
  * ``approx_kl_mean``: k3 estimate of KL(π_old ‖ π_θ) from the batch, ρ − 1 − log ρ.
  """
  ratio, log_ratio = jax.lax.stop_gradient(ratio), jax.lax.stop_gradient(log_ratio)
  below = mask & (ratio < 1.0 - cfg.eps_low)
  above = mask & (ratio > 1.0 + cfg.eps_high)
  dual = mask & (adv < 0) & (ratio > cfg.dual_clip_c) if cfg.dual_clip_c else jnp.zeros_like(mask)
  fraction = lambda flags: Mean(jnp.sum(flags, dtype=jnp.float32))  # noqa: E731
  return {
    "ratio_below_fraction": fraction(below),
    "ratio_above_fraction": fraction(above),
    "clipped_low_fraction": fraction(below & (adv < 0)),
    "clipped_high_fraction": fraction(above & (adv > 0)),
    "dual_clipped_fraction": fraction(dual),
    "approx_kl_mean": Mean(jnp.sum(jnp.where(mask, jnp.expm1(log_ratio) - log_ratio, 0.0))),
    "ratio_mean": Mean(jnp.sum(jnp.where(mask, ratio, 0.0))),
    "ratio_min": Min(jnp.min(jnp.where(mask, ratio, jnp.inf))),
    "ratio_max": Max(jnp.max(jnp.where(mask, ratio, -jnp.inf))),
  }


def _is_metric(x) -> bool:
  return isinstance(x, Metric)


def combine_metrics(a: Metrics, b: Metrics) -> Metrics:
  """Accumulates two micro-batches' ``policy_loss`` metrics, each leaf by its ``combine``.

  The result has the structure and dtypes of ``a``, so it can be a ``lax.scan`` carry.

  Raises:
    ValueError: if the two hold different metric names.
    TypeError: if a name holds different metric types, or a leaf is not a ``Metric``.
  """
  if a.keys() != b.keys():
    raise ValueError(f"Metric keys differ: {sorted(a.keys() ^ b.keys())}")

  def combine(x, y):
    if not _is_metric(x):
      raise TypeError(f"Expected Metric leaves, got {type(x).__name__}")
    return x.combine(y)

  combined = jax.tree.map(combine, a, b, is_leaf=_is_metric)
  return {key: combined[key] for key in a}  # tree.map sorts the keys; keep ``a``'s order


def summarize_metrics(metrics: Metrics) -> dict[str, jax.Array]:
  """Accumulated metrics -> one scalar per name: totals, means, fractions, min / max."""
  return {key: metric.finalize(metrics) for key, metric in metrics.items()}
