"""Benchmarks from TensorFlow Datasets: `tfds:NAME[:SPLIT]` sources (TFDS is an optional extra).

TFDS works without TensorFlow for data sets stored as `array_record`, read through
`tfds.data_source` (random access). Install `tensorflow-datasets array_record
importlib_resources` (TFDS needs the last one without declaring it).

This route never downloads: catalog math data sets fetch their files when built, and offline
that hangs for minutes, so a data set must already be prepared in `data_dir` (for instance
with `tfds build NAME --data_dir=DIR --file_format=array_record` on a machine with network, or
`builder.download_and_prepare(file_format="array_record")` for a local builder).
"""

from __future__ import annotations

import os

from agpo_jax.tasks.math_format import gsm8k_final_answer, math_problem
from agpo_jax.tasks.problem import Problem

QUESTION_FIELDS = ("problem", "question")
ANSWER_FIELDS = ("answer", "solution")


def parse_tfds_source(source: str) -> tuple[str, str]:
  """'tfds:gsm8k:test' -> ('gsm8k', 'test'); the split defaults to 'test'."""
  if not source.startswith("tfds:"):
    raise ValueError(f"not a TFDS source: {source!r}")
  name, _, split = source[len("tfds:") :].partition(":")
  if not name:
    raise ValueError(f"TFDS source needs a data set name: {source!r}")
  return name, split or "test"


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pick(record: dict, fields: tuple[str, ...], source: str, index: int) -> str:
  for field in fields:
    if field in record:
      return _text(record[field])
  raise ValueError(f"{source} record {index}: none of the fields {fields} (has {sorted(record)})")


def load_tfds_problems(source: str, data_dir: str | os.PathLike | None = None) -> list[Problem]:
  """Problems from a prepared TFDS data set; GSM8K-style answers keep the `#### n` number."""
  name, split = parse_tfds_source(source)
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
        f"{source} needs TFDS: pip install tensorflow-datasets array_record importlib_resources"
    ) from e
  try:
    records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared here"
    raise FileNotFoundError(
        f"{source}: TFDS data set {name!r} split {split!r} is not prepared in "
        f"{data_dir or 'the default TFDS data_dir'} ({type(e).__name__}: {e}). This route "
        "never downloads; prepare it first, e.g. `tfds build "
        f"{name} --data_dir=DIR --file_format=array_record` where there is network."
    ) from e
  problems = []
  for index in range(len(records)):
    record = records[index]
    answer = _pick(record, ANSWER_FIELDS, source, index)
    solution = None
    if "####" in answer:
      solution, answer = answer, gsm8k_final_answer(answer)
    question = _pick(record, QUESTION_FIELDS, source, index)
    problems.append(math_problem(f"{name}/{split}/{index}", question, answer, name, solution))
  return problems
