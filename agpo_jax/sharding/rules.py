"""Device mesh and shardings: one table maps the model's logical axes to mesh axes.

The mesh has three axes, outermost first:

  data    pure data parallelism: parameters replicated, batch split.
  fsdp    data parallelism with parameters (and so gradients and optimizer state) split along
          their `embed` dimension and all-gathered just before use (ZeRO-3 / FSDP).
  tensor  tensor (Megatron) parallelism: heads, MLP hidden units and the vocabulary split, so
          the big matmuls run on slices and only their outputs are reduced.

The model declares logical axis names for every parameter (`transformer.param_logical_axes`);
`LOGICAL_AXIS_RULES` below is the only place that says where each name goes. Everything else
(parameter, optimizer-state, KV-cache and batch shardings) is derived from it here, and the
jitted functions of `sampling` and `train` receive the results explicitly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import struct
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axes (a tuple means the dimension is split over their product).
#  - batch over data and fsdp: both are data-parallel axes; each device sees its own rows.
#  - embed over fsdp: every weight has an embed dimension (except norms), so splitting it
#    spreads parameters, gradients and Adam moments evenly over the fsdp axis.
#  - q_heads, kv_heads, mlp, vocab over tensor: the Megatron split. Attention heads and MLP
#    hidden units are independent until the output projection, so each device computes its
#    own heads / hidden units and one reduction follows; the vocabulary split shards the
#    largest matrices (embedding, LM head) and the [batch, seq, vocab] logits.
#  - head_dim, layers, norm, seq, cache_seq replicated: head_dim is small and is contracted
#    inside attention; layers is the scan axis (each step needs its own whole layer); norm
#    scales are tiny; sequence / cache parallelism is not implemented.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("seq", None),
    ("cache_seq", None),
)


def mesh_shape(cfg: Any, num_devices: int) -> tuple[int, int, int]:
  """Resolve `cfg` (data, fsdp, tensor; at most one -1) to sizes whose product is num_devices."""
  sizes = [int(cfg[axis]) for axis in MESH_AXES]
  described = ", ".join(f"mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{described}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise ValueError(f"{described}: {known} does not divide the {num_devices} devices")
  if -1 in sizes:
    sizes[sizes.index(-1)] = num_devices // known
  elif known != num_devices:
    raise ValueError(f"{described}: the mesh has {known} devices, there are {num_devices} "
                     "(set one axis to -1 to take the rest)")
  return tuple(sizes)


def make_mesh(cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: every device of every process).

  Axes are `Auto`: shardings are propagated by the compiler, so code written for one device
  runs unchanged (explicit-sharding mode would make every op's output sharding a type).
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                 axis_sizes: dict[str, int]) -> PartitionSpec:
  """The `PartitionSpec` of an array of `shape` whose dimensions have these logical axis names,
  on a mesh whose axes have `axis_sizes` (a `Mesh.shape` or a plain dict, so plans for meshes
  larger than this machine use the same rules).

  A dimension whose size is not a multiple of its mesh axes' total size is replicated instead
  (e.g. 2 KV heads on tensor=4): correct, only less memory-efficient, and it lets one rule
  table serve every model size. A mesh axis already used by an earlier dimension is not
  reused (an array can be split only once over each mesh axis).
  """
  rules = dict(LOGICAL_AXIS_RULES)
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape, strict=True):
    if name is not None and name not in rules:
      raise KeyError(f"logical axis {name!r} has no entry in rules.LOGICAL_AXIS_RULES")
    target = rules.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    parts = math.prod(axis_sizes[a] for a in axes)
    if not axes or used & set(axes) or size % parts:
      spec.append(None)
    else:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def logical_sharding(logical_axes: Sequence[str | None], shape: Sequence[int],
                     mesh: Mesh) -> NamedSharding:
  """`logical_spec` on `mesh`, as a `NamedSharding`."""
  return NamedSharding(mesh, logical_spec(logical_axes, shape, dict(mesh.shape)))


def param_specs(model_cfg: ModelConfig, axis_sizes: dict[str, int]) -> Any:
  """`PartitionSpec` of every parameter (same tree as the params) for a mesh of `axis_sizes`."""
  logical = transformer.param_logical_axes(model_cfg)
  shapes = transformer.abstract_params(model_cfg)
  return jax.tree.map(lambda spec, shape: logical_spec(tuple(spec), shape.shape, axis_sizes),
                      logical, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(model_cfg: ModelConfig, mesh: Mesh) -> Any:
  """`NamedSharding` of every parameter (same tree as the params), from the rule table."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      param_specs(model_cfg, dict(mesh.shape)),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_params_sharded(model_cfg: ModelConfig, rng: jax.Array, mesh: Mesh) -> Any:
  """Random parameters created in place on the mesh: no device ever holds the full tree.

  With the default `jax_threefry_partitionable`, threefry keys give the same values as
  `transformer.init_params` whatever the mesh.
  """
  init = functools.partial(transformer.init_params, model_cfg)
  return jax.jit(init, out_shardings=param_shardings(model_cfg, mesh))(rng)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Put every array of `tree` on the mesh with its leading (row) axis over ('data', 'fsdp').

  Scalars are replicated. Rows must divide over the data-parallel devices: a batch that did
  not would silently be computed in full on every device.
  """
  parts = data_parallel_size(mesh)

  def put(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if x.ndim == 0:
      return jax.device_put(x, replicated(mesh))
    if x.shape[0] % parts:
      raise ValueError(f"batch of {x.shape[0]} rows does not split over the {parts} "
                       f"data-parallel devices (mesh data x fsdp = {parts})")
    return jax.device_put(x, batch_sharding(mesh))

  return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A full copy of every array of `tree` on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


# ---------------------------------------------------------------------------------------------
# Shardings of everything else the jitted functions take and return.


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over the data-parallel axes; every other dimension whole. A pytree prefix: it
  shards every leaf of a batch (all of which lead with the row axis)."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def cache_shardings(model_cfg: ModelConfig, rows: int, max_len: int, mesh: Mesh,
                    group: int | None = None) -> Any:
  """A `KVCache` of shardings (a `SharedPrefix` of them, read by groups of `group` rows, when
  `group` is given): every layer's k and v by `transformer.K_CACHE_AXES` and `V_CACHE_AXES`
  (rows over data x fsdp, KV heads over tensor when they divide), `valid` by rows, the write
  index replicated."""
  v_shape = (rows, model_cfg.num_kv_heads, max_len, model_cfg.head_dim)
  k_shape = (rows, model_cfg.num_kv_heads, model_cfg.head_dim, max_len)
  k = (logical_sharding(transformer.K_CACHE_AXES, k_shape, mesh),) * model_cfg.num_layers
  v = (logical_sharding(transformer.V_CACHE_AXES, v_shape, mesh),) * model_cfg.num_layers
  valid = logical_sharding(("batch", "cache_seq"), (rows, max_len), mesh)
  if group is not None:
    return transformer.SharedPrefix(k=k, v=v, valid=valid, group=group)
  return transformer.KVCache(k=k, v=v, valid=valid, index=replicated(mesh))


def train_state_shardings(state: Any, model_cfg: ModelConfig, mesh: Mesh) -> Any:
  """Shardings of a train state (concrete or abstract; any struct with `params`, `opt_state`
  and a non-pytree `tx`): params by the rules, every optimizer moment like the parameter it
  belongs to, everything else (step and skip counters) replicated.

  `optax.tree_map_params` finds the parameter-shaped parts of any optax state, so this holds
  for every optimizer `train.state.make_optimizer` can build.
  """
  params = param_shardings(model_cfg, mesh)
  rep = replicated(mesh)
  opt_state = optax.tree_map_params(
      state.tx, lambda _, sharding: sharding, state.opt_state, params,
      transform_non_params=lambda _: rep,
      is_leaf=lambda x: isinstance(x, NamedSharding))
  everything_replicated = jax.tree.map(lambda _: rep, state)
  return everything_replicated.replace(params=params, opt_state=opt_state)


class StepShardings(struct.PyTreeNode):
  """Explicit shardings for the jitted train steps (`train.state.step_shardings` builds them);
  without them the steps run where their inputs are and the compiler picks output shardings.
  """

  state: Any  # a train state of NamedShardings
  batch: Any  # a NamedSharding: rows over the data-parallel axes (a prefix of any batch)
  replicated: Any  # a NamedSharding: metrics and scalars

  @property
  def params(self) -> Any:
    return self.state.params
