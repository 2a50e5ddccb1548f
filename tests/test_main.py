"""The entry point and config handling: overrides apply, mistakes are named."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from absl import flags
from absl.testing import flagsaver

from agpo_jax import configs, defaults, main, tokenizers, validation
from agpo_jax.algorithms.defaults import _PRESETS
from agpo_jax.tasks import math_task_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.py")


def _cli(*args, workdir, env=None):
  env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
  return subprocess.run([sys.executable, "-m", "agpo_jax.main", f"--config={DEFAULT}",
                         f"--workdir={workdir}", *args], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=300)


def test_cli_applies_overrides(tmp_path):
  result = _cli("--config.mode=sample", "--config.sampling.max_new_tokens=3",
                "--config.sample.num_samples=2",
                "--config.sample.prompts=('11*11=',)", workdir=tmp_path)
  assert result.returncode == 0, result.stderr
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["sampling"]["max_new_tokens"] == 3
  assert saved["sample"]["prompts"] == ["11*11="]
  lines = [l for l in result.stdout.splitlines() if l.startswith("  '11*11=' -> ")]
  assert len(lines) == 2  # one prompt x 2 samples


def test_cli_names_unknown_keys(tmp_path):
  result = _cli("--config.sampling.temprature=0.5", "--config.nope=1", workdir=tmp_path)
  assert result.returncode == 2
  assert "unknown config key 'config.sampling.temprature'" in result.stderr
  assert "did you mean config.sampling.temperature" in result.stderr
  assert "unknown config key 'config.nope'" in result.stderr


def test_cli_refuses_a_bad_value_in_one_line_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  result = _cli("--config.mode=trian", workdir=workdir)
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      "error: config.mode: got 'trian'; must be one of "
      "('pipeline', 'sft', 'rl', 'evaluate', 'sample', 'annotate', 'distill')"]
  assert not workdir.exists()


def test_cli_names_the_key_of_a_value_absl_cannot_parse(tmp_path):
  result = _cli("--config.train.steps=abc", workdir=tmp_path / "run")
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      "error: config.train.steps: got 'abc' (from --config.train.steps=abc); must be an int"]
  assert not (tmp_path / "run").exists()


def test_cli_debug_shows_the_traceback(tmp_path):
  result = _cli("--config.mode=rl", "--config.optim.lr=-1", "--debug", workdir=tmp_path / "run")
  assert result.returncode != 0
  assert "Traceback (most recent call last)" in result.stderr
  assert ("ConfigError: config.optim.lr: got -1.0; must be a number > 0 (the learning rate)"
          in result.stderr)
  assert not (tmp_path / "run").exists()


def test_cli_reports_a_missing_file_in_one_line(tmp_path):
  """A FileNotFoundError (here: no benchmark file in the data directory) is a user error."""
  env = {"AGPO_DATA_DIR": str(tmp_path)}
  result = _cli("--config.task.name=aime24", "--config.verifier.kind=math", "--config.mode=sft",
                workdir=tmp_path / "run", env=env)
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr
  assert errors[0].startswith("error: benchmark 'gsm8k_train': gsm8k_train.jsonl not found")
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]


# Each bad value of issue 12: refused by main.run before anything is done, naming the key.
REFUSED = [
    ({"mode": "rl", "optim.lr": -1.0}, "config.optim.lr: got -1.0; must be a number > 0"),
    ({"mode": "rl", "train.steps": 0}, "config.train.steps: got 0; must be an integer >= 1"),
    ({"train.steps": -5}, "config.train.steps: got -5; must be an integer >= 0"),
    ({"mode": "rl", "sampling.num_samples": 1, "algo.name": "rloo"},
     "config.sampling.num_samples: got 1; algo.name='rloo' is group-relative"),
    ({"sampling.num_samples": 1, "algo.name": "grpo"},
     "config.sampling.num_samples: got 1; algo.name='grpo' is group-relative"),
    ({"train.batch_prompts": 0}, "config.train.batch_prompts: got 0; must be an integer >= 1"),
    ({"algo.name": "gpro"}, "config.algo.name: got 'gpro'; must be one of"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[str(r[0]) for r in REFUSED])
def test_run_refuses_bad_values_before_any_work(tmp_path, overrides, message):
  cfg = configs.load_config_file(DEFAULT)
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    setattr(cfg[section] if section else cfg, field, value)
  workdir = tmp_path / "run"
  with pytest.raises(configs.ConfigError) as error:
    main.run(cfg, workdir)
  (line,) = str(error.value).splitlines()
  assert line.startswith(message), line
  assert main.error_lines(error.value) == [f"error: {line}"]
  assert not workdir.exists()  # no config.json, no warm start, no evaluation


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
@pytest.mark.parametrize("error", [ValueError("demonstration 'x' has 70 tokens > 64"),
                                   FileNotFoundError("config file not found: x.py")])
def test_main_turns_a_user_error_into_one_line_and_debug_into_its_traceback(
    monkeypatch, capsys, tmp_path, error):
  def failing_run(*args, **kwargs):
    raise error

  monkeypatch.setattr(main, "run", failing_run)
  monkeypatch.setattr(main, "_configure_logging", lambda: None)  # leave the session's logging
  argv = ["agpo_jax.main", f"--config={DEFAULT}", f"--workdir={tmp_path}"]
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    with pytest.raises(SystemExit) as exit_:
      main.main(argv[:1])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {error}"]
    flags.FLAGS(argv + ["--debug"])
    with pytest.raises(type(error)):
      main.main(argv[:1])


def test_error_lines():
  problems = configs.ConfigError("config.a: got 1; must be 2\nconfig.b: got 3; must be 4")
  assert main.error_lines(problems) == ["error: config.a: got 1; must be 2",
                                        "error: config.b: got 3; must be 4"]
  assert main.error_lines(FileNotFoundError("config file not found: x.py")) == [
      "error: config file not found: x.py"]
  assert main.error_lines(KeyError("unknown config key 'config.nope'")) == [
      "error: unknown config key 'config.nope'"]


def test_check_overrides_accepts_known_keys():
  cfg = configs.load_config_file(DEFAULT)
  configs.check_overrides(cfg, ["--config.model.num_layers=3", "--config.seed=1",
                                "--workdir=x", "--config=" + DEFAULT])
  with pytest.raises(KeyError, match="config.model.num_layer'"):
    configs.check_overrides(cfg, ["--config.model.num_layer=3"])


def test_locked_config_rejects_new_fields():
  cfg = configs.load_config_file(DEFAULT)
  cfg.lock()
  with pytest.raises(AttributeError):
    cfg.sampling.temprature = 1.0


def test_run_sample_mode_in_process(tmp_path):
  cfg = configs.load_config_file(DEFAULT)
  cfg.mode = "sample"
  cfg.sample.num_samples = 3
  result = main.run(cfg, tmp_path)
  rollout = result["rollout"]
  assert rollout.tokens.shape == (3 * len(cfg.sample.prompts), cfg.sampling.max_new_tokens)
  assert result["tokens_per_second"] > 0


def test_pipeline_end_to_end_in_process(tmp_path):
  """Warm start, base evaluation, RL for each arm (GRPO, AGPO) from that one base with periodic
  evaluation, each trained model's evaluation, one table and the comparison with the base."""
  cfg = configs.load_config_file(DEFAULT)
  assert cfg.arms == "grpo,agpo"
  cfg.model.num_layers = 1
  cfg.sft.steps = 3
  cfg.sft.batch_size = 16
  cfg.train.steps = 2
  cfg.train.batch_prompts = 4
  cfg.train.eval_every = 2
  cfg.train.eval_problems = 3
  cfg.train.eval_n = 2
  cfg.sampling.num_samples = 2
  cfg.eval.n = 4
  cfg.eval.max_problems = 5
  result = main.run(cfg, tmp_path)
  assert list(result["summaries"]) == ["base", "grpo-step2", "agpo-step2"]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["summaries"]["base"]["num_problems"] == 5 and saved["summaries"]["base"]["n"] == 4
  assert sorted(saved["versus_base"]) == ["agpo-step2", "grpo-step2"]
  table = (tmp_path / "results.md").read_text()
  for row in ("| base |", "| grpo-step2 |", "| agpo-step2 |", "pass@4", "| model vs base |"):
    assert row in table
  assert (tmp_path / "passk.png").is_file()
  assert len(list((tmp_path / "eval").glob("base_*.jsonl"))) == 1  # the base evaluated once
  metrics = {arm: [json.loads(l) for l in (tmp_path / f"rl_{arm}" / "metrics.jsonl").read_text()
                   .splitlines()] for arm in ("grpo", "agpo")}
  for lines in metrics.values():
    assert [l["step"] for l in lines] == [1, 2]
    assert "eval/pass@2" in lines[1] and "eval/pass@2" not in lines[0]
  # Both arms start from the same base with the same seed: the first rollout is the same.
  assert metrics["grpo"][0]["reward"] == metrics["agpo"][0]["reward"]
  # Each arm got its preset: GRPO's loss is a sequence mean, AGPO's a token mean.
  arms = main.pipeline_arms(cfg)
  assert arms["grpo"].algo.name == "grpo" and arms["grpo"].loss.aggregation == "seq_mean_token_mean"
  assert arms["agpo"].algo.name == "agpo" and arms["agpo"].loss.aggregation == "token_mean"
  # A second run reuses everything: the warm start, every evaluation and the finished RL runs.
  logs = [tmp_path / "sft" / "metrics.jsonl", tmp_path / "rl_grpo" / "metrics.jsonl",
          tmp_path / "rl_agpo" / "metrics.jsonl", *sorted((tmp_path / "eval").iterdir())]
  before = [p.read_text() for p in logs]
  again = main.run(cfg, tmp_path)
  assert [p.read_text() for p in logs] == before
  drop_time = lambda summaries: {k: {**v, "seconds": None} for k, v in summaries.items()}
  assert drop_time(again["summaries"]) == drop_time(result["summaries"])

  # evaluate mode restores each arm's RL checkpoint: re-sampled counts equal the pipeline's.
  expected = {}
  for arm in ("grpo", "agpo"):
    counts = next((tmp_path / "eval").glob(f"{arm}-step2_*.jsonl"))
    expected[counts] = counts.read_text()
    counts.unlink()
  cfg.mode = "evaluate"
  evaluated = main.run(cfg, tmp_path)
  assert list(evaluated["results"])[-2:] == ["grpo-step2", "agpo-step2"]
  assert {p: p.read_text() for p in expected} == expected


def test_pipeline_arms_follow_the_command_line():
  cfg = configs.load_config_file(DEFAULT)
  cfg.loss.eps_high = 0.3
  arms = main.pipeline_arms(cfg, explicit_keys=["loss.eps_high"])
  assert list(arms) == ["grpo", "agpo"]
  assert all(arm.loss.eps_high == 0.3 for arm in arms.values())  # set on the command line
  # Naming one algorithm on the command line trains it alone, in WORKDIR/rl.
  for key in ("algo.name", "algo.preset"):
    (only,) = main.arm_dirs(cfg, pathlib.Path("w"), explicit_keys=[key]).items()
    assert only[0] == "agpo" and only[1] == (cfg, pathlib.Path("w/rl"))
  cfg.arms = "dapo, nsr"
  arms = main.arm_dirs(cfg, pathlib.Path("w"), explicit_keys=["algo.name", "arms"])
  assert [(name, d) for name, (_, d) in arms.items()] == [("dapo", pathlib.Path("w/rl_dapo")),
                                                        ("nsr", pathlib.Path("w/rl_nsr"))]
  assert arms["dapo"][0].reward.dynamic_sampling and arms["dapo"][0].algo.name == "grpo"
  cfg.arms = ""
  assert list(main.pipeline_arms(cfg)) == ["agpo"]
  cfg.arms = "grpo,gpro"
  assert validation.config_problems(cfg) == [
      "config.arms: got 'grpo,gpro': 'gpro' is not an algorithm preset; each arm must be one of "
      + str(tuple(sorted(_PRESETS)))]


def test_run_that_cannot_fit_is_refused_before_any_work(tmp_path, capsys):
  from agpo_jax import memory_plan
  cfg = configs.load_config_file(DEFAULT)
  cfg.mode = "pipeline"
  cfg.memory.device_gib = 0.01  # declare a 10 MiB device: the testbed's step needs more
  with pytest.raises(memory_plan.PlanDoesNotFit, match=r"exceeds the 0\.01 GiB") as error:
    main.run(cfg, tmp_path)
  assert "activations" in str(error.value) and "KV cache" in str(error.value)
  printed = capsys.readouterr().out
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in printed and "DOES NOT FIT" in printed
  assert not (tmp_path / "sft").exists()  # refused before the warm start
  cfg.memory.check = False  # print only
  cfg.mode = "sft"
  cfg.sft.steps = 1
  cfg.sft.batch_size = 8
  main.run(cfg, tmp_path)
  assert (tmp_path / "sft").exists()


def test_evaluate_mode_covers_every_split_and_writes_json_summaries(tmp_path, capsys):
  cfg = configs.load_config_file(DEFAULT)
  cfg.mode = "evaluate"
  cfg.model.num_layers = 1
  cfg.eval.split = "heldout, train"
  cfg.eval.n, cfg.eval.samples_per_call, cfg.eval.max_problems = 4, 4, 6
  result = main.run(cfg, tmp_path)
  assert sorted(result["summaries"]) == ["heldout", "train"]
  for split in ("heldout", "train"):
    (counts,) = (tmp_path / "eval").glob(f"init_{split}_n4_*.jsonl")
    summary = json.loads(counts.with_name(counts.stem + ".summary.json").read_text())
    expected = {k: v for k, v in result["summaries"][split].items() if k != "seconds"}
    assert summary == json.loads(json.dumps(expected, default=float))
    assert summary["num_problems"] == 6 and summary["n"] == 4 and "maj@k" in summary
    assert len(counts.read_text().splitlines()) == 6
  printed = capsys.readouterr().out
  assert "heldout (6 problems, n = 4)" in printed and "train (6 problems, n = 4)" in printed
  # The paper-style table: one row for the model, a column group per split; a plot per split.
  table = (tmp_path / "eval" / "table.md").read_text().splitlines()
  assert table[0] == ("| model | heldout avg@4 | heldout pass@4 | heldout maj@4 | train avg@4 "
                      "| train pass@4 | train maj@4 |")
  assert table[2].startswith("| init | ") and len(table) == 3
  assert (tmp_path / "eval" / "passk_heldout.png").is_file()


def test_algorithm_preset_from_the_command_line_and_overrides_win():
  cfg = configs.load_config_file(DEFAULT)
  cfg.algo.preset = "dapo"
  explicit = configs.override_keys(["--config.algo.preset=dapo", "--config.loss.eps_high=0.3",
                                    "--workdir=x"])
  assert explicit == {"algo.preset", "loss.eps_high"}
  cfg.loss.eps_high = 0.3
  configs.resolve_presets(cfg, explicit)
  assert cfg.algo.name == "grpo" and cfg.reward.dynamic_sampling is True
  assert cfg.loss.aggregation == "token_mean"
  assert cfg.loss.eps_high == 0.3  # set on the command line: the preset's 0.28 does not win
  cfg = configs.load_config_file(DEFAULT)
  cfg.algo.preset = "dr_grpo"
  configs.resolve_presets(cfg)
  assert (cfg.algo.name, cfg.loss.aggregation) == ("dr_grpo", "seq_mean_token_sum_norm")
  cfg.algo.preset = "dapoo"
  with pytest.raises(configs.ConfigError, match="config.algo.preset='dapoo' is not one of"):
    configs.resolve_presets(cfg)


def test_evaluate_mode_on_a_pretrained_checkpoint_writes_the_benchmark_table(tmp_path, capsys):
  """A tiny random Qwen2 checkpoint (safetensors, a Qwen2.5-style tokenizer with its own chat
  template) evaluated on 2-problem subsets of two benchmarks: a row for the model, a column
  group per benchmark, a plot per benchmark."""
  from agpo_jax.models import hf, transformer  # noqa: PLC0415
  from agpo_jax.models.config import ModelConfig  # noqa: PLC0415
  from tests.test_chat_templates import _qwen_dir  # noqa: PLC0415
  checkpoint = tmp_path / "tiny-qwen"
  checkpoint.mkdir()
  _qwen_dir(checkpoint)
  vocab = tokenizers.HFTokenizer(checkpoint).vocab_size
  model_cfg = ModelConfig(vocab_size=vocab, num_layers=1, d_model=32, num_heads=2,
                          num_kv_heads=1, head_dim=16, mlp_dim=64, qkv_bias=True,
                          tie_embeddings=True, max_seq_len=1024)
  hf.save_hf_checkpoint(checkpoint, model_cfg,
                        transformer.init_params(model_cfg, jax.random.key(0)))
  cfg = defaults.base_config()
  cfg.mode = "evaluate"
  cfg.task = math_task_config("math500")
  cfg.task.max_problems = 2
  cfg.verifier.kind = "math"
  cfg.verifier.num_workers = 1
  cfg.tokenizer.kind = "hf"
  cfg.model.checkpoint = str(checkpoint)
  cfg.sampling.min_prompt_bucket = 64
  cfg.eval.split = "math500,gsm8k"
  cfg.eval.n, cfg.eval.samples_per_call, cfg.eval.max_new_tokens = 2, 2, 4
  assert validation.config_problems(cfg) == []
  result = main.run(cfg, tmp_path / "run")
  assert result["label"] == "pretrained"
  for split in ("math500", "gsm8k"):
    summary = result["summaries"][split]
    assert summary["num_problems"] == 2 and summary["n"] == 2
    assert (tmp_path / "run" / "eval" / f"passk_{split}.png").is_file()
  table = (tmp_path / "run" / "eval" / "table.md").read_text().splitlines()
  assert table[0] == ("| model | math500 avg@2 | math500 pass@2 | math500 maj@2 | gsm8k avg@2 "
                      "| gsm8k pass@2 | gsm8k maj@2 |")
  assert table[2].startswith("| pretrained | ") and len(table) == 3
  saved = json.loads((tmp_path / "run" / "eval" / "table.json").read_text())
  assert sorted(saved["pretrained"]) == ["gsm8k", "math500"]
  assert "every model evaluated in" in capsys.readouterr().out
