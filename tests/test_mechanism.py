"""experiments/mechanism.py: the token-mass table from a run's metrics.jsonl."""

import json

from experiments import boundary_study as study
from experiments import mechanism
from experiments import sweep


def test_rows_read_the_seed0_metrics_at_the_requested_steps(tmp_path):
  run_dir = tmp_path / sweep.run_name(study.run_overrides(study.ARMS[0], 0))  # grpo, seed 0
  (run_dir / "rl").mkdir(parents=True)
  record = {"reward": 0.5, "entropy_mean": 0.7, "algo/negative_mass": 12.4,
            "algo/positive_mass": 3.0, "tokens/neg_eos": 0.25, "tokens/neg_first": 0.5,
            "tokens/neg_shared": 0.125, "tokens/neg_q4": 0.375}
  lines = [{"step": 1, **record}, {"step": 2, **record, "eval/pass@1": 0.4567}]
  (run_dir / "rl" / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  rows = mechanism.main(["--workdir", str(tmp_path), "--arms", "grpo,agpo", "--steps", "2,9"])
  assert rows[0].startswith("| arm | step | reward | entropy | neg / pos mass |")
  # Only grpo has a run, only step 2 of the steps asked is logged.
  assert rows[2:] == ["| grpo | 2 | 0.500 | 0.700 | 12 / 3 | 0.25 | 0.50 | 0.12 | 0.38 | 0.457 |"]
