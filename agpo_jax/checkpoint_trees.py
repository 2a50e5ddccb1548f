"""Pytree helpers of the checkpointer: leaf paths, abstract and cast leaves, PRNG key data,
shape and config comparisons (`agpo_jax.checkpointing` uses them; nothing here touches disk)."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def key_to_data(key: jax.Array) -> jax.Array:
  """The raw `uint32` data of a typed PRNG key (array), for saving in a checkpoint."""
  return jax.random.key_data(key)


def data_to_key(data: jax.Array, impl: str) -> jax.Array:
  """The typed PRNG key of implementation `impl` (e.g. "threefry2x32") back from its data."""
  return jax.random.wrap_key_data(data, impl=impl)


def paths_and_leaves(tree: PyTree) -> tuple[list[str], list[Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_placeholder)[0]
  return [path_name(path) for path, _ in leaves], [leaf for _, leaf in leaves]


def path_name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator=".")


def is_placeholder(x: Any) -> bool:
  return x is ocp.PLACEHOLDER


def with_dtype(leaf: Any, dtype: str) -> Any:
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(leaf.shape, np.dtype(dtype), sharding=leaf.sharding)
  if isinstance(leaf, np.ndarray):
    return np.zeros(leaf.shape, np.dtype(dtype))
  return leaf


def cast_like(restored: Any, target: Any) -> Any:
  dtype = getattr(target, "dtype", None)
  if dtype is None or restored.dtype == dtype:
    return restored
  return restored.astype(dtype)


def check_no_typed_keys(state: PyTree) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"state{jax.tree_util.keystr(path)} is a typed PRNG key; save "
                      "checkpointing.key_to_data(key) and restore with data_to_key(data, impl)")


def abstract_leaf(leaf: Any) -> Any:
  """jax.Array -> ShapeDtypeStruct with its sharding; anything else is orbax's to interpret."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


def shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
  # Orbax's metadata tree stores namedtuples as dicts and tuples as lists; a dotted path of
  # names and indices reads the same in both trees.
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="."): shape(leaf)
          for path, leaf in leaves}


def shape(leaf: Any) -> tuple[int, ...]:
  return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def as_json(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples become lists), for comparing with meta."""
  return json.loads(json.dumps(value))


def dict_differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
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
      differences.extend(dict_differences(saved[key], expected[key], name))
  return differences
