"""AGPO on Qwen2.5-Math-1.5B, the reference protocol, on one GPU host with 8 x H100 80 GB.

    python -m agpo_jax.main --config=configs/agpo_qwen2p5_math_1p5b.py \
        --config.model.checkpoint=/path/to/Qwen2.5-Math-1.5B --workdir=runs/agpo-1.5b

Protocol: `agpo_jax.defaults.reference_protocol_config`. Mesh and memory, from
`python -m agpo_jax.memory_plan --preset qwen2.5-math-1.5b --devices 8xh100-80gb`: fsdp=8,
remat on, 256 micro-batches of one row per device, rollouts in 2 generate calls: peak 66.0 GiB
of 80 (JAX preallocates 75% of GPU memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says more).
GRPO / NSR / W-REINFORCE baselines: add --config.algo.preset=grpo (nsr, w_reinforce).
"""

from agpo_jax import defaults


def get_config():
  config = defaults.reference_protocol_config("qwen2.5-math-1.5b")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
  config.model.remat = True
  config.train.num_microbatches = 256
  config.sampling.rollout_chunks = 2
  config.distributed.initialize = False  # one host
  return config
