"""Every constant of the algorithms (docs/ALGORITHMS.md), with its default.

Project configs attach these as children: ``config.algo = algo_config()``,
``config.loss = loss_config()``, ``config.reward = reward_config()``; command-line overrides
then drive ablations (``--config.algo.name=grpo --config.loss.eps_high=0.28``).

Named recipes (DAPO, Dr. GRPO, ...) are combinations of these fields; ``algorithm_preset``
returns them as dotted overrides and ``apply_preset`` writes them into a config.
"""

import types
from typing import Any

import ml_collections


def algo_config() -> ml_collections.ConfigDict:
  """The advantage estimator and its constants (read by ``advantages.compute_advantages``)."""
  return ml_collections.ConfigDict(
    dict(
      # One of advantages.ESTIMATORS: grpo, dr_grpo, rloo, reinforce_pp,
      # reinforce_pp_baseline, psr, nsr, w_reinforce, a_grae, agpo.
      name="agpo",
      # A named recipe (``algorithm_preset``: dapo, grpo, dr_grpo, ...) written over the
      # algo / loss / reward fields at start-up; fields set on the command line win. "" = none.
      preset="",
      # GRPO's ε in (r − μ)/(σ₁ + ε); also REINFORCE++'s whitening ε and A-GRAE's ε.
      eps=1e-6,
      # A completion is "correct" when its reward is >= this. 0.5 is the sign of the
      # ±1-rescaled reward r = 2c − 1, so binary rewards are unaffected and a graded
      # reward (or a correct answer with a mild overlong penalty) stays on its side.
      correct_threshold=0.5,
      agpo=dict(
        # reference | nsr_plus_group | weighted_rarity (see advantages.agpo).
        variant="reference",
        delta=0.1,  # δ in sqrt(σ² + δ²): bounds positives when σ → 0.
        r_neg=-1.0,  # R_neg: extra push-down for every incorrect completion.
        lambda_pos=1.0,  # λ_pos: scale of the positive advantages.
        # weighted_rarity only: cap on sqrt((1 − p)/p); binds only for p < 1/101,
        # i.e. groups larger than 100 with a single correct answer.
        max_pos=10.0,
        # Drop from the loss every generated token that all completions of its group share at
        # that position (token_mass.group_shared_tokens): the negative-dominant push then only
        # lands where the group's completions differ. False = the reference loss.
        mask_shared_tokens=False,
      ),
      w_reinforce=dict(lambda_pos=0.1),  # λ: weight of correct completions.
      a_grae=dict(alpha=1.0),  # α in min(1, P̄/α), the positive-advantage ramp.
    )
  )


def loss_config() -> ml_collections.ConfigDict:
  """The policy loss (read by ``losses.policy_loss``)."""
  return ml_collections.ConfigDict(
    dict(
      eps_low=0.2,  # ratio clipped below at 1 − eps_low
      eps_high=0.2,  # ratio clipped above at 1 + eps_high (DAPO: 0.28)
      dual_clip_c=0.0,  # 0 = off; else c > 1 caps the loss of A < 0 tokens at −c·A
      kl_coef=0.0,  # β; 0 = no reference model needed
      kl_estimator="k3",  # k1 | k2 | k3
      entropy_coef=0.0,  # η; the reference protocol uses 1e-4
      tis_cap=0.0,  # C for truncated importance sampling; 0 = off
      aggregation="token_mean",  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    )
  )


def reward_config() -> ml_collections.ConfigDict:
  """Reward-side options (read by ``reward_shaping``)."""
  return ml_collections.ConfigDict(
    dict(
      # DAPO dynamic sampling: keep only groups whose rewards differ. Off by default:
      # AGPO's negative signal lives in the all-wrong groups this would drop.
      dynamic_sampling=False,
      # Rollout batches the loop may draw to fill one training batch before it gives up
      # and trains on the groups it has (DAPO's max_num_gen_batches).
      dynamic_sampling_max_batches=10,
      overlong_penalty=False,  # DAPO soft overlong punishment, added to the reward
      overlong_cache_len=512,  # L_cache; must satisfy 0 < L_cache <= L_max
      overlong_filter=False,  # mask truncated completions out of the loss
    )
  )


# Recipes from docs/ALGORITHMS.md, as dotted overrides of a config with algo/loss/reward
# children. Every estimator has a preset (its name plus the aggregation the table lists),
# and DAPO, which is GRPO advantages plus loss and reward options, exists only as a preset.
# Full DAPO also uses reward.overlong_penalty=True; set it with an L_cache suited to the
# run's maximum length.
_PRESETS = types.MappingProxyType(
  {
    "grpo": {"algo.name": "grpo", "loss.aggregation": "seq_mean_token_mean"},
    "dr_grpo": {"algo.name": "dr_grpo", "loss.aggregation": "seq_mean_token_sum_norm"},
    "dapo": {
      "algo.name": "grpo",
      "loss.eps_high": 0.28,
      "loss.aggregation": "token_mean",
      "reward.dynamic_sampling": True,
    },
    **{
      name: {"algo.name": name, "loss.aggregation": "token_mean"}
      for name in (
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "psr",
        "nsr",
        "w_reinforce",
        "a_grae",
        "agpo",
      )
    },
  }
)


def algorithm_preset(name: str) -> dict[str, Any]:
  """Dotted config overrides for a named recipe, e.g. ``{'algo.name': 'grpo', ...}``."""
  if name not in _PRESETS:
    raise ValueError(f"Unknown algorithm preset {name!r}; valid presets: {sorted(_PRESETS)}")
  return dict(_PRESETS[name])


def apply_preset(config: ml_collections.ConfigDict, name: str,
                 keep: Any = ()) -> ml_collections.ConfigDict:
  """Writes ``algorithm_preset(name)`` into ``config`` (which has algo/loss/reward children),
  except the dotted keys in ``keep`` (those the user set explicitly)."""
  for dotted, value in algorithm_preset(name).items():
    if dotted in keep:
      continue
    section, field = dotted.split(".")
    setattr(config[section], field, value)
  return config
