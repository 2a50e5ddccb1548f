"""Hugging Face safetensors checkpoints: import, export and parity with `transformers`.

Tiny random Qwen2 (QKV bias, tied embeddings), Qwen3 (QK-norm, head_dim != d / heads) and
Llama-3 (GQA, 'llama3' rope scaling, untied) models are built with `transformers` itself, so the
reference is an independent implementation: our logits and greedy generations must match
theirs, our export must load in `transformers` and give the same logits, and its tensors must
be the tensors we read. The multi-device import runs in a subprocess with 8 fake CPU devices.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from agpo_jax import sampling  # noqa: E402
from agpo_jax.models import hf, transformer  # noqa: E402
from tests import fake_devices  # noqa: E402

VOCAB, D, LAYERS, HEADS, KV_HEADS, MLP = 300, 64, 2, 4, 2, 128
LOGIT_ATOL = 1e-4
_COMMON = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=MLP, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, bos_token_id=None,
               eos_token_id=None, pad_token_id=None)
FAMILIES = {
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, tie_word_embeddings=True,
                                              max_position_embeddings=512),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=32, tie_word_embeddings=False,
                                              rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                                              max_position_embeddings=1024),
    "llama": lambda: transformers.LlamaConfig(
        **_COMMON, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10_000.0,
        max_position_embeddings=2048,
        # original_max_position_embeddings 64 with head_dim 16: the 8 frequencies fall in
        # all three bands (kept, smoothed, divided by the factor).
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
}
MODEL_CLASSES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "llama": "LlamaForCausalLM"}
# What each family's ModelConfig must be, written out from the configs above.
EXPECTED = {
    "qwen2": dict(head_dim=16, qkv_bias=True, qk_norm=False, tie_embeddings=True,
                  rope_theta=10_000.0, rope_scaling_factor=0.0, rms_eps=1e-6, max_seq_len=512),
    "qwen3": dict(head_dim=32, qkv_bias=False, qk_norm=True, tie_embeddings=False,
                  rope_theta=1_000_000.0, rope_scaling_factor=0.0, rms_eps=1e-6,
                  max_seq_len=1024),
    "llama": dict(head_dim=16, qkv_bias=False, qk_norm=False, tie_embeddings=False,
                  rope_theta=10_000.0, rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                  rope_high_freq_factor=4.0, rope_original_max_len=64, rms_eps=1e-5,
                  max_seq_len=2048),
}


@dataclasses.dataclass
class Reference:
  """A transformers model and its checkpoint, saved whole and sharded."""
  model: object
  single: pathlib.Path
  sharded: pathlib.Path


def _build(family: str, root: pathlib.Path) -> Reference:
  torch.manual_seed({"qwen2": 0, "qwen3": 1, "llama": 2}[family])
  model = getattr(transformers, MODEL_CLASSES[family])(FAMILIES[family]()).eval()
  # HF initialises norms to 1 and biases to 0: randomise everything, so that a swapped or
  # dropped tensor changes the logits.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0.0, 0.5 if "embed" in name else 0.15)
  single, sharded = root / f"{family}_single", root / f"{family}_sharded"
  model.save_pretrained(single, safe_serialization=True)
  model.save_pretrained(sharded, safe_serialization=True, max_shard_size="50KB")
  return Reference(model, single, sharded)


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict[str, Reference]:
  root = tmp_path_factory.mktemp("hf")
  return {family: _build(family, root) for family in FAMILIES}


@pytest.fixture(scope="module")
def imported(refs):
  """Our import of each single-file checkpoint: (ModelConfig, params)."""
  return {family: hf.load_hf_checkpoint(ref.single) for family, ref in refs.items()}


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  return ([p for p, _ in la] == [p for p, _ in lb]
          and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
                  for (_, x), (_, y) in zip(la, lb)))


def _torch_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    if mask is None:
      return model(torch.tensor(tokens)).logits.numpy()
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    return model(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                 position_ids=torch.tensor(positions)).logits.numpy()


def _our_logits(cfg, params, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  mask = jnp.asarray(mask, bool)
  logits, _ = transformer.forward(cfg, params, jnp.asarray(tokens, jnp.int32),
                                  transformer.positions_from_mask(mask), mask)
  return np.asarray(logits)


# --------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("family", FAMILIES)
def test_config_from_hf(family, refs, imported):
  cfg, _ = imported[family]
  expected = dict(vocab_size=VOCAB, num_layers=LAYERS, d_model=D, num_heads=HEADS,
                  num_kv_heads=KV_HEADS, mlp_dim=MLP, param_dtype="float32", scan_layers=True,
                  **EXPECTED[family])
  assert {k: getattr(cfg, k) for k in expected} == expected
  # The config we write reads back as the same architecture, and transformers agrees.
  written = hf.hf_config_from_model_config(cfg)
  assert hf.model_config_from_hf(written) == cfg
  theirs = transformers.AutoConfig.for_model(**written)
  assert type(theirs).__name__ == type(refs[family].model.config).__name__
  assert theirs.head_dim == cfg.head_dim


def test_config_options():
  config = hf.hf_config_from_model_config(
      transformer.ModelConfig(vocab_size=32, num_layers=2, d_model=16, num_heads=2,
                              num_kv_heads=1, head_dim=8, mlp_dim=32, qkv_bias=True))
  assert config["model_type"] == "qwen2"
  config.update(torch_dtype="bfloat16", head_dim=None, num_key_value_heads=None)
  cfg = hf.model_config_from_hf(config, use_config_dtype=True, scan_layers=False, remat=True)
  assert (cfg.param_dtype, cfg.head_dim, cfg.num_kv_heads, cfg.scan_layers, cfg.remat) == (
      "bfloat16", 8, 2, False, True)
  assert hf.model_config_from_hf(config).param_dtype == "float32"
  # transformers 5 spelling: rope_parameters and dtype.
  new = dict(config, model_type="llama", rope_theta=None, rope_scaling=None, torch_dtype=None,
             dtype="float16", rope_parameters={"rope_type": "llama3", "rope_theta": 5e5,
                                               "factor": 32.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 8192})
  cfg = hf.model_config_from_hf(new, use_config_dtype=True)
  assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_original_max_len, cfg.qkv_bias,
          cfg.param_dtype) == (5e5, 32.0, 8192, False, "float16")
  # Qwen2.5's shipped config: a sliding window that is configured but not in use.
  shipped = dict(config, use_sliding_window=False, sliding_window=4096, max_window_layers=21)
  assert hf.model_config_from_hf(shipped).qkv_bias


@pytest.mark.parametrize("change, names", [
    (dict(model_type="mistral"), "model_type"),
    (dict(model_type="qwen3_moe"), "model_type"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling.rope_type"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=64, max_window_layers=0),
     "use_sliding_window"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "layer_types"),
    (dict(hidden_size=None), "hidden_size"),
])
def test_config_rejects(change, names):
  config = hf.hf_config_from_model_config(
      transformer.ModelConfig(vocab_size=32, num_layers=2, d_model=16, num_heads=2,
                              num_kv_heads=1, head_dim=8, mlp_dim=32))
  config.update(change)
  with pytest.raises(ValueError, match=names) as e:
    hf.model_config_from_hf(config, source="/ckpt/config.json")
  assert "/ckpt/config.json" in str(e.value)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family, refs, imported):
  cfg, params = imported[family]
  _, sharded_params = hf.load_hf_checkpoint(refs[family].sharded)
  assert len(list(refs[family].sharded.glob("*.safetensors"))) > 1
  assert _leaves_equal(params, sharded_params)

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, (4, 16))
  pads = np.array([0, 5, 11, 0])
  mask = np.arange(16)[None, :] >= pads[:, None]
  tokens = np.where(mask, tokens, 0)
  ours = _our_logits(cfg, params, tokens, mask)
  theirs = _torch_logits(refs[family].model, tokens, mask)
  assert np.abs(theirs[mask]).max() > 1.0  # logits large enough for the tolerance to mean it
  assert np.abs(ours[mask] - theirs[mask]).max() < LOGIT_ATOL
  unpadded = pads == 0
  plain = _torch_logits(refs[family].model, tokens[unpadded])
  assert np.abs(ours[unpadded] - plain).max() < LOGIT_ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers(family, refs, imported):
  cfg, params = imported[family]
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, VOCAB, n).tolist() for n in (5, 9, 3)]
  sampler = sampling.Sampler(cfg, pad_id=0)
  rollout = sampler.generate(params, prompts, 1, jax.random.key(0),
                             sampling.SamplingParams(temperature=0.0, max_new_tokens=32))
  ours = np.asarray(rollout.tokens)
  assert (np.asarray(rollout.lengths) == 32).all()
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      out = refs[family].model.generate(
          torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
          do_sample=False, max_new_tokens=32, min_new_tokens=32, eos_token_id=None,
          pad_token_id=0)
    theirs = out[0, len(prompt):].numpy()
    assert theirs.tolist() == ours[row].tolist(), f"{family} prompt {row}"


# --------------------------------------------------------------------------- export


def _tokenizer_dir(root: pathlib.Path) -> pathlib.Path:
  import tokenizers  # noqa: PLC0415
  root.mkdir()
  vocab = {f"w{i}": i for i in range(VOCAB)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(root / "tokenizer.json"))
  (root / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0"}))
  (root / "generation_config.json").write_text(json.dumps({"do_sample": False}))
  return root


def _all_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  out = {}
  for path in sorted(directory.glob("*.safetensors")):
    out.update(load_file(str(path)))
  return out


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip(family, refs, imported, tmp_path):
  cfg, params = imported[family]
  shard = 40_000 if family == "llama" else 5 * 2**30
  out = hf.save_hf_checkpoint(tmp_path / "export", cfg, params, max_shard_bytes=shard,
                              tokenizer_dir=_tokenizer_dir(tmp_path / "tok"),
                              extra_config={"eos_token_id": 7})
  assert (out / hf.INDEX_FILE).exists() == (family == "llama")
  # Same tensors as the checkpoint transformers wrote, bit for bit.
  original, exported = _all_tensors(refs[family].single), _all_tensors(out)
  assert sorted(original) == sorted(exported)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
  # Import -> export -> import is the identity.
  cfg2, params2 = hf.load_hf_checkpoint(out)
  assert cfg2 == cfg and _leaves_equal(params, params2)
  # transformers loads the export and computes the same logits as the original model.
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert (out / name).read_bytes() == (tmp_path / "tok" / name).read_bytes()
  assert json.loads((out / "config.json").read_text())["eos_token_id"] == 7
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(reloaded).__name__ == MODEL_CLASSES[family]
  tokens = np.random.default_rng(2).integers(0, VOCAB, (2, 10))
  np.testing.assert_array_equal(_torch_logits(reloaded, tokens),
                                _torch_logits(refs[family].model, tokens))
  assert transformers.PreTrainedTokenizerFast.from_pretrained(out).encode("w5 w17") == [5, 17]


def test_unscanned_layers_and_dtype(refs, imported, tmp_path):
  cfg, params = imported["qwen3"]
  flat_cfg = dataclasses.replace(cfg, scan_layers=False)
  got_cfg, flat = hf.load_hf_checkpoint(refs["qwen3"].sharded, model_cfg=flat_cfg)
  assert got_cfg == flat_cfg
  assert jax.tree.structure(flat) == jax.tree.structure(transformer.abstract_params(flat_cfg))
  for i in range(LAYERS):
    assert _leaves_equal(flat[f"layer_{i}"], jax.tree.map(lambda x: x[i], params["layers"]))
  hf.save_hf_checkpoint(tmp_path / "flat", flat_cfg, flat)
  original, exported = _all_tensors(refs["qwen3"].single), _all_tensors(tmp_path / "flat")
  assert all(np.array_equal(exported[n], v) for n, v in original.items())

  bf16_cfg, bf16 = hf.load_hf_checkpoint(refs["qwen3"].single, dtype="bfloat16")
  assert bf16_cfg.param_dtype == "bfloat16"
  assert _leaves_equal(bf16, jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), params))
  # A bfloat16 export stores bfloat16 tensors and says so.
  hf.save_hf_checkpoint(tmp_path / "bf16", bf16_cfg, bf16)
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  assert all(v.dtype == jnp.bfloat16 for v in _all_tensors(tmp_path / "bf16").values())


# --------------------------------------------------------------------------- bad checkpoints


def _edited(ref: Reference, root: pathlib.Path, edit) -> pathlib.Path:
  root.mkdir()
  shutil.copy(ref.single / "config.json", root / "config.json")
  tensors = load_file(str(ref.single / hf.SAFETENSORS_FILE))
  edit(tensors)
  save_file(tensors, str(root / hf.SAFETENSORS_FILE), metadata={"format": "pt"})
  return root


def test_checkpoint_errors_name_the_tensor(refs, tmp_path):
  ref = refs["llama"]
  name = "model.layers.1.mlp.up_proj.weight"
  missing = _edited(ref, tmp_path / "missing", lambda t: t.pop(name))
  with pytest.raises(ValueError, match=f"missing tensor.*{name}"):
    hf.load_hf_checkpoint(missing)

  def reshape(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, D), np.float32)
  wrong = _edited(ref, tmp_path / "shape", reshape)
  with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*"
                                       r"model\.safetensors.*\(16, 64\).*\(32, 64\)"):
    hf.load_hf_checkpoint(wrong)

  extra = "model.layers.0.self_attn.extra.weight"
  unknown = _edited(ref, tmp_path / "unknown",
                    lambda t: t.update({extra: np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match=f"unknown tensor '{extra}' in .*unknown/model.safetensors"):
    hf.load_hf_checkpoint(unknown)

  # Rotary buffers are not parameters: ignored.
  buffers = _edited(ref, tmp_path / "buffers", lambda t: t.update(
      {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
  assert _leaves_equal(hf.load_hf_checkpoint(buffers)[1], hf.load_hf_checkpoint(ref.single)[1])

  config = json.loads((ref.single / "config.json").read_text())
  (tmp_path / "mistral").mkdir()
  (tmp_path / "mistral" / "config.json").write_text(json.dumps(dict(config,
                                                                    model_type="mistral")))
  with pytest.raises(ValueError, match="mistral/config.json: model_type='mistral'"):
    hf.load_hf_checkpoint(tmp_path / "mistral")

  cfg = hf.model_config_from_hf(config)
  with pytest.raises(ValueError, match="model.mlp_dim: given 256"):
    hf.load_hf_checkpoint(ref.single, model_cfg=dataclasses.replace(cfg, mlp_dim=256))


# --------------------------------------------------------------------------- sharded import


_SHARDED_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax
    import numpy as np
    from agpo_jax.models import hf
    from agpo_jax.sharding import rules

    directory = sys.argv[1]
    cfg, plain = hf.load_hf_checkpoint(directory)
    mesh = rules.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    expected = rules.param_shardings(cfg, mesh)
    _, sharded = hf.load_hf_checkpoint(directory, shardings=expected)
    flat = jax.tree_util.tree_flatten_with_path(sharded)[0]
    out = {"devices": jax.device_count(), "leaves": {}}
    for (path, leaf), want, ref in zip(flat, jax.tree.leaves(expected), jax.tree.leaves(plain)):
      out["leaves"][jax.tree_util.keystr(path)] = {
          "same_sharding": leaf.sharding == want, "spec": list(leaf.sharding.spec),
          "equal": bool(np.array_equal(np.asarray(leaf), np.asarray(ref))),
          "split": leaf.addressable_shards[0].data.shape != leaf.shape}
    print("RESULT " + json.dumps(out))
""")


def test_sharded_import_places_each_leaf(refs, imported):
  out = fake_devices.run(_SHARDED_SCRIPT, str(refs["llama"].sharded), timeout=300)
  assert out["devices"] == 8
  leaves = out["leaves"]
  assert len(leaves) == len(jax.tree.leaves(imported["llama"][1]))
  assert all(v["same_sharding"] and v["equal"] for v in leaves.values()), leaves
  # The rule table really splits them: embed over (vocab: tensor, embed: fsdp), q_proj over
  # (layers, embed: fsdp, q_heads: tensor, head_dim).
  assert leaves["['embed']"]["spec"] == ["tensor", "fsdp"]
  assert leaves["['layers']['attn']['q_proj']"]["spec"] == [None, "fsdp", "tensor", None]
  assert leaves["['layers']['attn']['q_proj']"]["split"]
