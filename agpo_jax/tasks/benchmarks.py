r"""Math benchmarks: a registry of JSONL files, mapped to `Problem`s and chat messages.

    problems = load_benchmark("math500")             # from the data directory
    messages = build_math_messages(problems[0].question)
    rewards, statuses = verifier(completions, [p.reference for p in problems])

The files are not part of the repository. The data directory is, in order: the `data_dir`
argument, the `AGPO_DATA_DIR` environment variable, `<repo>/data/benchmarks`, and
`<repo>/../shared/data/benchmarks`. A source `tfds:NAME[:SPLIT]` reads a TFDS data set that
has already been prepared (see `tfds_source`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import types
from typing import Callable

from agpo_jax.verifiers.grades import Reference

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DATA_DIR_ENV = "AGPO_DATA_DIR"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIRS = (
    _REPO_ROOT / "data" / "benchmarks",
    _REPO_ROOT / ".." / "shared" / "data" / "benchmarks",
)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem. `question` carries no answer-format instruction."""

  id: str
  question: str
  answer: str  # the gold final answer (LaTeX); what a correct \boxed{} must equal
  benchmark: str
  solution: str | None = None  # a worked solution, where the file has one (GSM8K)

  @property
  def reference(self) -> Reference:
    return Reference(self.answer, "math")

  @property
  def messages(self) -> list[dict[str, str]]:
    """The prompt as chat messages (`build_math_messages`, no system prompt)."""
    return build_math_messages(self.question)


def gsm8k_final_answer(solution: str) -> str:
  """The number after the last '####' of a GSM8K solution, without thousands separators."""
  if "####" not in solution:
    raise ValueError("GSM8K answer has no '#### <number>' line")
  return solution.rsplit("####", 1)[1].strip().replace(",", "")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  name: str
  filename: str
  num_problems: int  # in the standard release; loading does not enforce it
  question_field: str = "problem"
  answer_field: str = "answer"
  answer_from_solution: Callable[[str], str] | None = None  # the answer field is a solution
  description: str = ""


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
        ),
    )
})


def benchmark_names() -> list[str]:
  return list(BENCHMARKS)


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Where benchmark files are looked for, in order (an explicit choice is the only one)."""
  if data_dir is not None:
    return [pathlib.Path(data_dir)]
  if os.environ.get(DATA_DIR_ENV):
    return [pathlib.Path(os.environ[DATA_DIR_ENV])]
  return [path.resolve() for path in DEFAULT_DATA_DIRS]


def benchmark_path(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The JSONL file of a registered benchmark; FileNotFoundError says where it was looked for."""
  spec = _spec(name)
  candidates = [directory / spec.filename for directory in data_dir_candidates(data_dir)]
  for path in candidates:
    if path.is_file():
      return path
  fields = f"'{spec.question_field}' and '{spec.answer_field}'"
  raise FileNotFoundError(
      f"benchmark {name!r}: {spec.filename} not found; looked for "
      + ", ".join(str(p) for p in candidates)
      + f". It is the public {spec.description} as JSONL, one object per line with fields "
      f"{fields}; benchmark data is not in the repository: put the file in one of those "
      f"directories, or point ${DATA_DIR_ENV} (or data_dir=) at the directory holding it."
  )


def _spec(name: str) -> BenchmarkSpec:
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(BENCHMARKS)}")
  return BENCHMARKS[name]


def strip_math_instruction(question: str) -> str:
  """The question without a trailing `MATH_INSTRUCTION` (several files already carry it)."""
  question = question.rstrip()
  if question.endswith(MATH_INSTRUCTION):
    question = question[: -len(MATH_INSTRUCTION)].rstrip()
  return question


def read_jsonl_problems(path: str | os.PathLike, spec: BenchmarkSpec) -> list[Problem]:
  """Parses a benchmark file; a bad line raises ValueError naming the file and line number."""
  path = pathlib.Path(path)
  problems = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
      for field in (spec.question_field, spec.answer_field):
        if not isinstance(record.get(field), str):
          raise ValueError(f"{where}: missing string field {field!r} (has {sorted(record)})")
      answer, solution = record[spec.answer_field], None
      if spec.answer_from_solution is not None:
        try:
          answer, solution = spec.answer_from_solution(answer), answer
        except ValueError as e:
          raise ValueError(f"{where}: {e}") from None
      problems.append(
          Problem(
              id=f"{spec.name}/{len(problems)}",
              question=strip_math_instruction(record[spec.question_field]),
              answer=answer.strip(),
              benchmark=spec.name,
              solution=solution,
          )
      )
  return problems


def load_benchmark(source: str, data_dir: str | os.PathLike | None = None) -> list[Problem]:
  """Problems of a registered benchmark (`benchmark_names()`) or a `tfds:NAME[:SPLIT]` source."""
  if source.startswith("tfds:"):
    from agpo_jax.tasks import tfds_source

    return tfds_source.load_tfds_problems(source, data_dir=data_dir)
  return read_jsonl_problems(benchmark_path(source, data_dir), _spec(source))


def build_math_messages(question: str, system_prompt: str | None = None) -> list[dict[str, str]]:
  r"""Chat messages for the math prompt format: the question, a blank line, `MATH_INSTRUCTION`.

  A question that already ends with the instruction does not get it twice.
  """
  content = strip_math_instruction(question) + "\n\n" + MATH_INSTRUCTION
  messages = [{"role": "user", "content": content}]
  if system_prompt is not None:
    messages.insert(0, {"role": "system", "content": system_prompt})
  return messages
