"""Saving and restoring a `TrainState` (plus the data-iterator position) with a `Checkpointer`,
and the loops' response to skipped updates.

What is saved: step, params, optimizer state, the skip counters, the update guard's window of
recent gradient norms and the run's PRNG key data; beside them, as JSON metadata, the model's
checkpoint signature (a checkpoint written by a different model is refused) and the prompt
iterator's position. The `Checkpointer` verifies what it restores (see `checkpointing`).

A state in the middle of a run of skipped updates is never saved (`save_state`): its
parameters are those that led to the skips, and saving it would rotate a good checkpoint out.
`SkipWatch` stops a loop after too many skips in a row, naming the last good checkpoint.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from agpo_jax import checkpointing
from agpo_jax.models.config import ModelConfig
from agpo_jax.train.state import TrainState


def state_meta(model_cfg: ModelConfig, iterator: Any, **extra) -> dict:
  return {"model": model_cfg.checkpoint_signature(), "iterator": iterator.state(), **extra}


def _arrays(state: TrainState, rng: jax.Array | None) -> dict:
  arrays = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "skipped": state.skipped, "consecutive_skips": state.consecutive_skips,
            "grad_norms": state.grad_norms, "grad_norm_count": state.grad_norm_count}
  if rng is not None:
    # As numpy: the key is the same on every process, and orbax refuses to save a
    # single-device (host-local) jax.Array from several processes.
    arrays["rng"] = np.asarray(checkpointing.key_to_data(rng))
  return arrays


def _host(x: Any) -> np.ndarray:
  """A replicated array's value on any process (also when it spans several)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def save_state(ckpt: checkpointing.Checkpointer, state: TrainState, meta: dict,
               rng: jax.Array | None = None) -> bool:
  """Saves `state` as checkpoint `state.step`; returns whether a checkpoint was written.

  Not written (a warning says why): while updates are being skipped
  (`state.consecutive_skips > 0`), and (by the `Checkpointer`) when any value is non-finite.
  """
  step = int(_host(state.step))
  consecutive = int(_host(state.consecutive_skips))
  if consecutive:
    logging.warning("not saving checkpoint step %d: the last %d update(s) were skipped; the "
                    "newest good checkpoint stays step %s in %s", step, consecutive,
                    ckpt.last_verified_step, ckpt.directory)
    return False
  return ckpt.save(step, _arrays(state, rng), meta, force=True)


def restore_state(ckpt: checkpointing.Checkpointer, state: TrainState, expected_meta: dict,
                  rng: jax.Array | None = None, step: int | None = None):
  """Restore into the structure of `state` (and `rng`); returns (state, iterator state[, rng]).

  The newest checkpoint that verifies, unless `step` is given (see `Checkpointer.restore`).

  Raises:
    checkpointing.CorruptCheckpoint: no checkpoint verifies.
    ValueError: the checkpoint holds another tree of arrays (e.g. written by a version of the
      code with other `TrainState` fields; those are not converted), another model config, or
      other shapes; the message names the differences.
  """
  # The target's own arrays, not `jax.eval_shape` of them: eval_shape drops their shardings,
  # and orbax would then lay arrays out by the saving mesh's partition specs (wrong, or
  # uneven, on another mesh). With them, a checkpoint restores onto any mesh.
  restored, meta = ckpt.restore(step, abstract_state=_arrays(state, rng),
                                expected_meta=expected_meta)
  state = state.replace(step=restored["step"], params=restored["params"],
                        opt_state=restored["opt_state"], skipped=restored["skipped"],
                        consecutive_skips=restored["consecutive_skips"],
                        grad_norms=restored["grad_norms"],
                        grad_norm_count=restored["grad_norm_count"])
  if rng is None:
    return state, meta["iterator"]
  impl = str(jax.random.key_impl(rng))
  return state, meta["iterator"], checkpointing.data_to_key(restored["rng"], impl)


def recent_grad_norm_median(state: TrainState) -> float | None:
  """Median of the update guard's window of accepted gradient norms (None when empty)."""
  norms = _host(state.grad_norms)
  count = min(int(_host(state.grad_norm_count)), norms.shape[0])
  return float(np.median(norms[:count])) if count else None


class SkipWatch:
  """Follows the skipped updates of a loop: logs each step that skipped one, and stops the
  run with a `FloatingPointError` after `limit` in a row, naming the last good checkpoint (the
  newest one verified, which was saved before the skips began: `save_state` saves nothing
  while they go on).

  Args:
    ckpt: the loop's checkpointer.
    limit: the most consecutive skipped updates tolerated.
    block: the config block of the loop ("train", "sft"), for the messages.
  """

  def __init__(self, ckpt: checkpointing.Checkpointer, limit: int, block: str):
    self._ckpt, self._limit, self._block = ckpt, limit, block
    self._first_step: int | None = None  # the step in which the current run of skips began

  def _cause(self, state: TrainState, grad_norm: float) -> str:
    """Why an update with this gradient norm was (likely) skipped, for the log."""
    factor, median = state.guard.spike_factor, recent_grad_norm_median(state)
    if not math.isfinite(grad_norm):
      return f"non-finite gradient (grad_norm {grad_norm})"
    if factor and median is not None and grad_norm > factor * median:
      return (f"gradient-norm spike (grad_norm {grad_norm:.4g} > {self._block}.spike_factor="
              f"{factor:g} x the running median {median:.4g})")
    return (f"grad_norm {grad_norm:.4g}: a non-finite loss, or an update that would make a "
            "parameter non-finite")

  def after_step(self, step: int, state: TrainState, skipped: int, grad_norm: float) -> None:
    """Call after each completed step `step` with the new `state`, the number of updates the
    step skipped, and the step's (last update's) gradient norm."""
    consecutive = int(_host(state.consecutive_skips))
    if skipped:
      logging.warning("step %d: %d update(s) skipped, %d in a row now; %s", step, skipped,
                      consecutive, f"the last one: {self._cause(state, grad_norm)}"
                      if consecutive else "the step's last update was applied")
    if consecutive == 0:
      self._first_step = None
      return
    if self._first_step is None:
      self._first_step = step
    if consecutive < self._limit:
      return
    good = self._ckpt.last_verified_step
    if good is None:
      where = (f"no checkpoint in {self._ckpt.directory} was verified before the skips "
               "began: the run's starting parameters are the last good state")
    else:
      where = (f"the last good checkpoint is step {good}: "
               f"{os.path.join(self._ckpt.directory, str(good))} (verified; saved before the "
               "skips began)")
    raise FloatingPointError(
        f"{consecutive} consecutive updates were skipped (non-finite loss or gradient, or a "
        f"gradient-norm spike above {self._block}.spike_factor x the running median) from step "
        f"{self._first_step} to step {step}, reaching {self._block}.max_consecutive_skips="
        f"{self._limit}; stopping. {where[0].upper()}{where[1:]}. Lower the learning rate or "
        "check the data.")
