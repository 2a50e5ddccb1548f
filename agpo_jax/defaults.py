"""Every block of a run config, with its defaults, in one place.

A config file (`configs/*.py`) starts from `base_config()` and changes what its setup needs;
any field can then be overridden on the command line (`--config.train.steps=300`). The
algorithm blocks (`algo`, `loss`, `reward`) live beside the algorithms they parameterise
(`agpo_jax.algorithms.defaults`), and each task defines its own `task` block
(`agpo_jax.tasks`); everything else is here. A field missing from a config is an error where
it is read, never a silent default.
"""

from __future__ import annotations

import dataclasses

from ml_collections import config_dict

from agpo_jax.algorithms.defaults import algo_config, loss_config, reward_config
from agpo_jax.models.config import ModelConfig

ConfigDict = config_dict.ConfigDict

MODES = ("pipeline", "sft", "rl", "evaluate", "sample", "annotate", "distill")


def model_config(preset: str = "testbed") -> ConfigDict:
  """The `config.model` block: a preset name (`models.config.PRESETS`) or a pretrained
  checkpoint, plus per-field overrides.

  Every `ModelConfig` field is present as a typed placeholder (None = take the preset's or the
  checkpoint's value), so `--config.model.num_layers=4` works and a mistyped field is an error.
  `checkpoint`: a Hugging Face directory (config.json + safetensors) or a `.gguf` file whose
  architecture and weights the run starts from ("" = the preset, randomly initialised); with
  one, only numerics (dtype, param_dtype, remat, scan_layers, max_seq_len) may be overridden.
  """
  types = {"int": int, "float": float, "bool": bool, "str": str}
  cfg = ConfigDict()
  cfg.preset = preset
  cfg.checkpoint = ""
  for field in dataclasses.fields(ModelConfig):
    cfg[field.name] = config_dict.placeholder(types[field.type])
  return cfg


def tokenizer_config() -> ConfigDict:
  """The `config.tokenizer` block (default: the character tokenizer of the testbed).

  Fields:
    kind: 'char', 'sentencepiece' or 'hf'.
    path: the `.model` file (sentencepiece), or `tokenizer.json` or its directory (hf).
    alphabet: the characters of the char tokenizer (ignored by the other kinds).
    words: space-separated whole-word tokens of the char tokenizer ('' = none; see
      `CharTokenizer`).
    chat_template: 'auto' (the checkpoint's own Jinja template if it has one, else a
      fallback picked from the vocabulary), 'hf' (the checkpoint's, required), or the
      fallbacks 'qwen', 'llama3', 'plain'.
  """
  return ConfigDict(dict(kind="char", path="", alphabet="0123456789*=", words="",
                        chat_template="auto"))


def verifier_config() -> ConfigDict:
  """The `config.verifier` block: how completions are graded (`verifiers.make_verifier`)."""
  return ConfigDict(dict(
      kind="math",  # kind of references given as plain strings: 'math' | 'exact' | 'label'
      num_workers=config_dict.placeholder(int),  # math pool; None: min(cpu_count, 8)
      timeout_s=10.0,  # hard wall-clock bound per item: the worker is killed past it
      math_verify_timeout_s=3,  # Math-Verify's inner signal.alarm guard, whole seconds
      max_answer_chars=1000,  # longer extracted answers are 'unparseable'
      string_fast_path=True,  # equal normalised strings are correct without SymPy
      cache_size=4096,  # per worker: parsed answers and verdicts (a group shares its gold)
      start_method="spawn",  # or 'forkserver'; never 'fork' (deadlocks once JAX is up)
      memory_limit_mb=4096,  # RLIMIT_AS per worker; 0 disables
      startup_timeout_s=120.0,
  ))


def optim_config(lr: float = 3e-4) -> ConfigDict:
  """An optimizer block (`config.optim`, `config.sft.optim`): AdamW with warm-up, a schedule
  and gradient clipping (`train.state.make_optimizer`)."""
  return ConfigDict(dict(
      lr=lr,
      schedule="constant",  # constant | cosine | linear (after warm-up)
      warmup_steps=0,
      end_lr_ratio=0.0,  # cosine / linear decay to lr * end_lr_ratio at the last step
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip=1.0,  # global-norm clip; 0 disables
  ))


def sft_config() -> ConfigDict:
  """The `config.sft` block: the supervised warm start (`train.sft`)."""
  # Measured on the testbed's multiplication (1,000 steps, rotary positions then): lr 5e-3 with
  # weight decay 0.1 beat lr 3e-3 without decay (held-out pass@1 14% vs 9%).
  optim = optim_config(lr=5e-3)
  optim.schedule = "cosine"
  optim.warmup_steps = 100
  optim.end_lr_ratio = 0.1
  optim.weight_decay = 0.1
  return ConfigDict(dict(
      steps=1000,
      batch_size=256,
      num_microbatches=1,
      label_smoothing=0.0,  # ε: targets (1 - ε) on the demonstration + ε uniform (train.sft)
      checkpoint_every=250,
      log_every=50,
      optim=optim,
      max_consecutive_skips=5,  # stop the warm start after this many skipped updates in a row
      spike_factor=10.0,  # the update guard, as in config.train
      spike_warmup=8,
  ))


def sampling_config() -> ConfigDict:
  """The `config.sampling` block: how rollouts are drawn during training (and, unless
  `config.eval` says otherwise, in evaluation)."""
  return ConfigDict(dict(
      num_samples=8,  # G: completions per prompt
      temperature=1.0,  # the trainer scores log-probs at this temperature too
      top_k=0,
      top_p=1.0,
      max_new_tokens=64,
      min_prompt_bucket=8,  # prompts are left-padded to a power of two at least this long
      # Generate calls per rollout batch: each call holds the KV cache of 1/rollout_chunks of
      # the batch (the memory plan says how many a model and mesh need).
      rollout_chunks=1,
      # Times the decode loop may halve its batch to the rows still running once half of them
      # have stopped (0: never; same tokens either way; not under a mesh).
      max_compactions=2,
  ))


def rl_config() -> ConfigDict:
  """The `config.train` block: the RL loop (`train.rl`)."""
  return ConfigDict(dict(
      steps=150,
      batch_prompts=64,  # prompts per rollout batch (each sampled G = sampling.num_samples times)
      num_minibatches=1,  # optimizer updates per epoch over the rollout batch
      num_microbatches=1,  # gradient-accumulation slices per update
      epochs=1,  # passes over the rollout batch
      log_every=1,
      checkpoint_every=50,
      max_to_keep=2,
      eval_every=0,  # held-out pass@k every this many steps during RL (0: only at the end)
      eval_problems=200,  # ... on the first this many problems of config.eval.split
      eval_n=16,  # ... with this many samples each (other settings from config.eval)
      max_consecutive_skips=5,  # stop the run after this many skipped updates in a row
      # Update guard: skip (and count) an update whose gradient norm exceeds spike_factor x the
      # median of the last 32 accepted norms, once spike_warmup are recorded; 0 disables.
      spike_factor=10.0,
      spike_warmup=8,
      # Log where the advantage mass lands token by token (tokens/*: stop token, first token,
      # tokens the whole group shares, quarters of the length; algorithms/token_mass.py).
      token_mass_metrics=True,
      # Prompt every gold label equally often (tasks.problem.balance_by_label): for RL on an
      # imbalanced label task (relevance). Needs problems with a gold label.
      balance_labels=False,
  ))


def eval_config() -> ConfigDict:
  """The `config.eval` block (reference protocol: n = 256, temperature 0.6, top-p 0.95)."""
  return ConfigDict(dict(
      n=256,
      temperature=0.6,
      top_p=0.95,
      top_k=0,
      max_new_tokens=config_dict.placeholder(int),  # None: sampling.max_new_tokens
      batch_prompts=32,  # problems per sampler call
      samples_per_call=256,  # samples per problem per sampler call (n is split into these)
      split="heldout",  # a split / benchmark, or several comma-separated (evaluate mode)
      max_problems=0,  # 0: all problems of the split
      seed=1234,  # evaluation sampling seed, independent of the training seed
  ))


def mesh_config() -> ConfigDict:
  """The `config.mesh` block: size of each mesh axis (`sharding.rules`); -1 takes the
  remaining devices."""
  return ConfigDict(dict(data=1, fsdp=-1, tensor=1))


def distributed_config() -> ConfigDict:
  """The `config.distributed` block (`sharding.multihost.initialize_distributed`). On a TPU VM
  slice (and under SLURM / Open MPI) `jax.distributed.initialize()` finds everything itself:
  set `initialize=True` only. Elsewhere give the coordinator (process 0's `host:port`), the
  process count and this process's id, in the config or in the environment variables
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (setting
  JAX_COORDINATOR_ADDRESS alone turns initialisation on)."""
  return ConfigDict(dict(
      initialize=False,
      coordinator_address="",
      num_processes=0,
      process_id=-1,
      cpu_collectives="gloo",  # CPU-only clusters (and the tests): cross-process collectives
  ))


def memory_config() -> ConfigDict:
  """The `config.memory` block: the per-device memory plan is printed at start-up, and a run
  that cannot fit is refused (check=False: print only). device_gib=0 asks the runtime (GPU,
  TPU; the CPU reports none, so nothing is checked there); > 0 declares it."""
  return ConfigDict(dict(check=True, device_gib=0.0))


def annotate_config() -> ConfigDict:
  """The `config.annotate` block: modes 'annotate' and 'distill' (`relevance_app`)."""
  return ConfigDict(dict(
      split="unlabeled",  # the pool to label
      n=8,  # samples per pair; the label is their majority, the confidence its vote share
      samples_per_call=8,
      batch_prompts=64,
      temperature=1.0,
      top_p=1.0,
      top_k=0,
      max_new_tokens=0,  # 0: sampling.max_new_tokens
      seed=0,
      min_confidence=0.0,  # distill: train only on labels with at least this vote share
  ))


def student_config() -> ConfigDict:
  """The `config.student` block: the distilled classifier (`evaluation.distill.StudentConfig`)."""
  from agpo_jax.evaluation.distill import StudentConfig

  return ConfigDict(dataclasses.asdict(StudentConfig()))


def base_config() -> ConfigDict:
  """A complete run config with every block at its default; config files start here."""
  from agpo_jax.tasks import testbed_config  # the default task's own block

  config = ConfigDict()
  config.mode = "pipeline"  # one of MODES
  # mode=pipeline: the algorithm presets (agpo_jax/algorithms/defaults.py) each trained with
  # RL from the same base and compared, comma-separated, e.g. "grpo,agpo"; "" = the one
  # algorithm config.algo describes. An algo.name or algo.preset set on the command line
  # (without --config.arms) trains that algorithm alone.
  config.arms = ""
  config.seed = 0
  # rbg compiles several times faster than threefry on CPU and is a sound generator; set
  # "threefry2x32" for bit-identical random streams under any sharding.
  config.prng_impl = "rbg"
  config.task = testbed_config()
  config.tokenizer = tokenizer_config()
  config.model = model_config("testbed")
  config.verifier = verifier_config()
  config.sft = sft_config()
  config.sampling = sampling_config()
  config.train = rl_config()
  config.optim = optim_config()
  config.algo = algo_config()
  config.loss = loss_config()
  config.reward = reward_config()
  config.eval = eval_config()
  config.mesh = mesh_config()
  config.distributed = distributed_config()
  config.memory = memory_config()
  config.annotate = annotate_config()
  config.student = student_config()
  # mode=sample: draw completions for these prompts and report decode throughput.
  config.sample = ConfigDict(dict(prompts=("12*34=", "57*68=", "99*99="), num_samples=4))
  return config


def reference_protocol_config(preset: str) -> ConfigDict:
  """The reference protocol of the paper's line of work on a Qwen2.5-Math checkpoint.

  Prompt 1,024 + response 3,072 tokens; 1,024 prompts x 8 rollouts per step at temperature
  1.0; mini-batches of 256 prompts (4 updates per step); lr 1e-6, clip 0.2, entropy bonus
  1e-4, no KL, gradient clip 1.0; AGPO; evaluation on MATH500, AIME24, AMC23, Minerva Math
  and OlympiadBench with n = 256 at temperature 0.6 / top-p 0.95, the prompt "... Please
  reason step by step, and put your final answer within \\boxed{}." in the model's chat
  template. `config.model.checkpoint` must name the checkpoint directory; `preset` fixes the
  shapes the memory plan uses before it is read (they must agree). GRPO / NSR / W-REINFORCE:
  `--config.algo.preset=grpo` (or nsr, w_reinforce).
  """
  from agpo_jax.tasks import math_task_config

  config = base_config()
  config.mode = "pipeline"
  config.task = math_task_config("math500")
  config.task.train_source = "gsm8k_train"  # set a MATH-train JSONL file where you have one
  config.tokenizer.kind = "hf"
  config.tokenizer.path = ""  # the checkpoint directory
  config.model = model_config(preset)
  config.model.checkpoint = "<set --config.model.checkpoint=DIR>"
  config.model.param_dtype = "float32"
  config.model.dtype = "bfloat16"
  config.model.max_seq_len = 1024 + 3072
  config.verifier.kind = "math"
  config.sft.steps = 0  # RL from the pretrained checkpoint, no warm start
  config.sampling.num_samples = 8
  config.sampling.temperature = 1.0
  config.sampling.max_new_tokens = 3072
  config.sampling.min_prompt_bucket = 1024
  config.train.steps = 500
  config.train.batch_prompts = 1024
  config.train.num_minibatches = 4
  config.train.checkpoint_every = 10
  config.train.eval_every = 50
  config.train.eval_problems = 500
  config.train.eval_n = 16
  config.optim = optim_config(lr=1e-6)
  config.optim.weight_decay = 0.0
  config.loss.eps_low = config.loss.eps_high = 0.2
  config.loss.entropy_coef = 1e-4
  config.loss.kl_coef = 0.0
  config.algo.name = "agpo"
  config.eval.split = "math500,aime24,amc23,minerva,olympiadbench"
  config.eval.n = 256
  config.eval.temperature = 0.6
  config.eval.top_p = 0.95
  config.eval.max_new_tokens = 3072
  config.eval.batch_prompts = 64
  config.eval.samples_per_call = 64
  config.distributed.initialize = True  # a TPU slice / several hosts; harmless on one host
  return config
