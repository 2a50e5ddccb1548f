"""Entry point: `python -m agpo_jax.main --config=configs/default.py [--workdir=DIR]`.

The config file selects the mode and everything else; `--config.a.b=value` overrides any field
(a mistyped key is an error that names it).
"""

from __future__ import annotations

import copy
import json
import logging as pylogging
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from agpo_jax import configs, memory_plan, sampling
from agpo_jax.evaluation.evaluate import eval_splits, evaluate
from agpo_jax.models.config import resolve_model_config
from agpo_jax.sharding import multihost, rules
from agpo_jax.tasks import encode_prompt, make_task
from agpo_jax.tokenizers import load_tokenizer
from agpo_jax.train.rl import restore_rl_params, train_rl
from agpo_jax.train.sft import train_sft
from agpo_jax.verifiers import make_verifier

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def _report(text: str) -> None:
  """What a run tells its user on standard output (process 0 only): the mesh, the memory
  plan, samples, result tables. Diagnostics go through absl logging instead."""
  if jax.process_index() == 0:
    print(text, flush=True)


def _setup(config: config_dict.ConfigDict):
  """Tokenizer, model shapes, task and device mesh named by the config; the mesh's memory
  plan is printed, and a run that cannot fit is refused before any work."""
  tokenizer = load_tokenizer(config.tokenizer)
  model_cfg = resolve_model_config(config.model, tokenizer.vocab_size)
  task = make_task(config.task)
  mesh = rules.make_mesh(config.mesh)
  _report(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
          f"device(s) in {jax.process_count()} process(es)")
  check_memory(config, mesh, tokenizer, task)
  return tokenizer, model_cfg, task, mesh


def device_memory_bytes() -> int | None:
  """Memory of one local device as the runtime reports it (GPU / TPU), None on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def check_memory(config: config_dict.ConfigDict, mesh: jax.sharding.Mesh, tokenizer,
                 task) -> memory_plan.MemoryPlan:
  """Print the per-device memory plan of this run; raise `PlanDoesNotFit` (naming every
  component) when it exceeds the device memory (`config.memory.device_gib`, else what the
  runtime reports), unless `config.memory.check` is False."""
  problems = [p for split in ["train", *eval_splits(config)] for p in task.split(split)]
  prompt_len = sampling.bucket_length(max(len(encode_prompt(tokenizer, p)) for p in problems),
                                      config.sampling.min_prompt_bucket)
  plan = memory_plan.plan_from_config(config, dict(mesh.shape), prompt_len=prompt_len,
                                      tokenizer_vocab_size=tokenizer.vocab_size)
  if config.mode in ("pipeline", "evaluate"):  # evaluation calls hold their own caches
    dp = rules.data_parallel_size(mesh)
    eval_rows = (-(-config.eval.batch_prompts // dp) * dp
                 * min(config.eval.samples_per_call, config.eval.n))
    if eval_rows > plan.sample_rows:
      plan = plan.replan(sample_rows=eval_rows)
  memory = config.memory
  device_bytes = (int(memory.device_gib * 2**30) if memory.device_gib > 0
                  else device_memory_bytes())
  _report(plan.format(device_bytes))
  if device_bytes and memory.check:
    memory_plan.check_fits(plan, device_bytes)
  return plan


def _counts_path(config: config_dict.ConfigDict, workdir: pathlib.Path, label: str):
  e = config.eval
  return workdir / "eval" / f"{label}_{e.split}_n{e.n}_t{e.temperature}_p{e.top_p}_s{e.seed}.jsonl"


def _periodic_evaluator(config, sampler, tokenizer, problems, verifier):
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


def _first_split(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """`config` with eval.split reduced to its first split (training-time evaluations use one;
  evaluate mode takes them all)."""
  splits = eval_splits(config)
  if len(splits) == 1:
    return config
  config = copy.deepcopy(config)
  config.eval.split = splits[0]
  return config


def run_sample(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """Draw completions from the configured model and print them with decode throughput."""
  tokenizer, model_cfg, task, mesh = _setup(config)
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  params, _ = _initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  texts = list(config.sample.prompts)
  padded, real = multihost.pad_to_multiple(texts, rules.data_parallel_size(mesh))
  prompts = [tokenizer.encode(p, add_bos=True)
             for p in padded[multihost.process_rows(len(padded), mesh)]]
  num = config.sample.num_samples
  rollout = sampler.generate(params, prompts, num, jax.random.fold_in(rng, 1))
  start = time.perf_counter()  # the first call included compilation
  rollout = sampler.generate(params, prompts, num, jax.random.fold_in(rng, 2))
  seconds = time.perf_counter() - start
  # Every process's rows, padding dropped.
  out = rollout.replace(**{name: multihost.allgather_rows(getattr(rollout, name))[:real * num]
                           for name in ("tokens", "logprobs", "lengths", "truncated",
                                        "prompt_tokens", "prompt_mask")})
  tokens = int(out.lengths.sum())
  lines = [f"model: {model_cfg.num_params:,} parameters, {real} prompts x {num} samples, "
           f"{tokens} tokens in {seconds * 1e3:.1f} ms ({tokens / seconds:,.0f} tokens/s)"]
  for row, text in enumerate(sampling.decode_completions(tokenizer, out)):
    flag = " [truncated]" if bool(out.truncated[row]) else ""
    lines.append(f"  {texts[row // num]!r} -> {text!r}{flag}")
  _report("\n".join(lines))
  return {"tokens_per_second": tokens / seconds, "rollout": out}


def _initial_params(config, workdir, model_cfg, tokenizer, task, mesh):
  """The warm start's params when the workdir has one (finished if it was not), else a random
  init; either way sharded on `mesh`. Returns (params, label)."""
  if (workdir / "sft").exists():
    return train_sft(config, workdir / "sft", model_cfg, tokenizer, task.split("train"),
                     mesh=mesh), "sft"
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  return rules.init_params_sharded(model_cfg, rng, mesh), "init"


def run_sft(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  tokenizer, model_cfg, task, mesh = _setup(config)
  params = train_sft(config, workdir / "sft", model_cfg, tokenizer, task.split("train"),
                     mesh=mesh)
  return {"params": params}


def run_rl(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """RL from the workdir's warm start if it has one, else from a random init."""
  config = _first_split(config)
  tokenizer, model_cfg, task, mesh = _setup(config)
  params, _ = _initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  with make_verifier(config.verifier) as verifier:
    periodic = _periodic_evaluator(config, sampler, tokenizer, task.split(config.eval.split),
                                   verifier)
    result = train_rl(config, workdir / "rl", model_cfg, tokenizer, task.split("train"),
                      verifier, params, periodic, mesh, sampler)
  return {"params": result.params, "interrupted": result.interrupted}


def run_evaluate(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """Evaluate the workdir's latest model (RL if present, else SFT) on each split (benchmark)
  of config.eval.split: a count file and a JSON summary per split in WORKDIR/eval/."""
  tokenizer, model_cfg, task, mesh = _setup(config)
  params, label = _initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
  trained = restore_rl_params(config, workdir / "rl", model_cfg, params, mesh)
  if trained is not None:
    params, step = trained
    label = f"{config.algo.name}-step{step}"
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  summaries = {}
  with make_verifier(config.verifier) as verifier:
    for split in eval_splits(config):
      one = copy.deepcopy(config)
      one.eval.split = split
      _, summaries[split] = evaluate(one, params, sampler, tokenizer, task.split(split),
                                     verifier, _counts_path(one, workdir, label),
                                     f"eval {label} on {split}")
  _report("".join(f"\n{split} ({summary['num_problems']} problems, n = {summary['n']}):\n"
                  + format_pass_table({label: summary}) for split, summary in summaries.items()))
  return {"summaries": summaries, "summary": next(iter(summaries.values())), "label": label}


def run_pipeline(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """Warm start (cached), evaluate the base, RL, evaluate the trained model, compare (on the
  first split of config.eval.split)."""
  config = _first_split(config)
  tokenizer, model_cfg, task, mesh = _setup(config)
  started = time.perf_counter()
  base = train_sft(config, workdir / "sft", model_cfg, tokenizer, task.split("train"),
                   mesh=mesh)
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  heldout = task.split(config.eval.split)
  summaries = {}
  with make_verifier(config.verifier) as verifier:
    _, summaries["base"] = evaluate(config, base, sampler, tokenizer, heldout, verifier,
                                    _counts_path(config, workdir, "base"), "eval base")
    params = base
    if config.train.steps:  # train.steps=0: warm start and base evaluation only
      periodic = _periodic_evaluator(config, sampler, tokenizer, heldout, verifier)
      result = train_rl(config, workdir / "rl", model_cfg, tokenizer, task.split("train"),
                        verifier, base, periodic, mesh, sampler)
      if result.interrupted:
        return {"interrupted": True}
      params, label = result.params, f"{config.algo.name}-step{result.steps_done}"
      _, summaries[label] = evaluate(config, params, sampler, tokenizer, heldout, verifier,
                                     _counts_path(config, workdir, label), f"eval {label}")
  table = format_pass_table(summaries)
  seconds = time.perf_counter() - started
  if jax.process_index() != 0:
    return {"summaries": summaries, "params": params}
  num_problems = config.eval.max_problems or len(heldout)
  _report(f"\npass@k on {num_problems} held-out problems, n = {config.eval.n}, temperature "
          f"{config.eval.temperature}, top-p {config.eval.top_p} ({seconds:.0f} s this run):\n"
          f"{table}")
  (workdir / "results.json").write_text(json.dumps(summaries, indent=2, default=float) + "\n")
  (workdir / "results.md").write_text(table + "\n")
  return {"summaries": summaries, "params": params}


def format_pass_table(summaries: dict[str, dict]) -> str:
  """Markdown table: one row per model, pass@k columns, avg@n."""
  ks = sorted({int(k) for s in summaries.values() for k in s["pass@k"]})
  header = "| model | " + " | ".join(f"pass@{k}" for k in ks) + " |"
  lines = [header, "|" + "---|" * (len(ks) + 1)]
  for name, summary in summaries.items():
    values = {int(k): v for k, v in summary["pass@k"].items()}
    lines.append(f"| {name} | " + " | ".join(f"{100 * values[k]:.1f}" for k in ks) + " |")
  return "\n".join(lines)


MODES: dict[str, Callable[[config_dict.ConfigDict, pathlib.Path], dict]] = {
    "pipeline": run_pipeline,
    "sft": run_sft,
    "rl": run_rl,
    "evaluate": run_evaluate,
    "sample": run_sample,
}


def run(config: config_dict.ConfigDict, workdir: str | pathlib.Path,
        explicit_keys: Sequence[str] = ()) -> dict:
  """Run the mode named by `config.mode` in `workdir`; returns its results.

  `config.algo.preset` is written into the config first, except the keys in `explicit_keys`
  (the command line's overrides win over a preset)."""
  mode = configs.require_choice(config, "mode", MODES)
  configs.resolve_presets(config, explicit_keys)
  if "distributed" in config:  # first: nothing may touch a device before it
    multihost.initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    configs.save_config(config, workdir / "config.json")
  return MODES[mode](config, workdir)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, after checking every --config.x override names a real key."""
  config_path = configs.config_path_from_argv(argv)
  if config_path is not None:
    try:
      configs.check_overrides(configs.load_config_file(config_path), argv[1:])
    except (KeyError, FileNotFoundError, ValueError) as error:
      message = error.args[0] if isinstance(error, KeyError) else str(error)
      print(f"error: {message}", file=sys.stderr)
      sys.exit(2)
  return flags.FLAGS(argv)


class _OwnInfoOnly(pylogging.Filter):
  """Lets INFO records through only from agpo_jax's own modules: orbax and JAX log through
  absl too, and their INFO lines would drown the run's."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or _PACKAGE_DIR in record.pathname


_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent)


def _configure_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnInfoOnly())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/default.py")
  _configure_logging()
  workdir = _WORKDIR.value or f"runs/{_CONFIG.value.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
  try:
    run(_CONFIG.value, workdir, configs.override_keys(sys.argv[1:]))
  except (configs.ConfigError, memory_plan.PlanDoesNotFit) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
