"""Math tasks: RL on a training benchmark, evaluated on a named math benchmark.

`config.task.name` is an evaluation benchmark (`MATH_TASK_NAMES`: math500, aime24, aime25,
amc23, minerva, olympiadbench, gsm8k). The splits of a math task:

- 'train': the problems of `config.task.train_source`: a registered benchmark (default
  'gsm8k_train', the training set the repository ships), a `tfds:NAME[:SPLIT]` source, or a
  JSONL file (`.jsonl` or `.jsonl.gz`, one `{"problem": ..., "answer": ...}` object per line,
  e.g. the MATH training set);
- 'test', or 'heldout' (the name the testbed uses, so `eval.split`'s default works): the named
  benchmark;
- any other registered benchmark, or `tfds:NAME[:SPLIT]`: that benchmark, so
  `--config.eval.split=math500,aime24` evaluates on several benchmarks under any math task.

Every problem is a chat prompt (`build_math_messages`, after `config.task.system_prompt` when
that is set) with a 'math' reference, so the run needs a tokenizer that can write the benchmark
text and a 'math' verifier.
"""

from __future__ import annotations

import pathlib

from ml_collections import config_dict

from agpo_jax import configs
from agpo_jax.tasks import benchmarks
from agpo_jax.tasks.math_format import with_system_prompt
from agpo_jax.tasks.problem import Problem

MATH_TASK_NAMES = tuple(benchmarks.evaluation_benchmark_names())
DEFAULT_TRAIN_SOURCE = "gsm8k_train"


def math_task_config(name: str = "math500") -> config_dict.ConfigDict:
  """The `config.task` block of a math task.

  Args:
    name: The benchmark the task evaluates on (`MATH_TASK_NAMES`).

  Returns:
    The block: `name`; `train_source`, the benchmark (or `tfds:...` source) RL trains on;
    `data_dir`, where the benchmark files are (None: `benchmarks.data_dir_candidates`);
    `system_prompt`, a system message before each question (None: none); `max_problems`, the
    first problems kept of each split (0: all).
  """
  _check_name(name)
  return config_dict.ConfigDict(dict(
      name=name,
      train_source=DEFAULT_TRAIN_SOURCE,
      data_dir=config_dict.placeholder(str),
      system_prompt=config_dict.placeholder(str),
      max_problems=0,
  ))


def _is_jsonl_path(source: str) -> bool:
  return source.endswith((".jsonl", ".jsonl.gz")) and pathlib.Path(source).is_file()


def _check_name(name: str) -> None:
  if name not in MATH_TASK_NAMES:
    raise configs.ConfigError(f"config.task.name={name!r} is not one of the math tasks "
                              f"{MATH_TASK_NAMES}")


class MathTask:
  """The problems of a math task's splits, each benchmark loaded once, when first asked for.

  A field missing from the config block takes its `math_task_config` default, so a testbed
  block with only `name` overridden (`--config.task.name=math500`) builds a math task.
  """

  def __init__(self, cfg: config_dict.ConfigDict):
    _check_name(cfg.name)
    defaults = math_task_config(cfg.name)
    field = lambda key: cfg[key] if key in cfg else defaults[key]  # noqa: E731
    self.name = cfg.name
    self.train_source = field("train_source")
    self.data_dir = field("data_dir")
    self.system_prompt = field("system_prompt")
    self.max_problems = int(field("max_problems"))
    if not (benchmarks.is_benchmark_source(self.train_source)
            or _is_jsonl_path(self.train_source)):
      raise configs.ConfigError(
          f"config.task.train_source={self.train_source!r} is not one of "
          f"{tuple(benchmarks.benchmark_names())}, a 'tfds:NAME[:SPLIT]' source or an existing "
          ".jsonl / .jsonl.gz file")
    if self.max_problems < 0:
      raise configs.ConfigError(f"config.task.max_problems={self.max_problems} must be >= 0 "
                                "(0: all problems)")
    self._loaded: dict[str, list[Problem]] = {}

  def split_names(self) -> tuple[str, ...]:
    """The valid split names, besides `tfds:NAME[:SPLIT]` sources."""
    return ("train", "test", "heldout", *benchmarks.benchmark_names())

  def source(self, split: str) -> str:
    """The benchmark (or TFDS source) a split reads."""
    if split == "train":
      return self.train_source
    if split in ("test", "heldout"):
      return self.name
    if benchmarks.is_benchmark_source(split):
      return split
    raise configs.ConfigError(
        f"split {split!r} (config.eval.split) is not one of {self.split_names()} or a "
        f"'tfds:NAME[:SPLIT]' source for config.task.name={self.name!r}")

  def split(self, name: str) -> list[Problem]:
    """The problems of split `name`, in file order (the first `max_problems` when set)."""
    source = self.source(name)
    if source not in self._loaded:
      if _is_jsonl_path(source) and not benchmarks.is_benchmark_source(source):
        spec = benchmarks.BenchmarkSpec(name=pathlib.Path(source).name.split(".")[0],
                                        filename=pathlib.Path(source).name, num_problems=0,
                                        description=f"training file {source}",
                                        training_set=True)
        problems = benchmarks.read_jsonl_problems(source, spec)
      else:
        problems = benchmarks.load_benchmark(source, data_dir=self.data_dir)
      if self.max_problems:
        problems = problems[:self.max_problems]
      self._loaded[source] = [with_system_prompt(p, self.system_prompt) for p in problems]
    return self._loaded[source]
