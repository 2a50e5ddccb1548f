"""experiments/sweep.py: a grid of runs from one shared base, collected into a table."""

import json

from experiments import sweep

TINY = ["model.num_layers=1", "sft.steps=2", "sft.batch_size=8", "train.steps=2",
        "train.batch_prompts=4", "sampling.num_samples=2", "eval.n=4", "eval.max_problems=4",
        "eval.batch_prompts=4", "train.log_every=10"]


def test_grid_names_and_parsing():
  axes = [sweep.parse_axis("algo.name=agpo,grpo"), sweep.parse_axis("seed=0,1")]
  runs = sweep.grid_runs(axes)
  assert runs == [{"algo.name": "agpo", "seed": "0"}, {"algo.name": "agpo", "seed": "1"},
                  {"algo.name": "grpo", "seed": "0"}, {"algo.name": "grpo", "seed": "1"}]
  assert sweep.run_name(runs[1]) == "algo.name=agpo,seed=1"


def test_sweep_runs_collects_and_resumes(tmp_path, capsys):
  argv = ["--workdir", str(tmp_path), "--grid", "seed=0,1", "--ks", "1,4",
          *[a for item in TINY for a in ("--set", item)]]
  records = sweep.main(argv)
  runs = {r["run"] for r in records}
  assert runs == {"seed=0", "seed=1"}
  assert {r["model"] for r in records} == {"base", "agpo-step2"}
  # Both runs start from the one shared warm start: identical base counts.
  base = [r for r in records if r["model"] == "base"]
  assert base[0]["pass@k"] == base[1]["pass@k"]
  table = (tmp_path / "sweep.md").read_text()
  assert "| base | - | 1 |" in table
  assert "| agpo | - | 2 | " in table and "±" in table
  saved = json.loads((tmp_path / "sweep.json").read_text())
  assert len(saved) == 4

  logs = {p: p.read_text() for p in tmp_path.glob("*/log.txt")}
  sweep.main(argv)  # everything is done: nothing runs again
  assert "done, skipped" in capsys.readouterr().out
  assert {p: p.read_text() for p in tmp_path.glob("*/log.txt")} == logs
