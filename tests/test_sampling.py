"""The jitted KV-cache sampler: exactness against full forward passes, and its sampling law."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agpo_jax import sampling
from agpo_jax.models import transformer as T
from agpo_jax.models.config import ModelConfig
from agpo_jax.sampling import Sampler, SamplingParams

CFG = ModelConfig(vocab_size=24, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, max_seq_len=128, qkv_bias=True)
PAD, STOP = 0, 1
forward = jax.jit(T.forward, static_argnums=(0,))


def key(seed):
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def params():
  p = T.init_params(CFG, key(0))
  rng = np.random.default_rng(0)
  # Sharpen the random model a little so greedy paths are well separated from ties.
  return jax.tree.map(lambda x: x + 0.5 * rng.standard_normal(x.shape).astype(x.dtype), p)


@pytest.fixture(scope="module")
def sampler():
  return Sampler(CFG, pad_id=PAD)


PROMPTS = [[5, 6, 7], [9, 3, 4, 12, 13, 2, 8], [20], [4, 4, 4, 4, 4]]


def test_sampler_logprobs_equal_full_forward_logprobs(params, sampler):
  """Every sampled token's log-prob equals a from-scratch forward pass over the unpadded row.

  This checks the KV cache through the whole jitted loop, for prompts of four different
  lengths in one left-padded batch. Tolerance 1e-4 on float32 log-probs.
  """
  sp = SamplingParams(temperature=1.0, max_new_tokens=12, stop_ids=(STOP,))
  rollout = sampler.generate(params, PROMPTS, 2, key(3), sp)
  for row in range(len(PROMPTS) * 2):
    prompt = PROMPTS[row // 2]
    n = int(rollout.lengths[row])
    completion = list(np.asarray(rollout.tokens[row, :n]))
    seq = jnp.asarray(prompt + completion)[None]
    logits = forward(CFG, params, seq, jnp.arange(seq.shape[1])[None], jnp.ones(seq.shape, bool))[0]
    logp = jax.nn.log_softmax(logits[0], axis=-1)
    expected = [logp[len(prompt) - 1 + t, completion[t]] for t in range(n)]
    np.testing.assert_allclose(rollout.logprobs[row, :n], expected, atol=1e-4)
    assert np.all(np.asarray(rollout.logprobs[row, n:]) == 0)


def test_greedy_alone_equals_greedy_in_padded_batch(params, sampler):
  sp = SamplingParams(temperature=0.0, max_new_tokens=10)
  batch = sampler.generate(params, PROMPTS, 1, key(0), sp)
  for i, prompt in enumerate(PROMPTS):
    alone = sampler.generate(params, [prompt], 1, key(0), sp)
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])


def test_greedy_is_deterministic_and_sampling_follows_the_key(params, sampler):
  greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
  a = sampler.generate(params, PROMPTS, 1, key(0), greedy)
  b = sampler.generate(params, PROMPTS, 1, key(99), greedy)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  hot = SamplingParams(temperature=1.5, max_new_tokens=10)
  x = sampler.generate(params, PROMPTS, 2, key(1), hot)
  y = sampler.generate(params, PROMPTS, 2, key(1), hot)
  z = sampler.generate(params, PROMPTS, 2, key(2), hot)
  np.testing.assert_array_equal(x.tokens, y.tokens)
  assert not np.array_equal(x.tokens, z.tokens)


def test_stop_tokens_end_rows_and_budget_truncates(params, sampler):
  free = SamplingParams(temperature=0.0, max_new_tokens=6)
  unstopped = sampler.generate(params, PROMPTS, 1, key(0), free)
  assert np.all(unstopped.truncated) and np.all(unstopped.lengths == 6)
  # Declare the greedy first token of prompt 0 a stop token: that row ends after it.
  stop = int(unstopped.tokens[0, 0])
  stopped = sampler.generate(params, PROMPTS, 1, key(0),
                             dataclasses.replace(free, stop_ids=(stop,)))
  for row in range(len(PROMPTS)):
    tokens = list(np.asarray(unstopped.tokens[row]))
    if stop in tokens:
      n = tokens.index(stop) + 1
      assert stopped.lengths[row] == n and not stopped.truncated[row]
      np.testing.assert_array_equal(stopped.tokens[row, :n], tokens[:n])
      assert np.all(np.asarray(stopped.tokens[row, n:]) == PAD)
    else:
      assert stopped.lengths[row] == 6 and stopped.truncated[row]
  assert stopped.lengths[0] == 1
  np.testing.assert_array_equal(stopped.mask.sum(1), stopped.lengths)


def _truncated_distribution(logits, temperature, top_k, top_p):
  """Written independently of the sampler: sort, cut, renormalise."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z)
  keep = np.zeros_like(z, bool)
  keep[order[:top_k or len(z)]] = True
  probs = np.exp(z - z.max()) * keep
  probs /= probs.sum()
  cumulative = 0.0
  nucleus = np.zeros_like(keep)
  for i in order:
    if keep[i] and cumulative < top_p:
      nucleus[i] = True
      cumulative += probs[i]
  final = probs * nucleus
  return final / final.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.3, 0, 0.8), (0.9, 5, 0.7)])
def test_empirical_distribution_matches_truncated_renormalised(temperature, top_k, top_p):
  logits = jnp.array([2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, -3.0])
  draws = 40_000
  sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
  tokens, _ = jax.jit(sampling.sample_tokens, static_argnums=2)(
      key(7), jnp.tile(logits, (draws, 1)), sp)
  empirical = np.bincount(np.asarray(tokens), minlength=8) / draws
  expected = _truncated_distribution(logits, temperature, top_k, top_p)
  assert np.all(empirical[expected == 0] == 0)  # removed tokens are never drawn
  # 5 standard errors of a binomial proportion, plus a few counts for rare tokens whose
  # counts are Poisson-like rather than normal: a false alarm is a ~1e-6 event per token.
  tolerance = 5 * np.sqrt(expected * (1 - expected) / draws) + 3 / draws
  assert np.all(np.abs(empirical - expected) <= tolerance), (empirical, expected)


def test_group_sampling_prefills_once_and_draws_independent_samples(params):
  sampler = Sampler(CFG, pad_id=PAD)
  calls = []
  prefill = sampler._prefill

  def spy(num_samples, p, tokens, mask):
    calls.append(tokens.shape)
    return prefill(num_samples, p, tokens, mask)

  sampler._prefill = spy
  group = 2_000
  sp = SamplingParams(temperature=1.0, max_new_tokens=2)
  rollout = sampler.generate(params, [PROMPTS[1]], group, key(5), sp)
  assert calls == [(1, 8)]  # one prompt, prefilled once, padded to the 8-token bucket
  assert rollout.tokens.shape == (group, 2)
  # The first tokens are i.i.d. draws from the prompt's next-token distribution.
  seq = jnp.asarray(PROMPTS[1])[None]
  logits = forward(CFG, params, seq, jnp.arange(seq.shape[1])[None], jnp.ones(seq.shape, bool))[0]
  expected = np.asarray(jax.nn.softmax(logits[0, -1]))
  empirical = np.bincount(np.asarray(rollout.tokens[:, 0]), minlength=CFG.vocab_size) / group
  tolerance = 5 * np.sqrt(expected * (1 - expected) / group) + 3 / group
  assert np.all(np.abs(empirical - expected) <= tolerance)
  # Second tokens condition on different first tokens: rows are not copies of one another.
  assert len({tuple(r) for r in np.asarray(rollout.tokens)}) > 10


@pytest.mark.parametrize("scan_layers", [True, False])
def test_decode_updates_the_kv_cache_in_place(scan_layers):
  """The decode loop writes each token into its cache in place: XLA's temporaries of the
  compiled loop hold that cache once, plus a little. A layer loop that rebuilt the stacked
  cache (as the scan's output) held a second cache. Compaction adds its half-size cache (the
  running rows with a copy of their prompt's cache each), no more. The prompts' cache is an
  input, read in place, never copied per row."""
  cfg = dataclasses.replace(CFG, num_layers=4, max_seq_len=256, scan_layers=scan_layers)
  prompts, group, prompt_len, new = 8, 4, 64, 192
  rows = prompts * group
  prompt_cache = jax.eval_shape(lambda: T.KVCache.zeros(cfg, prompts, prompt_len).shared(group))
  own_bytes = _nbytes(jax.eval_shape(lambda: T.KVCache.zeros(cfg, rows, new)))
  forked_bytes = _nbytes(jax.eval_shape(lambda: T.KVCache.zeros(cfg, rows, prompt_len + new)))
  for compactions, bound in ((0, 1.25 * own_bytes), (2, own_bytes + 0.5 * forked_bytes)):
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=new,
                        max_compactions=compactions)
    compiled = Sampler(cfg, pad_id=PAD)._decode.lower(
        sp, PAD, T.abstract_params(cfg), prompt_cache,
        jax.ShapeDtypeStruct((rows, cfg.vocab_size), jnp.float32),
        jax.ShapeDtypeStruct((rows,), jnp.int32), key(0)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert own_bytes <= temp < bound, (compactions, temp, own_bytes)


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_vocab_limit_is_never_sampled():
  logits = jnp.tile(jnp.array([0.0, 0.0, 0.0, 5.0, 5.0]), (4_000, 1))
  for temperature in (0.0, 1.0):
    sp = SamplingParams(temperature=temperature, vocab_limit=3)
    tokens, _ = sampling.sample_tokens(key(0), logits, sp)
    assert int(tokens.max()) < 3


def test_prompt_buckets_and_bad_input():
  assert [sampling.bucket_length(n) for n in (1, 8, 9, 31, 33)] == [8, 8, 16, 32, 64]
  tokens, mask = sampling.left_pad([[1, 2], [3]], 4, PAD)
  np.testing.assert_array_equal(tokens, [[0, 0, 1, 2], [0, 0, 0, 3]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1]])
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampling.left_pad([[1], []], 4, PAD)
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(top_p=0.0)


def test_compaction_keeps_every_rows_tokens(params):
  """A long-tailed batch (half the rows stop after 2 of 32 tokens, some others on a stop
  token): decoding with compaction (the running rows gathered into half, then a quarter of
  the batch) gives the same tokens, log-probs, lengths and truncation flags as without."""
  rows_per_prompt, budget = 4, sampling.MIN_COMPACTION_BUDGET
  rows = len(PROMPTS) * rows_per_prompt
  limits = jnp.where(jnp.arange(rows) % 2 == 0, 2, budget)
  sampler = Sampler(CFG, pad_id=PAD)
  prompt_len = sampler.prompt_length(PROMPTS)
  tokens, mask = sampling.left_pad(PROMPTS, prompt_len, PAD)
  out, loops = {}, {}
  for compactions in (0, 2):
    sp = SamplingParams(temperature=1.0, max_new_tokens=budget, stop_ids=(STOP,),
                        max_compactions=compactions)
    cache, logits, lens = sampler._prefill(rows_per_prompt, params, tokens, mask)
    decode = jax.jit(lambda *a, sp=sp: sampling.decode(CFG, None, sp, PAD, *a))
    loops[compactions] = decode.lower(params, cache, logits, lens, key(3),
                                      limits).as_text().count("stablehlo.while")
    out[compactions] = decode(params, cache, logits, lens, key(3), limits)
  plain, compact = out[0], out[2]
  assert sampling.compaction_sizes(rows, 2) == [16, 8, 4]
  assert loops[2] > loops[0]  # the compacted phases are compiled: compaction is on
  lengths = np.asarray(plain.lengths)
  assert np.all(lengths[::2] <= 2) and np.any(lengths[1::2] > 8)  # the tail runs on
  for field in ("tokens", "lengths", "truncated"):
    np.testing.assert_array_equal(getattr(compact, field), getattr(plain, field), field)
  np.testing.assert_allclose(compact.logprobs, plain.logprobs, atol=1e-5)


def test_inverse_cdf_draw_never_picks_an_impossible_token():
  """At the extreme uniforms and across the block boundary, zero-probability tokens (-inf
  logits, the padding of the last block) are never drawn; a sure token always is."""
  vocab = 300  # three blocks of 128, the last one padded
  logits = np.full((6, vocab), -np.inf, np.float32)
  logits[0, [5, 200]] = 0.0
  logits[1, [127, 128]] = [1.0, 2.0]
  logits[2, 299] = 0.0
  logits[3, :] = 0.0
  logits[4, 0] = 0.0
  logits[5, [0, 299]] = [30.0, 0.0]  # a token of mass ~1e-13
  for u in (0.0, 1e-7, 0.5, 1.0 - 2 ** -24):
    drawn = np.asarray(sampling.draw_categorical(jnp.full((6,), u), jnp.asarray(logits)))
    assert np.all(np.isfinite(logits[np.arange(6), drawn])), (u, drawn)
    assert drawn[2] == 299 and drawn[4] == 0
  drawn = np.asarray(sampling.draw_categorical(jnp.asarray([0.0, 0.99, 0.0, 0.0, 0.0, 0.0]),
                                               jnp.asarray(logits)))
  assert list(drawn[:2]) == [200, 127]  # the CDF inverted at 1 - u: the highest id at u = 0


def test_a_rows_draw_does_not_depend_on_the_rest_of_its_batch():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 50)), jnp.float32)
  sp = SamplingParams(temperature=1.0)
  full, _ = sampling.sample_tokens(key(1), logits, sp, jnp.arange(8))
  part, _ = sampling.sample_tokens(key(1), logits[5:], sp, jnp.arange(5, 8))
  np.testing.assert_array_equal(full[5:], part)
