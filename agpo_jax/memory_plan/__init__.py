"""Per-device memory plan of an RL run: what each accelerator holds, before anything starts.

    python -m agpo_jax.memory_plan --preset qwen2.5-math-7b --devices v4-64 \
        --mesh fsdp=-1 --mesh fsdp=-1,tensor=4

`plan_memory` counts, per device, for a model config, a mesh (axis sizes; it may be larger than
this machine) and the run's shapes:

  resident  params, AdamW state (and reference params when the KL term is on): the loop keeps
            them on the devices through both phases below.
  train     gradients, the rollout batch, activations of one micro-batch's forward + backward,
            FSDP's gathered weights.
  sample    the KV cache and the decode / prefill working sets.

Train and sample are separate jitted calls that never overlap, so the peak is
`resident + max(train phase, sample phase)`.

What is exact and what is estimated:

  * params, optimizer state, gradients, the rollout batch and the KV cache are exact byte counts
    of arrays the code allocates, derived from `rules.param_specs` (the same rule table the
    run shards with) and the shapes the sampler / train step use (tested against real shards
    and a real `KVCache`).
  * activations, working sets and FSDP gathers are estimates: which intermediates XLA keeps is
    its choice. The per-layer terms were read off XLA's buffer assignment for this model's
    train step and sampler (XLA:CPU, jax 0.10) and the totals are tested against
    `memory_analysis()` of compiled steps, on one device and on 8 fake devices under data
    parallelism and pure FSDP (the step pins hidden states to rows over data x fsdp, see
    `transformer.activation_sharding`, so both split rows alike). TPU and GPU compilers fuse
    more, so they usually keep less; treat the estimates as upper-ish, not exact. `estimates`
    describes the measured numbers that matter.

Modules, one job each:

  estimates  byte counts of one device's shards, activations, KV cache and working sets.
  plan       `MemoryPlan` (the result, its table), `plan_memory` and `plan_from_config`.
  fit        `check_fits` / `PlanDoesNotFit`, `suggest` and the rollout-chunk search.
  devices    the accelerator catalogue (`DEVICES`, `parse_devices`) and `parse_mesh`.
  cli        the command line above (`python -m agpo_jax.memory_plan --help`).
"""

from agpo_jax.memory_plan.devices import (DEVICES, TENSORCORES_PER_CHIP, DeviceSpec,
                                          parse_devices, parse_mesh)
from agpo_jax.memory_plan.estimates import (DECODE_LOGIT_COPIES, TRAIN_LOGIT_COPIES, GiB,
                                            decode_extra_bytes, kv_cache_bytes,
                                            layer_residuals, prefill_working_set,
                                            shard_elements, train_activations,
                                            train_batch_bytes)
from agpo_jax.memory_plan.fit import (PlanDoesNotFit, check_fits, min_rollout_chunks,
                                      min_rollout_chunks_from_config, rollout_chunk_options,
                                      suggest)
from agpo_jax.memory_plan.plan import MemoryPlan, plan_from_config, plan_memory

__all__ = [
    "DECODE_LOGIT_COPIES", "DEVICES", "DeviceSpec", "GiB", "MemoryPlan", "PlanDoesNotFit",
    "TENSORCORES_PER_CHIP", "TRAIN_LOGIT_COPIES", "check_fits", "decode_extra_bytes",
    "kv_cache_bytes", "layer_residuals", "min_rollout_chunks",
    "min_rollout_chunks_from_config", "parse_devices", "parse_mesh", "plan_from_config",
    "plan_memory", "prefill_working_set", "rollout_chunk_options", "shard_elements", "suggest",
    "train_activations", "train_batch_bytes",
]
