"""The embedded testbed: a tiny model on a synthetic verifiable task, runnable on 2 CPU cores.

    python -m agpo_jax.main --config=configs/default.py --workdir=runs/default

runs the whole method: SFT warm start on the task's demonstrations (cached in the workdir),
pass@k of that base model on held-out problems, RL with GRPO and with AGPO from that base
(`config.arms`), pass@k of each trained model, and one table: base, GRPO, AGPO, and each
against the base problem by problem (results.md, results.json, passk.png in the workdir). Every block and its defaults: `agpo_jax/defaults.py`. Any field can be
overridden for ablations, e.g.

    --config.arms=grpo,nsr,agpo --config.seed=1 --config.train.steps=300
    --config.algo.name=grpo     (one algorithm alone; --config.algo.agpo.r_neg=-0.5 ...)
    --config.algo.preset=dapo        (a named recipe: see agpo_jax/algorithms/defaults.py)
"""

from agpo_jax import defaults


def get_config():
  config = defaults.base_config()
  config.mode = "pipeline"  # pipeline | sft | rl | evaluate | sample

  # Task: a*b= for a, b in [10, 99], answered with the product's 4 digits reversed, graded
  # by exact match; a character tokenizer over its alphabet and the 2-layer testbed model.
  config.task.name = "multiplication"
  config.tokenizer.kind = "char"
  config.tokenizer.alphabet = "0123456789*="
  config.model.preset = "testbed"
  config.verifier.kind = "exact"

  # Warm start: 1,300 steps with label smoothing 0.1 (targets 0.9 on the demonstration, 0.1
  # spread over the vocabulary), so that the base is in the regime RL works in on real models:
  # its most likely answer is far better than a sample (held-out pass@1 33.9%, maj@64 67.8% at
  # temperature 1), and GRPO raises held-out pass@1 (experiments/README.md).
  config.sft.steps = 1300
  config.sft.label_smoothing = 0.1

  # RL: 64 prompts x 8 samples per step at temperature 1, one AdamW update per batch.
  config.sampling.num_samples = 8
  config.sampling.temperature = 1.0
  config.sampling.max_new_tokens = 5  # 4 digits + end of sequence
  config.train.steps = 150
  config.train.batch_prompts = 64
  config.train.log_every = 10
  config.optim.lr = 3e-4
  config.algo.name = "agpo"
  config.arms = "grpo,agpo"  # the pipeline trains and compares both from one base

  # pass@k on the 1,000 held-out problems, 256 samples each, at the training temperature.
  config.eval.n = 256
  config.eval.temperature = 1.0
  config.eval.top_p = 1.0
  config.eval.batch_prompts = 32
  return config
