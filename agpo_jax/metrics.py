"""Training metrics: a JSON-lines file, TensorBoard event files and a progress line.

`MetricsWriter.write(step, metrics)` is called once per train step with a flat mapping of scalar
metrics whose names are grouped by a `/` prefix (`rollout/reward`, `loss/clip_frac_low`,
`time/sample_s`); TensorBoard shows one section per prefix. Each call

  * appends `{"step": step, "time": <unix seconds>, **metrics}` as one line to
    `workdir/metrics.jsonl`, flushed at once, so a killed run loses at most the line being
    written. Non-finite values are written as `null` (strict JSON, which `json`, `jq` and
    pandas all read; pandas turns it into NaN); TensorBoard gets the raw NaN / inf.
  * adds every metric as a scalar to the event files in `workdir/tensorboard/`.
  * advances a tqdm bar on stderr (step / total, a few chosen metrics, ETA); when stderr is not
    a terminal (CI, log files), prints one summary line every `stdout_every` steps instead.

`step` is the number of completed train steps (1 after the first update), so a run of
`total_steps` ends at `step == total_steps` and a run resumed from a checkpoint at step `S`
passes `start_step=S` and writes `S + 1` next. An existing `metrics.jsonl` is appended to, after
dropping its lines with a step after `start_step` (written by an interrupted run after its last
checkpoint; for a new run, `start_step=0`, that is every line) and a torn last line; TensorBoard
is told to hide its events from those steps. Both then hold one history.

Only one process of a multi-host run writes: the others pass `enabled=False`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import jax
import numpy as np
import tqdm
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def summary_writer_class() -> type:
  """tensorboardX's `SummaryWriter`, imported on first use without importing torch.

  tensorboardX imports torch when it is installed (only to accept torch tensors as values; this
  project logs floats): 1.9 s of every run's start-up. Unless torch is already imported, the
  import is made to fail for tensorboardX's own import only.
  """
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


_RESERVED = ("step", "time")


class MetricsWriter:
  """Writes per-step scalar metrics to JSONL, TensorBoard and a progress bar or log line.

  Args:
    workdir: run directory; `metrics.jsonl` and `tensorboard/` are created inside it.
    total_steps: the step the run ends at, for the bar and the ETA.
    start_step: the step a resumed run starts from (its checkpoint's step); 0 for a new run.
    stdout_every: without a terminal, print a summary line every this many steps.
    progress_keys: metrics shown on the bar / summary line. A key matches a metric of the same
      name or one ending in `/key` (`reward` shows `rollout/reward`).
    tensorboard: also write TensorBoard event files.
    enabled: False writes nothing at all (non-zero processes of a multi-host run).
    stream: where the bar or summary lines go; defaults to `sys.stderr` at construction.
  """

  def __init__(self, workdir: str | os.PathLike, total_steps: int, *, start_step: int = 0,
               stdout_every: int = 1, progress_keys: Sequence[str] = ("reward", "accuracy"),
               tensorboard: bool = True, enabled: bool = True, stream: TextIO | None = None):
    if stdout_every < 1:
      raise ValueError(f"stdout_every must be >= 1, got {stdout_every}")
    self.enabled = enabled
    self.total_steps = total_steps
    self.start_step = start_step
    self.stdout_every = stdout_every
    self.progress_keys = tuple(progress_keys)
    self._file = None
    self._tensorboard = None
    self._bar = None
    self._closed = False
    self.path = pathlib.Path(workdir) / METRICS_FILE
    if not enabled:
      return
    self._stream = sys.stderr if stream is None else stream
    self._start_time = time.monotonic()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dropped = _rewind_jsonl(self.path, start_step)
    if dropped:
      logging.info("%s: dropped %d lines after step %d (written after the last checkpoint of "
                   "an interrupted run)", self.path, dropped, start_step)
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
    if tensorboard:
      # TensorBoard hides events at or after purge_step from older event files: those of an
      # interrupted run after its last checkpoint.
      self._tensorboard = summary_writer_class()(str(workdir / TENSORBOARD_DIR), flush_secs=10,
                                                 purge_step=start_step + 1)
    if _isatty(self._stream):
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, file=self._stream,
                            unit="step", dynamic_ncols=True)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records the scalar `metrics` of train step `step` everywhere this writer writes."""
    if not self.enabled:
      return
    if self._closed:
      raise RuntimeError("MetricsWriter.write called after close()")
    step = int(step)
    values = scalar_metrics(metrics)
    record = {"step": step, "time": time.time()}
    record.update({k: v if math.isfinite(v) else None for k, v in values.items()})
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    if self._tensorboard is not None:
      for name, value in values.items():
        self._tensorboard.add_scalar(name, value, step)
    self._show_progress(step, values)

  def close(self) -> None:
    """Flushes and closes every output; later calls do nothing."""
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._file is not None:
      self._file.close()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _show_progress(self, step: int, values: Mapping[str, float | int]) -> None:
    shown = []
    for key in self.progress_keys:
      name = next((n for n in values if n == key or n.endswith("/" + key)), None)
      if name is not None:
        shown.append(f"{key} {_format_value(values[name])}")
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix_str(", ".join(shown))
      return
    if step % self.stdout_every and step != self.total_steps:
      return
    elapsed = time.monotonic() - self._start_time
    done = step - self.start_step
    eta = elapsed / done * (self.total_steps - step) if done > 0 else math.nan
    parts = [f"step {step}/{self.total_steps}", *shown,
             f"elapsed {tqdm.tqdm.format_interval(elapsed)}",
             f"eta {tqdm.tqdm.format_interval(eta) if math.isfinite(eta) else '?'}"]
    self._stream.write(" | ".join(parts) + "\n")
    self._stream.flush()


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
  """Python scalars from a mapping of Python, NumPy or JAX scalars (0-d arrays included).

  Integers and booleans become `int`, everything else `float`. One device-to-host transfer
  for all JAX values. Raises ValueError / TypeError naming the first key that is not a
  numeric scalar, or that uses a reserved name (`step`, `time`).
  """
  host = jax.device_get(dict(metrics))
  values = {}
  for name, value in host.items():
    if not isinstance(name, str):
      raise TypeError(f"metric names must be strings, got {name!r}")
    if name in _RESERVED:
      raise ValueError(f"metric name {name!r} is reserved for the JSONL record")
    array = np.asarray(value)
    if array.ndim != 0:
      raise ValueError(f"metric {name!r} is not a scalar: shape {array.shape}")
    if array.dtype.kind in "biu":
      values[name] = int(array)
    elif array.dtype.kind == "f":
      values[name] = float(array)
    else:
      raise TypeError(f"metric {name!r} is not a real number: {value!r} ({array.dtype})")
  return values


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Every record of a JSON-lines file; a torn last line (a kill mid-write) is skipped."""
  lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines):
        break
      raise ValueError(f"{path}:{number}: not a JSON line: {error}") from error
  return records


def _rewind_jsonl(path: pathlib.Path, start_step: int) -> int:
  """Drops records after `start_step` and a torn last line; returns how many records went."""
  if not path.exists():
    return 0
  text = path.read_text(encoding="utf-8")
  records = read_jsonl(path)
  kept = [r for r in records if r["step"] <= start_step]
  if len(kept) == len(records) and (not text or text.endswith("\n")):
    return 0
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
  os.replace(tmp, path)  # atomic: a kill here leaves either the old or the new file
  return len(records) - len(kept)


def _format_value(value: float | int) -> str:
  return str(value) if isinstance(value, int) else f"{value:.4g}"


def _isatty(stream: TextIO) -> bool:
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty())
