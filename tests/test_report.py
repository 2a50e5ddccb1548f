"""The paper-style table: one row per model, a column group per benchmark."""

import pytest

from agpo_jax.evaluation import counts, report


def _summary(correct_per_problem, answers=None):
  records = [counts.make_record(f"p{i}", c, answers=None if answers is None else answers[i])
             for i, c in enumerate(correct_per_problem)]
  return counts.summarize(records)


def test_table_worked_example(tmp_path):
  # Two problems, n = 4. Base: 1/4 and 0/4 correct; trained: 3/4 and 1/4.
  # avg@4 = mean(c/n): base 12.5, trained 50.0. pass@4 = share of problems with any correct:
  # base 50.0, trained 100.0. maj@4 (all 4 samples vote): base's majorities are "x" (wrong)
  # and "w" (wrong) -> 0.0; trained's "a" (right) and "y" (wrong) -> 50.0.
  base = _summary([[1, 0, 0, 0], [0, 0, 0, 0]],
                  answers=[["a", "x", "x", "x"], ["w", "w", "w", "v"]])
  trained = _summary([[1, 1, 1, 0], [1, 0, 0, 0]],
                     answers=[["a", "a", "a", "x"], ["b", "y", "y", "y"]])
  only_base = _summary([[1, 0], [0, 0]])  # n = 2 on a second benchmark, no answers
  table = report.benchmark_table({"base": {"gsm8k": base, "aime24": only_base},
                                  "agpo": {"gsm8k": trained}})
  lines = table.splitlines()
  assert lines[0] == ("| model | gsm8k avg@4 | gsm8k pass@4 | gsm8k maj@4 | aime24 avg@2 "
                      "| aime24 pass@2 |")
  assert lines[2] == "| base | 12.5 | 50.0 | 0.0 | 25.0 | 50.0 |"
  assert lines[3] == "| agpo | 50.0 | 100.0 | 50.0 | - | - |"
  paths = report.plot_benchmarks({"base": {"gsm8k": base}, "agpo": {"gsm8k": trained}}, tmp_path)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["passk_gsm8k.png"]
  assert (tmp_path / "passk_gsm8k.png").stat().st_size > 0


def test_table_needs_a_model():
  with pytest.raises(ValueError, match="at least one model"):
    report.benchmark_table({})
