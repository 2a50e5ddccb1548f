"""Saving and restoring a `TrainState` (plus the data-iterator position) with a `Checkpointer`.

What is saved: step, params, optimizer state, the skip counters and the run's PRNG key data;
beside them, as JSON metadata, the model's checkpoint signature (a checkpoint written by a
different model is refused) and the prompt iterator's position.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from agpo_jax import checkpointing
from agpo_jax.models.config import ModelConfig
from agpo_jax.train.state import TrainState


def state_meta(model_cfg: ModelConfig, iterator: Any, **extra) -> dict:
  return {"model": model_cfg.checkpoint_signature(), "iterator": iterator.state(), **extra}


def _arrays(state: TrainState, rng: jax.Array | None) -> dict:
  arrays = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "skipped": state.skipped, "consecutive_skips": state.consecutive_skips}
  if rng is not None:
    # As numpy: the key is the same on every process, and orbax refuses to save a
    # single-device (host-local) jax.Array from several processes.
    arrays["rng"] = np.asarray(checkpointing.key_to_data(rng))
  return arrays


def save_state(ckpt: checkpointing.Checkpointer, state: TrainState, meta: dict,
               rng: jax.Array | None = None) -> None:
  ckpt.save(int(state.step), _arrays(state, rng), meta, force=True)


def restore_state(ckpt: checkpointing.Checkpointer, state: TrainState, expected_meta: dict,
                  rng: jax.Array | None = None, step: int | None = None):
  """Restore into the structure of `state` (and `rng`); returns (state, iterator state[, rng])."""
  # The target's own arrays, not `jax.eval_shape` of them: eval_shape drops their shardings,
  # and orbax would then lay arrays out by the saving mesh's partition specs (wrong, or
  # uneven, on another mesh). With them, a checkpoint restores onto any mesh.
  restored, meta = ckpt.restore(step, abstract_state=_arrays(state, rng),
                                expected_meta=expected_meta)
  state = state.replace(step=restored["step"], params=restored["params"],
                        opt_state=restored["opt_state"], skipped=restored["skipped"],
                        consecutive_skips=restored["consecutive_skips"])
  if rng is None:
    return state, meta["iterator"]
  impl = str(jax.random.key_impl(rng))
  return state, meta["iterator"], checkpointing.data_to_key(restored["rng"], impl)
