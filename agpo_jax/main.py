"""Entry point: `python -m agpo_jax.main --config=configs/default.py [--workdir=DIR]`.

The config file selects the mode and everything else; `--config.a.b=value` overrides any field
(a mistyped key is an error that names it). The whole config is checked before any work
(`validation`). A user error (a bad config value or flag, a missing file, a run that cannot
fit) prints one `error: ...` line per problem to stderr and exits with status 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import copy
import json
import logging as pylogging
import pathlib
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

import jax
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from agpo_jax import configs, memory_plan, relevance_app, runs, sampling, validation
from agpo_jax.runs import arm_dirs, pipeline_arms  # noqa: F401  (part of main's API)
from agpo_jax.evaluation import evaluate as evaluate_lib
from agpo_jax.evaluation import report
from agpo_jax.evaluation.evaluate import eval_splits, evaluate
from agpo_jax.sharding import multihost, rules
from agpo_jax.train.rl import train_rl
from agpo_jax.verifiers import make_verifier

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DEBUG = flags.DEFINE_bool("debug", False, "On a user error (a bad config value, a missing "
                           "file), show the traceback instead of one 'error:' line.")

# What a user can fix without reading code: printed as `error: ...` lines, exit status 2.
# (`configs.ConfigError` is a ValueError.)
USER_ERRORS = (ValueError, FileNotFoundError, memory_plan.PlanDoesNotFit)


def run_sample(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """Draw completions from the configured model and print them with decode throughput."""
  tokenizer, model_cfg, task, mesh = runs.setup(config, workdir)
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  params, _ = runs.initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
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
  runs.report("\n".join(lines))
  return {"tokens_per_second": tokens / seconds, "rollout": out}


def run_sft(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  tokenizer, model_cfg, task, mesh = runs.setup(config, workdir)
  params, _ = runs.warm_start(config, workdir, model_cfg, tokenizer, task, mesh)
  return {"params": params}


def run_rl(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """RL from the workdir's warm start if it has one, else from a random init."""
  config = runs.first_split(config)
  tokenizer, model_cfg, task, mesh = runs.setup(config, workdir)
  params, _ = runs.initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  with make_verifier(config.verifier) as verifier:
    periodic = runs.periodic_evaluator(config, sampler, tokenizer,
                                       task.split(config.eval.split), verifier)
    result = train_rl(config, workdir / "rl", model_cfg, tokenizer, task.split("train"),
                      verifier, params, periodic, mesh, sampler)
  return {"params": result.params, "interrupted": result.interrupted}


def run_evaluate(config: config_dict.ConfigDict, workdir: pathlib.Path,
                 explicit_keys: Sequence[str] = ()) -> dict:
  """Evaluate the workdir's latest models (each arm's RL checkpoint where one exists, else the
  warm start or the pretrained model) on each split (benchmark) of config.eval.split: a count
  file and a JSON summary per model and split in WORKDIR/eval/, and the table of every model
  evaluated there with these settings."""
  tokenizer, model_cfg, task, mesh = runs.setup(config, workdir)
  start, label = runs.initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
  models = (runs.trained_models(config, workdir, model_cfg, start, mesh, explicit_keys)
            or {label: start})
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  latest: dict[str, dict] = {}
  with make_verifier(config.verifier) as verifier:
    for label, params in models.items():
      latest[label] = {}
      for split in eval_splits(config):
        one = copy.deepcopy(config)
        one.eval.split = split
        _, latest[label][split] = evaluate(one, params, sampler, tokenizer, task.split(split),
                                           verifier, runs.counts_path(one, workdir, label),
                                           f"eval {label} on {split}")
  runs.report("".join(f"\n{split} ({summary['num_problems']} problems, n = {summary['n']}):\n"
                  + format_pass_table({label: summary})
                  for label, summaries in latest.items() for split, summary in summaries.items()))
  results = _evaluated_models(config, workdir, latest)
  table = report.benchmark_table(results)
  runs.report(f"\nevery model evaluated in {workdir} with these settings:\n{table}")
  if jax.process_index() == 0:
    (workdir / "eval" / "table.md").write_text(table + "\n")
    (workdir / "eval" / "table.json").write_text(
        json.dumps(results, indent=2, default=float) + "\n")
    report.plot_benchmarks(results, workdir / "eval")
  label, summaries = next(reversed(latest.items()))
  return {"summaries": summaries, "summary": next(iter(summaries.values())), "label": label,
          "results": results}


def _evaluated_models(config, workdir: pathlib.Path, latest: dict) -> dict:
  """`{model: {split: summary}}`: `latest` plus every other model whose summaries for these
  splits, at these evaluation settings, are in WORKDIR/eval (e.g. the base model a pipeline
  evaluated), models in the order their files were written."""
  found: dict[str, dict] = {}
  for split in eval_splits(config):
    one = copy.deepcopy(config)
    one.eval.split = split
    suffix = runs.counts_path(one, workdir, "").name  # "_{split}_n..._s....jsonl"
    for counts in sorted((workdir / "eval").glob(f"*{suffix}"), key=lambda p: p.stat().st_mtime):
      summary = evaluate_lib.summary_path(counts)
      label = counts.name[:-len(suffix)]
      if label and summary.is_file():
        found.setdefault(label, {})[split] = json.loads(summary.read_text())
  for label, summaries in latest.items():
    found[label] = summaries
  return found


def run_pipeline(config: config_dict.ConfigDict, workdir: pathlib.Path,
                 explicit_keys: Sequence[str] = ()) -> dict:
  """Warm start (cached), evaluate the base, RL for each arm from that base, evaluate each
  trained model, compare (on the first split of config.eval.split): one pass@k table (base and
  every arm), each arm against the base problem by problem (lost / gained), and a pass@k plot.
  Writes WORKDIR/results.md, results.json and passk.png."""
  config = runs.first_split(config)
  arms = runs.arm_dirs(config, workdir, explicit_keys)
  tokenizer, model_cfg, task, mesh = runs.setup(config, workdir)
  started = time.perf_counter()
  base, _ = runs.warm_start(config, workdir, model_cfg, tokenizer, task, mesh)
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  heldout = task.split(config.eval.split)
  summaries, records = {}, {}
  params = base
  with make_verifier(config.verifier) as verifier:
    records["base"], summaries["base"] = evaluate(
        config, base, sampler, tokenizer, heldout, verifier,
        runs.counts_path(config, workdir, "base"), "eval base")
    for name, (arm, rl_dir) in arms.items() if config.train.steps else ():  # 0: no RL
      periodic = runs.periodic_evaluator(arm, sampler, tokenizer, heldout, verifier)
      result = train_rl(arm, rl_dir, model_cfg, tokenizer, task.split("train"), verifier, base,
                        periodic, mesh, sampler)
      if result.interrupted:
        return {"interrupted": True}
      params, label = result.params, f"{name}-step{result.steps_done}"
      records[label], summaries[label] = evaluate(
          arm, params, sampler, tokenizer, heldout, verifier,
          runs.counts_path(arm, workdir, label), f"eval {label}")
  seconds = time.perf_counter() - started
  if jax.process_index() != 0:
    return {"summaries": summaries, "params": params}
  table = format_pass_table(summaries)
  trained = {label: r for label, r in records.items() if label != "base"}
  versus, comparisons = report.versus_base(records["base"], trained) if trained else ("", {})
  num_problems = config.eval.max_problems or len(heldout)
  text = (f"pass@k on {num_problems} held-out problems, n = {config.eval.n}, temperature "
          f"{config.eval.temperature}, top-p {config.eval.top_p}:\n{table}\n")
  if versus:
    text += ("\neach trained model against the base, problem by problem (points; paired "
             "bootstrap over problems; lost: solved by the base, never by the model; gained: "
             f"the reverse):\n{versus}\n")
  runs.report(f"\n({seconds:.0f} s this run)\n{text}")
  (workdir / "results.json").write_text(json.dumps(
      {"summaries": summaries, "versus_base": comparisons}, indent=2, default=float) + "\n")
  (workdir / "results.md").write_text(text)
  from agpo_jax.evaluation import plots  # noqa: PLC0415  (matplotlib only here)
  plots.plot_pass_at_k({label: {int(k): v for k, v in s["pass@k"].items()}
                        for label, s in summaries.items()},
                       f"held-out pass@k ({config.task.name})", workdir / "passk.png")
  return {"summaries": summaries, "params": params, "versus_base": comparisons}


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
    "annotate": relevance_app.run_annotate,
    "distill": relevance_app.run_distill,
}


def run(config: config_dict.ConfigDict, workdir: str | pathlib.Path,
        explicit_keys: Sequence[str] = ()) -> dict:
  """Run the mode named by `config.mode` in `workdir`; returns its results.

  `config.algo.preset` is written into the config first, except the keys in `explicit_keys`
  (the command line's overrides win over a preset). Then the whole config is checked, before
  anything else is done (no device, no tokenizer, nothing written to `workdir`).

  Raises:
    configs.ConfigError: naming every problem of the config, one line each
      (`validation.config_problems`).
  """
  configs.resolve_presets(config, explicit_keys)
  validation.check_config(config)
  mode = configs.require_choice(config, "mode", MODES)
  if "distributed" in config:  # first: nothing may touch a device before it
    multihost.initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    configs.save_config(config, workdir / "config.json")
  if mode in ("pipeline", "evaluate", "annotate"):  # these read the arms the command line picks
    return MODES[mode](config, workdir, explicit_keys)
  return MODES[mode](config, workdir)


def _debug_requested(argv: Sequence[str]) -> bool:
  """Whether argv asks for `--debug` (read before absl has parsed the flags)."""
  debug = False
  for arg in argv:
    if arg in ("--debug", "-debug") or arg.lower() in ("--debug=true", "--debug=1"):
      debug = True
    elif arg in ("--nodebug", "-nodebug") or arg.lower() in ("--debug=false", "--debug=0"):
      debug = False
  return debug


def error_lines(error: BaseException) -> list[str]:
  """The `error: ...` lines a user error prints: one per line of a ConfigError (one problem
  each), else the message (a KeyError's without its quotes)."""
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  message = str(message) or type(error).__name__
  if isinstance(error, (configs.ConfigError, KeyError)):
    return [f"error: {line}" for line in message.splitlines() if line.strip()]
  return [f"error: {message}"]


def _exit_with(lines: Sequence[str]) -> NoReturn:
  print("\n".join(lines), file=sys.stderr, flush=True)
  sys.exit(2)


_FLAG_VALUE = re.compile(r"^flag --config\.([A-Za-z0-9_.]+)=(.*?): (.*)$", re.DOTALL)


def flag_error_line(error: flags.Error, cfg: config_dict.ConfigDict | None) -> str:
  """One line for an absl flag error: for a `--config.x.y=v` value absl cannot parse, the key,
  the value and the type the field holds (read from `cfg`, the loaded config file)."""
  text = str(error).strip()
  match = _FLAG_VALUE.match(text)
  if not match:
    return f"error: {text.splitlines()[0] if text else type(error).__name__}"
  key, value, reason = match.groups()
  expected = ""
  parent, _, leaf = key.rpartition(".")
  try:
    node = cfg
    for part in parent.split(".") if parent else ():
      node = node[part]
    expected = node.get_ref(leaf).get_type().__name__
  except (AttributeError, KeyError, TypeError):
    pass
  if expected:
    allowed = f"must be {'an' if expected[0] in 'aeiou' else 'a'} {expected}"
  else:
    allowed = reason.splitlines()[0]
  return f"error: config.{key}: got {value!r} (from --config.{key}={value}); {allowed}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, after checking every --config.x override names a real key; a mistake
  is one `error:` line and exit status 2 (`--debug`: the traceback)."""
  debug = _debug_requested(argv[1:])
  config_path = configs.config_path_from_argv(argv)
  cfg = None
  if config_path is not None:
    try:
      cfg = configs.load_config_file(config_path)
      configs.check_overrides(cfg, argv[1:])
    except (KeyError, FileNotFoundError, ValueError) as error:
      if debug:
        raise
      _exit_with(error_lines(error))
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    if debug:
      traceback.print_exc()
    _exit_with([flag_error_line(error, cfg)])


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
  except USER_ERRORS as error:
    if _DEBUG.value:
      raise
    _exit_with(error_lines(error))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
