r"""Math benchmarks: a registry of JSONL files, read into math `Problem`s.

    problems = load_benchmark("math500")             # from the data directory
    problems[0].messages                             # the chat prompt (`build_math_messages`)
    rewards, statuses = verifier(completions, [p.reference for p in problems])

The repository ships every registered file under `<repo>/data/benchmarks` (gzipped; see its
README). A file is read as `NAME.jsonl` or `NAME.jsonl.gz`, whichever is there. The data
directory is, in order: the `data_dir` argument, the `AGPO_DATA_DIR` environment variable,
and `<repo>/data/benchmarks`; no default points outside the repository. A source `tfds:NAME[:SPLIT]`
reads a TFDS data set that has already been prepared (see `tfds_source`).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import re
import types
import zlib
from typing import Callable

from agpo_jax.tasks import tfds_source
from agpo_jax.tasks.math_format import (  # noqa: F401  (re-exported: the benchmark API)
    MATH_INSTRUCTION,
    build_math_messages,
    gsm8k_final_answer,
    math_problem,
    strip_math_instruction,
)
from agpo_jax.tasks.problem import Problem

DATA_DIR_ENV = "AGPO_DATA_DIR"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIRS = (_REPO_ROOT / "data" / "benchmarks",)
COMPRESSED_SUFFIX = ".gz"
# A GSM8K final answer (after '####', thousands separators removed): an integer or a decimal.
_GSM8K_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  """A registered benchmark file.

  Attributes:
    name: The registry name (`load_benchmark(name)`, `config.task.name`).
    filename: The JSONL file's name; `filename + ".gz"` is read as well.
    num_problems: Problems in the standard release; loading does not enforce it.
    question_field: The JSON field holding the question.
    answer_field: The JSON field holding the gold answer (or a solution, see next).
    answer_from_solution: Extracts the final answer when `answer_field` holds a solution.
    description: What the benchmark is, for error messages.
    training_set: Meant for training, not evaluation: not offered as a task of its own.
  """

  name: str
  filename: str
  num_problems: int
  question_field: str = "problem"
  answer_field: str = "answer"
  answer_from_solution: Callable[[str], str] | None = None
  description: str = ""
  training_set: bool = False


BENCHMARKS = types.MappingProxyType({
    spec.name: spec
    for spec in (
        BenchmarkSpec("math500", "math500.jsonl", 500, description="MATH-500 (MATH test subset)"),
        BenchmarkSpec("aime24", "aime24.jsonl", 30, description="AIME 2024"),
        BenchmarkSpec("aime25", "aime25.jsonl", 30, description="AIME 2025"),
        BenchmarkSpec("amc23", "amc2023.jsonl", 40, description="AMC 2023"),
        BenchmarkSpec("minerva", "minervamath.jsonl", 272, description="Minerva Math (OCW)"),
        BenchmarkSpec(
            "olympiadbench", "olympiadbench.jsonl", 674,
            description="OlympiadBench, English text-only open-ended math",
        ),
        BenchmarkSpec(
            "gsm8k", "gsm8k_test.jsonl", 1319, question_field="question",
            answer_from_solution=gsm8k_final_answer, description="GSM8K test split",
        ),
        BenchmarkSpec(
            "gsm8k_train", "gsm8k_train.jsonl", 7473, question_field="question",
            answer_from_solution=gsm8k_final_answer, description="GSM8K train split",
            training_set=True,
        ),
    )
})


def benchmark_names() -> list[str]:
  """Every registered benchmark, training sets included."""
  return list(BENCHMARKS)


def evaluation_benchmark_names() -> list[str]:
  """The registered benchmarks meant for evaluation (each one is also a math task)."""
  return [name for name, spec in BENCHMARKS.items() if not spec.training_set]


def is_benchmark_source(source: str) -> bool:
  """Whether `load_benchmark(source)` can read `source`: a registered name or `tfds:...`."""
  return source in BENCHMARKS or source.startswith("tfds:")


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Where benchmark files are looked for, in order (an explicit choice is the only one)."""
  if data_dir is not None:
    return [pathlib.Path(data_dir)]
  if os.environ.get(DATA_DIR_ENV):
    return [pathlib.Path(os.environ[DATA_DIR_ENV])]
  return [path.resolve() for path in DEFAULT_DATA_DIRS]


def benchmark_path(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The file of a registered benchmark: in each data directory, `NAME.jsonl`, then
  `NAME.jsonl.gz`; FileNotFoundError says where it was looked for."""
  spec = _spec(name)
  candidates = [directory / filename for directory in data_dir_candidates(data_dir)
                for filename in (spec.filename, spec.filename + COMPRESSED_SUFFIX)]
  for path in candidates:
    if path.is_file():
      return path
  fields = f"'{spec.question_field}' and '{spec.answer_field}'"
  raise FileNotFoundError(
      f"benchmark {name!r}: {spec.filename} not found; looked for "
      + ", ".join(str(p) for p in candidates)
      + f". It is the public {spec.description} as JSONL (plain or gzipped), one object per "
      f"line with fields {fields}; the repository ships it in {DEFAULT_DATA_DIRS[0]}: restore "
      f"that directory, or point ${DATA_DIR_ENV} (or data_dir=) at a directory holding the file."
  )


def _spec(name: str) -> BenchmarkSpec:
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(BENCHMARKS)}")
  return BENCHMARKS[name]


def _open_binary(path: pathlib.Path):
  if path.name.endswith(COMPRESSED_SUFFIX):
    return gzip.open(path, "rb")
  return open(path, "rb")


def read_jsonl_problems(path: str | os.PathLike, spec: BenchmarkSpec) -> list[Problem]:
  """Parses a benchmark file, plain or gzipped (by its '.gz' suffix).

  Each line is a JSON object with the spec's question field (a non-empty string) and answer
  field: a non-empty string, or a JSON number, taken in its string form (42 -> "42",
  0.5 -> "0.5").

  Args:
    path: The file.
    spec: The benchmark it holds: field names and the answer extraction.

  Returns:
    The problems in file order, with ids `NAME/0`, `NAME/1`, ... (blank lines skipped).

  Raises:
    ValueError: A bad line, naming the file and line number (malformed JSON or UTF-8, a
      missing field, an empty answer, a GSM8K solution without a final number), a file with
      no problems, or a corrupt gzip stream.
  """
  path = pathlib.Path(path)
  problems = []
  line_number = 0
  try:
    with _open_binary(path) as f:
      for line_number, raw in enumerate(f, start=1):
        where = f"{path}:{line_number}"
        try:
          line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(f"{where}: not valid UTF-8 (byte {e.object[e.start]:#04x}: {e.reason});"
                           " benchmark files are UTF-8 JSONL") from None
        if line.strip():
          problems.append(_parse_line(line, where, spec, len(problems)))
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ValueError(f"{path}: unreadable gzip data after line {line_number} "
                     f"({type(e).__name__}: {e})") from None
  if not problems:
    raise ValueError(
        f"{path}: no problems ({'an empty file' if not line_number else 'only blank lines'}); "
        f"expected one JSON object per line with fields {spec.question_field!r} and "
        f"{spec.answer_field!r}")
  return problems


def _field_text(record: dict, field: str, where: str, numbers: bool) -> str:
  """`record[field]` as text: a non-blank string, or (`numbers`) a JSON number in its string
  form."""
  if field not in record:
    raise ValueError(f"{where}: missing field {field!r} (has {sorted(record)})")
  value = record[field]
  if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    kinds = "a string or a number" if numbers else "a string"
    raise ValueError(f"{where}: field {field!r} must be {kinds}, got {type(value).__name__} "
                     f"{value!r}")
  if not value.strip():
    raise ValueError(f"{where}: field {field!r} is empty")
  return value


def _parse_line(line: str, where: str, spec: BenchmarkSpec, index: int) -> Problem:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  question = _field_text(record, spec.question_field, where, numbers=False)
  answer = _field_text(record, spec.answer_field, where, numbers=True)
  solution = None
  if spec.answer_from_solution is not None and isinstance(record[spec.answer_field], str):
    try:
      answer, solution = spec.answer_from_solution(answer), answer
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    if spec.answer_from_solution is gsm8k_final_answer and not _GSM8K_NUMBER.match(answer):
      raise ValueError(f"{where}: GSM8K solution has no number after its last '####' (got "
                       f"{answer!r}); the final line must be '#### <number>'")
    if not answer.strip():
      raise ValueError(f"{where}: field {spec.answer_field!r} gives an empty final answer")
  return math_problem(f"{spec.name}/{index}", question, answer, spec.name, solution)


def load_benchmark(source: str, data_dir: str | os.PathLike | None = None) -> list[Problem]:
  """Problems of a registered benchmark (`benchmark_names()`) or a `tfds:NAME[:SPLIT]` source.

  Args:
    source: A registered name, or `tfds:NAME[:SPLIT]` (a prepared TFDS data set).
    data_dir: Where to look; None searches `data_dir_candidates()` (TFDS: its default).

  Returns:
    Math problems (chat prompts without a system message, 'math' references).
  """
  if source.startswith("tfds:"):
    return tfds_source.load_tfds_problems(source, data_dir=data_dir)
  return read_jsonl_problems(benchmark_path(source, data_dir), _spec(source))
