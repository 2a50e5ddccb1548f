"""The relevance application end to end at toy size: train, annotate, distill."""

import json
import pathlib

from agpo_jax import configs, main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config():
  cfg = configs.load_config_file(str(ROOT / "configs" / "relevance.py"))
  cfg.model.num_layers = 1
  cfg.arms = "agpo"
  cfg.task.update(dict(num_train=64, num_heldout=24, num_unlabeled=20, answer_format="label"))
  cfg.sampling.max_new_tokens = 4  # a label is at most 3 tokens
  cfg.sft.steps, cfg.sft.batch_size = 3, 16
  cfg.train.steps, cfg.train.batch_prompts = 1, 4
  cfg.train.balance_labels = True
  cfg.sampling.num_samples = 2
  cfg.eval.n, cfg.eval.samples_per_call, cfg.eval.max_problems = 2, 2, 4
  cfg.annotate.n, cfg.annotate.samples_per_call, cfg.annotate.batch_prompts = 3, 3, 8
  cfg.student.steps = 30
  return cfg


def test_train_annotate_distill(tmp_path, capsys):
  cfg = _config()
  trained = main.run(cfg, tmp_path)
  assert list(trained["summaries"]) == ["base", "agpo-step1"]

  cfg.mode = "annotate"
  annotated = main.run(cfg, tmp_path)
  assert list(annotated["reports"]) == ["sft", "agpo-step1"]
  for label, records in annotated["records"].items():
    lines = (tmp_path / "annotate" / f"{label}_unlabeled.jsonl").read_text().splitlines()
    assert [json.loads(l)["id"] for l in lines] == [r["id"] for r in records]
    assert len(records) == 20
    for r in records:  # a label from the set (or None), its vote share, the hidden gold
      assert r["gold"] in ("relevant", "partially relevant", "irrelevant")
      assert r["n"] == 3 and sum(r["votes"].values()) + r["unparsed"] == 3
      if r["label"] is not None:
        assert r["confidence"] == r["votes"][r["label"]] / 3
  table = (tmp_path / "annotate" / "table.md").read_text()
  assert table.startswith("| annotator | accuracy | macro-F1 | F1 relevant |")
  assert "| agpo-step1 |" in table and "annotation of 20 'unlabeled' pairs" in capsys.readouterr().out

  cfg.mode = "distill"
  distilled = main.run(cfg, tmp_path)
  # A 3-step toy annotator may write no label at all: it gets no student, and says so.
  assert [*distilled["reports"], *distilled["unusable"]].count("sft") == 1
  assert list(distilled["reports"])[-1] == "gold labels"
  assert distilled["num_train"]["gold labels"] == 20
  saved = json.loads((tmp_path / "distill" / "results.json").read_text())
  assert saved["reports"]["gold labels"]["num_pairs"] == 24  # scored on the held-out gold
  assert "| student trained on |" in (tmp_path / "distill" / "table.md").read_text()


def test_annotate_needs_a_label_task(tmp_path):
  cfg = configs.load_config_file(str(ROOT / "configs" / "default.py"))
  cfg.mode = "distill"
  try:
    main.run(cfg, tmp_path)
  except ValueError as e:
    assert "mode 'distill' needs a label task (config.task.name='relevance')" in str(e)
  else:
    raise AssertionError("distill ran on the multiplication task")
