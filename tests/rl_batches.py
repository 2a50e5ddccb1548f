"""A random RL batch for train-step tests (shared by test_train and the sharded test script)."""

import numpy as np

from agpo_jax.models import transformer
from agpo_jax.train import rl_step


def random_rl_batch(rows=8, prompt=4, completion=6, seed=0) -> rl_step.RLBatch:
  """Left-padded prompts, completions of random lengths, random advantages and log-probs."""
  rng = np.random.default_rng(seed)
  prompt_mask = np.ones((rows, prompt), bool)
  prompt_mask[::3, :2] = False  # some left padding
  lengths = rng.integers(1, completion + 1, rows)
  completion_mask = np.arange(completion)[None, :] < lengths[:, None]
  input_mask = np.concatenate([prompt_mask, completion_mask], 1)
  tokens = rng.integers(3, 16, input_mask.shape).astype(np.int32) * input_mask
  return rl_step.RLBatch(
      tokens=tokens, input_mask=input_mask,
      positions=np.asarray(transformer.positions_from_mask(input_mask)),
      completion_mask=completion_mask, advantages=rng.normal(size=rows).astype(np.float32),
      sampler_logp=np.log(rng.uniform(0.05, 1, (rows, completion))).astype(np.float32))
