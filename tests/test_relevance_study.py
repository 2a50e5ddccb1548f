"""experiments/relevance_study.py's analysis: collection over seeds, t-intervals, the table."""

import json

import numpy as np
import pytest

from experiments import relevance_study as study
from experiments import sweep


def test_mean_ci_is_the_student_t_interval():
  mean, half = sweep.mean_ci([0.5, 0.7, 0.6])
  # sd = 0.1, n = 3: half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.303 * 0.05774
  assert mean == pytest.approx(0.6) and half == pytest.approx(4.303 * 0.1 / np.sqrt(3))
  assert sweep.mean_ci([0.4]) == (pytest.approx(0.4), 0.0)


def _report(accuracy, f1_rare, f1_common):
  return {"labels": ["yes", "no"], "accuracy": accuracy, "macro_f1": (f1_rare + f1_common) / 2,
          "per_class": {"yes": {"f1": f1_rare, "support": 10},
                        "no": {"f1": f1_common, "support": 90}}}


def test_collect_and_table_with_the_paired_difference(tmp_path):
  run_dirs = []
  for seed, (grpo_rare, agpo_rare) in enumerate(((0.2, 0.3), (0.4, 0.6))):
    run_dir = tmp_path / f"seed{seed}"
    (run_dir / "annotate").mkdir(parents=True)
    (run_dir / "distill").mkdir()
    (run_dir / "annotate" / "results.json").write_text(json.dumps({
        "sft": _report(0.8, 0.1, 0.9), "grpo-step60": _report(0.85, grpo_rare, 0.9),
        "agpo-step60": _report(0.86, agpo_rare, 0.9)}))
    (run_dir / "distill" / "results.json").write_text(json.dumps({"reports": {
        "gold": _report(0.9, 0.5, 0.95), "agpo-step60": _report(0.8, 0.4, 0.9)}}))
    run_dirs.append(run_dir)
  results = study.collect(run_dirs)
  assert results["annotators"]["grpo"]["f1 yes"] == [0.2, 0.4]
  assert results["annotators"]["sft (warm start)"]["accuracy"] == [0.8, 0.8]
  text = study.table(results)
  # The rarest class comes first; the paired row is agpo - grpo seed by seed: +0.1, +0.2.
  assert "| annotator | seeds | accuracy | macro-f1 | f1 yes | f1 no |" in text
  half = 100 * 12.706 * np.std([0.1, 0.2], ddof=1) / np.sqrt(2)
  assert (f"| agpo − grpo (paired) | 2 | +1.0 ± 0.0 | +7.5 ± {half / 2:.1f} | "
          f"+15.0 ± {half:.1f} |") in text
  assert "| grpo | 2 | 85.0 ± 0.0 | 60.0 ± 63.5 | 30.0 ± 127.1 | 90.0 ± 0.0 |" in text
  assert "student trained on" in text and "(paired)" not in text.split("student trained on")[1]
  assert "yes 10, no 90" in text
