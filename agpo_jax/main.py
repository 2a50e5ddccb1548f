"""Entry point: `python -m agpo_jax.main --config=configs/default.py [--workdir=DIR]`.

The config file selects the mode and everything else; `--config.a.b=value` overrides any field
(a mistyped key is an error that names it).
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from agpo_jax import configs, sampling
from agpo_jax.models import transformer
from agpo_jax.models.config import resolve_model_config
from agpo_jax.tokenizers import load_tokenizer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def run_sample(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """Draw completions from the configured model and print them with decode throughput."""
  tokenizer = load_tokenizer(config.tokenizer)
  model_cfg = resolve_model_config(config.model, tokenizer.vocab_size)
  rng = jax.random.key(config.seed, impl=config.prng_impl)
  params = transformer.init_params(model_cfg, rng)
  sampler = sampling.Sampler(model_cfg, tokenizer.pad_id, config.sampling.min_prompt_bucket)
  sp = sampling.sampling_params(config.sampling, tokenizer.stop_ids, tokenizer.vocab_size)
  prompts = [tokenizer.encode(p, add_bos=True) for p in config.sample.prompts]
  num = config.sample.num_samples
  rollout = sampler.generate(params, prompts, num, jax.random.fold_in(rng, 1), sp)
  jax.block_until_ready(rollout)  # first call includes compilation
  start = time.perf_counter()
  rollout = jax.block_until_ready(sampler.generate(params, prompts, num,
                                                   jax.random.fold_in(rng, 2), sp))
  seconds = time.perf_counter() - start
  tokens = int(np.asarray(rollout.lengths).sum())
  print(f"model: {model_cfg.num_params:,} parameters (random init), {len(prompts)} prompts "
        f"x {num} samples, {tokens} tokens in {seconds * 1e3:.1f} ms "
        f"({tokens / seconds:,.0f} tokens/s)")
  for row in range(rollout.tokens.shape[0]):
    prompt = config.sample.prompts[row // num]
    n = int(rollout.lengths[row])
    text = tokenizer.decode(np.asarray(rollout.tokens[row, :n]))
    flag = " [truncated]" if bool(rollout.truncated[row]) else ""
    print(f"  {prompt!r} -> {text!r}{flag}")
  return {"tokens_per_second": tokens / seconds, "rollout": rollout}


MODES: dict[str, Callable[[config_dict.ConfigDict, pathlib.Path], dict]] = {
    "sample": run_sample,
}


def run(config: config_dict.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Run the mode named by `config.mode` in `workdir`; returns its results."""
  mode = configs.require_choice(config, "mode", MODES)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/default.py")
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or f"runs/{_CONFIG.value.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
  try:
    run(_CONFIG.value, workdir)
  except configs.ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
