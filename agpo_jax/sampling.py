"""Jitted KV-cache sampling: prefill once per prompt, decode G rows per prompt in a loop.

    prompts ─► left-pad to a bucketed length P ─► prefill (jit) ─► prompt cache [B, P]
            ─► decode (jit, `lax.while_loop`) ─► Rollout

The G sample rows of a prompt share its cache (`transformer.SharedPrefix`): nothing is forked,
and each decode row keeps a cache of its own generated tokens only, updated in place.

Left padding puts the last prompt token of every row in the same column, so the first
generated token of every row comes from one position and every decode step writes one cache
slot for the whole batch. Rotary positions count only real tokens, so a prompt's logits do not
depend on how much padding it got (batch invariance).

Rows of a rollout are prompt-major: rows `b*G .. b*G + G-1` are the G samples of prompt `b`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agpo_jax import configs
from agpo_jax.models import paged, transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.sharding import multihost, rules
from agpo_jax.tokenizers import Tokenizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to draw tokens. Hashable: it is a static argument of the jitted decode loop.

  Attributes:
    temperature: softmax temperature; 0 means greedy (argmax).
    top_k: keep the k most likely tokens (0 = all).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p
      (1.0 = all). Applied after top_k, on the temperature-scaled distribution.
    max_new_tokens: decode budget; a row that has not stopped by then is truncated.
    stop_ids: token ids that end a row (the stop token is part of the output).
    vocab_limit: if > 0, ids >= vocab_limit are never drawn. Real checkpoints pad their
      embedding beyond the tokenizer's ids; those rows must not be sampled.
    max_compactions: how many times the decode loop may halve its batch to the rows still
      running (`decode`); 0 never. Tokens are the same either way.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 64
  stop_ids: tuple[int, ...] = ()
  vocab_limit: int = 0
  max_compactions: int = 2

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
    if self.max_new_tokens <= 0:
      raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")

  @property
  def scoring_temperature(self) -> float:
    """The temperature a trainer divides logits by to score these samples: the sampling
    temperature, or 1 for greedy decoding."""
    return self.temperature or 1.0

  def replace(self, **fields) -> "SamplingParams":
    return dataclasses.replace(self, **fields)


class Rollout(struct.PyTreeNode):
  """Completions of a batch of prompts.

  Attributes:
    tokens: `[N, max_new_tokens]` int32; `pad_id` after a row's end.
    logprobs: `[N, max_new_tokens]` float32, the sampler's log-probability of each token under
      the temperature-scaled, untruncated distribution (what a trainer at the same temperature
      computes); 0 after a row's end.
    lengths: `[N]` int32 number of generated tokens, the stop token included.
    truncated: `[N]` bool, True when the row hit `max_new_tokens` without a stop token.
    prompt_tokens, prompt_mask: `[N, P]` the left-padded prompt of each row, so that a trainer
      can rebuild exactly the sequence the sampler saw.
  """

  tokens: Array
  logprobs: Array
  lengths: Array
  truncated: Array
  prompt_tokens: Array
  prompt_mask: Array

  @property
  def mask(self) -> Array:
    """`[N, max_new_tokens]` bool, True on generated tokens."""
    return jnp.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]


def filter_logits(logits: Array, params: SamplingParams) -> Array:
  """Temperature, top-k and top-p applied to `logits [N, V]`; removed tokens get -inf."""
  logits = logits.astype(jnp.float32) / params.temperature
  if 0 < params.vocab_limit < logits.shape[-1]:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < params.vocab_limit, logits, -jnp.inf)
  if params.top_k and params.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, params.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if params.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # The most likely token always survives: its mass_before is 0 < top_p.
    kept = mass_before < params.top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


_CDF_BLOCK = 128  # vocabulary block of the two-level inverse-CDF draw


def draw_categorical(uniform: Array, logits: Array) -> Array:
  """Token ids `[N]` drawn from `softmax(logits [N, V])` by inverting its CDF at `uniform [N]`
  (numbers in [0, 1), one per row); ids whose logit is -inf are never drawn.

  Two levels (block sums, then one block) so each row needs one uniform number and two short
  cumulative sums. On one CPU core at 64 x 49,152 logits this takes 17 ms, where
  `jax.random.categorical` (a Gumbel number per logit, then an argmax) takes 102 ms: a third
  of a SmolLM2-135M decode step.
  """
  n, vocab = logits.shape
  block = min(_CDF_BLOCK, vocab)
  padded = -(-vocab // block) * block
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.pad(probs, ((0, 0), (0, padded - vocab))).reshape(n, padded // block, block)
  block_mass = jnp.sum(probs, axis=-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  # In (0, total]: a target of 0 would pick a leading zero-probability token.
  target = (1.0 - uniform.astype(jnp.float32))[:, None] * block_cdf[:, -1:]
  chosen = jnp.minimum(jnp.sum(block_cdf < target, axis=-1), padded // block - 1)
  before = (jnp.take_along_axis(block_cdf, chosen[:, None], axis=-1)
            - jnp.take_along_axis(block_mass, chosen[:, None], axis=-1))
  inner = jnp.take_along_axis(probs, chosen[:, None, None], axis=1)[:, 0]  # [N, block]
  within = jnp.sum(jnp.cumsum(inner, axis=-1) + before < target, axis=-1)
  # Rounding can leave the target above the block's last partial sum: take the block's last
  # token of positive probability then (the chosen block always has one).
  last = block - 1 - jnp.argmax(inner[:, ::-1] > 0, axis=-1)
  within = jnp.where(within >= block, last, within)
  return (chosen * block + within).astype(jnp.int32)


def row_uniforms(rng: Array, row_ids: Array) -> Array:
  """One uniform number in [0, 1) per row, from `rng` and the row's id alone: a row draws the
  same number whatever the other rows of its batch (what lets the decode loop drop finished
  rows and keep every other row's tokens)."""
  # Counter-based threefry from the key's first two words whatever the key's own kind: an
  # `rbg` key's vmapped draws depend on the batch they are drawn in.
  base = jax.random.wrap_key_data(jax.random.key_data(rng).reshape(-1)[:2].astype(jnp.uint32),
                                  impl="threefry2x32")
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(base, i)))(row_ids)


def sample_tokens(rng: Array, logits: Array, params: SamplingParams,
                  row_ids: Array | None = None) -> tuple[Array, Array]:
  """Draw one token per row of `logits [N, V]`; returns (tokens [N], sampler log-probs [N]).

  `row_ids [N]` (default `arange(N)`) key each row's draw: see `row_uniforms`.
  """
  if params.temperature == 0.0:
    if 0 < params.vocab_limit < logits.shape[-1]:
      logits = logits[..., :params.vocab_limit]
    tokens = jnp.argmax(logits, axis=-1)
    scaled = logits
  else:
    if row_ids is None:
      row_ids = jnp.arange(logits.shape[0], dtype=jnp.int32)
    tokens = draw_categorical(row_uniforms(rng, row_ids), filter_logits(logits, params))
    scaled = logits.astype(jnp.float32) / params.temperature
  logprobs = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], axis=-1)
  return tokens.astype(jnp.int32), logprobs[:, 0]


def prefill(model_cfg: ModelConfig, rows_sharding: Any, num_samples: int, params: Any,
            tokens: Array, input_mask: Array
            ) -> tuple[transformer.SharedPrefix, Array, Array]:
  """Run the prompts once; their cache is shared by the `num_samples` rows of each.

  Args:
    rows_sharding: where hidden states live under a mesh (None on one device).
    tokens, input_mask: `[B, P]` left-padded prompts.
  Returns:
    (the prompts' cache, `[B, ..., P]`, read by groups of `num_samples` rows; logits of the
     next token `[B*G, V]`; prompt lengths `[B*G]`).
  """
  cache = transformer.KVCache.zeros(model_cfg, tokens.shape[0], tokens.shape[1])
  positions = transformer.positions_from_mask(input_mask)
  hidden, cache = transformer.forward_cached(model_cfg, params, tokens, positions, input_mask,
                                             cache, return_hidden=True,
                                             rows_sharding=rows_sharding, fresh=True)
  # Only the last column is needed: projecting [B, P, V] would dominate prefill for big vocabs.
  logits = transformer.logits_from_hidden(model_cfg, params, hidden[:, -1])
  prompt_lens = jnp.sum(input_mask, axis=-1, dtype=jnp.int32)
  return (cache.shared(num_samples), jnp.repeat(logits, num_samples, axis=0),
          jnp.repeat(prompt_lens, num_samples))


# Below this many new tokens the decode loop never compacts: rows cannot finish much earlier
# than the budget, and each phase is one more compiled loop.
MIN_COMPACTION_BUDGET = 32


def compactions_used(max_compactions: int, new_tokens: int, one_device: bool) -> int:
  """How many compactions the decode loop may make: none under a mesh (rows live on different
  devices) or below `MIN_COMPACTION_BUDGET` new tokens, else `max_compactions`."""
  return max_compactions if one_device and new_tokens >= MIN_COMPACTION_BUDGET else 0


def compaction_sizes(rows: int, max_compactions: int) -> list[int]:
  """Batch sizes of the decode loop's phases: `rows`, then halves while they stay whole (at
  most `max_compactions` halvings)."""
  sizes = [rows]
  while len(sizes) <= max_compactions and sizes[-1] % 2 == 0 and sizes[-1] >= 4:
    sizes.append(sizes[-1] // 2)
  return sizes


def uses_paged_cache(model_cfg: ModelConfig) -> bool:
  """Whether `decode` reads a `paged.PagedCache` through the Pallas paged-attention kernel:
  with `model.attention="splash"` (the TPU kernels; under a mesh, per device)."""
  return model_cfg.attention == "splash"


def decode(model_cfg: ModelConfig, rows_sharding: Any, params_s: SamplingParams, pad_id: int,
           params: Any, prompt_cache: transformer.SharedPrefix, logits: Array,
           prompt_lens: Array, rng: Array, row_limits: Array | None = None,
           cache_sharding: Any = None) -> Rollout:
  """Sample until every row has stopped or `max_new_tokens` is reached (`lax.while_loop`).

  Each row attends to its prompt's cache (`prompt_cache`, shared by the prompt's rows) and to
  a cache of its own tokens, `max_new_tokens` slots made here and updated in place by the loop
  (`cache_sharding`: its layout under a mesh).

  `row_limits [N]` (optional) stops row i after `row_limits[i]` tokens as if it had drawn a
  stop token (`benchmarks/bench_peers.py` imposes a length distribution with it).

  Compaction: once at most half the rows of the batch are still running, the running rows
  (and their caches) are gathered into a batch of half the size and decoding goes on there,
  at most `params_s.max_compactions` times (`compactions_used`: not under a mesh, nor on short
  budgets); a compacted row takes a copy of its prompt's cache along. A long-tailed batch then
  stops paying for its finished rows. Each row draws its tokens from its own key
  (`row_uniforms`), so compaction changes no row's tokens.

  With `uses_paged_cache`, the rows read a `paged.PagedCache` instead (the prompt's pages
  shared, each row's own pages after them); compaction then gathers page-table rows only.
  """
  n = logits.shape[0]
  budget = params_s.max_new_tokens
  if rows_sharding is None:  # one device: unstack the block weights once, outside the loop
    params = transformer.unstack_layers(model_cfg, params)
  stop_ids = jnp.asarray(params_s.stop_ids or (-1,), jnp.int32)
  sizes = compaction_sizes(n, compactions_used(params_s.max_compactions, budget,
                                                 one_device=rows_sharding is None))

  def run_phase(state, last):
    """Decode `state`'s rows until done, or (unless `last`) until half of them are."""

    def cond(st):
      step, _, _, _, done, _ = st
      go = (step < budget) & ~jnp.all(done)
      if not last:
        go &= jnp.sum(~done) > done.shape[0] // 2
      return go

    def body(st):
      step, cache, logits, row_ids, done, out = st
      tokens, logprobs, lengths, stopped = out
      token, logprob = sample_tokens(jax.random.fold_in(rng, step), logits, params_s, row_ids)
      token = jnp.where(done, pad_id, token)
      logprob = jnp.where(done, 0.0, logprob)
      # Rows already done write their own pads again; compacted-away rows are not here.
      tokens = tokens.at[row_ids, step].set(token)
      logprobs = logprobs.at[row_ids, step].set(logprob)
      lengths = lengths.at[row_ids].add((~done).astype(jnp.int32))
      done = done | jnp.isin(token, stop_ids)
      if row_limits is not None:
        done = done | (step + 1 >= row_limits[row_ids])
      stopped = stopped.at[row_ids].set(done)
      positions = (prompt_lens[row_ids] + step)[:, None]
      step_logits, cache = transformer.forward(model_cfg, params, token[:, None], positions,
                                               jnp.ones((done.shape[0], 1), bool), cache,
                                               rows_sharding=rows_sharding)
      return (step + 1, cache, step_logits[:, 0], row_ids, done,
              (tokens, logprobs, lengths, stopped))

    return jax.lax.while_loop(cond, body, state)

  if uses_paged_cache(model_cfg):
    cache = paged.from_prefix(prompt_cache, budget, rows_sharding)
  else:
    cache = transformer.KVCache.zeros(model_cfg, n, budget)
    if cache_sharding is not None:
      cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    cache = cache.replace(prefix=prompt_cache)
  out = (jnp.full((n, budget), pad_id, jnp.int32), jnp.zeros((n, budget), jnp.float32),
         jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool))
  state = (jnp.zeros((), jnp.int32), cache, logits, jnp.arange(n, dtype=jnp.int32),
           jnp.zeros((n,), bool), out)
  for i, size in enumerate(sizes):
    if i:  # gather the running rows (first, in row order) into a batch of `size`
      step, cache, logits, row_ids, done, out = state
      keep = jnp.argsort(done, stable=True)[:size]
      state = (step, cache.take(keep), logits[keep], row_ids[keep], done[keep], out)
    state = run_phase(state, last=i == len(sizes) - 1)
  tokens, logprobs, lengths, stopped = state[5]
  return Rollout(tokens=tokens, logprobs=logprobs, lengths=lengths, truncated=~stopped,
                 prompt_tokens=None, prompt_mask=None)


def sampling_params(cfg: Any, stop_ids: Sequence[int] = (), vocab_limit: int = 0
                    ) -> SamplingParams:
  """`SamplingParams` from a `config.sampling`-like block plus the tokenizer's stop ids."""
  return SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens,
                        stop_ids=tuple(int(i) for i in stop_ids), vocab_limit=vocab_limit,
                        max_compactions=cfg.get("max_compactions", 2))


def decode_completions(tokenizer: Tokenizer, rollout: Rollout) -> list[str]:
  """The text of every row's generated tokens (the stop token included, as the tokenizer
  renders it)."""
  tokens, lengths = np.asarray(rollout.tokens), np.asarray(rollout.lengths)
  return [tokenizer.decode(tokens[i, :lengths[i]]) for i in range(len(lengths))]


def bucket_length(length: int, min_bucket: int = 8) -> int:
  """Smallest power of two >= length (and >= min_bucket): few distinct shapes, few compiles."""
  bucket = min_bucket
  while bucket < length:
    bucket *= 2
  return bucket


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
  """Left-pad token lists to `length`; returns (tokens [B, length], mask [B, length])."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for row, prompt in enumerate(prompts):
    if not len(prompt):
      raise ValueError(f"prompt {row} is empty; every prompt needs at least one token")
    if len(prompt) > length:
      raise ValueError(f"prompt {row} has {len(prompt)} tokens, more than {length}")
    tokens[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = True
  return tokens, mask


class Sampler:
  """Holds the jitted prefill and decode functions for one model (no global jit caches).

  `generate(params, prompts, num_samples, rng[, sampling])` returns a `Rollout` of
  `len(prompts) * num_samples` rows, drawn with `sampling` (default: the sampler's own
  `self.sampling`, which `from_config` takes from `config.sampling`). Callers pass a fresh
  `rng` per call (the training loop folds in the step), so every step draws new samples.

  With a `mesh`, prefill and decode are jitted with explicit shardings: params by the rule
  table, prompts and every row of the rollout over the data-parallel axes, the KV cache
  created sharded (rows over data x fsdp, KV heads over tensor). `prompts` are then this
  process's prompts (all of them with one process), and the rollout comes back as numpy
  holding this process's rows, in the same order.
  """

  def __init__(self, model_cfg: ModelConfig, pad_id: int, min_prompt_bucket: int = 8,
               mesh: jax.sharding.Mesh | None = None, sampling: SamplingParams | None = None):
    self.model_cfg = model_cfg
    self.pad_id = pad_id
    self.min_prompt_bucket = min_prompt_bucket
    self.mesh = mesh
    self.sampling = SamplingParams() if sampling is None else sampling
    self._prefill = jax.jit(functools.partial(prefill, model_cfg, None), static_argnums=(0,))
    self._decode = jax.jit(functools.partial(decode, model_cfg, None), static_argnums=(0, 1))
    self._sharded: dict[tuple, tuple[Any, Any]] = {}

  @classmethod
  def from_config(cls, config: Any, model_cfg: ModelConfig, tokenizer: Tokenizer,
                  mesh: jax.sharding.Mesh | None = None) -> "Sampler":
    """The run's sampler: `config.sampling` (temperature, top-k / top-p, budget, prompt
    buckets) with the tokenizer's stop ids and pad id. Ids past the tokenizer's vocabulary
    (padding rows of a real checkpoint's embedding) are never drawn."""
    sp = sampling_params(config.sampling, tokenizer.stop_ids, tokenizer.vocab_size)
    return cls(model_cfg, tokenizer.pad_id, config.sampling.min_prompt_bucket, mesh, sp)

  def _sharded_fns(self, rows: int, num_samples: int, prompt_len: int,
                   sampling: SamplingParams):
    """Prefill and decode jitted with explicit shardings for these static shapes (`rows`
    prompts of `prompt_len` tokens, `num_samples` rows each)."""
    key = (rows, num_samples, prompt_len, sampling)
    if key not in self._sharded:
      mesh, cfg = self.mesh, self.model_cfg
      params = rules.param_shardings(cfg, mesh)
      by_row, rep = rules.batch_sharding(mesh), rules.replicated(mesh)
      prompt_cache = rules.cache_shardings(cfg, rows, prompt_len, mesh, group=num_samples)
      cache = rules.cache_shardings(cfg, rows * num_samples, sampling.max_new_tokens, mesh)
      prefill_fn = jax.jit(functools.partial(prefill, cfg, by_row, num_samples),
                           in_shardings=(params, by_row, by_row),
                           out_shardings=(prompt_cache, by_row, by_row))
      decode_fn = jax.jit(functools.partial(decode, cfg, by_row, sampling, self.pad_id,
                                            cache_sharding=cache),
                          in_shardings=(params, prompt_cache, by_row, by_row, rep),
                          out_shardings=by_row)
      self._sharded[key] = (prefill_fn, decode_fn)
    return self._sharded[key]

  def prompt_length(self, prompts: Sequence[Sequence[int]]) -> int:
    """The padded prompt length `generate` uses for `prompts` (agreed by every process)."""
    longest = max(len(p) for p in prompts)
    if self.mesh is not None and jax.process_count() > 1:
      longest = int(np.max(multihost.allgather_rows(np.asarray([longest]))))
    return bucket_length(longest, self.min_prompt_bucket)

  def generate(self, params: Any, prompts: Sequence[Sequence[int]], num_samples: int,
               rng: Array, sampling: SamplingParams | None = None,
               prompt_len: int | None = None) -> Rollout:
    """`prompt_len` fixes the padded prompt length (default: `prompt_length(prompts)`), so
    that rollouts of several calls can be concatenated."""
    sampling = self.sampling if sampling is None else sampling
    if num_samples <= 0:
      raise ValueError(f"num_samples must be positive, got {num_samples}")
    prompt_len = self.prompt_length(prompts) if prompt_len is None else prompt_len
    tokens, mask = left_pad(prompts, prompt_len, self.pad_id)
    if self.mesh is None:
      cache, logits, prompt_lens = self._prefill(num_samples, params, tokens, mask)
      rollout = self._decode(sampling, self.pad_id, params, cache, logits, prompt_lens, rng)
    else:
      rows = multihost.global_rows(len(prompts), self.mesh)
      prefill_fn, decode_fn = self._sharded_fns(rows, num_samples, prompt_len, sampling)
      tokens_g, mask_g = multihost.host_to_global((tokens, mask), self.mesh, rows)
      cache, logits, prompt_lens = prefill_fn(params, tokens_g, mask_g)
      rollout = decode_fn(params, cache, logits, prompt_lens, rng)
      rollout = multihost.global_to_host(rollout)
    return rollout.replace(prompt_tokens=np.repeat(tokens, num_samples, axis=0),
                           prompt_mask=np.repeat(mask, num_samples, axis=0))

  def generate_in_chunks(self, params: Any, prompts: Sequence[Sequence[int]], num_samples: int,
                         rng: Array, chunks: int = 1, sampling: SamplingParams | None = None
                         ) -> Rollout:
    """`generate` in `chunks` calls of `len(prompts) / chunks` prompts each (so each call holds
    the KV cache of a fraction of the batch: `sampling.rollout_chunks`, sized by the memory
    plan), padded to one prompt length so that the rows concatenate as one rollout. One chunk
    is one plain `generate` call with `rng`; chunk i of several draws with `fold_in(rng, i)`.
    """
    if chunks < 1 or len(prompts) % chunks:
      raise configs.ConfigError(
          f"sampling.rollout_chunks={chunks} must divide the {len(prompts)} prompts each "
          "process samples per batch")
    if chunks == 1:
      return self.generate(params, prompts, num_samples, rng, sampling)
    size, prompt_len = len(prompts) // chunks, self.prompt_length(prompts)
    parts = [self.generate(params, prompts[i * size:(i + 1) * size], num_samples,
                           jax.random.fold_in(rng, i), sampling, prompt_len)
             for i in range(chunks)]
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)
