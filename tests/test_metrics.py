"""MetricsWriter: JSONL records, TensorBoard scalars, resume, progress output."""

import io
import json
import math
import pathlib
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from agpo_jax import metrics
from agpo_jax.metrics import MetricsWriter, read_jsonl


def _strict_loads(line):
  def reject(constant):
    raise ValueError(f"non-standard JSON constant {constant}")
  return json.loads(line, parse_constant=reject)


def _tensorboard_scalars(logdir):
  """{tag: [(step, value), ...]} from every event file under `logdir` (TFRecord framing)."""
  scalars = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      offset += 12  # uint64 length + uint32 length crc
      event = event_pb2.Event.FromString(data[offset:offset + length])
      offset += length + 4  # payload + uint32 payload crc
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_jsonl_records_steps_keys_and_python_scalars(tmp_path):
  with MetricsWriter(tmp_path, total_steps=2, stream=io.StringIO()) as writer:
    writer.write(1, {"rollout/reward": jnp.float32(0.25), "loss/kl": np.float64(1e-3),
                     "rollout/num_tokens": jnp.array(17, jnp.int32), "lr": 0.5,
                     "rollout/all_correct": np.bool_(True)})
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1  # flushed before close
    writer.write(2, {"rollout/reward": np.array(0.75, np.float32), "lr": 1})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2
  first, second = (_strict_loads(line) for line in lines)
  assert first["step"] == 1 and second["step"] == 2
  assert isinstance(first["time"], float) and first["time"] <= second["time"]
  assert first["rollout/reward"] == 0.25 and first["loss/kl"] == pytest.approx(1e-3)
  assert first["rollout/num_tokens"] == 17 and isinstance(first["rollout/num_tokens"], int)
  assert first["rollout/all_correct"] == 1
  assert set(second) == {"step", "time", "rollout/reward", "lr"}
  assert read_jsonl(tmp_path / "metrics.jsonl") == [first, second]


def test_non_finite_values_are_null_and_the_file_stays_strict_json(tmp_path):
  with MetricsWriter(tmp_path, total_steps=1, stream=io.StringIO()) as writer:
    writer.write(1, {"a": math.nan, "b": jnp.float32(jnp.inf), "c": -np.inf, "d": 2.0})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  (record,) = [_strict_loads(line) for line in lines]
  assert (record["a"], record["b"], record["c"], record["d"]) == (None, None, None, 2.0)


def test_resume_appends_and_drops_steps_after_the_checkpoint(tmp_path):
  def run(start_step, steps):
    with MetricsWriter(tmp_path, total_steps=10, start_step=start_step,
                       stream=io.StringIO()) as writer:
      for step in steps:
        writer.write(step, {"run": start_step})

  run(0, [1, 2, 3, 4])
  run(4, [5, 6])  # resumed from a checkpoint at step 4: appended
  path = tmp_path / "metrics.jsonl"
  assert [(r["step"], r["run"]) for r in read_jsonl(path)] == [
      (1, 0), (2, 0), (3, 0), (4, 0), (5, 4), (6, 4)]
  with path.open("a") as f:
    f.write('{"step": 7, "ru')  # killed mid-line
  run(5, [6, 7])  # checkpoint at step 5: the old step 6 and the torn line go
  assert [(r["step"], r["run"]) for r in read_jsonl(path)] == [
      (1, 0), (2, 0), (3, 0), (4, 0), (5, 4), (6, 5), (7, 5)]
  for line in path.read_text().splitlines():
    _strict_loads(line)


def test_tensorboard_event_file_holds_every_scalar_tag(tmp_path):
  with MetricsWriter(tmp_path, total_steps=2, stream=io.StringIO()) as writer:
    writer.write(1, {"rollout/reward": 0.5, "loss/clip_frac_low": jnp.float32(0.125)})
    writer.write(2, {"rollout/reward": 0.75, "time/sample_s": 3})
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars == {"rollout/reward": [(1, 0.5), (2, 0.75)],
                     "loss/clip_frac_low": [(1, 0.125)], "time/sample_s": [(2, 3.0)]}


@pytest.mark.parametrize("value, error, fragment", [
    (jnp.zeros(3), ValueError, "shape (3,)"),
    (np.ones((1, 1)), ValueError, "shape (1, 1)"),
    ("high", TypeError, "not a real number"),
])
def test_non_scalars_are_rejected_by_key(tmp_path, value, error, fragment):
  with MetricsWriter(tmp_path, total_steps=1, stream=io.StringIO()) as writer:
    with pytest.raises(error, match="'rollout/rewards'") as info:
      writer.write(1, {"ok": 1.0, "rollout/rewards": value})
  assert fragment in str(info.value)
  assert read_jsonl(tmp_path / "metrics.jsonl") == []
  with pytest.raises(ValueError, match="'step' is reserved"):
    metrics.scalar_metrics({"step": 3})


def test_disabled_writer_writes_nothing(tmp_path, capsys):
  workdir = tmp_path / "run"
  with MetricsWriter(workdir, total_steps=3, enabled=False) as writer:
    for step in (1, 2, 3):
      writer.write(step, {"reward": 1.0})
  assert not workdir.exists()
  assert capsys.readouterr() == ("", "")


def test_without_a_terminal_prints_a_summary_line_every_n_steps(tmp_path, capsys):
  with MetricsWriter(tmp_path, total_steps=5, stdout_every=2, tensorboard=False) as writer:
    for step in range(1, 6):
      writer.write(step, {"rollout/reward": step / 10, "eval/accuracy": 0.5, "loss/kl": 9.0})
  out, err = capsys.readouterr()
  assert out == ""
  lines = err.splitlines()
  assert [line.split(" | ")[0] for line in lines] == ["step 2/5", "step 4/5", "step 5/5"]
  assert lines[0].split(" | ")[1:3] == ["reward 0.2", "accuracy 0.5"]
  assert "kl" not in err
  assert "elapsed" in lines[0] and "eta" in lines[0]
  assert not (tmp_path / "tensorboard").exists()


def test_on_a_terminal_draws_a_progress_bar_instead(tmp_path):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  terminal = Terminal()
  with MetricsWriter(tmp_path, total_steps=4, start_step=1, stream=terminal) as writer:
    writer.write(2, {"rollout/reward": 0.5})
    writer.write(3, {"rollout/reward": 0.625})
  output = terminal.getvalue()
  assert "3/4" in output and "reward 0.625" in output
  assert "elapsed" not in output  # no summary lines


def test_tensorboard_writer_does_not_import_torch():
  """tensorboardX imports torch when it is installed (1.9 s of a run's start-up); the writer
  class is imported without it, and torch stays importable afterwards."""
  pytest.importorskip("torch")
  script = ("import sys; from agpo_jax import metrics; metrics.summary_writer_class(); "
            "print('torch' in sys.modules); import torch; print(torch.tensor(1).item())")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1], timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["False", "1"]
