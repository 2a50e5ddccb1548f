"""experiments/boundary_study.py: aggregation over seeds, the comparison and the table, on fake
count files (no training)."""

import json

import pytest

from agpo_jax.evaluation import counts
from experiments import boundary_study as study
from experiments import sweep

ARMS = [study.Arm("grpo", {"algo.name": "grpo"}),
        study.Arm("agpo[r_neg=-0.25]", {"algo.name": "agpo", "algo.agpo.r_neg": "-0.25"},
                  main=False)]


def _write(run_dir, label, cs, n=4, split="heldout"):
  (run_dir / "eval").mkdir(parents=True, exist_ok=True)
  records = [counts.make_record(f"p{i}", [1] * c + [0] * (n - c)) for i, c in enumerate(cs)]
  counts.write_counts(run_dir / "eval" / f"{label}_{split}_n{n}_t1.0_p1.0_s1234.jsonl", records)


def _fake_study(tmp_path):
  base = [4, 1, 0, 2]  # pass@1 = (1 + .25 + 0 + .5) / 4 = 0.4375; pass@4 = 0.75
  _write(tmp_path / "base", "base", base)
  (tmp_path / "base" / "config.json").write_text(json.dumps({"task": {}}))
  trained = {  # seed -> counts: GRPO loses p1 in seed 0, gains p2 in seed 1
      ("grpo", 0): [4, 0, 0, 4],  # pass@1 0.5, pass@4 0.5
      ("grpo", 1): [4, 1, 1, 2],  # pass@1 0.5, pass@4 1.0
      ("agpo[r_neg=-0.25]", 0): [4, 1, 0, 2],  # identical to the base
  }
  arms = {a.label: a for a in ARMS}
  for (label, seed), cs in trained.items():
    run_dir = tmp_path / sweep.run_name(study.run_overrides(arms[label], seed))
    _write(run_dir, "base", base)  # the shared base's copy sits in every run dir
    _write(run_dir, f"{arms[label].overrides['algo.name']}-step10", cs)
    (run_dir / "rl").mkdir()
    (run_dir / "rl" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 5, "reward": 0.1},
        {"step": 10, "reward": 0.2, "eval/pass@1": 0.5, "eval/pass@4": 0.5 + 0.1 * seed},
    ]) + "\n")


def test_analyze_aggregates_seeds_and_compares_with_base(tmp_path):
  _fake_study(tmp_path)
  result = study.analyze(tmp_path, ARMS, seeds=[0, 1, 2], ks=[1, 4], num_resamples=200)
  assert result["base"]["pass@k"][1] == pytest.approx(0.4375)
  assert result["base"]["pass@k"][4] == pytest.approx(0.75)
  grpo = result["arms"]["grpo"]
  assert [r["seed"] for r in grpo["runs"]] == [0, 1]  # seed 2 never ran: left out, not zero
  assert grpo["pass@k"][1] == pytest.approx((0.5, 0.0))
  assert grpo["pass@k"][4] == pytest.approx((0.75, 0.25))  # mean, population std
  assert grpo["difference"][1] == pytest.approx(0.0625)
  assert grpo["difference"][4] == pytest.approx(0.0)
  assert [r["lost"] for r in grpo["runs"]] == [1, 0]
  assert [r["gained"] for r in grpo["runs"]] == [0, 1]
  assert grpo["lost"] == pytest.approx((0.5, 0.5))
  low, high = grpo["ci"][4]
  assert low <= 0.0 <= high and low < high
  assert grpo["runs"][0]["model"] == "grpo-step10"
  assert grpo["runs"][1]["frontier"] == [{"step": 10, "pass@k": {1: 0.5, 4: 0.6}}]
  same = result["arms"]["agpo[r_neg=-0.25]"]
  assert same["difference"] == {1: 0.0, 4: 0.0}
  assert same["ci"][1] == pytest.approx((0.0, 0.0))


def test_arm_bootstrap_averages_seeds_before_resampling():
  base = [counts.make_record(f"p{i}", [0, 0]) for i in range(3)]
  up = [counts.make_record(f"p{i}", [1, 1]) for i in range(3)]  # +1 on every problem
  down = [counts.make_record(f"p{i}", [0, 0]) for i in range(3)]  # 0 on every problem
  ci = study.arm_bootstrap(base, [up, down], ks=[1, 2], num_resamples=100)
  # Every problem's seed-mean difference is 0.5, so every resample's mean is exactly 0.5.
  assert ci[1] == pytest.approx((0.5, 0.5))
  assert ci[2] == pytest.approx((0.5, 0.5))


def test_table_and_outputs(tmp_path):
  _fake_study(tmp_path)
  result = study.analyze(tmp_path, ARMS, seeds=[0, 1], ks=[1, 4], num_resamples=200)
  table = study.markdown_table(result)
  lines = table.splitlines()
  assert lines[0].startswith("| model | seeds | pass@1 | pass@4 | Δ pass@1 [95% CI] |")
  assert lines[2] == "| base | - | 43.8 | 75.0 | - | - | - | - |"
  assert lines[3].startswith("| grpo | 2 | 50.0 ± 0.0 | 75.0 ± 25.0 | +6.2 [")
  assert lines[3].endswith("| 0.5 ± 0.5 | 0.5 ± 0.5 |")
  assert lines[4].startswith("| agpo[r_neg=-0.25] | 1 | 43.8 | 75.0 | +0.0 [+0.0, +0.0] |")

  out = tmp_path / "results"
  study.write_outputs(result, out, tmp_path, frontier_problems=0)
  for name in ("boundary_table.md", "boundary_results.json", "passk_main.png",
               "passk_agpo.png", "passk_delta.png", "boundary_main.png", "frontier.png"):
    assert (out / name).stat().st_size > 0, name
  saved = json.loads((out / "boundary_results.json").read_text())
  assert saved["heldout"]["arms"]["grpo"]["pass@k"]["4"] == [0.75, 0.25]
  assert "| grpo | 1 | +6.2 [" in (out / "boundary_table.md").read_text()


def test_outputs_of_a_study_without_main_arms(tmp_path):
  """A study of variants alone (e.g. `--arms` listing learning-rate arms) writes its tables and
  variant figure, and no main-method figures."""
  _fake_study(tmp_path)
  variants = [arm for arm in ARMS if not arm.main]
  assert variants
  result = study.analyze(tmp_path, variants, seeds=[0, 1], ks=[1, 4], num_resamples=20)
  out = tmp_path / "variants_only"
  study.write_outputs(result, out, tmp_path, frontier_problems=0)
  assert (out / "boundary_table.md").stat().st_size > 0
  assert (out / "passk_agpo.png").stat().st_size > 0
  assert not (out / "passk_main.png").exists() and not (out / "passk_delta.png").exists()


def test_missing_base_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no base count file"):
    study.analyze(tmp_path, ARMS, seeds=[0], ks=[1], num_resamples=0)


def test_train_split_finds_the_sft_labelled_base(tmp_path):
  # `mode=evaluate` in the base dir (no RL there) labels its counts `sft_*`, not `base_*`.
  _write(tmp_path / "base", "sft", [2, 0], split="train")
  run_dir = tmp_path / sweep.run_name(study.run_overrides(ARMS[0], 0))
  _write(run_dir, "grpo-step10", [4, 0], split="train")
  result = study.analyze(tmp_path, ARMS, seeds=[0], ks=[1, 4], split="train", num_resamples=0)
  assert result["base"]["pass@k"][1] == pytest.approx(0.25)
  assert result["arms"]["grpo"]["difference"][1] == pytest.approx(0.25)
  assert "agpo[r_neg=-0.25]" not in result["arms"]  # no run: no row


def test_run_all_order_skips_and_max_seeds(tmp_path, monkeypatch):
  commands = []
  monkeypatch.setattr(sweep, "prepare_shared_base", lambda *args: None)
  monkeypatch.setattr(sweep, "run", lambda command, log: commands.append(command))
  arms = [*ARMS, study.Arm("grpo[lr=1e-3]", {"algo.name": "grpo", "optim.lr": "1e-3"},
                           main=False, max_seeds=1)]
  done = tmp_path / sweep.run_name(study.run_overrides(ARMS[0], 1))
  done.mkdir()
  (done / "results.json").write_text("{}")
  study.run_all("configs/default.py", tmp_path, {"train.steps": "5"}, arms, [0, 1])
  runs = [[a for a in c if a.startswith("--workdir=")][0].split("/")[-1] for c in commands]
  assert runs == ["algo.name=grpo,seed=0", "algo.name=agpo,algo.agpo.r_neg=-0.25,seed=0",
                  "algo.name=grpo,optim.lr=1e-3,seed=0",
                  "algo.name=agpo,algo.agpo.r_neg=-0.25,seed=1"]
  assert all("--config.train.steps=5" in c for c in commands)


def test_arms_are_compared_with_grpo(tmp_path):
  _fake_study(tmp_path)
  result = study.analyze(tmp_path, ARMS, seeds=[0, 1], ks=[1, 4], num_resamples=200)
  vs = result["arms"]["agpo[r_neg=-0.25]"]["vs_grpo"]
  # agpo (seed 0 only) equals the base; GRPO's seed mean is +0.0625 / +0.0 over the base.
  assert vs["difference"][1] == pytest.approx(-0.0625)
  assert vs["difference"][4] == pytest.approx(0.0)
  assert "vs_grpo" not in result["arms"]["grpo"]
  table = study.vs_grpo_table(result)
  assert table.splitlines()[2].startswith("| agpo[r_neg=-0.25] | 1 | -6.2 [")


def test_base_row_covers_only_the_problems_the_runs_evaluated(tmp_path):
  _fake_study(tmp_path)
  full = study.analyze(tmp_path, ARMS, seeds=[0], ks=[1], num_resamples=0)
  assert full["num_problems"] == 4 and full["base"]["pass@k"][1] == pytest.approx(0.4375)
  # Every run evaluated only p0 and p1 (eval.max_problems=2): the base row covers those two.
  for path in tmp_path.glob("algo.name=*/eval/*.jsonl"):
    if not path.name.startswith("base_"):
      path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
  half = study.analyze(tmp_path, ARMS, seeds=[0], ks=[1], num_resamples=0)
  assert half["num_problems"] == 2
  assert half["base"]["pass@k"][1] == pytest.approx((1 + 0.25) / 2)
  assert half["arms"]["grpo"]["pass@k"][1][0] == pytest.approx(0.5)  # [4, 0] of 4


def test_frontier_base_point_reads_the_base_task_countdown_too(tmp_path):
  from agpo_jax.tasks import make_task, task_config  # noqa: PLC0415
  cfg = task_config("countdown")
  cfg.update(dict(num_train=50, num_heldout=6))
  (tmp_path / "base").mkdir()
  (tmp_path / "base" / "config.json").write_text(json.dumps({"task": cfg.to_dict()}))
  ids = [p.id for p in make_task(cfg).split("heldout")]
  # The first 2 held-out problems: solved 4/4 and 0/4; the rest 2/4 (left out of the point).
  records = [counts.make_record(i, [1] * c + [0] * (4 - c))
             for i, c in zip(ids, [4, 0, 2, 2, 2, 2])]
  counts.write_counts(tmp_path / "base" / "eval" / "base_heldout_n4_t1.0_p1.0_s1234.jsonl"
                      if (tmp_path / "base" / "eval").mkdir() is None else None, records)
  assert study.frontier_base_point(tmp_path, problems=2, k_high=4) == (0.5, 0.5)
