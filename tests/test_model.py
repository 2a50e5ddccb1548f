"""The decoder against an independent NumPy implementation, and its structural promises."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agpo_jax.models import attention
from agpo_jax.models import transformer as T
from agpo_jax.defaults import model_config
from agpo_jax.models.config import PRESETS, ModelConfig, resolve_model_config

# Eager flax dispatch compiles op by op; one jit per config is much faster on CPU.
forward = jax.jit(T.forward, static_argnums=(0,))

# The rbg PRNG compiles several times faster on CPU than threefry (config.prng_impl).
KEY = jax.random.key(0, impl="rbg")

SMALL = ModelConfig(vocab_size=32, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=64, scan_layers=False)


def _np_rmsnorm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _np_rope(x, pos, cfg):
  """x [T, H, hd], pos [T]; written from the HF reference formula, not from our code."""
  hd = cfg.head_dim
  inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
  if cfg.rope_scaling_factor:
    wavelen = 2 * np.pi / inv
    low = cfg.rope_original_max_len / cfg.rope_low_freq_factor
    high = cfg.rope_original_max_len / cfg.rope_high_freq_factor
    new = []
    for f, w in zip(inv, wavelen):
      if w < high:
        new.append(f)
      elif w > low:
        new.append(f / cfg.rope_scaling_factor)
      else:
        s = (cfg.rope_original_max_len / w - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        new.append((1 - s) * f / cfg.rope_scaling_factor + s * f)
    inv = np.array(new)
  ang = pos[:, None] * inv[None]
  cos = np.cos(np.concatenate([ang, ang], -1))[:, None]
  sin = np.sin(np.concatenate([ang, ang], -1))[:, None]
  rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
  return x * cos + rot * sin


def numpy_forward(cfg, params, tokens):
  """Reference forward of one unpadded sequence `tokens [T]` -> logits [T, V] (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = p["embed"][tokens]
  t = len(tokens)
  pos = np.arange(t)
  if cfg.position == "learned":
    x = x + p["pos_embed"][pos]
  for i in range(cfg.num_layers):
    lp = p[f"layer_{i}"]
    a = lp["attn"]
    h = _np_rmsnorm(x, lp["attn_norm"]["scale"], cfg.rms_eps)
    q = np.einsum("td,dhk->thk", h, a["q_proj"])
    k = np.einsum("td,dhk->thk", h, a["k_proj"])
    v = np.einsum("td,dhk->thk", h, a["v_proj"])
    if cfg.qkv_bias:
      q, k, v = q + a["q_bias"], k + a["k_bias"], v + a["v_bias"]
    if cfg.qk_norm:
      q = _np_rmsnorm(q, a["q_norm"]["scale"], cfg.rms_eps)
      k = _np_rmsnorm(k, a["k_norm"]["scale"], cfg.rms_eps)
    if cfg.position == "rope":
      q, k = _np_rope(q, pos, cfg), _np_rope(k, pos, cfg)
    group = cfg.num_heads // cfg.num_kv_heads
    out = np.zeros_like(q)
    for head in range(cfg.num_heads):
      kv = head // group
      s = q[:, head] @ k[:, kv].T / np.sqrt(cfg.head_dim)
      s = np.where(np.tril(np.ones((t, t))) > 0, s, -np.inf)
      w = np.exp(s - s.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      out[:, head] = w @ v[:, kv]
    x = x + np.einsum("thk,hkd->td", out, a["o_proj"])
    m = lp["mlp"]
    h = _np_rmsnorm(x, lp["mlp_norm"]["scale"], cfg.rms_eps)
    g = h @ m["gate_proj"]
    x = x + ((g / (1 + np.exp(-g))) * (h @ m["up_proj"])) @ m["down_proj"]
  x = _np_rmsnorm(x, p["final_norm"]["scale"], cfg.rms_eps)
  head = p["embed"].T if cfg.tie_embeddings else p["lm_head"]
  return x @ head


def _randomise(params, seed=1):
  """Random values everywhere (biases and norm scales are 0 / 1 at init)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype), params)


VARIANTS = {
    "llama_untied": {},
    "qwen2_bias_tied": dict(qkv_bias=True, tie_embeddings=True),
    "qwen3_qknorm": dict(qk_norm=True, tie_embeddings=True, rope_theta=1e6),
    "llama31_rope_scaling": dict(rope_scaling_factor=8.0, rope_original_max_len=16,
                                 rope_theta=500.0),
    "mha": dict(num_kv_heads=4),
    "learned_positions": dict(position="learned"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_matches_numpy_reference(name):
  cfg = dataclasses.replace(SMALL, **VARIANTS[name])
  params = _randomise(T.init_params(cfg, KEY))
  tokens = np.array([3, 7, 1, 30, 12, 5, 9, 9, 2, 17])
  ours = forward(cfg, params, jnp.asarray(tokens)[None], jnp.arange(10)[None],
                   jnp.ones((1, 10), bool))[0][0]
  ref = numpy_forward(cfg, params, tokens)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4)


def _stack_layers(params, num_layers):
  """Unscanned params (layer_0, layer_1, ...) -> scanned params (layers: stacked leaves)."""
  layers = [params[f"layer_{i}"] for i in range(num_layers)]
  out = {k: v for k, v in params.items() if not k.startswith("layer_")}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


def test_scanned_layers_equal_unrolled_layers():
  cfg = dataclasses.replace(SMALL, qkv_bias=True)
  params = _randomise(T.init_params(cfg, KEY))
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  scanned = _stack_layers(params, cfg.num_layers)
  assert jax.tree.structure(scanned) == jax.tree.structure(
      T.abstract_params(scanned_cfg))
  tokens = jnp.array([[5, 6, 7, 8, 9]])
  args = (tokens, jnp.arange(5)[None], jnp.ones((1, 5), bool))
  np.testing.assert_allclose(forward(cfg, params, *args)[0],
                             forward(scanned_cfg, scanned, *args)[0], rtol=1e-5, atol=1e-5)


def test_remat_gives_same_loss_and_gradients():
  cfg = dataclasses.replace(SMALL, scan_layers=True)
  params = _randomise(T.init_params(cfg, KEY))
  tokens = jnp.array([[5, 6, 7, 8, 9, 1]])
  args = (tokens, jnp.arange(6)[None], jnp.ones((1, 6), bool))

  def loss(p, c):
    return jnp.mean(jax.nn.log_softmax(forward(c, p, *args)[0])[..., 3])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_plain = grad(params, cfg)
  g_remat = grad(params, dataclasses.replace(cfg, remat=True))
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan_layers,remat,position", [(True, False, "rope"),
                                                       (False, True, "rope"),
                                                       (True, False, "learned")],
                         ids=["scanned", "unrolled-remat", "learned-positions"])
def test_kv_cache_decoding_matches_full_forward_on_padded_batch(scan_layers, remat, position):
  """Prefill a left-padded batch, decode token by token, compare with uncached logits.

  Both layer loops (each carries the stacked cache and writes its layer's slot in place).
  Tolerance: 1e-5 absolute on float32 logits (only summation order differs).
  """
  cfg = dataclasses.replace(SMALL, qkv_bias=True, scan_layers=scan_layers, remat=remat,
                            position=position)
  params = _randomise(T.init_params(cfg, KEY))
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 32, n)) for n in (3, 7, 5)]
  continuations = [list(rng.integers(1, 32, 4)) for _ in prompts]
  width = 7
  tokens = np.zeros((3, width), np.int32)
  mask = np.zeros((3, width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    mask[i, width - len(p):] = True
  cache = T.KVCache.zeros(cfg, 3, width + 4)
  logits, cache = forward(cfg, params, jnp.asarray(tokens), T.positions_from_mask(mask),
                            jnp.asarray(mask), cache)
  cached = [np.asarray(logits[:, -1])]
  lens = mask.sum(1)
  for step in range(3):
    tok = jnp.asarray([[c[step]] for c in continuations])
    step_logits, cache = forward(cfg, params, tok, jnp.asarray(lens + step)[:, None],
                                   jnp.ones((3, 1), bool), cache)
    cached.append(np.asarray(step_logits[:, 0]))
  for i, (p, c) in enumerate(zip(prompts, continuations)):
    seq = jnp.asarray(p + c[:3])[None]
    full = forward(cfg, params, seq, jnp.arange(seq.shape[1])[None],
                     jnp.ones(seq.shape, bool))[0][0]
    for step in range(4):
      np.testing.assert_allclose(cached[step][i], full[len(p) - 1 + step], atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [1, 2])
def test_shared_prefix_attention_equals_each_row_with_its_own_copy(t):
  """`attend_cache` with a prefix shared by groups of 3 rows gives what the plain path gives
  over each row's own cache with its prompt's slots copied in front (one softmax over both),
  left padding and unwritten slots masked. Tolerance 1e-6 on float32 (summation order)."""
  rng = np.random.default_rng(0)
  prompts, group, kv, g, hd, p, s = 2, 3, 2, 2, 8, 5, 4
  b = prompts * group
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  q = normal(b, t, kv, g, hd)
  prefix_k, prefix_v = normal(prompts, kv, hd, p), normal(prompts, kv, p, hd)
  own_k, own_v = normal(b, kv, hd, s), normal(b, kv, s, hd)
  prefix_valid = jnp.asarray([[False, False, True, True, True], [False, True, True, True, True]])
  own_mask = jnp.asarray(rng.random((b, t, s)) < 0.6).at[:, :, 0].set(True)
  got = attention.attend_cache(q, own_k, own_v, own_mask, (prefix_k, prefix_v, prefix_valid))
  row_prompt = jnp.arange(b) // group
  flat_k = jnp.concatenate([prefix_k[row_prompt], own_k], axis=-1)
  flat_v = jnp.concatenate([prefix_v[row_prompt], own_v], axis=-2)
  flat_mask = jnp.concatenate(
      [jnp.broadcast_to(prefix_valid[row_prompt][:, None], (b, t, p)), own_mask], axis=-1)
  want = attention.attend_cache(q, flat_k, flat_v, flat_mask)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  # A different prompt's prefix changes the answer: the rows really read their own group's.
  swapped = attention.attend_cache(q, own_k, own_v, own_mask,
                                   (prefix_k[::-1], prefix_v[::-1], prefix_valid[::-1]))
  assert not np.allclose(swapped, want, atol=1e-3)


def test_bfloat16_compute_is_close_to_float32():
  cfg = dataclasses.replace(SMALL, scan_layers=True)
  params = T.init_params(cfg, KEY)
  args = (jnp.array([[1, 2, 3, 4]]), jnp.arange(4)[None], jnp.ones((1, 4), bool))
  full = forward(cfg, params, *args)[0]
  half = forward(dataclasses.replace(cfg, dtype="bfloat16"), params, *args)[0]
  assert half.dtype == jnp.float32  # logits are always float32
  np.testing.assert_allclose(full, half, atol=0.1)
  bf16_params = T.init_params(dataclasses.replace(cfg, param_dtype="bfloat16"), KEY)
  assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.bfloat16)}


# Published parameter counts (billions) of the real checkpoints these presets describe.
PUBLISHED = {"qwen2.5-math-1.5b": 1.54, "qwen2.5-math-7b": 7.62, "qwen3-4b": 4.02,
             "llama-3.1-8b": 8.03}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_have_published_sizes(preset):
  cfg = PRESETS[preset]
  abstract = T.abstract_params(cfg)  # no allocation
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  assert count == cfg.num_params
  assert abs(count / 1e9 - PUBLISHED[preset]) < 0.01


def test_every_parameter_declares_logical_axes():
  cfg = dataclasses.replace(SMALL, qkv_bias=True, qk_norm=True, scan_layers=True)
  axes = T.param_logical_axes(cfg)
  shapes = T.abstract_params(cfg)
  specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(specs) == len(jax.tree.leaves(shapes))
  for spec, shape in zip(specs, jax.tree.leaves(shapes)):
    assert len(spec) == len(shape.shape) and all(isinstance(a, str) for a in spec)
  assert tuple(axes["layers"]["attn"]["q_proj"]) == ("layers", "embed", "q_heads", "head_dim")
  assert tuple(axes["embed"]) == ("vocab", "embed")


def test_model_config_overrides_and_errors():
  cfg = model_config("qwen2.5-math-7b")
  cfg.num_layers = 4
  resolved = resolve_model_config(cfg, tokenizer_vocab_size=151_665)
  assert resolved.num_layers == 4 and resolved.d_model == 3584
  assert resolved.vocab_size == 152_064  # the checkpoint's padded vocabulary wins
  assert resolve_model_config(model_config("testbed"), tokenizer_vocab_size=40).vocab_size == 40
  with pytest.raises(ValueError, match="model.preset='nope'"):
    resolve_model_config(model_config("nope"))
  bad = model_config("testbed")
  bad.num_kv_heads = 3
  with pytest.raises(ValueError, match="num_kv_heads"):
    resolve_model_config(bad)


def test_learned_positions_are_in_the_checkpoint_signature_and_not_exportable():
  from agpo_jax.models import hf  # noqa: PLC0415

  learned = dataclasses.replace(SMALL, position="learned")
  assert T.init_params(learned, KEY)["pos_embed"].shape == (64, 32)
  assert learned.num_params == SMALL.num_params + 64 * 32 == sum(
      x.size for x in jax.tree.leaves(T.init_params(learned, KEY)))
  # The table's rows are max_seq_len: part of the signature for learned positions only.
  assert learned.checkpoint_signature() != dataclasses.replace(
      learned, max_seq_len=128).checkpoint_signature()
  assert SMALL.checkpoint_signature() == dataclasses.replace(
      SMALL, max_seq_len=128).checkpoint_signature()
  assert "position" not in SMALL.checkpoint_signature()  # rope checkpoints of old still match
  assert learned.checkpoint_signature()["position"] == "learned"
  with pytest.raises(ValueError, match="model.position='learned' has no Hugging Face family"):
    hf.hf_model_type(learned)
  with pytest.raises(ValueError, match="model.position='absolute'"):
    dataclasses.replace(SMALL, position="absolute")


@pytest.mark.parametrize("impl", ["dot_product_attention", "splash", "cudnn"])
def test_attention_kernels_match_the_reference(impl):
  """Each `model.attention` kernel gives the reference path's logits and gradients on every
  real position of a left-padded, grouped-query batch (splash runs in Pallas' interpreter
  off TPU; cuDNN only on a GPU)."""
  if impl == "cudnn" and jax.default_backend() != "gpu":
    pytest.skip("cuDNN attention needs a GPU")
  cfg = dataclasses.replace(PRESETS["testbed"], vocab_size=32, num_kv_heads=2, position="rope",
                            )
  params = T.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, 32, (3, 20)), jnp.int32)
  mask = jnp.asarray(np.arange(20)[None] >= np.array([[0], [5], [12]]))
  positions = T.positions_from_mask(mask)
  kernel_cfg = dataclasses.replace(cfg, attention=impl)

  def loss(p, c):
    logits, _ = T.forward(c, p, tokens, positions, mask)
    return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0)), logits

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, ref), ref_grads = grad_fn(params, cfg)
  (_, got), grads = grad_fn(params, kernel_cfg)
  assert float(jnp.max(jnp.abs(ref))) > 0.1
  np.testing.assert_allclose(np.where(mask[..., None], got, 0), np.where(mask[..., None], ref, 0),
                             atol=2e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, atol=2e-4, rtol=2e-4)


def test_unknown_attention_kernel_is_rejected():
  with pytest.raises(ValueError, match="model.attention='flash'"):
    dataclasses.replace(PRESETS["testbed"], attention="flash")
