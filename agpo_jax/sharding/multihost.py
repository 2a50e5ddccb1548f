"""Several processes (hosts), one mesh: process-local rows <-> global arrays, gathers, start-up.

Under `jax.distributed` every process runs the same program on its own devices. Each process
samples, grades and feeds only the rows its devices hold (`process_rows`); the few numbers per
completion that every process needs (rewards, lengths, truncation flags, verifier counters)
are gathered in one call (`gather_step_stats`). With one process every function here is the
identity or close to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from agpo_jax.sharding.rules import BATCH_AXES, batch_sharding, data_parallel_size, replicated

# ---------------------------------------------------------------------------------------------
# Process-local data <-> global arrays. Each process feeds, and reads back, only the rows its
# own devices hold; with one process these are all the rows.


def process_rows(num_rows: int, mesh: Mesh) -> slice:
  """The rows of a `[num_rows, ...]` batch-sharded array held by this process's devices.

  They form one contiguous block when each process owns whole blocks of the data-parallel
  axes, as `jax.make_mesh` lays them out; anything else is refused rather than mis-fed.
  """
  indices = batch_sharding(mesh).addressable_devices_indices_map((num_rows,)).values()
  starts = {ix[0].start or 0 for ix in indices}
  stops = {num_rows if ix[0].stop is None else ix[0].stop for ix in indices}
  start, stop = min(starts), max(stops)
  per_block = num_rows // data_parallel_size(mesh)
  if _local_row_blocks(mesh) * jax.process_count() != data_parallel_size(mesh):
    raise ValueError(f"mesh {dict(mesh.shape)}: with {jax.process_count()} processes each one "
                     "must hold its own rows, so data x fsdp must split over the processes "
                     "(keep tensor parallelism within a host)")
  if (stop - start) != _local_row_blocks(mesh) * per_block:
    raise ValueError(f"process {jax.process_index()}'s devices hold rows that are not one "
                     f"contiguous block of the {num_rows}-row batch; use a mesh whose "
                     "data-parallel axes split along process boundaries")
  return slice(start, stop)


def _local_row_blocks(mesh: Mesh) -> int:
  """How many of the data x fsdp row blocks this process's devices hold."""
  return len({tuple(np.argwhere(mesh.devices == d)[0][:len(BATCH_AXES)])
              for d in mesh.local_devices})


def global_rows(local_rows: int, mesh: Mesh) -> int:
  """The global row count of a batch of which this process holds `local_rows` rows."""
  return local_rows * data_parallel_size(mesh) // _local_row_blocks(mesh)


def host_to_global(tree: Any, mesh: Mesh, num_rows: int) -> Any:
  """This process's rows of every leaf (numpy) -> one batch-sharded global array per leaf.

  `num_rows` is the global row count; each process passes `process_rows(num_rows)` rows.
  Scalars are replicated (every process must pass the same value).
  """
  sharding = batch_sharding(mesh)
  local = process_rows(num_rows, mesh)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.device_put(x, replicated(mesh))
    if x.shape[0] != local.stop - local.start:
      raise ValueError(f"process {jax.process_index()} fed {x.shape[0]} rows; it holds rows "
                       f"{local.start}:{local.stop} of {num_rows}")
    return jax.make_array_from_process_local_data(sharding, x, (num_rows, *x.shape[1:]))

  return jax.tree.map(put, tree)


def global_to_host(tree: Any) -> Any:
  """Every leaf -> numpy holding this process's rows (all rows of a fully addressable array)."""

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    blocks = {}
    for shard in x.addressable_shards:  # replicas along tensor hold the same rows: keep one
      blocks.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
    return np.concatenate([blocks[s] for s in sorted(blocks)])

  return jax.tree.map(get, tree)


def allgather_rows(x: np.ndarray) -> np.ndarray:
  """Concatenate every process's rows of `x` in process order (identity with one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's JSON-able `obj`, in process order (as JSON bytes, padded to one length)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size]), tiled=True)
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded[None], tiled=True))
  return [json.loads(bytes(row[:size]).decode()) for row, size in zip(gathered, sizes)]


def pad_to_multiple(items: Sequence[Any], multiple: int) -> tuple[list[Any], int]:
  """`items` padded with copies of its last item to a multiple of `multiple`; (padded, real)."""
  items = list(items)
  real = len(items)
  items += [items[-1]] * (-real % multiple)
  return items, real


# ---------------------------------------------------------------------------------------------
# Multi-host start-up.


def initialize_distributed(cfg: Any, environ: dict[str, str] | None = None) -> bool:
  """`jax.distributed.initialize` from `config.distributed` or the environment; returns
  whether it ran. Must run before anything touches a device."""
  env = os.environ if environ is None else environ
  address = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  if not (cfg.initialize or address) or jax.distributed.is_initialized():
    return False  # off, or already up (a second run in the same processes)
  num_processes = cfg.num_processes or int(env.get("JAX_NUM_PROCESSES", 0)) or None
  process_id = cfg.process_id if cfg.process_id >= 0 else env.get("JAX_PROCESS_ID")
  process_id = None if process_id is None else int(process_id)
  if address and (num_processes is None or process_id is None):
    raise ValueError("distributed: a coordinator address needs distributed.num_processes and "
                     "distributed.process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
  if cfg.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
  jax.distributed.initialize(coordinator_address=address or None,
                             num_processes=num_processes, process_id=process_id)
  return True


def gather_step_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  """Every process's rows of several arrays (same leading size on a process), in one collective.

  The per-step numbers every process needs (rewards, lengths, truncation flags of its
  completions) travel packed into one float32 array; each comes back with its own dtype and
  trailing shape. Exact for float32 values, booleans and integers below 2**24.
  """
  arrays = tuple(np.asarray(a) for a in arrays)
  if jax.process_count() == 1:
    return arrays
  rows = arrays[0].shape[0]
  for a in arrays:
    if a.shape[0] != rows:
      raise ValueError(f"arrays to gather have {a.shape[0]} and {rows} rows")
    if np.issubdtype(a.dtype, np.integer) and a.size and np.abs(a).max() >= 2**24:
      raise ValueError("integers of 2**24 or more do not travel exactly as float32")
  packed = np.concatenate([a.reshape(rows, -1).astype(np.float32) for a in arrays], axis=1)
  gathered = allgather_rows(packed)
  out, column = [], 0
  for a in arrays:
    width = int(np.prod(a.shape[1:], dtype=int))
    part = gathered[:, column:column + width].reshape(-1, *a.shape[1:])
    out.append(part.astype(a.dtype))
    column += width
  return tuple(out)


def gather_step(arrays: Sequence[np.ndarray], stats: dict) -> tuple[tuple[np.ndarray, ...],
                                                                    list[dict]]:
  """What every process needs of one RL step, from every process: the rows of `arrays`
  (`gather_step_rows`) and each process's JSON-able `stats` (in process order)."""
  return gather_step_rows(*arrays), allgather_objects(stats)
