"""experiments/regime.py on fake count files: the regime numbers against a hand computation."""

import numpy as np
import pytest

from agpo_jax.evaluation import counts
from experiments import boundary_study as study
from experiments import regime
from experiments import sweep


def _write(run_dir, label, records):
  (run_dir / "eval").mkdir(parents=True, exist_ok=True)
  counts.write_counts(run_dir / "eval" / f"{label}_heldout_n4_t1.0_p1.0_s1234.jsonl", records)


def test_regime_numbers_and_report(tmp_path, capsys):
  # Base: p0 answers x x y z (x right): pass@1 .5, maj@4 1; p1 u v w w (u right): pass@1 .25,
  # maj@4 0 (w wins). Base pass@1 .375, maj@4 .5, pass@4 1. p2 is not in the runs: left out.
  _write(tmp_path / "base", "base", [
      counts.make_record("p0", [1, 1, 0, 0], ["x", "x", "y", "z"]),
      counts.make_record("p1", [1, 0, 0, 0], ["u", "v", "w", "w"]),
      counts.make_record("p2", [0, 0, 0, 0], ["a", "a", "a", "a"])])
  grpo = {0: ([1, 1, 1, 1], [0, 0, 0, 0]),  # pass@1 .5, pass@4 .5
          1: ([1, 1, 1, 0], [1, 0, 0, 0]),  # pass@1 .5, pass@4 1
          2: ([1, 1, 1, 1], [1, 1, 0, 0])}  # pass@1 .75, pass@4 1
  for seed, (c0, c1) in grpo.items():
    run_dir = tmp_path / sweep.run_name(study.run_overrides(study.ARMS[0], seed))
    _write(run_dir, "grpo-step150", [counts.make_record("p0", c0), counts.make_record("p1", c1)])
  numbers = regime.main(["--workdir", str(tmp_path)])
  assert (numbers["problems"], numbers["k"]) == (2, 4)
  assert numbers["base_pass@1"] == pytest.approx(0.375)
  assert numbers["base_maj@k"] == pytest.approx(0.5)
  half = 4.303 * np.std([0.125, 0.125, 0.375], ddof=1) / np.sqrt(3)
  mean = (0.125 + 0.125 + 0.375) / 3
  assert numbers["delta_pass@1"] == pytest.approx((mean, mean - half, mean + half))
  assert numbers["delta_pass@k"][0] == pytest.approx(-0.5 / 3)
  out = capsys.readouterr().out
  assert "| base pass@1 | 37.5 | 30 to 60 | yes |" in out
  assert "| base maj@4 - pass@1 | 12.5 (50.0 - 37.5) | >= 10 | yes |" in out
  assert f"| grpo Δ pass@1, 3 seeds [95% t-CI] | +20.8 [{100 * (mean - half):+.1f}, " in out
  assert "CI above 0 | **no** |" in out  # +20.8 but the interval crosses 0 with 3 seeds
  assert "| grpo Δ pass@4, 3 seeds [95% t-CI] | -16.7 [" in out and "| < 0 | yes |" in out


def test_regime_names_a_missing_run(tmp_path):
  _write(tmp_path / "base", "base", [counts.make_record("p0", [1, 0, 0, 0])])
  with pytest.raises(FileNotFoundError, match="no trained held-out count file"):
    regime.regime(tmp_path)
