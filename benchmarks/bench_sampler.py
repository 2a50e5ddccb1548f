"""Decode throughput: the KV-cache sampler against a full-recompute decoder, side by side.

    python -m benchmarks.bench_sampler [--rows 512] [--new 32] [--repeats 5]

Both decoders run the same model, the same prompts and the same sampling rule inside one jit
with a device-side loop, so the ratio isolates the KV cache: the naive decoder re-runs the whole
padded sequence for every new token. Prints medians over `--repeats` timed runs (after one
compile run each) and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from agpo_jax import sampling
from agpo_jax.models import transformer
from agpo_jax.models.config import PRESETS


def naive_generate(cfg, sp, params, tokens, mask, rng):
  """Full forward pass over the whole buffer for every new token (no cache, no early exit)."""
  n, p = tokens.shape
  budget = sp.max_new_tokens
  buffer = jnp.concatenate([tokens, jnp.zeros((n, budget), jnp.int32)], axis=1)
  buf_mask = jnp.concatenate([mask, jnp.zeros((n, budget), bool)], axis=1)

  def step(t, state):
    buffer, buf_mask = state
    positions = transformer.positions_from_mask(buf_mask)
    logits, _ = transformer.forward(cfg, params, buffer, positions, buf_mask)
    token, _ = sampling.sample_tokens(jax.random.fold_in(rng, t), logits[:, p + t - 1], sp)
    buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (0, p + t))
    buf_mask = jax.lax.dynamic_update_slice(buf_mask, jnp.ones((n, 1), bool), (0, p + t))
    return buffer, buf_mask

  buffer, _ = jax.lax.fori_loop(0, budget, step, (buffer, buf_mask))
  return buffer[:, p:]


def median_seconds(fn, repeats):
  jax.block_until_ready(fn(0))  # compile
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(i + 1))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", type=int, default=512, help="prompts x samples")
  parser.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
  parser.add_argument("--new", type=int, default=32, help="new tokens per row")
  parser.add_argument("--prompt-len", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--d-model", type=int, default=0, help="override the testbed width")
  args = parser.parse_args()

  cfg = PRESETS["testbed"]
  if args.d_model:
    cfg = dataclasses.replace(cfg, d_model=args.d_model, mlp_dim=4 * args.d_model)
  cfg = dataclasses.replace(cfg, max_seq_len=args.prompt_len + args.new)
  params = transformer.init_params(cfg, jax.random.key(0, impl="rbg"))
  prompts_n = args.rows // args.group
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, cfg.vocab_size, args.prompt_len)) for _ in range(prompts_n)]
  # No stop tokens: both decoders produce exactly --new tokens per row.
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=args.new)

  sampler = sampling.Sampler(cfg, pad_id=0)
  cached = median_seconds(
      lambda i: sampler.generate(params, prompts, args.group, jax.random.key(i, impl="rbg"),
                                 sp).tokens, args.repeats)

  tokens, mask = sampling.left_pad([p for p in prompts for _ in range(args.group)],
                                   args.prompt_len, 0)
  naive_fn = jax.jit(functools.partial(naive_generate, cfg, sp))
  naive = median_seconds(
      lambda i: naive_fn(params, tokens, mask, jax.random.key(i, impl="rbg")), args.repeats)

  generated = args.rows * args.new
  print(f"model {cfg.num_params:,} params, {args.rows} rows ({prompts_n} prompts x "
        f"{args.group}), prompt {args.prompt_len}, {args.new} new tokens, "
        f"backend {jax.default_backend()}, median of {args.repeats}")
  print(f"  kv-cache sampler : {cached * 1e3:8.1f} ms  {generated / cached:10,.0f} tokens/s")
  print(f"  full recompute   : {naive * 1e3:8.1f} ms  {generated / naive:10,.0f} tokens/s")
  print(f"  speed-up         : {naive / cached:.2f}x")


if __name__ == "__main__":
  main()
