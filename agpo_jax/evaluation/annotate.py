"""Annotate a pool of unlabeled pairs with a policy: majority vote over n samples per pair.

Each problem is sampled `n` times; each completion's label is parsed (`verifiers.relevance.
parse_label`); the annotation is the majority label (ties go to the label sampled first, as in
`passk.majority_answer`) with its vote share `votes / n` as confidence (unparseable samples
vote for nothing, so they lower the confidence). One JSON line per problem:

    {"id": "syn000123", "label": "irrelevant", "confidence": 0.75, "n": 8,
     "votes": {"irrelevant": 6, "partially relevant": 1}, "unparsed": 1, "gold": "irrelevant"}

`label` is null (confidence 0) when no sample names a label; `gold` is present when the problem
carries one (the synthetic pool keeps its hidden gold so annotation quality can be scored with
`annotation_report`).

The policy is any `SampleFn`, `sample(problems, n, chunk) -> completions[problem][sample]`, so
a stub with known label probabilities tests the voting; `policy_sampler` makes one from a
`Sampler`, tokenizer and parameters. Problems go in fixed chunks of `batch_size`, and chunk `i`
is sampled as `sample(chunk, n, i)` (`policy_sampler` draws it with `fold_in(rng, i)`), so a
run restarted on the same output file skips the annotated problems and reproduces the rest.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax

from agpo_jax import sampling
from agpo_jax.evaluation.classification import classification_report
from agpo_jax.evaluation.passk import majority_answer
from agpo_jax.sharding import multihost, rules
from agpo_jax.tasks import encode_prompt
from agpo_jax.tokenizers import Tokenizer
from agpo_jax.verifiers.relevance import parse_label

SampleFn = Callable[[Sequence[Any], int, int], Sequence[Sequence[str]]]


def vote(completions: Sequence[str], labels: Sequence[str], max_answer_chars: int = 1000
         ) -> dict:
  """The majority label of one problem's completions.

  Returns:
    `{"label", "confidence", "n", "votes" (label -> count, labels with votes, in label-set
    order), "unparsed"}`.
  """
  parsed = [parse_label(c, labels, max_answer_chars=max_answer_chars)[0] for c in completions]
  winner = majority_answer(parsed)
  votes = {label: parsed.count(label) for label in labels if label in parsed}
  n = len(completions)
  return {"label": winner, "confidence": votes[winner] / n if winner is not None else 0.0,
          "n": n, "votes": votes, "unparsed": parsed.count(None)}


def _existing(path: pathlib.Path) -> dict[str, dict]:
  """The records of an annotation file; a torn last line (no newline, no JSON) is cut off."""
  if not path.exists():
    return {}
  raw = path.read_bytes()
  records = {}
  lines = raw.split(b"\n")
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if number == len(lines):  # text after the last newline: an unfinished write, cut off
        with open(path, "r+b") as f:
          f.truncate(len(raw) - len(line))
        return records
      raise ValueError(f"{path}:{number}: not a JSON annotation record") from None
    if not isinstance(record, dict) or "id" not in record:
      raise ValueError(f"{path}:{number}: an annotation record needs an 'id'")
    records[str(record["id"])] = record
  if raw and not raw.endswith(b"\n"):  # a complete last record that lacks only its newline
    with open(path, "ab") as f:
      f.write(b"\n")
  return records


def _append(path: pathlib.Path, records: Sequence[dict]) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def annotate(problems: Sequence[Any], sample: SampleFn, n: int, labels: Sequence[str],
             out_path: str | pathlib.Path | None = None, *, batch_size: int = 64,
             max_answer_chars: int = 1000) -> list[dict]:
  """Label `problems` by majority vote over `n` samples each.

  Args:
    problems: The pool (problems with an `id`, and a `label` attribute when the gold is known).
    sample: The policy, `sample(chunk, n, chunk_index) -> completions per problem`.
    n: Samples per problem.
    labels: The label set.
    out_path: The JSONL file to write (appended per chunk, fsync'd; problems already in it are
      skipped); None: nothing is written.
    batch_size: Problems per chunk.
    max_answer_chars: Passed to the label parser.

  Returns:
    One record per problem, in `problems` order (see the module docstring).
  """
  if n < 1 or batch_size < 1:
    raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
  path = None if out_path is None else pathlib.Path(out_path)
  done = {} if path is None else _existing(path)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
  for index in range(0, len(problems), batch_size):
    chunk = problems[index:index + batch_size]
    if all(p.id in done for p in chunk):
      continue
    completions = sample(chunk, n, index // batch_size)
    if len(completions) != len(chunk) or any(len(c) != n for c in completions):
      raise ValueError(f"the sampler returned {[len(c) for c in completions]} completions for "
                       f"{len(chunk)} problems; expected {n} each")
    new = []
    for problem, texts in zip(chunk, completions):
      record = {"id": problem.id, **vote(texts, labels, max_answer_chars)}
      gold = getattr(problem, "label", None)
      if gold is not None:
        record["gold"] = gold
      if problem.id not in done:
        new.append(record)
    if path is not None:
      _append(path, new)
    done.update({r["id"]: r for r in new})
  return [done[p.id] for p in problems]


def read_annotations(path: str | pathlib.Path) -> list[dict]:
  """The records of an annotation file, in file order (`path:line` named on a bad line)."""
  path = pathlib.Path(path)
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
      if not isinstance(record, dict) or "id" not in record or "label" not in record:
        raise ValueError(f"{path}:{number}: an annotation record needs 'id' and 'label'")
      records.append(record)
  return records


def annotation_report(records: Sequence[dict], labels: Sequence[str],
                      min_confidence: float = 0.0) -> dict:
  """`classification_report` of the annotations against the gold of the records that carry
  one, keeping those with confidence >= `min_confidence`; adds `coverage` (the share kept)."""
  scored = [r for r in records if r.get("gold") is not None]
  if not scored:
    raise ValueError("no annotation record carries a gold label")
  kept = [r for r in scored if r["confidence"] >= min_confidence]
  if not kept:
    raise ValueError(f"no annotation reaches confidence {min_confidence}")
  report = classification_report([r["gold"] for r in kept], [r["label"] for r in kept], labels)
  report["coverage"] = len(kept) / len(scored)
  return report


def policy_sampler(sampler: sampling.Sampler, tokenizer: Tokenizer, params: Any,
                   rng: jax.Array, params_s: sampling.SamplingParams | None = None,
                   samples_per_call: int = 0) -> SampleFn:
  """A `SampleFn` drawing from a model: chunk `i` with `fold_in(rng, i)`, in calls of
  `samples_per_call` samples (0: all n at once; else it must divide n), call `j` with a further
  `fold_in(., j)`; with a mesh, the chunk is padded to split over the data-parallel devices.
  One process only.
  """
  if jax.process_count() > 1:
    raise ValueError("policy_sampler runs on one process; annotate on each host's own pool")

  def sample(problems: Sequence[Any], n: int, chunk: int) -> list[list[str]]:
    per_call = samples_per_call or n
    if n % per_call:
      raise ValueError(f"samples_per_call={per_call} must divide n={n}")
    dp = 1 if sampler.mesh is None else rules.data_parallel_size(sampler.mesh)
    padded, real = multihost.pad_to_multiple(problems, dp)
    prompts = [encode_prompt(tokenizer, p) for p in padded]
    chunk_rng = jax.random.fold_in(rng, chunk)
    out: list[list[str]] = [[] for _ in padded]
    for call in range(n // per_call):
      rollout = sampler.generate(params, prompts, per_call, jax.random.fold_in(chunk_rng, call),
                                 params_s)
      for row, text in enumerate(sampling.decode_completions(tokenizer, rollout)):
        out[row // per_call].append(text)
    return out[:real]

  return sample
