"""Evaluation: `n` samples per problem, verified, written as per-problem counts.

Problems are processed in fixed chunks of `eval.batch_prompts`; chunk `i` samples with
`fold_in(rng, i)` (and sub-call `j` of a chunk with `fold_in(fold_in(rng, i), j)`), so the
counts do not depend on how often the evaluation was interrupted: a resumed evaluation skips
the problems already in the count file and reproduces the rest exactly.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import config_dict
from tqdm import tqdm

from agpo_jax import sampling
from agpo_jax.sharding import multihost, rules
from agpo_jax.evaluation import counts as counts_lib
from agpo_jax.tasks import encode_prompt
from agpo_jax.tokenizers import Tokenizer
from agpo_jax.verifiers.grades import CORRECT


def eval_sampling_params(train: sampling.SamplingParams, cfg: Any) -> sampling.SamplingParams:
  """The training sampler's parameters (stop ids, vocabulary limit, budget) with the
  temperature, top-k / top-p and budget of a `config.eval` block."""
  return train.replace(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                       max_new_tokens=cfg.max_new_tokens or train.max_new_tokens)


def summary_path(counts_path: pathlib.Path) -> pathlib.Path:
  """Where `evaluate` writes the JSON summary of the counts in `counts_path`."""
  return counts_path.with_name(counts_path.stem + ".summary.json")


def eval_splits(config: config_dict.ConfigDict) -> list[str]:
  """The splits (or benchmarks) `config.eval.split` names: one, or several comma-separated."""
  splits = [s.strip() for s in str(config.eval.split).split(",") if s.strip()]
  if not splits:
    raise ValueError(f"eval.split={config.eval.split!r} names no split")
  return splits


def evaluate(config: config_dict.ConfigDict, params: Any, sampler: sampling.Sampler,
             tokenizer: Tokenizer, problems: Sequence[Any], verifier: Any,
             counts_path: pathlib.Path | None = None, label: str = "eval"
             ) -> tuple[list[dict], dict]:
  """Sample `config.eval.n` completions per problem; returns (count records, summary)."""
  cfg = config.eval
  if cfg.n % cfg.samples_per_call and cfg.samples_per_call < cfg.n:
    raise ValueError(f"eval.n={cfg.n} must be a multiple of eval.samples_per_call="
                     f"{cfg.samples_per_call}")
  if cfg.max_problems:
    problems = problems[:cfg.max_problems]
  sp = eval_sampling_params(sampler.sampling, cfg)
  per_call = min(cfg.samples_per_call, cfg.n)
  rng = jax.random.key(cfg.seed, impl=config.prng_impl)

  # Several processes: process 0 owns the counts file and hands its records to the others, so
  # that every process agrees on what is left; each process samples and grades its share of
  # every chunk, and the counts are gathered.
  primary = jax.process_index() == 0
  mesh = sampler.mesh
  dp = 1 if mesh is None else rules.data_parallel_size(mesh)
  records = {}
  if counts_path is not None and primary:
    counts_path.parent.mkdir(parents=True, exist_ok=True)
  if counts_path is not None and primary and counts_path.exists():
    records = {r["id"]: r for r in counts_lib.read_counts(counts_path)}
  if jax.process_count() > 1:
    records = multihost.allgather_objects(records)[0]
  chunks = [problems[i:i + cfg.batch_prompts] for i in range(0, len(problems),
                                                              cfg.batch_prompts)]
  todo = [i for i, chunk in enumerate(chunks) if any(p.id not in records for p in chunk)]
  started = time.perf_counter()
  bar = tqdm(total=len(problems), initial=len(problems) - sum(len(chunks[i]) for i in todo),
             desc=label, unit="problem", leave=False, dynamic_ncols=True, disable=not primary)
  for index in todo:
    chunk = chunks[index]
    # Pad the chunk so that it splits over the data-parallel devices; padding is dropped.
    padded, real = multihost.pad_to_multiple(chunk, dp)
    mine = padded[slice(None) if mesh is None else multihost.process_rows(len(padded), mesh)]
    prompts = [encode_prompt(tokenizer, p) for p in mine]
    chunk_rng = jax.random.fold_in(rng, index)
    correct = np.zeros((len(mine), 0), np.int8)
    answers: list[list[str]] = [[] for _ in mine]
    for call in range(cfg.n // per_call):
      rollout = sampler.generate(params, prompts, per_call, jax.random.fold_in(chunk_rng, call),
                                 sp)
      grades = verifier.grade(sampling.decode_completions(tokenizer, rollout),
                              [p.reference for p in mine for _ in range(per_call)])
      solved = np.array([g.status == CORRECT for g in grades]).reshape(len(mine), per_call)
      correct = np.concatenate([correct, solved.astype(np.int8)], axis=1)
      for row, grade in enumerate(grades):
        answers[row // per_call].append(grade.answer or None)
    correct = multihost.allgather_rows(correct)[:real]
    answers = [a for part in multihost.allgather_objects(answers) for a in part][:real]
    new = [counts_lib.make_record(p.id, correct[i], answers=answers[i])
           for i, p in enumerate(chunk) if p.id not in records]
    if counts_path is not None and primary:
      counts_lib.append_counts(counts_path, new)
    records.update({r["id"]: r for r in new})
    bar.update(len(chunk))
  bar.close()
  ordered = [records[p.id] for p in problems]
  summary = counts_lib.summarize(ordered)
  if counts_path is not None and primary:  # the JSON summary beside its count file
    summary_path(counts_path).write_text(json.dumps(summary, indent=2, default=float) + "\n")
  summary["seconds"] = time.perf_counter() - started
  return ordered, summary
