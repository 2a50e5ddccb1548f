"""The embedded testbed: a tiny model on a synthetic verifiable task, runnable on 2 CPU cores.

    python -m agpo_jax.main --config=configs/default.py --workdir=runs/default

runs the whole method: SFT warm start on the task's demonstrations (cached in the workdir),
pass@k of that base model on held-out problems, RL with AGPO, pass@k of the trained model, and
a base-vs-trained table. Any field can be overridden for ablations, e.g.

    --config.algo.name=grpo --config.seed=1 --config.train.steps=300
"""

from ml_collections import config_dict

from agpo_jax import parallel, verifiers
from agpo_jax.algorithms import algo_config, loss_config, reward_config
from agpo_jax.evaluation.evaluate import eval_config
from agpo_jax.models.config import model_config
from agpo_jax.sampling import sampling_config
from agpo_jax.tasks import testbed_config
from agpo_jax.tokenizers import tokenizer_config
from agpo_jax.train.sft import sft_config
from agpo_jax.train.step import optim_config, rl_config


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.mode = "pipeline"  # pipeline | sft | rl | evaluate | sample
  config.seed = 0
  # rbg compiles several times faster than threefry on CPU and is a sound generator; set
  # "threefry2x32" for bit-identical random streams under any sharding.
  config.prng_impl = "rbg"

  # Task: a*b= for a, b in [10, 99], answered with the product's 4 digits reversed.
  config.task = testbed_config()
  config.tokenizer = tokenizer_config()
  config.tokenizer.kind = "char"
  config.tokenizer.alphabet = "0123456789*="
  config.model = model_config("testbed")
  config.verifier = verifiers.verifier_config()
  config.verifier.kind = "exact"

  # Warm start: creates the base model RL starts from.
  config.sft = sft_config()

  # RL: 64 prompts x 8 samples per step at temperature 1, one AdamW update per batch.
  config.sampling = sampling_config()
  config.sampling.num_samples = 8
  config.sampling.temperature = 1.0
  config.sampling.max_new_tokens = 5  # 4 digits + end of sequence
  config.train = rl_config()
  config.train.steps = 150
  config.train.batch_prompts = 64
  config.train.log_every = 10
  config.optim = optim_config(lr=3e-4)
  config.algo = algo_config()  # name = "agpo"
  config.loss = loss_config()
  config.reward = reward_config()

  # pass@k on the 1,000 held-out problems, 256 samples each, at the training temperature.
  config.eval = eval_config()
  config.eval.n = 256
  config.eval.temperature = 1.0
  config.eval.top_p = 1.0
  config.eval.batch_prompts = 32

  # Devices: a ('data', 'fsdp', 'tensor') mesh over every device of every process (-1: the
  # rest), and multi-host start-up (see parallel.distributed_config and launch_tpu.sh).
  config.mesh = parallel.mesh_config()
  config.distributed = parallel.distributed_config()
  # The per-device memory plan is printed at start-up, and a run that cannot fit in the
  # devices' memory is refused (check=False: print only). device_gib=0 asks the runtime (GPU,
  # TPU; the CPU reports none, so nothing is checked there); > 0 declares it.
  config.memory = config_dict.ConfigDict(dict(check=True, device_gib=0.0))

  # mode=sample: draw completions for these prompts and report decode throughput.
  config.sample = config_dict.ConfigDict(dict(
      prompts=("12*34=", "57*68=", "99*99="),
      num_samples=4,
  ))
  return config
