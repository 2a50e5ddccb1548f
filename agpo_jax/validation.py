"""Every check of a run config, in one place, before any work.

    problems = config_problems(config)   # [] when the config can run
    check_config(config)                 # raise ConfigError naming them all; log warnings

`main.run` calls `check_config` first, before the device mesh, the tokenizer or anything in the
workdir, so a bad value costs nothing: no warm start, no evaluation, no compile. Each problem
is one line, `config.x.y: got V; must be ...`, naming the key, the bad value and what is
allowed. Checked:

- the type and range of every field of every block of `defaults.base_config()` (fields newer
  than some configs, such as `model.checkpoint` or the update guard's `spike_factor` and
  `spike_warmup` in `train` and `sft`, are checked where present);
- names: `mode`, `task.name`, `algo.name`, `algo.agpo.variant`, `algo.preset`,
  `loss.aggregation`, `loss.kl_estimator`, `tokenizer.kind`, `tokenizer.chat_template`,
  `verifier.kind`, `model.preset`, the optimizer schedules, the splits of `eval.split`;
- cross-field rules the loops would otherwise hit late (or never, training on nothing):
  group-relative estimators need `sampling.num_samples >= 2`; the rollout batch splits into
  mini- and micro-batches, generate calls and data-parallel rows; `eval.n` splits into calls
  of `eval.samples_per_call`; a math task needs the 'math' verifier; DAPO's overlong window
  fits in `sampling.max_new_tokens`.

`train.steps` must be >= 1, except in mode 'pipeline', where 0 means "warm start and base
evaluation only" (said at start-up, like greedy sampling: see `config_warnings`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import typing
from collections.abc import Sequence
from typing import Any

from absl import logging

from agpo_jax import configs, defaults, tokenizers
from agpo_jax.config_specs import MISSING as _MISSING
from agpo_jax.config_specs import Bool, Int, Num, Spec, Str
from agpo_jax.config_specs import Checker as _Checker
from agpo_jax.config_specs import is_int as _is_int
from agpo_jax.config_specs import is_number as _is_number
from agpo_jax.config_specs import lookup as _lookup
from agpo_jax.algorithms import advantages, losses
from agpo_jax.algorithms.defaults import _PRESETS
from agpo_jax.models.config import ATTENTION, DTYPES, PRESETS, ModelConfig
from agpo_jax.tasks import (MATH_TASK_NAMES, ArithmeticTask, CountdownTask, MultiplicationTask,
                            RelevanceTask, benchmarks, task_names)
from agpo_jax.train.state import SCHEDULES
from agpo_jax.verifiers.grades import REFERENCE_KINDS

# Estimators whose advantage of a completion depends on the other completions of its group
# (a group baseline, spread or accuracy): with one sample per prompt they lose their signal
# (GRPO, Dr. GRPO, RLOO and A-GRAE give 0; AGPO keeps only R_neg on incorrect completions).
# reinforce_pp whitens over the whole batch; psr, nsr and w_reinforce score each completion
# alone.
GROUP_RELATIVE_ESTIMATORS = frozenset(
    {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "a_grae", "agpo"})
# `jax.random.key(..., impl=...)` names.
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
# What `config.tokenizer.chat_template` accepts (`tokenizers.CHAT_TEMPLATE_CHOICES` where the
# tokenizer module defines it).
CHAT_TEMPLATE_CHOICES = tuple(getattr(tokenizers, "CHAT_TEMPLATE_CHOICES",
                                      ("auto", *tokenizers.CHAT_TEMPLATES)))
START_METHODS = ("spawn", "forkserver")
MATH_SPLIT_NAMES = ("train", "test", "heldout")

def _optim_specs(block: str) -> dict[str, Spec]:
  return {
      f"{block}.lr": Num(0, low_open=True, note="the learning rate"),
      f"{block}.schedule": Str(SCHEDULES),
      f"{block}.warmup_steps": Int(0),
      f"{block}.end_lr_ratio": Num(0, 1),
      f"{block}.weight_decay": Num(0),
      f"{block}.b1": Num(0, 1, high_open=True),
      f"{block}.b2": Num(0, 1, high_open=True),
      f"{block}.eps": Num(0, low_open=True),
      f"{block}.grad_clip": Num(0, note="0 disables clipping"),
  }


FIELD_SPECS: dict[str, Spec] = {
    "mode": Str(defaults.MODES),
    "arms": Str(),
    "seed": Int(),
    "prng_impl": Str(PRNG_IMPLS),
    # tokenizer
    "tokenizer.kind": Str(tokenizers.TOKENIZER_KINDS),
    "tokenizer.path": Str(),
    "tokenizer.alphabet": Str(),
    "tokenizer.words": Str(),
    "tokenizer.chat_template": Str(CHAT_TEMPLATE_CHOICES),
    # model (its shape fields: `_check_model`)
    "model.preset": Str(tuple(PRESETS)),
    # verifier
    "verifier.kind": Str(REFERENCE_KINDS),
    "verifier.num_workers": Int(1, none_ok=True, note="None: min(cpu_count, 8)"),
    "verifier.timeout_s": Num(0, low_open=True),
    "verifier.math_verify_timeout_s": Int(1, note="whole seconds"),
    "verifier.max_answer_chars": Int(1),
    "verifier.string_fast_path": Bool(),
    "verifier.cache_size": Int(0),
    "verifier.start_method": Str(START_METHODS, note="never 'fork': it deadlocks under JAX"),
    "verifier.memory_limit_mb": Int(0, note="0 disables the limit"),
    "verifier.startup_timeout_s": Num(0, low_open=True),
    # sft
    "sft.steps": Int(0, note="0: no warm start"),
    "sft.batch_size": Int(1),
    "sft.num_microbatches": Int(1),
    "sft.label_smoothing": Num(0, 1, high_open=True, note="0: plain cross-entropy"),
    "sft.checkpoint_every": Int(1),
    "sft.log_every": Int(1),
    "sft.max_consecutive_skips": Int(1),
    "sft.spike_factor": Num(0, note="0 disables the loss-spike guard"),
    "sft.spike_warmup": Int(1),
    **_optim_specs("sft.optim"),
    # sampling
    "sampling.num_samples": Int(1),
    "sampling.temperature": Num(0, note="0: greedy decoding"),
    "sampling.top_k": Int(0, note="0: all tokens"),
    "sampling.top_p": Num(0, 1, low_open=True),
    "sampling.max_new_tokens": Int(1),
    "sampling.min_prompt_bucket": Int(1),
    "sampling.rollout_chunks": Int(1),
    "sampling.max_compactions": Int(0, note="0: the decode batch is never compacted"),
    # train (train.steps depends on the mode: `_check_steps`)
    "train.batch_prompts": Int(1),
    "train.num_minibatches": Int(1),
    "train.num_microbatches": Int(1),
    "train.epochs": Int(1),
    "train.log_every": Int(1),
    "train.checkpoint_every": Int(1),
    "train.max_to_keep": Int(1),
    "train.eval_every": Int(0, note="0: evaluate only at the end"),
    "train.eval_problems": Int(0, note="0: every problem of the split"),
    "train.eval_n": Int(1),
    "train.max_consecutive_skips": Int(1),
    "train.spike_factor": Num(0, note="0 disables the loss-spike guard"),
    "train.spike_warmup": Int(1),
    "train.token_mass_metrics": Bool(),
    "train.balance_labels": Bool(),
    **_optim_specs("optim"),
    # algo
    "algo.name": Str(advantages.estimator_names()),
    "algo.preset": Str(("", *sorted(_PRESETS)), note="'': none"),
    "algo.eps": Num(0, low_open=True),
    "algo.correct_threshold": Num(),
    "algo.agpo.variant": Str(tuple(advantages._AGPO_VARIANTS)),  # noqa: SLF001
    "algo.agpo.delta": Num(0, low_open=True),
    "algo.agpo.r_neg": Num(high=0, note="a push-down of incorrect completions"),
    "algo.agpo.lambda_pos": Num(0),
    "algo.agpo.max_pos": Num(0, low_open=True),
    "algo.agpo.mask_shared_tokens": Bool(),
    "algo.w_reinforce.lambda_pos": Num(0),
    "algo.a_grae.alpha": Num(0, low_open=True),
    # loss
    "loss.eps_low": Num(0, 1),
    "loss.eps_high": Num(0),
    "loss.kl_coef": Num(0, note="0: no KL term"),
    "loss.kl_estimator": Str(losses.KL_ESTIMATORS),
    "loss.entropy_coef": Num(0, note="an entropy bonus; 0: none"),
    "loss.tis_cap": Num(0, note="0: no truncated importance sampling"),
    "loss.aggregation": Str(losses.AGGREGATIONS),
    # reward
    "reward.dynamic_sampling": Bool(),
    "reward.dynamic_sampling_max_batches": Int(1),
    "reward.overlong_penalty": Bool(),
    "reward.overlong_cache_len": Int(1),
    "reward.overlong_filter": Bool(),
    # eval
    "eval.n": Int(1),
    "eval.temperature": Num(0, note="0: greedy decoding"),
    "eval.top_p": Num(0, 1, low_open=True),
    "eval.top_k": Int(0, note="0: all tokens"),
    "eval.max_new_tokens": Int(1, none_ok=True, note="None: sampling.max_new_tokens"),
    "eval.batch_prompts": Int(1),
    "eval.samples_per_call": Int(1),
    "eval.split": Str(nonempty=True),
    "eval.max_problems": Int(0, note="0: every problem"),
    "eval.seed": Int(),
    # distributed
    "distributed.initialize": Bool(),
    "distributed.coordinator_address": Str(),
    "distributed.num_processes": Int(0, note="0: from the environment"),
    "distributed.process_id": Int(-1, note="-1: from the environment"),
    "distributed.cpu_collectives": Str(),
    # memory
    "memory.check": Bool(),
    "memory.device_gib": Num(0, note="0: what the runtime reports"),
    # annotate / distill (relevance_app)
    "annotate.split": Str(nonempty=True),
    "annotate.n": Int(1),
    "annotate.samples_per_call": Int(1),
    "annotate.batch_prompts": Int(1),
    "annotate.temperature": Num(0),
    "annotate.top_p": Num(0, 1, low_open=True),
    "annotate.top_k": Int(0),
    "annotate.max_new_tokens": Int(0, note="0: sampling.max_new_tokens"),
    "annotate.seed": Int(),
    "annotate.min_confidence": Num(0, 1),
    "student.num_buckets": Int(1),
    "student.dim": Int(1),
    "student.hidden": Int(0, note="0: linear"),
    "student.steps": Int(1),
    "student.batch_size": Int(1),
    "student.learning_rate": Num(0, low_open=True),
    "student.weight_decay": Num(0),
    "student.class_weighting": Str(("none", "balanced")),
    "student.seed": Int(),
    # sample
    "sample.num_samples": Int(1),
}

# Keys whose absence is fine: the code reading them has a default, or they are newer than
# some configs.
OPTIONAL_KEYS = frozenset({
    "arms", "tokenizer.words", "train.token_mass_metrics", "train.balance_labels",
    "algo.agpo.mask_shared_tokens", "sft.label_smoothing", "sampling.max_compactions",
    *(key for key in FIELD_SPECS if key.startswith(("annotate.", "student."))), "sampling.rollout_chunks", "algo.preset",
    "train.spike_factor", "train.spike_warmup",
    "sft.max_consecutive_skips", "sft.spike_factor", "sft.spike_warmup",
    *(key for key in FIELD_SPECS if key.startswith("distributed.")),
})


def _rl_runs(config: Any) -> bool:
  """Whether this run's mode trains with RL (pipeline mode with train.steps=0 does not)."""
  mode, steps = _lookup(config, "mode"), _lookup(config, "train.steps")
  return mode == "rl" or (mode == "pipeline" and _is_int(steps) and steps >= 1)


def _check_steps(c: _Checker) -> None:
  mode = c.get("mode")
  if mode == "pipeline":
    c.field("train.steps", Int(0, note="0 in mode 'pipeline': warm start and base evaluation "
                                        "only"))
  else:
    c.field("train.steps", Int(1, note="RL steps; only mode 'pipeline' accepts 0: warm start "
                                        "and base evaluation only"))


def _check_model(c: _Checker) -> None:
  """`config.model`: the preset, a pretrained checkpoint, the per-field overrides."""
  model = c.get("model")
  if model is _MISSING:
    c.problem("model", "missing; every run config starts from agpo_jax.defaults.base_config()")
    return
  checkpoint = model.get("checkpoint", "")
  if checkpoint is None:
    checkpoint = ""
  if not isinstance(checkpoint, str):
    c.problem("model.checkpoint", f"got {checkpoint!r}; must be a path (a Hugging Face "
              "checkpoint directory or a .gguf file) or '' for none")
  elif checkpoint and not os.path.exists(checkpoint):
    c.problem("model.checkpoint", f"got {checkpoint!r}, which does not exist; must be a Hugging "
              "Face checkpoint directory or a .gguf file, or '' for a randomly initialised "
              "preset")
  fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
  for name in model:
    if name not in fields and name not in ("preset", "checkpoint"):
      c.problem(f"model.{name}", f"not a model field; the fields are "
                f"{('preset', 'checkpoint', *fields)}")
  positive = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
              "mlp_dim", "max_seq_len", "rope_original_max_len")
  specs: dict[str, Spec] = {
      **{name: Int(1, none_ok=True, note="None: the preset's") for name in positive},
      "rope_theta": Num(0, low_open=True, none_ok=True),
      "rope_scaling_factor": Num(0, none_ok=True, note="0: no rope scaling"),
      "rope_low_freq_factor": Num(0, low_open=True, none_ok=True),
      "rope_high_freq_factor": Num(0, low_open=True, none_ok=True),
      "rms_eps": Num(0, low_open=True, none_ok=True),
      "param_dtype": Str(DTYPES, none_ok=True),
      "dtype": Str(DTYPES, none_ok=True),
      "attention": Str(ATTENTION, none_ok=True),
  }
  hints = typing.get_type_hints(ModelConfig)
  generic = {int: Int(none_ok=True), float: Num(none_ok=True), bool: Bool(),
             str: Str(none_ok=True)}
  for name in fields:
    if name in model:
      spec = specs.get(name, generic.get(hints[name], Str(none_ok=True)))
      if isinstance(spec, Bool) and model[name] is None:
        continue  # a placeholder: the preset's value
      c.field(f"model.{name}", spec)
  if checkpoint or not c.ok("model.preset"):
    return  # the checkpoint fixes the shapes: pretrained.model_config checks the overrides
  shape_keys = [f"model.{name}" for name in fields if name in model]
  if not c.ok(*shape_keys):
    return
  resolved = dataclasses.asdict(PRESETS[model["preset"]])
  resolved.update({name: model[name] for name in fields
                   if name in model and model[name] is not None})
  if resolved["num_heads"] % resolved["num_kv_heads"]:
    c.problem("model.num_kv_heads", f"got {resolved['num_kv_heads']}; must divide "
              f"model.num_heads={resolved['num_heads']}")
  if resolved["head_dim"] % 2:
    c.problem("model.head_dim", f"got {resolved['head_dim']}; must be even (rotary embeddings)")


def _check_tokenizer(c: _Checker) -> None:
  if not c.ok("tokenizer.kind", "tokenizer.path", "tokenizer.alphabet"):
    return
  kind, path = c.get("tokenizer.kind"), c.get("tokenizer.path")
  if kind == "char":
    if not c.get("tokenizer.alphabet"):
      c.problem("tokenizer.alphabet", "got ''; the char tokenizer needs a non-empty alphabet")
    elif c.ok("tokenizer.words") and c.get("tokenizer.words"):
      try:
        tokenizers.CharTokenizer(c.get("tokenizer.alphabet"),
                                 words=c.get("tokenizer.words").split())
      except ValueError as e:
        c.problem("tokenizer.words", str(e))
    return
  checkpoint = c.get("model.checkpoint")
  if not path and not (isinstance(checkpoint, str) and checkpoint):
    c.problem("tokenizer.path", f"got ''; tokenizer.kind={kind!r} needs the path of its "
              + ("`.model` file" if kind == "sentencepiece" else "tokenizer.json or its "
                 "directory") + " (or a model.checkpoint to take it from)")
  elif path and not os.path.exists(path):
    c.problem("tokenizer.path", f"got {path!r}, which does not exist")


def _check_mesh(c: _Checker) -> None:
  sizes = {}
  for axis in ("data", "fsdp", "tensor"):
    key = f"mesh.{axis}"
    value = c.get(key)
    if value is _MISSING:
      c.problem(key, "missing; every run config starts from agpo_jax.defaults.base_config()")
    elif not _is_int(value) or not (value >= 1 or value == -1):
      c.problem(key, f"got {value!r}; must be an integer >= 1, or -1 for the remaining devices")
    else:
      sizes[axis] = value
  if list(sizes.values()).count(-1) > 1:
    c.problem("mesh", f"got {sizes}; at most one axis may be -1 (the remaining devices)")


def _check_task(c: _Checker) -> None:
  """`config.task` (the named task's own block) and the splits of `config.eval.split`."""
  if not c.field("task.name", Str(tuple(task_names()))):
    return
  name = c.get("task.name")
  if name == "multiplication":
    specs = {"low": Int(0), "high": Int(0), "digits": Int(1), "num_heldout": Int(1),
             "split_seed": Int()}
    for field, spec in specs.items():
      c.field(f"task.{field}", spec)
    if c.ok(*(f"task.{f}" for f in ("low", "high", "digits", "num_heldout"))):
      low, high = c.get("task.low"), c.get("task.high")
      digits, heldout = c.get("task.digits"), c.get("task.num_heldout")
      if low > high:
        c.problem("task.low", f"got {low}; must be <= task.high={high}")
      elif high * high >= 10**digits:
        c.problem("task.digits", f"got {digits}; {high}*{high} needs more digits")
      elif heldout >= (high - low + 1) ** 2:
        c.problem("task.num_heldout", f"got {heldout}; must be < the {(high - low + 1) ** 2} "
                  "problems of the task (the rest are the training split)")
    valid_splits: tuple[str, ...] = MultiplicationTask.SPLITS
  elif name in MATH_TASK_NAMES:
    # Absent fields take `math_task_config`'s defaults (a testbed block renamed to a math task).
    c.field("task.train_source", Str(nonempty=True), optional=True)
    c.field("task.data_dir", Str(none_ok=True), optional=True)
    c.field("task.system_prompt", Str(none_ok=True), optional=True)
    c.field("task.max_problems", Int(0, note="0: every problem"), optional=True)
    source = c.get("task.train_source")
    if c.ok("task.train_source") and not _is_math_source(source, jsonl_ok=True):
      c.problem("task.train_source", f"got {source!r}; must be one of "
                f"{tuple(benchmarks.benchmark_names())}, a 'tfds:NAME[:SPLIT]' source or an "
                "existing .jsonl / .jsonl.gz file")
    data_dir = c.get("task.data_dir")
    if c.ok("task.data_dir") and data_dir and not os.path.isdir(data_dir):
      c.problem("task.data_dir", f"got {data_dir!r}, which is not a directory")
    if c.get("verifier.kind") != "math" and c.ok("verifier.kind"):
      c.problem("verifier.kind", f"got {c.get('verifier.kind')!r}; the math task {name!r} "
                "needs 'math' (answers are graded by mathematical equivalence)")
    valid_splits = (*MATH_SPLIT_NAMES, *benchmarks.benchmark_names())
  elif name == "countdown":
    specs = {"numbers": Int(2, 5), "low": Int(0), "high": Int(0), "ops": Str(nonempty=True),
             "num_train": Int(1), "num_heldout": Int(1), "seed": Int()}
    for field, spec in specs.items():
      c.field(f"task.{field}", spec)
    if c.ok("task.low", "task.high") and c.get("task.low") > c.get("task.high"):
      c.problem("task.low", f"got {c.get('task.low')}; must be <= task.high={c.get('task.high')}")
    ops = c.get("task.ops")
    if c.ok("task.ops") and (set(ops) - set("+-*") or len(set(ops)) < len(ops)):
      c.problem("task.ops", f"got {ops!r}; must be distinct operators from '+-*'")
    valid_splits = CountdownTask.SPLITS
  elif name == "relevance":
    specs = {"source": Str(nonempty=True), "label_set": Str(nonempty=True),
             "partial_credit": Num(0, 1, high_open=True), "prompt_format": Str(("text", "chat")),
             "answer_format": Str(("label", "reason")), "num_train": Int(0),
             "num_heldout": Int(1), "num_unlabeled": Int(1), "class_proportions": Str(),
             "noise_rate": Num(0, 1), "seed": Int(), "instruction": Str(none_ok=True),
             "system_prompt": Str(none_ok=True)}
    for field, spec in specs.items():
      c.field(f"task.{field}", spec, optional=True)
    source = c.get("task.source")
    if c.ok("task.source") and source != "synthetic" and not os.path.isfile(source):
      c.problem("task.source", f"got {source!r}; must be 'synthetic' or an existing .jsonl / "
                ".tsv / .csv file")
    if c.ok("verifier.kind") and c.get("verifier.kind") != "relevance":
      c.problem("verifier.kind", f"got {c.get('verifier.kind')!r}; the relevance task needs "
                "'relevance' (labels with partial credit)")
    if c.get("task.prompt_format") == "chat" and c.get("tokenizer.kind") == "char":
      c.problem("task.prompt_format", "got 'chat'; a chat prompt needs a tokenizer with a chat "
                "template (tokenizer.kind 'hf' or 'sentencepiece'), not 'char'")
    valid_splits = RelevanceTask.SPLITS
  elif name == "arithmetic":
    specs = {"low": Int(0), "high": Int(0), "terms": Int(2), "ops": Str(nonempty=True),
             "num_train": Int(1), "num_heldout": Int(1), "seed": Int(),
             "instruction": Str(), "system_prompt": Str(none_ok=True)}
    for field, spec in specs.items():  # absent fields take arithmetic_config's defaults
      c.field(f"task.{field}", spec, optional=True)
    if not any(f"task.{field}" in c.bad for field in specs):
      try:  # the draw's own checks (operators, range, enough distinct expressions)
        ArithmeticTask(c.get("task"))
      except configs.ConfigError as e:
        c.problem("task", str(e))
    valid_splits = ArithmeticTask.SPLITS
  else:
    return  # a task registered elsewhere: its own constructor checks its block
  if c.ok("eval.split"):
    splits = [s.strip() for s in c.get("eval.split").split(",") if s.strip()]
    if not splits:
      c.problem("eval.split", f"got {c.get('eval.split')!r}; names no split")
    for split in splits:
      if split not in valid_splits and not (name in MATH_TASK_NAMES and split.startswith("tfds:")):
        extra = " or a 'tfds:NAME[:SPLIT]' source" if name in MATH_TASK_NAMES else ""
        c.problem("eval.split", f"got {c.get('eval.split')!r}: {split!r} is not a split of "
                  f"task {name!r}; each comma-separated split must be one of {valid_splits}"
                  f"{extra}")


def _is_math_source(source: str, jsonl_ok: bool) -> bool:
  if benchmarks.is_benchmark_source(source):
    return True
  return jsonl_ok and source.endswith((".jsonl", ".jsonl.gz")) and pathlib.Path(source).is_file()


def _check_sample(c: _Checker) -> None:
  prompts = c.get("sample.prompts")
  if prompts is _MISSING:
    c.problem("sample.prompts", "missing; every run config starts from agpo_jax.defaults."
              "base_config(), which has it")
  elif (isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts
        or not all(isinstance(p, str) and p for p in prompts)):
    c.problem("sample.prompts", f"got {prompts!r}; must be a non-empty tuple of non-empty "
              "strings")


def _check_rules(c: _Checker) -> None:
  """The rules between fields."""
  rl = _rl_runs(c.config)
  name, samples = c.get("algo.name"), c.get("sampling.num_samples")
  if rl and c.ok("algo.name", "sampling.num_samples") and samples < 2 and (
      name in GROUP_RELATIVE_ESTIMATORS):
    c.problem("sampling.num_samples", f"got {samples}; algo.name={name!r} is group-relative and "
              "needs >= 2 samples per prompt (a group of one has no baseline to compare with); "
              "estimators that work with 1: "
              f"{tuple(sorted(set(advantages.estimator_names()) - GROUP_RELATIVE_ESTIMATORS))}")
  keys = ("train.batch_prompts", "sampling.num_samples", "train.num_minibatches",
          "train.num_microbatches")
  if c.ok(*keys):
    prompts, mini, micro = (c.get(k) for k in (keys[0], keys[2], keys[3]))
    rows = prompts * samples
    if rows % (mini * micro):
      c.problem("train.batch_prompts", f"got {prompts}: {prompts} x sampling.num_samples="
                f"{samples} = {rows} rows must split into train.num_minibatches x "
                f"train.num_microbatches = {mini} x {micro} equal parts")
  chunks = c.get("sampling.rollout_chunks")
  if c.ok("train.batch_prompts", "sampling.rollout_chunks") and (
      c.get("train.batch_prompts") % chunks):
    c.problem("sampling.rollout_chunks", f"got {chunks}; must divide train.batch_prompts="
              f"{c.get('train.batch_prompts')} (each generate call samples an equal share)")
  data, fsdp = c.get("mesh.data"), c.get("mesh.fsdp")
  if c.ok("train.batch_prompts", "mesh.data", "mesh.fsdp") and -1 not in (data, fsdp) and (
      c.get("train.batch_prompts") % (data * fsdp)):
    c.problem("train.batch_prompts", f"got {c.get('train.batch_prompts')}; must be a multiple of "
              f"the data-parallel size mesh.data x mesh.fsdp = {data} x {fsdp}")
  if c.ok("sft.batch_size", "sft.num_microbatches") and (
      c.get("sft.batch_size") % c.get("sft.num_microbatches")):
    c.problem("sft.num_microbatches", f"got {c.get('sft.num_microbatches')}; must divide "
              f"sft.batch_size={c.get('sft.batch_size')}")
  n, per_call = c.get("eval.n"), c.get("eval.samples_per_call")
  if c.ok("eval.n", "eval.samples_per_call") and per_call < n and n % per_call:
    c.problem("eval.samples_per_call", f"got {per_call}; eval.n={n} must be a multiple of it "
              "(each problem's samples are drawn in equal calls)")
  eval_n, every = c.get("train.eval_n"), c.get("train.eval_every")
  if rl and c.ok("train.eval_n", "train.eval_every", "eval.samples_per_call") and every and (
      per_call < eval_n and eval_n % per_call):
    c.problem("train.eval_n", f"got {eval_n}; must be a multiple of eval.samples_per_call="
              f"{per_call} (or at most it) for the evaluations during RL")
  if c.ok("reward.overlong_penalty", "reward.overlong_cache_len", "sampling.max_new_tokens") and (
      c.get("reward.overlong_penalty")):
    cache_len, max_len = c.get("reward.overlong_cache_len"), c.get("sampling.max_new_tokens")
    if cache_len > max_len:
      c.problem("reward.overlong_cache_len", f"got {cache_len}; with reward.overlong_penalty "
                f"it must be <= sampling.max_new_tokens={max_len} (DAPO's L_cache <= L_max)")
  clip = c.get("loss.dual_clip_c")
  if clip is _MISSING:
    c.problem("loss.dual_clip_c", "missing; every run config starts from agpo_jax.defaults."
              "base_config(), which has it")
  elif not _is_number(clip) or not (clip == 0 or clip > 1):
    c.problem("loss.dual_clip_c", f"got {clip!r}; must be 0 (off) or a number > 1")
  if c.ok("distributed.num_processes", "distributed.process_id"):
    count, index = c.get("distributed.num_processes"), c.get("distributed.process_id")
    if count and index >= count:
      c.problem("distributed.process_id", f"got {index}; must be < distributed.num_processes="
                f"{count} (or -1: from the environment)")
  if c.ok("arms"):
    arms = [a.strip() for a in c.get("arms").split(",") if a.strip()]
    unknown = [a for a in arms if a not in _PRESETS]
    if unknown:
      c.problem("arms", f"got {c.get('arms')!r}: {unknown[0]!r} is not an algorithm preset; "
                f"each arm must be one of {tuple(sorted(_PRESETS))}")
    elif len(set(arms)) < len(arms):
      c.problem("arms", f"got {c.get('arms')!r}; an arm is named twice")
  written = {"multiplication": MultiplicationTask.alphabet, "countdown": CountdownTask.alphabet}
  if c.get("task.prompt_format") == "text":
    written["relevance"] = RelevanceTask.alphabet
  task = c.get("task.name")
  if c.ok("task.name", "tokenizer.kind", "tokenizer.alphabet") and task in written and (
      c.get("tokenizer.kind") == "char"):
    missing = sorted(set(written[task]) - set(c.get("tokenizer.alphabet")))
    if missing:
      c.problem("tokenizer.alphabet", f"got {c.get('tokenizer.alphabet')!r}; the {task} "
                f"task writes {written[task]!r}, so it must hold {missing} too")


def config_problems(config: Any) -> list[str]:
  """Every problem of a run config, one line each (`config.x.y: got V; must be ...`); empty
  when the config can run.

  Args:
    config: The run config (after `configs.resolve_presets`, which writes `algo.preset`'s
      recipe into it).

  Returns:
    The problems, in the order of the blocks of `defaults.base_config()`.
  """
  c = _Checker(config)
  for key, spec in FIELD_SPECS.items():
    c.field(key, spec, optional=key in OPTIONAL_KEYS)
  _check_steps(c)
  _check_model(c)
  _check_tokenizer(c)
  _check_mesh(c)
  _check_task(c)
  _check_sample(c)
  _check_rules(c)
  return c.problems


def config_warnings(config: Any) -> list[str]:
  """What a valid config does that its user may not expect, one line each (logged at start-up
  by `check_config`)."""
  notes = []
  mode, steps = _lookup(config, "mode"), _lookup(config, "train.steps")
  if mode == "pipeline" and steps == 0:
    notes.append("config.train.steps=0 in mode 'pipeline': warm start and base evaluation only, "
                 "no RL")
  samples = _lookup(config, "sampling.num_samples")
  if _lookup(config, "sampling.temperature") == 0 and _is_int(samples) and samples > 1:
    notes.append("sampling.temperature=0: greedy decoding, every sample of a group is identical")
  n = _lookup(config, "eval.n")
  if _lookup(config, "eval.temperature") == 0 and _is_int(n) and n > 1:
    notes.append("eval.temperature=0: greedy decoding, the eval.n samples of a problem are "
                 "identical")
  return notes


def check_config(config: Any) -> None:
  """Refuse a config that cannot run, naming every problem; log its warnings.

  Raises:
    configs.ConfigError: one line per problem (`config_problems`).
  """
  problems = config_problems(config)
  if problems:
    raise configs.ConfigError("\n".join(problems))
  for note in config_warnings(config):
    logging.warning("%s", note)
