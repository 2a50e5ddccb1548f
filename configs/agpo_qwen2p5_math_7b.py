"""AGPO on Qwen2.5-Math-7B, the reference protocol, on a TPU v5p-32 slice (16 chips, 95 GiB).

    ./launch_tpu.sh all --name agpo-7b --zone us-east5-a --accelerator v5p-32 \
        --config configs/agpo_qwen2p5_math_7b.py --workdir gs://BUCKET/runs/agpo-7b \
        -- --config.model.checkpoint=/path/to/Qwen2.5-Math-7B

Protocol: `agpo_jax.defaults.reference_protocol_config`. Mesh and memory, from
`python -m agpo_jax.memory_plan --preset qwen2.5-math-7b --devices v5p-32`: fsdp=8 x tensor=2,
remat off, 256 micro-batches of one row per device, rollouts in 2 generate calls: peak 74.0 GiB
of 95. GRPO / NSR / W-REINFORCE baselines: add --config.algo.preset=grpo (nsr, w_reinforce).
"""

from agpo_jax import defaults


def get_config():
  config = defaults.reference_protocol_config("qwen2.5-math-7b")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 2
  config.model.remat = False
  config.train.num_microbatches = 256
  config.sampling.rollout_chunks = 2
  return config
