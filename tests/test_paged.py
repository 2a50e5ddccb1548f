"""The paged decode cache (`models.paged`) and the Pallas paged-attention kernel behind it
(`model.attention="splash"`; off TPU the kernel runs in Pallas' TPU interpreter)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agpo_jax import sampling
from agpo_jax.models import attention, paged
from agpo_jax.models import transformer as T
from agpo_jax.models.config import ModelConfig
from agpo_jax.sampling import Sampler, SamplingParams
from tests import fake_devices

PROMPTS, GROUP, KV, G, HD, P, BUDGET = 2, 3, 2, 2, 8, 21, 20
LENS = (21, 5)  # one prompt fills its padded length, one is mostly padding
ROWS = PROMPTS * GROUP


def _bf16(x):
  """Values a bfloat16 holds exactly: the kernel reads keys and values in bfloat16."""
  return jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)


def _prefix_and_steps(seed=0, steps=BUDGET, rounded=True):
  """A prefilled prompt cache (left-padded to P) and `steps` decode tokens' keys / values."""
  rng = np.random.default_rng(seed)
  r = _bf16 if rounded else (lambda x: jnp.asarray(x, jnp.float32))
  k = r(rng.normal(size=(PROMPTS, KV, HD, P)))
  v = r(rng.normal(size=(PROMPTS, KV, P, HD)))
  valid = jnp.asarray(np.arange(P)[None] >= P - np.asarray(LENS)[:, None])
  prefix = T.SharedPrefix(k=(k,), v=(v,), valid=valid, group=GROUP)
  new_k = r(rng.normal(size=(steps, ROWS, KV, HD)))
  new_v = r(rng.normal(size=(steps, ROWS, KV, HD)))
  return prefix, new_k, new_v


_from_prefix = jax.jit(paged.from_prefix, static_argnums=1)
_write = jax.jit(paged.write)


def _written(steps, seed=0, rounded=True):
  prefix, new_k, new_v = _prefix_and_steps(seed, steps, rounded)
  cache = _from_prefix(prefix, BUDGET)
  layer = cache.layer(0)
  lens = jnp.repeat(jnp.asarray(LENS, jnp.int32), GROUP)
  for t in range(steps):
    layer = _write(layer, new_k[t], new_v[t], lens + t)
  return prefix, new_k, new_v, cache.replace(k=(layer.k,), v=(layer.v,)), lens


def _row_keys(cache, row, length):
  """Row `row`'s first `length` keys and values `[KV, length, hd]`, read through its table."""
  ps = cache.page_size
  slots = np.arange(length)
  pages = np.asarray(cache.table)[row, slots // ps]
  return cache.k[0][:, pages, slots % ps], cache.v[0][:, pages, slots % ps]


def test_each_row_reads_its_prompt_then_its_own_tokens_in_order():
  """Through its page table, row r reads its prompt's real keys (padding dropped) followed by
  the tokens written for it, for a prompt longer than a page and one shorter; rows of a prompt
  share its full pages; `take` gathers rows without copying the pool."""
  prefix, new_k, new_v, cache, lens = _written(BUDGET)
  assert cache.page_size == paged.PAGE_SIZE < P
  for row in range(ROWS):
    b, n = row // GROUP, LENS[row // GROUP]
    k, v = _row_keys(cache, row, n + BUDGET)
    want_k = jnp.concatenate([prefix.k[0][b][..., P - n:].swapaxes(1, 2),
                              new_k[:, row].swapaxes(0, 1)], axis=1)
    want_v = jnp.concatenate([prefix.v[0][b][:, P - n:], new_v[:, row].swapaxes(0, 1)], axis=1)
    np.testing.assert_array_equal(k, want_k)
    np.testing.assert_array_equal(v, want_v)
  table = np.asarray(cache.table)
  assert table[0, 0] == table[1, 0] == table[2, 0] != table[3, 0]  # prompt 0's full page, shared
  assert len({table[r, 1] for r in range(3)}) == 3  # its partial page: one copy per row
  assert table.shape[1] % paged.PAGES_PER_BLOCK == 0 and table.max() < cache.k[0].shape[1]
  taken = cache.take(jnp.asarray([4, 0]))
  assert taken.k[0] is cache.k[0]
  for new_row, row in enumerate((4, 0)):
    n = LENS[row // GROUP] + BUDGET
    np.testing.assert_array_equal(_row_keys(taken, new_row, n)[0], _row_keys(cache, row, n)[0])


def test_paged_attention_kernel_equals_the_dense_cache_attention():
  """The kernel over the pages gives `attend_cache` over the shared prefix plus each row's own
  slots, rows at different lengths, after 7 of 20 steps: to 1e-5 when keys and values are
  bfloat16 values (the kernel reads them in bfloat16), to 2e-2 on arbitrary float32 ones."""
  steps = 7
  q = jnp.asarray(np.random.default_rng(1).normal(size=(ROWS, KV, G, HD)), jnp.float32)
  attend = jax.jit(paged.attend)
  for rounded, tolerance in ((True, 1e-5), (False, 2e-2)):
    prefix, new_k, new_v, cache, lens = _written(steps, rounded=rounded)
    got = attend(q, cache.layer(0), lens + steps)
    own_k = jnp.zeros((ROWS, KV, HD, BUDGET)).at[..., :steps].set(new_k.transpose(1, 2, 3, 0))
    own_v = jnp.zeros((ROWS, KV, BUDGET, HD)).at[:, :, :steps].set(new_v.transpose(1, 2, 0, 3))
    own_mask = jnp.broadcast_to(jnp.arange(BUDGET) < steps, (ROWS, 1, BUDGET))
    want = attention.attend_cache(q[:, None], own_k, own_v, own_mask,
                                  (prefix.k[0], prefix.v[0], prefix.valid))[:, 0]
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
  # One row's answer is its own: another row's table changes it.
  order = jnp.asarray([3, 1, 2, 0, 4, 5])
  moved = attend(q, cache.take(order).layer(0), lens[order] + steps)
  assert not np.allclose(moved[0], want[0], atol=1e-2)


# One KV head (the kernel's interpreter pays per row and KV head; several KV heads are the
# test above's), two layers (each reads its own pool).
CFG = ModelConfig(vocab_size=24, num_layers=2, d_model=32, num_heads=2, num_kv_heads=1,
                  head_dim=16, mlp_dim=64, max_seq_len=128, qkv_bias=True)


def test_sampler_over_the_paged_cache_scores_what_a_full_forward_scores(monkeypatch):
  """With `model.attention="splash"` the sampler prefills with splash attention and decodes
  over the paged cache, compacting its 6 rows to 3 once half have stopped: each drawn token's
  log-prob is a full forward pass's over the row (prompts of 3, 21 and 1 tokens: within,
  across and short of a page), within 0.1 (the kernel reads keys and values in bfloat16, on a
  sharpened random model; a row reading a wrong slot is off by more than 1)."""
  params = T.init_params(CFG, jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.5 * rng.standard_normal(x.shape).astype(x.dtype), params)
  prompts = [[5, 6, 7], [9, 3, 4, 12, 13, 2, 8] + [9] * 11 + [1, 2, 3], [20]]
  monkeypatch.setattr(sampling, "MIN_COMPACTION_BUDGET", 4)
  sp = SamplingParams(temperature=1.0, max_new_tokens=6, stop_ids=(1, 2, 3, 4, 5, 6),
                      max_compactions=1)
  assert sampling.compaction_sizes(6, sampling.compactions_used(1, 6, True)) == [6, 3]
  kernel_cfg = dataclasses.replace(CFG, attention="splash")
  assert sampling.uses_paged_cache(kernel_cfg) and not sampling.uses_paged_cache(CFG)
  got = Sampler(kernel_cfg, pad_id=0).generate(params, prompts, 2, jax.random.key(3), sp)
  assert 3 <= int(np.sum(got.lengths < 5)) < 6, got.lengths  # the batch did compact
  rows = [prompts[r // 2] + list(np.asarray(got.tokens[r, :got.lengths[r]])) for r in range(6)]
  tokens, mask = sampling.left_pad(rows, 32, 0)  # one full forward over every row
  logits, _ = T.forward(CFG, params, tokens, T.positions_from_mask(mask), mask)
  logp = jax.nn.log_softmax(logits, axis=-1)
  for r, row in enumerate(rows):
    n = int(got.lengths[r])
    want = [logp[r, 32 - n - 1 + t, row[len(row) - n + t]] for t in range(n)]
    np.testing.assert_allclose(got.logprobs[r, :n], want, atol=0.1, rtol=0)


def test_memory_plan_counts_the_paged_pool():
  """On one device with `model.attention="splash"` the plan's decode cache is the bytes
  `from_prefix` returns (pool and table, from its abstract output), not the dense cache's."""
  from agpo_jax.memory_plan import plan_memory  # noqa: PLC0415
  cfg = dataclasses.replace(CFG, num_kv_heads=2, num_heads=4, head_dim=8)
  kernel_cfg = dataclasses.replace(cfg, attention="splash")
  prompts, group, prompt_len, budget = 3, 4, 64, 50
  prefix = T.SharedPrefix(
      k=(jax.ShapeDtypeStruct((prompts, 2, 8, prompt_len), jnp.float32),) * 2,
      v=(jax.ShapeDtypeStruct((prompts, 2, prompt_len, 8), jnp.float32),) * 2,
      valid=jax.ShapeDtypeStruct((prompts, prompt_len), bool), group=group)
  out = jax.eval_shape(lambda p: paged.from_prefix(p, budget), prefix)
  want = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(out))
  args = dict(axis_sizes={}, prompt_len=prompt_len, response_len=budget,
              rows_per_step=prompts * group, num_samples=group, min_prompt_bucket=8)
  plan = plan_memory(kernel_cfg, **args)
  assert plan.kv_cache == want
  assert plan_memory(cfg, **args).kv_cache != want


_MESH_SCRIPT = r"""
import dataclasses, json
import jax, jax.extend, jax.numpy as jnp, numpy as np
from agpo_jax.models import transformer as T
from agpo_jax.models.config import ModelConfig
from agpo_jax.sampling import Sampler, SamplingParams, left_pad
from agpo_jax.sharding import rules

cfg = ModelConfig(vocab_size=24, num_layers=1, d_model=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, max_seq_len=128, qkv_bias=True, attention="splash")
reference_cfg = dataclasses.replace(cfg, attention="xla")
mesh = rules.make_mesh(dict(data=2, fsdp=2, tensor=2))
params = T.init_params(cfg, jax.random.key(0))
rng = np.random.default_rng(0)
params = jax.tree.map(lambda x: x + 0.25 * rng.standard_normal(x.shape).astype(x.dtype), params)
prompts = [[5, 6, 7], [9, 3, 4, 12, 13, 2, 8] + [9] * 11 + [1, 2, 3], [20], [4, 4, 4, 4, 4]]
sharded_params = jax.device_put(params, rules.param_shardings(cfg, mesh))
sampler, sp = Sampler(cfg, pad_id=0, mesh=mesh), SamplingParams(max_new_tokens=4)
got = sampler.generate(sharded_params, prompts, 2, jax.random.key(3), sp)
prefill_fn, decode_fn = sampler._sharded_fns(4, 2, 32, sp)
prefilled = prefill_fn(sharded_params, *[jax.device_put(x, rules.batch_sharding(mesh))
                                         for x in left_pad(prompts, 32, 0)])
decode_jaxpr = jax.make_jaxpr(decode_fn)(sharded_params, *prefilled, jax.random.key(3))
# Each drawn token's log-prob against a one-device full forward (reference attention).
rows = [prompts[r // 2] + np.asarray(got.tokens[r]).tolist() for r in range(8)]
tokens, mask = left_pad(rows, 32, 0)
logp = jax.nn.log_softmax(T.forward(reference_cfg, params, tokens, T.positions_from_mask(mask),
                                    mask)[0], axis=-1)
want = np.asarray([[logp[r, 32 - 5 + t, rows[r][-4 + t]] for t in range(4)] for r in range(8)])

# A causal pass's loss and gradient with the rows split over the mesh.
tokens = jnp.asarray(rng.integers(3, 24, (4, 12)), jnp.int32)
mask = jnp.asarray(np.arange(12)[None] >= np.array([[0], [5], [11], [2]]))
by_row = rules.batch_sharding(mesh)

def loss(p, tokens, mask, rows_sharding):
  logits, _ = T.forward(cfg, p, tokens, T.positions_from_mask(mask), mask,
                        rows_sharding=rows_sharding)
  return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0))

grad = jax.value_and_grad(loss)
ref = jax.jit(grad, static_argnums=3)(params, tokens, mask, None)
grads = jax.jit(grad, static_argnums=3)(sharded_params, jax.device_put(tokens, by_row),
                                        jax.device_put(mask, by_row), by_row)
jaxpr = jax.make_jaxpr(grad, static_argnums=3)(params, tokens, mask, by_row)

def kernels(jaxpr, inside=False):
  # (pallas_call inside a shard_map, pallas_call outside one), counted through sub-jaxprs.
  counts = [0, 0]
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      counts[0 if inside else 1] += 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      a, b = kernels(sub, inside or eqn.primitive.name == "shard_map")
      counts[0] += a
      counts[1] += b
  return counts

print("RESULT " + json.dumps({
    "logprob_diff": float(np.max(np.abs(np.asarray(got.logprobs) - want))),
    "loss": [float(ref[0]), float(grads[0])],
    "grad_rel_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))
                                      / (np.max(np.abs(np.asarray(a))) + 1e-30)))
                         for a, b in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(grads[1]))),
    "kernels": kernels(jaxpr.jaxpr), "decode_kernels": kernels(decode_jaxpr.jaxpr)}))
"""


def test_tpu_kernels_run_per_shard_under_a_mesh():
  """On 8 devices (data 2 x fsdp 2 x tensor 2), `model.attention="splash"` runs each Pallas
  kernel inside a `shard_map` (a Mosaic kernel cannot be partitioned by the compiler): the
  sampler's prefill and paged decode score each drawn token as a one-device full forward does
  (within 0.1: the kernel's bfloat16 keys and values), and a causal pass's loss and gradients
  match the one-device ones (float32 reduction order only)."""
  out = fake_devices.run(_MESH_SCRIPT)
  assert out["logprob_diff"] < 0.05, out  # measured 0.011
  np.testing.assert_allclose(*out["loss"], rtol=1e-5)
  assert out["grad_rel_diff"] < 1e-4, out
  inside, outside = out["kernels"]
  assert inside >= 2 and outside == 0, out  # splash forward and backward
  inside, outside = out["decode_kernels"]
  assert inside >= 1 and outside == 0, out  # the paged-attention kernel


def test_memory_plan_warns_when_the_page_table_outgrows_tpu_scalar_memory():
  """The kernel holds a device's page table in TPU scalar memory (about 1 MiB): the plan
  notes a table past 512 KiB (512 rows of 2k + 4k tokens: 784 KiB) and names the lever; a
  shorter rollout, or the XLA cache, gets no note."""
  from agpo_jax.memory_plan import estimates, plan_memory  # noqa: PLC0415
  kernel_cfg = dataclasses.replace(CFG, attention="splash")
  args = dict(axis_sizes={}, prompt_len=2048, response_len=4096, rows_per_step=512,
              num_samples=8, min_prompt_bucket=8)
  assert estimates.page_table_bytes(512, 2048, 4096) == 512 * 392 * 4  # 128 + 257 pages -> 392
  long = plan_memory(kernel_cfg, **args)
  assert any("page table is 784 KiB" in n and "rollout_chunks" in n for n in long.notes)
  assert not any("page table" in n for n in plan_memory(CFG, **args).notes)
  short = plan_memory(kernel_cfg, **{**args, "response_len": 512})
  assert not any("page table" in n for n in short.notes)
