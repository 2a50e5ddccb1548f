"""Checkpoints: a wrapper over `orbax.checkpoint.CheckpointManager` that verifies what it reads.

A checkpoint at step `S` is the directory `DIR/S/` with three items:

  * `state`: a pytree of arrays (params, optimizer state, step, RNG key data, ...), written by
    orbax's `StandardCheckpointHandler` (tensorstore/OCDBT) and restored into the shapes, dtypes
    and shardings of an abstract tree, so a checkpoint written on one mesh restores on another.
  * `meta`: a JSON dict (data-iterator position, the model config as a dict, anything else).
  * `integrity`: a JSON record, per array, of its shape, dtype and a 64-bit digest of its
    values, and that the state was all finite.

Orbax writes each step to `DIR/S.orbax-checkpoint-tmp-<time>/` and renames it to `DIR/S/` only
once every item is complete (on GCS, where there is no atomic rename, it writes
`commit_success.txt` last instead), so a run killed mid-save leaves a temporary directory that
`latest_step` and `restore` ignore. Orbax also does the multi-host coordination: every process
calls `save` and `restore`, the primary process writes the shared files. Nothing in this module
writes into a step directory; it only renames a corrupt one aside and deletes old ones.

Integrity. The digest of an array is a function of its logical values (each element's bits
and its position in the whole array), summed modulo 2**32 over elements, so it is the same
whatever the sharding: it is computed by one jitted reduction over the (sharded, possibly
multi-process) arrays, with every process holding only its own shards, and a checkpoint
written on one mesh verifies on another. No orbax version in use checksums array data
(zarr3's `crc32c` covers only the shard index), hence this record.

  * `save` refuses a state with a non-finite value (a warning names the arrays; nothing is
    written), then, after the write, reads the checkpoint back and verifies it (in groups of
    at most `verify_bytes`, so device memory never holds a second whole state).
  * `restore` verifies: an unreadable `meta` or `integrity` record, an array that cannot be
    read (a missing or truncated file), a digest mismatch or a non-finite value makes a step
    fail, with a warning naming the step and the file or array; restore then falls back to the
    next older step, and says so. If no step verifies, `CorruptCheckpoint` names every step and
    why it failed. A step that failed is renamed `DIR/S.corrupt` at the next `save`, so the run
    can save that step number again.
  * Rotation (`max_to_keep`) is done here, after a save is verified, and never deletes the
    newest verified checkpoint (`last_verified_step`), even when newer ones exist.

A model-config, tree-structure or shape difference is not corruption: it raises a ValueError
naming the differences, with no fallback.

PRNG keys: orbax does not save typed keys (`jax.random.key(...)`, dtype `key<impl>`) in every
version, so `save` refuses them; keep `key_to_data(key)` in the state and rebuild the key after
restore with `data_to_key(data, impl)` (`impl` is the config's `prng_impl`, e.g. "threefry2x32").

`restore` with no checkpoint in the directory raises `FileNotFoundError`; callers that may start
fresh check `latest_step() is None` first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from agpo_jax import checkpoint_digests as digest_lib
from agpo_jax.checkpoint_trees import (  # noqa: F401 (key_to_data, data_to_key: re-exported)
    data_to_key,
    key_to_data,
    paths_and_leaves as _paths_and_leaves,
    is_placeholder as _is_placeholder,
    with_dtype as _with_dtype,
    cast_like as _cast_like,
    check_no_typed_keys as _check_no_typed_keys,
    abstract_leaf as _abstract_leaf,
    shapes_by_path as _shapes_by_path,
    as_json as _as_json,
    dict_differences as _dict_differences,
)
from absl import logging
from jax.experimental import multihost_utils

PyTree = Any
_STATE = "state"
_META = "meta"
_INTEGRITY = "integrity"
_INTEGRITY_VERSION = 1
_JSON_FILE = "metadata"  # orbax's JsonCheckpointHandler writes an item to ITEM/metadata
_CORRUPT_SUFFIX = ".corrupt"


class CorruptCheckpoint(ValueError):
  """No checkpoint in a directory (or not the one asked for) passed verification.

  Attributes:
    directory: the checkpoint directory.
    failures: step -> why it failed (one line each), newest first.
  """

  def __init__(self, directory: str, failures: Mapping[int, str]):
    self.directory = directory
    self.failures = dict(failures)
    reasons = "; ".join(f"step {step}: {why}" for step, why in self.failures.items())
    super().__init__(f"no checkpoint in {directory} passed verification "
                     f"(steps {sorted(self.failures)}): {reasons}")


class _StepFailed(Exception):
  """One step failed verification (internal; restore falls back on it)."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class _Pending:
  """A save whose verification and rotation are still to do."""

  step: int
  abstract: PyTree  # the saved tree, as ShapeDtypeStructs with shardings (numpy leaves as is)
  record: dict  # its integrity record


class Checkpointer:
  """Saves and restores `(state, meta)` pairs by step, keeping the newest `max_to_keep`.

  Args:
    directory: root directory; step `S` is saved to `directory/S/`.
    max_to_keep: how many of the newest checkpoints to keep (None keeps all); the newest
      verified checkpoint is kept as well.
    save_interval_steps: `save` writes at multiples of this, and also (orbax's policy) at the
      first call of a run with no checkpoint yet, at a multi-host preemption sync point, and
      whenever `force=True`.
    async_save: when True, `save` returns once the arrays are copied to host memory and writes
      them in a background thread; call `wait()` before reading the checkpoint back. The
      save is verified (and old steps rotated out) at the next `save`, `wait`, `restore` or
      `close`.
    verify_saves: read every checkpoint back after writing it and check it against its
      integrity record; only then is it `last_verified_step`. Off, a run's own saves are not
      verified, and rotation keeps the newest one `restore` verified.
    verify_bytes: the most array bytes (global) one read-back group holds.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = False,
               verify_saves: bool = True, verify_bytes: int = 1 << 30):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    # Rotation is ours (see `_rotate`): orbax's would delete the oldest steps whatever their
    # state.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, args_types in ((_STATE, (ocp.args.StandardSave, ocp.args.StandardRestore)),
                             (_META, (ocp.args.JsonSave, ocp.args.JsonRestore)),
                             (_INTEGRITY, (ocp.args.JsonSave, ocp.args.JsonRestore))):
      for args_type in args_types:
        registry.add(item, args_type)
    directory = os.fspath(directory)
    if "://" not in directory:  # tensorstore needs absolute local paths (gs://... already is)
      directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(directory, options=options,
                                          handler_registry=registry)
    self._max_to_keep = max_to_keep
    self._async = async_save
    self._verify_saves = verify_saves
    self._verify_bytes = verify_bytes
    self._digest_fn = jax.jit(digest_lib.digest_arrays)
    self._pending: _Pending | None = None
    self._verified_step: int | None = None
    self._failed: dict[int, str] = {}  # steps `restore` found corrupt, not yet set aside

  @property
  def directory(self) -> str:
    return os.fspath(self._manager.directory)

  @property
  def last_verified_step(self) -> int | None:
    """The newest step this checkpointer verified: read back after its save, or restored."""
    return self._verified_step

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any], *,
           force: bool = False) -> bool:
    """Saves `state` (arrays) and `meta` (JSON-able) as step `step`; all processes call it.

    Returns whether a checkpoint was written: False when it is not due (see
    `save_interval_steps`) and not `force`, when `step` is not after the latest saved step (so
    a forced final save right after a scheduled one is a no-op; orbax itself would write an
    older step under `force`), and when `state` holds a non-finite value (logged as a warning:
    such a state is never written). With `verify_saves`, a written checkpoint that does not
    read back intact is renamed aside (a warning says so) and False is returned.
    """
    self._finish_pending()
    self._set_aside_failed()
    latest = self.latest_step()
    if latest is not None and step <= latest:
      return False
    if not force and not self._manager.should_save(step):
      return False
    _check_no_typed_keys(state)
    try:
      meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as error:
      raise TypeError(f"checkpoint meta must be JSON-serialisable: {error}") from error
    record = self._integrity_record(state)
    non_finite = [path for path, entry in record["arrays"].items() if not entry["finite"]]
    if non_finite:
      logging.warning("not saving checkpoint step %d in %s: non-finite values in %s; the "
                      "newest checkpoint stays step %s", step, self.directory,
                      ", ".join(non_finite), latest)
      return False
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                 _META: ocp.args.JsonSave(meta),
                                 _INTEGRITY: ocp.args.JsonSave(record)})
    if not self._manager.save(step, args=args, force=force):
      return False
    self._pending = _Pending(step, jax.tree.map(_abstract_leaf, state), record)
    if self._async:  # verified at the next save, wait, restore or close
      return True
    return self._finish_pending()

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none (it may not verify)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of every complete checkpoint, ascending."""
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int | None = None) -> dict:
    """The `meta` dict of checkpoint `step` (default: the latest), without reading arrays.

    Raises:
      CorruptCheckpoint: the meta file cannot be read.
    """
    step = self._resolve_step(step)
    try:
      return self._read_json(step, _META)
    except _StepFailed as failure:
      raise CorruptCheckpoint(self.directory, {step: failure.reason}) from None

  def restore(self, step: int | None = None, *, abstract_state: PyTree,
              expected_meta: Mapping[str, Any] | None = None) -> tuple[PyTree, dict]:
    """Restores checkpoint `step` (default: the newest that verifies) as `(state, meta)`.

    Args:
      step: which checkpoint; None for the newest one that passes verification (each newer
        one that fails is logged as a warning, naming the step and the file or array).
      abstract_state: the target structure: a pytree of `jax.ShapeDtypeStruct` (with
        `.sharding`) or of arrays, whose shapes, dtypes and shardings the restored arrays take.
        Dtypes may differ from the checkpoint's (values are verified, then cast); shapes may
        not.
      expected_meta: if given and both it and the checkpoint have a "model" entry, they must be
        equal; otherwise a ValueError names each differing field before any array is read.

    Raises:
      FileNotFoundError: there is no checkpoint (at `step`).
      CorruptCheckpoint: no checkpoint (or not `step`) passes verification.
      ValueError: model config, tree structure or array shapes differ from the checkpoint's.
    """
    self._finish_pending()
    candidates = [self._resolve_step(step)] if step is not None else self.all_steps()[::-1]
    if not candidates:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract_state = jax.tree.map(_abstract_leaf, abstract_state)
    failures: dict[int, str] = {}
    for candidate in candidates:
      try:
        state, meta = self._restore_verified(candidate, abstract_state, expected_meta)
      except _StepFailed as failure:
        logging.warning("checkpoint step %d in %s is corrupt: %s", candidate, self.directory,
                        failure.reason)
        failures[candidate] = failure.reason
        continue
      if failures:
        logging.warning("restored checkpoint step %d from %s instead of the newer step(s) %s, "
                        "which failed verification (renamed to STEP%s at the next save)",
                        candidate, self.directory, sorted(failures), _CORRUPT_SUFFIX)
      self._failed.update(failures)
      self._verified_step = max(candidate, self._verified_step or candidate)
      return state, meta
    self._failed.update(failures)
    raise CorruptCheckpoint(self.directory, failures)

  def wait(self) -> None:
    """Blocks until an asynchronous save has finished writing (and is verified)."""
    self._manager.wait_until_finished()
    self._finish_pending()

  def close(self) -> None:
    """Waits for pending saves (verifies them) and deletions, then releases the manager."""
    try:
      self._finish_pending()
    finally:
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # -- saving: integrity record, read-back, rotation --------------------------------------

  def _integrity_record(self, state: PyTree) -> dict:
    digests = self._digests(state)
    return {"version": _INTEGRITY_VERSION,
            "finite": all(entry["finite"] for entry in digests.values()),
            "arrays": digests}

  def _digests(self, tree: PyTree) -> dict[str, dict]:
    """path -> {"shape", "dtype", "digest", "finite"} for every leaf of `tree`."""
    paths, leaves = _paths_and_leaves(tree)
    out: dict[str, dict] = {}
    on_device = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]
    # One jitted reduction per set of devices (a jit cannot mix arrays committed elsewhere).
    groups: dict[Any, list[int]] = {}
    for i in on_device:
      groups.setdefault(_device_key(leaves[i]), []).append(i)
    for indices in groups.values():
      results = self._digest_fn([leaves[i] for i in indices])
      for i, (low, high, finite) in zip(indices, results):
        out[paths[i]] = digest_lib.digest_entry(leaves[i], _host_scalar(low),
                                                _host_scalar(high), bool(_host_scalar(finite)))
    for i, leaf in enumerate(leaves):
      if paths[i] not in out:
        array = np.asarray(leaf)
        low, high, finite = digest_lib.digest_numpy(array)
        out[paths[i]] = digest_lib.digest_entry(array, low, high, finite)
    return {path: out[path] for path in paths}

  def _finish_pending(self) -> bool:
    """Verifies the last save (reading it back) and rotates; False if it did not verify."""
    pending, self._pending = self._pending, None
    if pending is None:
      return True
    self._manager.wait_until_finished()
    if self._verify_saves:
      try:
        self._read_back(pending)
      except _StepFailed as failure:
        logging.warning("checkpoint step %d in %s did not read back intact: %s", pending.step,
                        self.directory, failure.reason)
        self._set_aside(pending.step, failure.reason)
        return False
      self._verified_step = max(pending.step, self._verified_step or pending.step)
    self._rotate()
    return True

  def _read_back(self, pending: _Pending) -> None:
    """Reads `pending`'s arrays in groups of at most `verify_bytes` and checks each digest."""
    paths, leaves = _paths_and_leaves(pending.abstract)
    treedef = jax.tree.structure(pending.abstract)
    groups: list[list[int]] = [[]]
    size = 0
    for i, leaf in enumerate(leaves):
      nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
      if groups[-1] and size + nbytes > self._verify_bytes:
        groups.append([])
        size = 0
      groups[-1].append(i)
      size += nbytes
    for group in groups:
      wanted = set(group)
      item = treedef.unflatten([leaf if i in wanted else ocp.PLACEHOLDER
                                for i, leaf in enumerate(leaves)])
      restored, failure = None, None
      try:
        restored = self._read_arrays(pending.step, item)
      except _StepFailed as caught:
        failure = caught
      self._agree(pending.step, failure)
      got = dict(zip(paths, jax.tree.leaves(restored, is_leaf=_is_placeholder)))
      digests = self._digests({paths[i]: got[paths[i]] for i in group})
      mismatches = digest_lib.mismatches(digests, pending.record["arrays"])
      if mismatches:
        raise _StepFailed(f"{self._step_path(pending.step)}/{_STATE}: {mismatches}")

  def _rotate(self) -> None:
    """Deletes all but the newest `max_to_keep` steps and the newest verified one."""
    if self._max_to_keep is None:
      return
    steps = self.all_steps()
    keep = set(steps[-self._max_to_keep:])
    if self._verified_step is not None:
      keep.add(self._verified_step)
    for step in steps:
      if step not in keep:
        self._manager.delete(step)  # primary process deletes; all processes sync

  def _set_aside_failed(self) -> None:
    for step, reason in sorted(self._failed.items()):
      if step in self.all_steps():
        self._set_aside(step, reason)
    self._failed.clear()

  def _set_aside(self, step: int, reason: str) -> None:
    """Renames step `step` to `DIR/S.corrupt` (or `.corrupt-<ns>` if taken), never deleting it."""
    source = self._manager.directory / str(step)
    target = source.parent / f"{step}{_CORRUPT_SUFFIX}"
    if jax.process_index() == 0:  # the directory is shared: one process renames
      if target.exists():
        target = source.parent / f"{step}{_CORRUPT_SUFFIX}-{time.time_ns()}"
      source.rename(target)
      logging.warning("renamed corrupt checkpoint step %d to %s (%s)", step, target, reason)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"agpo_jax checkpoint set aside {step}")
    self._manager.reload()

  # -- restoring ----------------------------------------------------------------------------

  def _restore_verified(self, step: int, abstract_state: PyTree,
                        expected_meta: Mapping[str, Any] | None) -> tuple[PyTree, dict]:
    # Each process reads on its own (no orbax barrier a failing process would miss), then all
    # agree on the outcome before the digests, a collective, run.
    result, failure = None, None
    try:
      result = self._read_step(step, abstract_state, expected_meta)
    except _StepFailed as caught:
      failure = caught
    self._agree(step, failure)
    meta, saved, restored = result
    digests = self._digests(restored)
    problems = digest_lib.mismatches(digests, saved)
    non_finite = [p for p, entry in digests.items() if not entry["finite"]]
    if non_finite:
      problems = "; ".join(filter(None, [problems, f"non-finite values in {non_finite}"]))
    if problems:
      raise _StepFailed(f"{self._step_path(step)}/{_STATE}: {problems}")
    restored = jax.tree.map(_cast_like, restored, abstract_state)
    return restored, meta

  def _read_step(self, step: int, abstract_state: PyTree,
                 expected_meta: Mapping[str, Any] | None) -> tuple[dict, dict, PyTree]:
    """(meta, integrity entries, arrays as saved) of step `step`, checked against the target.

    Raises `_StepFailed` for anything unreadable, ValueError for a checkpoint of another
    model config, tree or shapes.
    """
    meta = self._read_json(step, _META)
    if expected_meta is not None and "model" in meta and "model" in expected_meta:
      differences = _dict_differences(meta["model"], _as_json(expected_meta["model"]))
      if differences:
        raise ValueError(
            f"checkpoint at {self._step_path(step)} was written by a different model config "
            f"(checkpoint != expected): {', '.join(differences)}")
    self._check_tree(step, abstract_state)
    saved = _record_arrays(self._read_json(step, _INTEGRITY), self._step_path(step))
    paths, leaves = _paths_and_leaves(abstract_state)
    missing = [p for p in paths if p not in saved]
    if missing:
      raise _StepFailed(f"{self._step_path(step)}/{_INTEGRITY}/metadata: no entry for "
                        f"{missing}")
    # Read in the dtypes the digests were taken in; cast to the target's after verifying.
    as_saved = jax.tree.structure(abstract_state).unflatten(
        [_with_dtype(leaf, saved[p]["dtype"]) for p, leaf in zip(paths, leaves)])
    return meta, saved, self._read_arrays(step, as_saved)

  def _agree(self, step: int, failure: _StepFailed | None) -> None:
    """Raises on every process if reading step `step` failed on any."""
    if not _all_processes_agree(failure is None):
      raise failure or _StepFailed(f"{self._step_path(step)}: reading it failed on another "
                                   "process (see that process's log)")

  def _read_json(self, step: int, item: str) -> dict:
    path = self._manager.directory / str(step) / item / _JSON_FILE
    try:
      value = json.loads(path.read_text())
    except Exception as error:  # noqa: BLE001  (any failure to read is this step's corruption)
      raise _StepFailed(f"{path}: unreadable: {_error_summary(error)}") from error
    if not isinstance(value, dict):
      raise _StepFailed(f"{path}: not a JSON object")
    return value

  def _read_arrays(self, step: int, item: PyTree) -> PyTree:
    """The leaves of `item` (abstract arrays; `ocp.PLACEHOLDER` for those not wanted) from
    step `step`, read by this process alone (its own shards)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      return handler.restore(self._manager.directory / str(step) / _STATE,
                             args=ocp.args.PyTreeRestore(
                                 item, restore_args=ocp.checkpoint_utils.construct_restore_args(
                                     item)))
    except Exception as error:  # noqa: BLE001  (a missing or truncated file, a bad index...)
      raise _StepFailed(f"{self._step_path(step)}/{_STATE}: reading arrays: "
                        f"{_error_summary(error)}") from error
    finally:
      handler.close()

  def _check_tree(self, step: int, abstract_state: PyTree) -> None:
    """Names every missing, unexpected or differently shaped array (before reading any).

    Orbax's own errors give two shapes but not which parameter they belong to, or a long
    tree diff; the metadata file being unreadable is corruption (`_StepFailed`).
    """
    handler = ocp.PyTreeCheckpointHandler()
    try:
      metadata = handler.metadata(self._manager.directory / str(step) / _STATE)
      saved = _shapes_by_path(getattr(metadata, "tree", metadata))
    except Exception as error:  # noqa: BLE001
      raise _StepFailed(f"{self._step_path(step)}/{_STATE}: array metadata (_METADATA, "
                        f"_sharding) unreadable: {_error_summary(error)}") from error
    finally:
      handler.close()
    wanted = _shapes_by_path(abstract_state)
    missing = sorted(wanted.keys() - saved.keys())
    extra = sorted(saved.keys() - wanted.keys())
    if missing or extra:
      raise ValueError(
          f"checkpoint at {self._step_path(step)} holds a different tree of arrays than this "
          f"run's state (written by another version of the code or another optimizer?): "
          f"missing from the checkpoint: {missing or 'none'}; not in this run's state: "
          f"{extra or 'none'}")
    mismatches = [f"{path}: checkpoint {saved[path]} != expected {shape}"
                  for path, shape in wanted.items() if saved[path] != shape]
    if mismatches:
      raise ValueError(f"checkpoint at {self._step_path(step)} has arrays of other shapes "
                       f"than abstract_state: {'; '.join(mismatches)}")

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


def _record_arrays(record: dict, where: str) -> dict[str, dict]:
  arrays = record.get("arrays")
  if record.get("version") != _INTEGRITY_VERSION or not isinstance(arrays, dict) or not all(
      isinstance(e, dict) and {"shape", "dtype", "digest"} <= e.keys() for e in arrays.values()):
    raise _StepFailed(f"{where}/{_INTEGRITY}/metadata: not an integrity record of version "
                      f"{_INTEGRITY_VERSION}")
  return arrays


def _host_scalar(x: jax.Array) -> Any:
  """The value of a replicated scalar (readable on every process, unlike `np.asarray` of an
  array that spans several)."""
  return np.asarray(x.addressable_data(0)).item()


def _device_key(x: jax.Array) -> tuple[int, ...]:
  return tuple(sorted(d.id for d in x.sharding.device_set))


def _all_processes_agree(ok: bool) -> bool:
  """Whether `ok` holds on every process (the same answer on all of them)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray([ok], np.int32))))


def _error_summary(error: BaseException) -> str:
  """One line for a (tensorstore, JSON, OS) error: the file it names and the root cause."""
  messages = []
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    messages.append(str(error))
    error = error.__cause__ or error.__context__
  text = " ".join(messages)
  files = re.findall(r'(?i)\bfile "?((?:/|[a-z]+://)[^"\s,]+)"?', text)
  arrays = re.findall(r'Error reading "([^"]+)"', text)
  root = next((line for m in reversed(messages) for line in m.splitlines() if line.strip()),
              "unknown error")
  root = root.split(" [tensorstore_spec=")[0]
  where = []
  if arrays:
    where.append(f"array {arrays[0].split('/')[0]}")
  if files:
    where.append(f"file {files[0]}")
  summary = f"{', '.join(where)}: {root.strip()}" if where else root.strip()
  return summary[:400]


