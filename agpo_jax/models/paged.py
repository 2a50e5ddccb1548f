"""A paged decode cache read by Pallas' paged-attention kernel (TPU; its interpreter elsewhere).

With `model.attention="splash"` a decode step does not read the dense per-row cache of
`transformer.KVCache` but a pool of fixed-size pages per layer, in the kernel's layout
(`[kv_heads, pages, page_size, head_dim]`, keys and values apart), through a page table:

    pool:  [ prompt 0's pages | prompt 1's pages | ... | row 0's pages | row 1's pages | ... ]
    row r of prompt b = r // G:  table[r] = b's full pages, then r's own pages

A prompt's keys are moved to the front of its pages (its left padding dropped), so a row's
tokens are slots `0 .. length-1` of the pages its table lists, in order, and the slot a token
goes to is its rotary position. The G rows of a prompt share its full pages (written once, by
prefill); the prompt's last, partly filled page is copied into each row's first own page, where
the row's generated tokens continue it. The kernel then reads each row's `length` slots, no
padding and no unwritten slot: the attention of a row costs its length, not the budget's.
Compacting the batch (`take`) gathers page-table rows; the pool is not copied.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from agpo_jax.models.attention import per_shard

Array = jax.Array

PAGE_SIZE = 16  # slots per page
PAGES_PER_BLOCK = 8  # pages the kernel reads per compute block; a row's table is a multiple


class PagedLayer(NamedTuple):
  """One layer's part of a `PagedCache`, as a block reads and updates it."""

  k: Array  # [kv_heads, pages, page_size, head_dim]
  v: Array
  table: Array  # [rows, pages_per_row] int32


class PagedCache(struct.PyTreeNode):
  """Every layer's page pool and the rows' page table (see the module docstring).

  Attributes:
    k, v: tuples of `num_layers` arrays `[kv_heads, pages, page_size, head_dim]`.
    table: `[rows, pages_per_row]` int32: row r's slot s lies in page `table[r, s // page_size]`
      at offset `s % page_size`. Entries past a row's last page repeat it (never read).
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]
  table: Array

  @property
  def page_size(self) -> int:
    return self.k[0].shape[2]

  def layer(self, i: int) -> PagedLayer:
    return PagedLayer(self.k[i], self.v[i], self.table)

  def take(self, rows: Array) -> "PagedCache":
    """The cache of `rows` (indices into the batch), in that order: their page-table rows."""
    return self.replace(table=self.table[rows])


def pages_per_row(prompt_len: int, budget: int, page_size: int = PAGE_SIZE) -> tuple[int, int]:
  """(prompt pages, own pages) of a row: a prompt of up to `prompt_len` tokens, then `budget`
  generated ones starting in the copy of the prompt's last page."""
  return -(-prompt_len // page_size), (page_size + budget - 2) // page_size + 1


def table_width(prompt_len: int, budget: int, page_size: int = PAGE_SIZE) -> int:
  """Entries of a row's page table: its prompt and own pages, rounded up to whole blocks."""
  pages = sum(pages_per_row(prompt_len, budget, page_size))
  return -(-pages // PAGES_PER_BLOCK) * PAGES_PER_BLOCK


def from_prefix(prefix: Any, budget: int, rows_sharding: Any = None,
                page_size: int = PAGE_SIZE) -> PagedCache:
  """The paged cache of a rollout: `prefix` (a `transformer.SharedPrefix`, the prefilled
  left-padded prompts read by groups of `prefix.group` rows) moved into pages, plus room for
  `budget` generated tokens per row.

  Returns a cache of `prompts * group` rows; its pool holds `prompts * prompt pages + rows *
  own pages` pages (`pages_per_row`). Under a mesh (`rows_sharding`) each device builds the
  pool of its own prompts and rows (a prompt's rows live on its device: the sampler splits
  prompts over the data-parallel axes, then makes G rows of each), its table indexing it.
  """
  kv = prefix.k[0].shape[1]

  def local(ks, vs, valid):
    cache = _pages(ks, vs, valid, prefix.group, budget, page_size)
    return cache.k, cache.v, cache.table

  k, v, table = per_shard(local, rows_sharding, kv, ("rh..", "rh..", "r."),
                          ("hr..", "hr..", "r."))(prefix.k, prefix.v, prefix.valid)
  return PagedCache(k=k, v=v, table=table)


def _pages(ks: tuple[Array, ...], vs: tuple[Array, ...], valid: Array, g: int, budget: int,
           page_size: int) -> PagedCache:
  """`from_prefix` on one device."""
  bp, kv, hd, p = ks[0].shape
  n = bp * g
  prompt_pages, own_pages = pages_per_row(p, budget, page_size)
  lens = jnp.sum(valid, axis=-1, dtype=jnp.int32)  # [Bp]
  # Slot j of prompt b takes padded slot j + pad_b: its real tokens move to the front.
  src = jnp.minimum(jnp.arange(p)[None, :] + (p - lens)[:, None], p - 1)  # [Bp, P]
  tail = prompt_pages * page_size - p

  def to_pages(x: Array) -> Array:  # [Bp, KV, P, hd] -> [KV, Bp * prompt_pages, ps, hd]
    x = jnp.take_along_axis(x, src[:, None, :, None], axis=2)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, tail), (0, 0))).transpose(1, 0, 2, 3)
    return x.reshape(kv, bp * prompt_pages, page_size, hd)

  full = lens // page_size  # the prompt's pages its rows share; page `full` is copied
  prompt_of = jnp.arange(n) // g
  first_own = prompt_of * prompt_pages + jnp.minimum(full, prompt_pages - 1)[prompt_of]

  def pool(x: Array) -> Array:  # a prompt's pages, then each row's own pages
    shared = to_pages(x)
    own = jnp.zeros((kv, n, own_pages, page_size, hd), x.dtype)
    own = own.at[:, :, 0].set(shared[:, first_own])
    return jnp.concatenate([shared, own.reshape(kv, n * own_pages, page_size, hd)], axis=1)

  j = jnp.arange(table_width(p, budget, page_size))[None, :]
  full_r = full[prompt_of][:, None]
  own = bp * prompt_pages + jnp.arange(n)[:, None] * own_pages + jnp.minimum(
      j - full_r, own_pages - 1)
  table = jnp.where(j < full_r, prompt_of[:, None] * prompt_pages + j, own).astype(jnp.int32)
  return PagedCache(k=tuple(pool(k.swapaxes(2, 3)) for k in ks), v=tuple(map(pool, vs)),
                    table=table)


def write(layer: PagedLayer, k: Array, v: Array, slots: Array) -> PagedLayer:
  """Write one new key and value per row, `k`, `v` `[rows, kv_heads, head_dim]`, at each
  row's slot `slots [rows]` (its position)."""
  page_size = layer.k.shape[2]
  pages = jnp.take_along_axis(layer.table, (slots // page_size)[:, None], axis=1)[:, 0]
  offsets = slots % page_size
  new_k = layer.k.at[:, pages, offsets].set(k.swapaxes(0, 1).astype(layer.k.dtype))
  new_v = layer.v.at[:, pages, offsets].set(v.swapaxes(0, 1).astype(layer.v.dtype))
  return layer._replace(k=new_k, v=new_v)


def step(layer: PagedLayer, q: Array, k: Array, v: Array, slots: Array,
         rows_sharding: Any = None) -> tuple[PagedLayer, Array]:
  """One decode step of one layer: `write` each row's new key and value at its slot, then
  `attend` over its slots up to it; q `[rows, kv_heads, G, head_dim]`, k, v `[rows, kv_heads,
  head_dim]`, slots `[rows]`. Under a mesh each device updates and reads its own pool."""

  def local(pool_k, pool_v, table, q, k, v, slots):
    layer = write(PagedLayer(pool_k, pool_v, table), k, v, slots)
    return layer.k, layer.v, attend(q, layer, slots + 1)

  new_k, new_v, out = per_shard(
      local, rows_sharding, q.shape[1], ("hr..", "hr..", "r.", "rh..", "rh.", "rh.", "r"),
      ("hr..", "hr..", "rh.."))(layer.k, layer.v, layer.table, q, k, v, slots)
  return layer._replace(k=new_k, v=new_v), out


def attend(q: Array, layer: PagedLayer, lengths: Array) -> Array:
  """Each row's query `q [rows, kv_heads, G, head_dim]` over its first `lengths [rows]` slots,
  through `jax.experimental.pallas.ops.tpu.paged_attention` (on a backend without TPUs, in
  Pallas' TPU interpreter). The kernel reads keys and values in bfloat16 and accumulates in
  float32; the output has q's dtype."""
  from jax.experimental.pallas import tpu as pltpu  # noqa: PLC0415
  from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention  # noqa: PLC0415
  n, kv, g, hd = q.shape
  queries = (q * (1.0 / math.sqrt(hd))).reshape(n, kv * g, hd)

  def call():
    return paged_attention(queries, layer.k, layer.v, lengths, layer.table,
                           pages_per_compute_block=PAGES_PER_BLOCK)

  if jax.default_backend() == "tpu":
    out = call()
  else:
    with pltpu.force_tpu_interpret_mode():
      out = call()
  return out.reshape(n, kv, g, hd)
