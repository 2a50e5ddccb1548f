"""What every run mode shares: set-up (tokenizer, model, task, mesh, memory plan), the
parameters a run starts from (pretrained, warm start), the RL arms and their directories, the
evaluation file names, and the report printed on standard output. `main` (the training and
evaluation modes) and `relevance_app` (annotation and distillation) are built on it.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Sequence

import jax
from absl import logging
from ml_collections import config_dict

from agpo_jax import configs, memory_plan, pretrained, sampling
from agpo_jax.evaluation.evaluate import eval_splits, evaluate
from agpo_jax.sharding import rules
from agpo_jax.tasks import encode_prompt, make_task
from agpo_jax.tokenizers import load_tokenizer
from agpo_jax.train.rl import restore_rl_params
from agpo_jax.train.sft import train_sft


def report(text: str) -> None:
  """What a run tells its user on standard output (process 0 only): the mesh, the memory
  plan, samples, result tables. Diagnostics go through absl logging instead."""
  if jax.process_index() == 0:
    print(text, flush=True)


def setup(config: config_dict.ConfigDict, workdir: pathlib.Path):
  """Tokenizer, model shapes, task and device mesh named by the config; the mesh's memory
  plan is printed, and a run that cannot fit is refused before any work. With
  `config.model.checkpoint` the architecture (and, unless `tokenizer.path` is set, the
  tokenizer) come from the checkpoint."""
  tokenizer_cfg = config.tokenizer
  if config.model.checkpoint:
    tokenizer_cfg = copy.deepcopy(config.tokenizer)
    tokenizer_cfg.path = pretrained.tokenizer_dir(config.model, config.tokenizer, workdir)
  tokenizer = load_tokenizer(tokenizer_cfg)
  model_cfg = pretrained.model_config(config.model, tokenizer.vocab_size)
  task = make_task(config.task)
  mesh = rules.make_mesh(config.mesh)
  report(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
          f"device(s) in {jax.process_count()} process(es)")
  check_memory(config, mesh, tokenizer, task, model_cfg)
  return tokenizer, model_cfg, task, mesh


def device_memory_bytes() -> int | None:
  """Memory of one local device as the runtime reports it (GPU / TPU), None on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def check_memory(config: config_dict.ConfigDict, mesh: jax.sharding.Mesh, tokenizer,
                 task, model_cfg=None) -> memory_plan.MemoryPlan:
  """Print the per-device memory plan of this run; raise `PlanDoesNotFit` (naming every
  component) when it exceeds the device memory (`config.memory.device_gib`, else what the
  runtime reports), unless `config.memory.check` is False."""
  problems = [p for split in ["train", *eval_splits(config)] for p in task.split(split)]
  prompt_len = sampling.bucket_length(max(len(encode_prompt(tokenizer, p)) for p in problems),
                                      config.sampling.min_prompt_bucket)
  plan = memory_plan.plan_from_config(config, dict(mesh.shape), prompt_len=prompt_len,
                                      tokenizer_vocab_size=tokenizer.vocab_size,
                                      model_cfg=model_cfg)
  if config.mode in ("pipeline", "evaluate"):  # evaluation calls hold their own caches
    dp = rules.data_parallel_size(mesh)
    eval_rows = (-(-config.eval.batch_prompts // dp) * dp
                 * min(config.eval.samples_per_call, config.eval.n))
    if eval_rows > plan.sample_rows:
      plan = plan.replan(sample_rows=eval_rows)
  memory = config.memory
  device_bytes = (int(memory.device_gib * 2**30) if memory.device_gib > 0
                  else device_memory_bytes())
  report(plan.format(device_bytes))
  if device_bytes and memory.check:
    memory_plan.check_fits(plan, device_bytes)
  return plan


def counts_path(config: config_dict.ConfigDict, workdir: pathlib.Path, label: str):
  e = config.eval
  return workdir / "eval" / f"{label}_{e.split}_n{e.n}_t{e.temperature}_p{e.top_p}_s{e.seed}.jsonl"


def periodic_evaluator(config, sampler, tokenizer, problems, verifier):
  """`(params, step) -> metrics`: a small held-out pass@k check for use during RL."""
  small = copy.deepcopy(config)
  small.eval.n = config.train.eval_n
  small.eval.samples_per_call = min(config.eval.samples_per_call, config.train.eval_n)
  small.eval.max_problems = config.train.eval_problems

  def evaluate_during_training(params, step):
    _, summary = evaluate(small, params, sampler, tokenizer, problems, verifier,
                          label=f"eval @ step {step}")
    return {f"pass@{k}": v for k, v in summary["pass@k"].items()}

  return evaluate_during_training


def first_split(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """`config` with eval.split reduced to its first split (training-time evaluations use one;
  evaluate mode takes them all)."""
  splits = eval_splits(config)
  if len(splits) == 1:
    return config
  config = copy.deepcopy(config)
  config.eval.split = splits[0]
  return config


def start_params(config, model_cfg, mesh):
  """The parameters a run starts from, sharded on `mesh`: the pretrained checkpoint's
  (`config.model.checkpoint`), else a random init. Returns (params, label)."""
  if config.model.checkpoint:
    return pretrained.load_params(config.model, model_cfg, mesh), "pretrained"
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  return rules.init_params_sharded(model_cfg, rng, mesh), "init"


def warm_start(config, workdir, model_cfg, tokenizer, task, mesh):
  """The SFT warm start (cached in WORKDIR/sft) from the run's starting parameters; with
  `sft.steps=0` the starting parameters themselves."""
  if not config.sft.steps:
    return start_params(config, model_cfg, mesh)
  params = start_params(config, model_cfg, mesh)[0] if config.model.checkpoint else None
  return train_sft(config, workdir / "sft", model_cfg, tokenizer, task.split("train"),
                   params=params, mesh=mesh), "sft"


def initial_params(config, workdir, model_cfg, tokenizer, task, mesh):
  """The warm start's params when the workdir has one (finished if it was not), else the
  starting parameters; either way sharded on `mesh`. Returns (params, label)."""
  if (workdir / "sft").exists() and config.sft.steps:
    return warm_start(config, workdir, model_cfg, tokenizer, task, mesh)
  return start_params(config, model_cfg, mesh)


def pipeline_arms(config: config_dict.ConfigDict, explicit_keys: Sequence[str] = ()
                  ) -> dict[str, config_dict.ConfigDict]:
  """The RL arms of a pipeline: `{name: config}`, in `config.arms` order.

  Each arm is `config` with its algorithm preset written in (other fields set on the command
  line keep their values) and trains in WORKDIR/rl_<name>. With `config.arms` empty, or when the
  command line names one algorithm (`algo.name` / `algo.preset`) but not the arms, the one arm
  is `config` itself, named by `config.algo.name`, and trains in WORKDIR/rl.
  """
  names = [a.strip() for a in config.get("arms", "").split(",") if a.strip()]
  explicit = set(explicit_keys)
  if names and explicit & {"algo.name", "algo.preset"} and "arms" not in explicit:
    logging.info("config.arms=%r not used: the command line names the algorithm to train",
                 config.arms)
    names = []
  if not names:
    return {config.algo.name: config}
  arms = {}
  for name in names:  # an arm's preset names its algorithm, whatever the command line says
    arm = copy.deepcopy(config)
    arm.algo.preset = name
    configs.resolve_presets(arm, explicit - {"algo.name", "algo.preset"})
    arms[name] = arm
  return arms


def arm_dirs(config: config_dict.ConfigDict, workdir: pathlib.Path,
             explicit_keys: Sequence[str] = ()) -> dict[str, tuple[config_dict.ConfigDict,
                                                                   pathlib.Path]]:
  """`{arm: (its config, its RL directory)}`: WORKDIR/rl for the lone arm of `config.algo`,
  WORKDIR/rl_<arm> for each arm of `config.arms`."""
  arms = pipeline_arms(config, explicit_keys)
  return {name: (arm, workdir / ("rl" if arm is config else f"rl_{name}"))
          for name, arm in arms.items()}


def trained_models(config: config_dict.ConfigDict, workdir: pathlib.Path, model_cfg,
                   start, mesh, explicit_keys: Sequence[str] = ()) -> dict:
  """`{<arm>-step<N>: params}`: each arm's newest RL checkpoint in the workdir (also WORKDIR/rl,
  where mode 'rl' trains `config.algo`, as `<algo.name>-step<N>`), restored into the shape and
  shardings of `start` (the run's starting parameters); empty when there is none."""
  dirs = {name: (arm, d) for name, (arm, d) in arm_dirs(config, workdir, explicit_keys).items()
          if d.exists()}
  lone = workdir / "rl"  # where mode 'rl' trains config.algo
  if lone.exists() and all(d != lone for _, d in dirs.values()):
    name = config.algo.name
    dirs[name if name not in dirs else f"{name}[rl]"] = (config, lone)
  models = {}
  for name, (arm, rl_dir) in dirs.items():
    trained = restore_rl_params(arm, rl_dir, model_cfg, start, mesh)
    if trained is not None:
      models[f"{name}-step{trained[1]}"] = trained[0]
  return models
