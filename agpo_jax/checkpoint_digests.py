"""Position-dependent 64-bit digests of arrays, the same under any sharding or process count.

`checkpointing` records one per saved array (with its shape, dtype and finiteness) and checks
restored arrays against it: `digest_arrays` runs jitted over sharded device arrays,
`digest_numpy` computes the same value for a host array.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------------------------
# digest(x) = (sum_i mix(w_i ^ mix(i * G + C1)), sum_i mix((w_i + C2) * G2 ^ mix(i ^ C3)))
# mod 2**32, over the 32-bit words w_i of x in C order (1- and 2-byte elements zero-extended,
# 8-byte ones as two words) at flat position i: a sum, so any sharding (and any reduction
# order) gives the same value; position-dependent, so moved values change it. `mix` is
# MurmurHash3's 32-bit finaliser. `digest_arrays` (jitted, sharded) and `digest_numpy`
# compute the same function.

# As numpy uint32 scalars: strongly typed, so no operand is ever promoted past 32 bits.
_G, _G2, _M1, _M2 = (np.uint32(c) for c in (0x9E3779B9, 0x2C1B3C6D, 0x85EBCA6B, 0xC2B2AE35))
_C1, _C2, _C3 = (np.uint32(c) for c in (0x7F4A7C15, 0x632BE5AB, 0x5BD1E995))


def _mix(h):
  h = h ^ (h >> 16)
  h = h * _M1
  h = h ^ (h >> 13)
  h = h * _M2
  return h ^ (h >> 16)


def _word_hashes(words, index):
  return _mix(words ^ _mix(index * _G + _C1)), _mix(((words + _C2) * _G2) ^ _mix(index ^ _C3))


def digest_arrays(arrays: list[jax.Array]) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  """(low, high, finite) of each array; jit it (arrays may be sharded over processes)."""
  out = []
  for x in arrays:
    finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
              else jnp.ones((), bool))
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    itemsize = np.dtype(x.dtype).itemsize
    if itemsize not in (1, 2, 4):
      raise TypeError(f"cannot digest an on-device array of dtype {x.dtype}")
    words = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[
        itemsize]).astype(jnp.uint32)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # flat C-order position, mod 2**32
      index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(
          stride & 0xFFFFFFFF)
      stride *= words.shape[axis]
    a, b = _word_hashes(words, index)
    out.append((jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32), finite))
  return out


def digest_numpy(x: np.ndarray) -> tuple[int, int, bool]:
  """`digest_arrays` of one host array."""
  finite = bool(np.all(np.isfinite(x))) if np.issubdtype(x.dtype, np.inexact) else True
  x = np.ascontiguousarray(x)
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  word = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}.get(x.dtype.itemsize)
  if word is None:
    raise TypeError(f"cannot digest an array of dtype {x.dtype}")
  words = x.reshape(-1).view(word).astype(np.uint32)
  index = (np.arange(words.size, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
  with np.errstate(over="ignore"):
    a, b = _word_hashes(words, index)
    return int(np.sum(a, dtype=np.uint32)), int(np.sum(b, dtype=np.uint32)), finite


def digest_entry(leaf: Any, low: int, high: int, finite: bool) -> dict:
  return {"shape": list(np.shape(leaf)), "dtype": str(np.dtype(leaf.dtype)),
          "digest": f"{int(high):08x}{int(low):08x}", "finite": finite}


def mismatches(got: Mapping[str, dict], saved: Mapping[str, dict]) -> str:
  """'' if every entry of `got` matches `saved`, else which arrays differ (a few named)."""
  bad = [path for path, entry in got.items()
         if (entry["digest"], entry["shape"], entry["dtype"])
         != (saved[path]["digest"], saved[path]["shape"], saved[path]["dtype"])]
  if not bad:
    return ""
  named = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
  return f"checksum mismatch in {len(bad)} array(s): {named}"
