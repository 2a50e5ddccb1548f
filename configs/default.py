"""The embedded testbed: a tiny model on a synthetic verifiable task, runnable on 2 CPU cores.

    python -m agpo_jax.main --config=configs/default.py --workdir=/tmp/agpo
    python -m agpo_jax.main --config=configs/default.py --config.sampling.temperature=0.7
"""

from ml_collections import config_dict

from agpo_jax.models.config import model_config
from agpo_jax.sampling import sampling_config
from agpo_jax.tokenizers import tokenizer_config


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.mode = "sample"
  config.seed = 0
  # rbg compiles several times faster than threefry on CPU and is a sound generator; set
  # "threefry2x32" for bit-identical random streams under any sharding.
  config.prng_impl = "rbg"

  config.model = model_config("testbed")
  config.tokenizer = tokenizer_config()
  config.tokenizer.kind = "char"
  config.tokenizer.alphabet = "0123456789*="
  config.sampling = sampling_config()
  config.sampling.max_new_tokens = 8

  # mode=sample: draw completions for these prompts and report decode throughput.
  config.sample = config_dict.ConfigDict(dict(
      prompts=("12*34=", "57*68=", "99*99="),
      num_samples=4,
  ))
  return config
