"""Tests for agpo_jax.tokenizers: the three tokenizers, chat templates and config loading.

The SentencePiece model and the HF tokenizer.json are trained here on a tiny generated corpus,
into temporary directories; nothing is downloaded.
"""

import json
import pathlib
import random
import re

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer as HFRawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from agpo_jax import defaults
from agpo_jax import chat_render
from agpo_jax import tokenizers as tok_lib

_WORDS = "the cat sat on a mat with one two three four five six seven apples and pears".split()
_CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_LLAMA3_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>",
]
_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


def _corpus(num_lines: int = 300) -> list[str]:
  rng = random.Random(0)
  return [" ".join(rng.choice(_WORDS) for _ in range(8)) for _ in range(num_lines)]


def _write_json(path: pathlib.Path, obj) -> None:
  path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture(scope="module")
def sp_model_path(tmp_path_factory) -> pathlib.Path:
  """A 320-piece BPE SentencePiece model with ChatML markers as user-defined symbols, no pad."""
  prefix = tmp_path_factory.mktemp("sp") / "tiny"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()),
      model_prefix=str(prefix),
      model_type="bpe",
      vocab_size=320,
      user_defined_symbols=["<|im_start|>", "<|im_end|>"],
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      minloglevel=2,
  )
  return prefix.with_suffix(".model")


def _train_hf_tokenizer(special_tokens: list[str]) -> HFRawTokenizer:
  """A byte-level BPE with `special_tokens` added after training (ids at the end, like Qwen)."""
  raw = HFRawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
  )
  raw.train_from_iterator(_corpus(), trainer)
  raw.add_special_tokens(special_tokens)
  return raw


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> pathlib.Path:
  """A Qwen2.5-Instruct-like directory: eos <|im_end|>, pad <|endoftext|>, no bos."""
  directory = tmp_path_factory.mktemp("qwen")
  _train_hf_tokenizer(_CHATML_TOKENS).save(str(directory / "tokenizer.json"))
  _write_json(directory / "tokenizer_config.json", {
      "bos_token": None,
      "eos_token": "<|im_end|>",
      "pad_token": {"content": "<|endoftext|>", "special": True},
  })
  return directory


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> pathlib.Path:
  """A Llama-3-Instruct-like directory: bos <|begin_of_text|>, eos <|eot_id|>, no pad."""
  directory = tmp_path_factory.mktemp("llama3")
  raw = _train_hf_tokenizer(_LLAMA3_TOKENS)
  raw.save(str(directory / "tokenizer.json"))
  _write_json(directory / "special_tokens_map.json", {
      "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
  })
  _write_json(directory / "generation_config.json", {
      "bos_token_id": raw.token_to_id("<|begin_of_text|>"),
      "eos_token_id": [raw.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
  })
  return directory


# ----------------------------------------------------------------------------- CharTokenizer


def test_char_ids_are_fixed():
  tok = tok_lib.CharTokenizer("0123456789*=")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.vocab_size == 15
  assert tok.stop_ids == (2,)
  assert tok.chat_template == "plain"
  assert tok.encode("37*42=") == [6, 10, 13, 7, 5, 14]
  assert tok.encode("37", add_bos=True) == [1, 6, 10]
  assert tok.id_to_token(14) == "=" and tok.token_to_id("*") == 13
  assert tok.token_to_id("<eos>") == 2 and tok.token_to_id("x") is None


def test_char_round_trip_and_special_tokens():
  tok = tok_lib.CharTokenizer("0123456789*=")
  text = "37*42=4551"
  ids = tok.encode(text, add_bos=True) + [tok.eos_id, tok.pad_id, tok.pad_id]
  assert tok.decode(ids) == text
  assert tok.decode(np.asarray(ids, dtype=np.int32)) == text
  assert tok.decode(ids, skip_special=False) == "<bos>" + text + "<eos><pad><pad>"


def test_char_unknown_character_names_it():
  tok = tok_lib.CharTokenizer("0123456789*=")
  with pytest.raises(ValueError, match=r"'\+'"):
    tok.encode("12+34=")


def test_char_words_are_single_tokens_and_other_text_is_spelled():
  tok = tok_lib.CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 |,", words=["red", "shoes"])
  # Ids: specials 0-2, the 39 characters 3-41, then the words in order.
  assert (tok.vocab_size, tok.token_to_id("red"), tok.token_to_id("shoes")) == (44, 42, 43)
  a, r = tok.token_to_id("a"), tok.token_to_id("r")
  # A word is a maximal run of [a-z0-9]: 'reds' and 'xred' are spelled, 'red' in 'red,' is not.
  ids = tok.encode("red shoes|reds,red")
  assert ids == [42, tok.token_to_id(" "), 43, tok.token_to_id("|"), r,
                 tok.token_to_id("e"), tok.token_to_id("d"), tok.token_to_id("s"),
                 tok.token_to_id(","), 42]
  for text in ("red shoes|reds,red", "xred", "", "a", "shoes shoes"):
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode("a", add_bos=True) == [tok.bos_id, a]
  assert tok.id_to_token(43) == "shoes"
  # Without words nothing changes: the same character ids.
  plain = tok_lib.CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 |,")
  assert plain.encode("red") == [r, tok.token_to_id("e"), tok.token_to_id("d")]
  for words, message in ((["Red"], "not runs of 2 or more"), (["r"], "not runs of 2 or more"),
                         (["red", "red"], "words repeat"), (["r d"], "not runs")):
    with pytest.raises(ValueError, match=message):
      tok_lib.CharTokenizer("abcdefghijklmnopqrstuvwxyz ", words=words)


def test_char_rejects_bad_alphabet_and_ids():
  with pytest.raises(ValueError, match="repeats"):
    tok_lib.CharTokenizer("0120")
  tok = tok_lib.CharTokenizer("01")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([3, 5])
  with pytest.raises(ValueError, match="1-D"):
    tok.decode(np.zeros((2, 2), dtype=np.int32))


# ----------------------------------------------------------------------------- chat templates


def test_render_qwen_golden():
  expected = (
      "<|im_start|>system\nBe brief.<|im_end|>\n"
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
      "<|im_start|>assistant\n4<|im_end|>\n"
      "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
      "<|im_start|>assistant\n"
  )
  assert chat_render.render_chat("qwen", _CHAT) == expected


def test_render_qwen_inserts_default_system_prompt():
  expected = (
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
      "<|im_end|>\n"
      "<|im_start|>user\nHi<|im_end|>\n"
  )
  messages = [{"role": "user", "content": "Hi"}]
  assert chat_render.render_chat("qwen", messages, add_generation_prompt=False) == expected


def test_render_llama3_golden():
  expected = (
      "<|begin_of_text|>"
      "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n"
  )
  assert chat_render.render_chat("llama3", _CHAT) == expected
  # Llama-3 trims each content and writes no default system turn.
  padded = [{"role": "user", "content": "  Hi \n"}]
  assert chat_render.render_chat("llama3", padded, add_generation_prompt=False) == (
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
  )


def test_render_plain_golden():
  expected = "Be brief.\n\nWhat is 2+2?\n\n4\n\nAnd 3+3?"
  assert chat_render.render_chat("plain", _CHAT) == expected
  assert chat_render.render_chat("plain", [{"role": "user", "content": "37*42="}]) == "37*42="


def test_render_rejects_unknown_template_and_role():
  with pytest.raises(ValueError, match="'chatml'.*qwen, llama3, plain"):
    chat_render.render_chat("chatml", _CHAT)
  with pytest.raises(ValueError, match="'tool'"):
    chat_render.render_chat("qwen", [{"role": "tool", "content": "x"}])


def test_explicit_template_needs_its_markers():
  with pytest.raises(ValueError, match="<\\|im_start\\|>"):
    tok_lib.CharTokenizer("0123456789", chat_template="qwen")
  with pytest.raises(ValueError, match="'chatml'"):
    tok_lib.CharTokenizer("0123456789", chat_template="chatml")


# ----------------------------------------------------------------------------- SentencePiece


def test_sentencepiece_special_ids_and_vocab(sp_model_path):
  tok = tok_lib.SentencePieceTokenizer(sp_model_path)
  im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
  assert tok.vocab_size == 320
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.pad_id == tok.eos_id  # trained without a pad id
  assert tok.stop_ids == (tok.eos_id, im_end)
  assert im_start is not None and tok.token_to_id("<|eot_id|>") is None
  assert tok.id_to_token(1) == "<s>"
  assert tok.chat_template == "qwen"
  assert isinstance(tok, tok_lib.Tokenizer)


@pytest.mark.parametrize("text", ["the cat sat on a mat", "two apples\nand Zürich 42 ×", ""])
def test_sentencepiece_round_trip(sp_model_path, text):
  tok = tok_lib.SentencePieceTokenizer(sp_model_path)
  ids = tok.encode(text, add_bos=True)
  assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
  assert tok.encode(text) == ids[1:]
  assert tok.decode(ids + [tok.eos_id]) == text
  assert tok.decode(ids + [tok.eos_id], skip_special=False) == "<s>" + text + "</s>"


def test_sentencepiece_encode_chat(sp_model_path):
  tok = tok_lib.SentencePieceTokenizer(sp_model_path)
  ids = chat_render.encode_chat(tok, _CHAT)
  im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
  assert ids[0] == tok.bos_id
  assert ids.count(im_start) == 5 and ids.count(im_end) == 4
  assert tok.decode(ids, skip_special=False) == "<s>" + chat_render.render_chat("qwen", _CHAT)
  # skip_special drops the chat markers as well as bos.
  assert "<|im_start|>" not in tok.decode(ids) and "What is 2+2?" in tok.decode(ids)


# ----------------------------------------------------------------------------- HF tokenizer.json


def test_hf_special_ids_from_config(qwen_dir):
  tok = tok_lib.HFTokenizer(qwen_dir)
  im_start, im_end, endoftext = (tok.token_to_id(t) for t in
                                 ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
  assert tok.vocab_size == 303 and im_end == 302
  assert tok.eos_id == im_end and tok.pad_id == endoftext and tok.bos_id is None
  assert tok.stop_ids == (im_end, endoftext)
  assert tok.chat_template == "qwen"
  assert isinstance(tok, tok_lib.Tokenizer)
  # Accepts the json file as well as its directory, reading the configs next to it.
  assert tok_lib.HFTokenizer(qwen_dir / "tokenizer.json").eos_id == im_end


def test_hf_special_tokens_encode_to_single_ids(qwen_dir):
  tok = tok_lib.HFTokenizer(qwen_dir)
  for token in _CHATML_TOKENS:
    assert tok.encode(token) == [tok.token_to_id(token)]
  assert tok.encode("<|im_start|>the cat")[0] == tok.token_to_id("<|im_start|>")


@pytest.mark.parametrize("text", ["the cat sat on a mat", "two apples\n\nand Zürich 42 ×", ""])
def test_hf_round_trip(qwen_dir, text):
  tok = tok_lib.HFTokenizer(qwen_dir)
  ids = tok.encode(text, add_bos=True)  # no bos: nothing is added
  assert tok.decode(np.asarray(ids + [tok.eos_id, tok.pad_id])) == text
  assert tok.decode(ids + [tok.eos_id], skip_special=False) == text + "<|im_end|>"


def test_hf_encode_chat_places_im_start(qwen_dir):
  tok = tok_lib.HFTokenizer(qwen_dir)
  im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
  messages = [{"role": "user", "content": "What is 2+2?"}]
  ids = chat_render.encode_chat(tok, messages)
  system = tok.encode("system\n" + tok_lib.QWEN_DEFAULT_SYSTEM_PROMPT)
  user = tok.encode("user\nWhat is 2+2?")
  newline, assistant = tok.encode("\n"), tok.encode("assistant\n")
  expected = ([im_start, *system, im_end, *newline, im_start, *user, im_end, *newline,
               im_start, *assistant])
  assert ids == expected
  starts = [i for i, t in enumerate(ids) if t == im_start]
  assert starts == [0, len(system) + 3, len(system) + len(user) + 6]


def test_hf_llama3_bos_once_and_stop_ids(llama3_dir):
  tok = tok_lib.HFTokenizer(llama3_dir)
  names = ("<|begin_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
  bos, eot, eom, end_of_text = (tok.token_to_id(t) for t in names)
  assert tok.chat_template == "llama3"
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bos, eot, eot)  # no pad token: pad = eos
  assert tok.stop_ids == (eot, end_of_text, eom)  # generation_config's eos ids all stop
  assert tok.encode("the cat", add_bos=True)[0] == bos
  ids = chat_render.encode_chat(tok, [{"role": "user", "content": "the cat"}])
  assert ids[0] == bos and ids.count(bos) == 1
  assert ids[1] == tok.token_to_id("<|start_header_id|>")
  assert ids[-1] != eot  # ends with the generation prompt, open for the assistant


def test_hf_bare_json_falls_back_to_conventional_eos(tmp_path):
  raw = _train_hf_tokenizer(_CHATML_TOKENS)
  raw.save(str(tmp_path / "tokenizer.json"))
  tok = tok_lib.HFTokenizer(tmp_path / "tokenizer.json")
  endoftext = tok.token_to_id("<|endoftext|>")
  assert tok.eos_id == endoftext and tok.pad_id == endoftext
  assert set(tok.stop_ids) == {endoftext, tok.token_to_id("<|im_end|>")}


def test_hf_generation_config_eos_and_pad(tmp_path):
  raw = _train_hf_tokenizer(_CHATML_TOKENS)
  raw.save(str(tmp_path / "tokenizer.json"))
  endoftext, im_end = raw.token_to_id("<|endoftext|>"), raw.token_to_id("<|im_end|>")
  # Qwen2.5-Instruct's generation_config.json; its bos is never prepended by Qwen.
  _write_json(tmp_path / "generation_config.json", {
      "bos_token_id": endoftext, "eos_token_id": [im_end, endoftext], "pad_token_id": endoftext,
  })
  tok = tok_lib.HFTokenizer(tmp_path)
  assert (tok.eos_id, tok.pad_id, tok.bos_id) == (im_end, endoftext, None)


def test_hf_declared_token_missing_from_vocab(tmp_path):
  _train_hf_tokenizer(_CHATML_TOKENS).save(str(tmp_path / "tokenizer.json"))
  _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "</s>"})
  with pytest.raises(ValueError, match="'</s>'"):
    tok_lib.HFTokenizer(tmp_path)


# ----------------------------------------------------------------------------- load_tokenizer


def test_load_char_from_default_config():
  tok = tok_lib.load_tokenizer(defaults.tokenizer_config())
  assert isinstance(tok, tok_lib.CharTokenizer)
  assert tok.encode("37*42=") == [6, 10, 13, 7, 5, 14]


def test_load_sentencepiece_from_config(sp_model_path):
  cfg = defaults.tokenizer_config()
  cfg.kind, cfg.path, cfg.chat_template = "sentencepiece", str(sp_model_path), "plain"
  tok = tok_lib.load_tokenizer(cfg)
  assert isinstance(tok, tok_lib.SentencePieceTokenizer)
  assert tok.chat_template == "plain" and tok.vocab_size == 320


def test_load_hf_from_config(qwen_dir):
  cfg = defaults.tokenizer_config()
  cfg.kind, cfg.path = "hf", str(qwen_dir)
  tok = tok_lib.load_tokenizer(cfg)
  assert isinstance(tok, tok_lib.HFTokenizer)
  assert tok.chat_template == "qwen" and tok.eos_id == tok.token_to_id("<|im_end|>")


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_load_missing_file_names_the_path(tmp_path, kind):
  cfg = defaults.tokenizer_config()
  cfg.kind, cfg.path = kind, str(tmp_path / "nowhere" / "tok.model")
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
    tok_lib.load_tokenizer(cfg)


def test_load_rejects_bad_config_values():
  cfg = defaults.tokenizer_config()
  cfg.kind = "bpe"
  with pytest.raises(ValueError, match="'bpe'.*char, sentencepiece, hf"):
    tok_lib.load_tokenizer(cfg)
  cfg.kind = "hf"
  with pytest.raises(ValueError, match="path"):
    tok_lib.load_tokenizer(cfg)
  cfg = defaults.tokenizer_config()
  cfg.chat_template = "alpaca"
  with pytest.raises(ValueError, match="'alpaca'"):
    tok_lib.load_tokenizer(cfg)
