"""Checkpoints: a thin wrapper over `orbax.checkpoint.CheckpointManager`.

A checkpoint at step `S` is the directory `DIR/S/` with two items:

  * `state`: a pytree of arrays (params, optimizer state, step, RNG key data, ...), written by
    orbax's `StandardCheckpointHandler` (tensorstore/OCDBT) and restored into the shapes, dtypes
    and shardings of an abstract tree, so a checkpoint written on one mesh restores on another.
  * `meta`: a JSON dict (data-iterator position, the model config as a dict, anything else).

Orbax writes each step to `DIR/S.orbax-checkpoint-tmp-<time>/` and renames it to `DIR/S/` only
once every item is complete (on GCS, where there is no atomic rename, it writes
`commit_success.txt` last instead), so a run killed mid-save leaves a temporary directory that
`latest_step` and `restore` ignore. Orbax also does the multi-host coordination: every process
calls `save` and `restore`, the primary process writes the shared files. Nothing in this module
writes files itself.

PRNG keys: orbax does not save typed keys (`jax.random.key(...)`, dtype `key<impl>`) in every
version, so `save` refuses them; keep `key_to_data(key)` in the state and rebuild the key after
restore with `data_to_key(data, impl)` (`impl` is the config's `prng_impl`, e.g. "threefry2x32").

`restore` with no checkpoint in the directory raises `FileNotFoundError`; callers that may start
fresh check `latest_step() is None` first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
_STATE = "state"
_META = "meta"


class Checkpointer:
  """Saves and restores `(state, meta)` pairs by step, keeping the newest `max_to_keep`.

  Args:
    directory: root directory; step `S` is saved to `directory/S/`.
    max_to_keep: how many of the newest checkpoints to keep (None keeps all).
    save_interval_steps: `save` writes at multiples of this, and also (orbax's policy) at the
      first call of a run with no checkpoint yet, at a multi-host preemption sync point, and
      whenever `force=True`.
    async_save: when True, `save` returns once the arrays are copied to host memory and writes
      them in a background thread; call `wait()` before reading the checkpoint back.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, args_types in ((_STATE, (ocp.args.StandardSave, ocp.args.StandardRestore)),
                             (_META, (ocp.args.JsonSave, ocp.args.JsonRestore))):
      for args_type in args_types:
        registry.add(item, args_type)
    directory = os.fspath(directory)
    if "://" not in directory:  # tensorstore needs absolute local paths (gs://... already is)
      directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(directory, options=options,
                                          handler_registry=registry)

  @property
  def directory(self) -> str:
    return os.fspath(self._manager.directory)

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any], *,
           force: bool = False) -> bool:
    """Saves `state` (arrays) and `meta` (JSON-able) as step `step`; all processes call it.

    Returns whether a checkpoint was started: False when it is not due (see
    `save_interval_steps`) and not `force`, and always when `step` is not after the latest
    saved step (so a forced final save right after a scheduled one is a no-op; orbax itself
    would write an older step under `force`).
    """
    latest = self.latest_step()
    if latest is not None and step <= latest:
      return False
    _check_no_typed_keys(state)
    try:
      meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as error:
      raise TypeError(f"checkpoint meta must be JSON-serialisable: {error}") from error
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                 _META: ocp.args.JsonSave(meta)})
    return self._manager.save(step, args=args, force=force)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of every complete checkpoint, ascending."""
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int | None = None) -> dict:
    """The `meta` dict of checkpoint `step` (default: the latest), without reading arrays."""
    step = self._resolve_step(step)
    return self._manager.restore(step, args=ocp.args.Composite(
        **{_META: ocp.args.JsonRestore()}))[_META]

  def restore(self, step: int | None = None, *, abstract_state: PyTree,
              expected_meta: Mapping[str, Any] | None = None) -> tuple[PyTree, dict]:
    """Restores checkpoint `step` (default: the latest) as `(state, meta)`.

    Args:
      step: which checkpoint; None for the latest.
      abstract_state: the target structure: a pytree of `jax.ShapeDtypeStruct` (with
        `.sharding`) or of arrays, whose shapes, dtypes and shardings the restored arrays take.
        Dtypes may differ from the checkpoint's (values are cast); shapes may not.
      expected_meta: if given and both it and the checkpoint have a "model" entry, they must be
        equal; otherwise a ValueError names each differing field before any array is read.

    Raises:
      FileNotFoundError: there is no checkpoint (at `step`).
      ValueError: model config or array shapes differ from the checkpoint's.
    """
    step = self._resolve_step(step)
    meta = self.read_meta(step)
    if expected_meta is not None and "model" in meta and "model" in expected_meta:
      differences = _dict_differences(meta["model"], _as_json(expected_meta["model"]))
      if differences:
        raise ValueError(
            f"checkpoint at {self._step_path(step)} was written by a different model config "
            f"(checkpoint != expected): {', '.join(differences)}")
    abstract_state = jax.tree.map(_abstract_leaf, abstract_state)
    self._check_shapes(step, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardRestore(abstract_state)}))
    return restored[_STATE], meta

  def wait(self) -> None:
    """Blocks until an asynchronous save has finished writing."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions, then releases the manager."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _resolve_step(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
      return steps[-1]
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"saved steps: {steps}")
    return step

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _check_shapes(self, step: int, abstract_state: PyTree) -> None:
    """Names every array whose shape in `abstract_state` differs from the checkpoint's.

    Orbax's own error gives the two shapes but not which parameter they belong to. Structure
    differences (missing or extra entries) are left to orbax, whose error names them.
    """
    metadata = self._manager.item_metadata(step)[_STATE]
    saved = _shapes_by_path(getattr(metadata, "tree", metadata))
    wanted = _shapes_by_path(abstract_state)
    mismatches = [f"{path}: checkpoint {saved[path]} != expected {shape}"
                  for path, shape in wanted.items() if path in saved and saved[path] != shape]
    if mismatches:
      raise ValueError(f"checkpoint at {self._step_path(step)} has arrays of other shapes "
                       f"than abstract_state: {'; '.join(mismatches)}")


def key_to_data(key: jax.Array) -> jax.Array:
  """The raw `uint32` data of a typed PRNG key (array), for saving in a checkpoint."""
  return jax.random.key_data(key)


def data_to_key(data: jax.Array, impl: str) -> jax.Array:
  """The typed PRNG key of implementation `impl` (e.g. "threefry2x32") back from its data."""
  return jax.random.wrap_key_data(data, impl=impl)


def _check_no_typed_keys(state: PyTree) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"state{jax.tree_util.keystr(path)} is a typed PRNG key; save "
                      "checkpointing.key_to_data(key) and restore with data_to_key(data, impl)")


def _abstract_leaf(leaf: Any) -> Any:
  """jax.Array -> ShapeDtypeStruct with its sharding; anything else is orbax's to interpret."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


def _shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
  # Orbax's metadata tree stores namedtuples as dicts and tuples as lists; a dotted path of
  # names and indices reads the same in both trees.
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="."): _shape(leaf)
          for path, leaf in leaves}


def _shape(leaf: Any) -> tuple[int, ...]:
  return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def _as_json(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples become lists), for comparing with meta."""
  return json.loads(json.dumps(value))


def _dict_differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
  """`"field saved != expected"` for every differing leaf of two nested dicts."""
  if not (isinstance(saved, dict) and isinstance(expected, dict)):
    return [] if saved == expected else [f"{prefix or 'model'} {saved!r} != {expected!r}"]
  differences = []
  for key in sorted(saved.keys() | expected.keys()):
    name = f"{prefix}.{key}" if prefix else str(key)
    if key not in saved:
      differences.append(f"{name} <missing> != {expected[key]!r}")
    elif key not in expected:
      differences.append(f"{name} {saved[key]!r} != <missing>")
    else:
      differences.extend(_dict_differences(saved[key], expected[key], name))
  return differences
