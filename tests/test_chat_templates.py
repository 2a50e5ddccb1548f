"""Checkpoint chat templates (`agpo_jax.tokenizers.ChatTemplate`), compared with `transformers`.

Each tokenizer directory is built here: a small byte-level BPE `tokenizer.json` trained on a
generated corpus, with the special tokens of its family, and a `tokenizer_config.json` holding
the official Qwen2.5-Instruct or Llama-3.1-Instruct chat template (written out below).
`transformers.AutoTokenizer` loads the same directory; the prompt token ids must be identical.
`transformers` is a test-only dependency: the comparisons are skipped without it.
"""

import datetime
import json
import pathlib
import random
import re

import pytest
from tokenizers import Tokenizer as HFRawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from agpo_jax import defaults
from agpo_jax import chat_render
from agpo_jax import tokenizers as tok_lib

# Qwen2.5-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct).
QWEN25_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user "
    "query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    "\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Llama-3.1-Instruct's chat template (tokenizer_config.json of meta-llama/Llama-3.1-8B-Instruct).
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_QWEN_ADDED = ["<tool_call>", "</tool_call>"]  # added but not special, as in Qwen2.5
_LLAMA_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
_WORDS = (
    "system user assistant tool the cat sat on a mat what is two plus three and four five "
    "Cutting Knowledge Date December Today Jul You are Qwen created by Alibaba Cloud helpful "
    "function name arguments parameters get weather city Paris"
).split()

SYSTEM = {"role": "system", "content": "Be brief. Answer in words."}
MULTI_TURN = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "  And 3+3, times ½? \n"},
]
# MULTI_TURN under Qwen2.5's template, with its default system turn.
QWEN_MULTI_TURN_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nFour."
    "<|im_end|>\n<|im_start|>user\n  And 3+3, times ½? \n<|im_end|>\n<|im_start|>assistant\n"
)
CONVERSATIONS = {
    "system_multi_turn": [SYSTEM, *MULTI_TURN],
    "no_system_multi_turn": MULTI_TURN,
    "single_user": [{"role": "user", "content": "the cat sat on a mat"}],
}
# A tool whose JSON schema has unsorted keys and characters Jinja's own `tojson` would escape.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city <b>now</b> & 'today', in °C.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def _write_json(path: pathlib.Path, obj) -> None:
  path.write_text(json.dumps(obj), encoding="utf-8")


def _train(special: list[str], added: list[str] = ()) -> HFRawTokenizer:
  """A 400-token byte-level BPE on a corpus of the templates' words, then `special` and `added`
  tokens appended (ids at the end of the vocabulary, like Qwen and Llama-3)."""
  rng = random.Random(0)
  corpus = [" ".join(rng.choice(_WORDS) for _ in range(10)) for _ in range(400)]
  raw = HFRawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
  )
  raw.train_from_iterator(corpus, trainer)
  raw.add_special_tokens(special)
  raw.add_tokens(list(added))
  return raw


def _qwen_dir(directory: pathlib.Path, chat_template=QWEN25_TEMPLATE) -> pathlib.Path:
  """A Qwen2.5-Instruct-like directory: no bos, eos <|im_end|>, pad <|endoftext|>."""
  raw = _train(_QWEN_SPECIAL, _QWEN_ADDED)
  raw.save(str(directory / "tokenizer.json"))
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>", "model_max_length": 32768,
  }
  if chat_template is not None:
    config["chat_template"] = chat_template
  _write_json(directory / "tokenizer_config.json", config)
  ids = [raw.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
  _write_json(directory / "generation_config.json", {"eos_token_id": ids, "pad_token_id": ids[1]})
  return directory


def _llama_dir(directory: pathlib.Path, chat_template=LLAMA31_TEMPLATE) -> pathlib.Path:
  """A Llama-3.1-Instruct-like directory: bos <|begin_of_text|> (its post-processor prepends it,
  as Llama-3's does), eos <|eot_id|>, no pad; three eos ids in generation_config.json."""
  raw = _train(_LLAMA_SPECIAL)
  bos = raw.token_to_id("<|begin_of_text|>")
  raw.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
      special_tokens=[("<|begin_of_text|>", bos)],
  )
  raw.save(str(directory / "tokenizer.json"))
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
      "eos_token": "<|eot_id|>", "model_max_length": 131072,
  }
  if chat_template is not None:
    config["chat_template"] = chat_template
  _write_json(directory / "tokenizer_config.json", config)
  eos = [raw.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
  _write_json(directory / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos})
  return directory


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> pathlib.Path:
  return _qwen_dir(tmp_path_factory.mktemp("qwen25"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> pathlib.Path:
  return _llama_dir(tmp_path_factory.mktemp("llama31"))


@pytest.fixture(scope="module")
def transformers():
  return pytest.importorskip("transformers")


def _hf_ids(transformers, directory: pathlib.Path, messages, **kwargs) -> list[int]:
  """transformers' prompt ids: `apply_chat_template(..., add_generation_prompt=True,
  tokenize=True)` (a BatchEncoding in transformers 5, a list before)."""
  hf = transformers.AutoTokenizer.from_pretrained(str(directory))
  out = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
  return list(out["input_ids"] if hasattr(out, "keys") else out)


def _hf_text(transformers, directory: pathlib.Path, messages, **kwargs) -> str:
  hf = transformers.AutoTokenizer.from_pretrained(str(directory))
  return hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


# ------------------------------------------------------------------ token-identical to transformers


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("family", ["qwen25", "llama31"])
def test_prompt_ids_equal_transformers(family, conversation, qwen_dir, llama_dir, transformers):
  directory = {"qwen25": qwen_dir, "llama31": llama_dir}[family]
  messages = CONVERSATIONS[conversation]
  tok = tok_lib.HFTokenizer(directory)
  assert tok.chat_template == "hf" and tok.jinja_chat_template is not None
  ids = chat_render.encode_chat(tok, messages)
  assert ids == _hf_ids(transformers, directory, messages)
  assert chat_render.render_tokenizer_chat(tok, messages) == _hf_text(transformers, directory, messages)
  # Chat markers are single ids, not spelled out in bytes.
  marker = {"qwen25": "<|im_start|>", "llama31": "<|start_header_id|>"}[family]
  assert tok.token_to_id(marker) in ids


def test_qwen_default_system_prompt_and_no_bos(qwen_dir):
  tok = tok_lib.HFTokenizer(qwen_dir)
  assert chat_render.render_tokenizer_chat(tok, MULTI_TURN) == QWEN_MULTI_TURN_PROMPT
  with_system = chat_render.render_tokenizer_chat(tok, [SYSTEM, *MULTI_TURN])
  assert tok_lib.QWEN_DEFAULT_SYSTEM_PROMPT not in with_system
  assert tok.bos_id is None


def test_llama_bos_once_header_ids_and_eot(llama_dir):
  tok = tok_lib.HFTokenizer(llama_dir)
  bos, header, eot = (tok.token_to_id(t) for t in
                      ("<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"))
  ids = chat_render.encode_chat(tok, [SYSTEM, *MULTI_TURN])
  # The template writes the BOS; the tokenizer's post-processor would add a second one.
  assert ids[0] == bos and ids.count(bos) == 1
  assert ids[1] == header and ids.count(header) == 5  # system, 3 turns, generation prompt
  assert ids.count(eot) == 4
  text = tok.decode(ids, skip_special=False)
  assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief." in text
  assert "And 3+3, times ½?<|eot_id|>" in text  # contents are trimmed


@pytest.mark.parametrize("family", ["qwen25", "llama31"])
def test_tools_branches_equal_transformers(family, qwen_dir, llama_dir, transformers):
  directory = {"qwen25": qwen_dir, "llama31": llama_dir}[family]
  call = {"type": "function",
          "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
  messages = [
      SYSTEM,
      {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": None, "tool_calls": [call]},
      {"role": "tool", "content": "{\"temp\": 21}"},
      {"role": "user", "content": "Thanks <3"},
  ]
  tok = tok_lib.HFTokenizer(directory)
  text = tok.jinja_chat_template.render(messages, tools=[WEATHER_TOOL])
  assert text == _hf_text(transformers, directory, messages, tools=[WEATHER_TOOL])
  ids = tok.encode(text)
  assert ids == _hf_ids(transformers, directory, messages, tools=[WEATHER_TOOL])
  # `tojson` is json.dumps: no HTML escaping, no key sorting, no ASCII escapes (Llama indents).
  indent = {"qwen25": None, "llama31": 4}[family]
  assert json.dumps(WEATHER_TOOL, ensure_ascii=False, indent=indent) in text


def test_jinja_globals_and_extensions_equal_transformers(llama_dir, transformers, tmp_path):
  """namespace, dict, loop controls, {% generation %}, tojson's arguments, strftime_now, the
  special-token variables and block whitespace control, rendered by both."""
  template = (
      "{%- set ns = namespace(count=0) %}"
      "{%- for m in messages %}{% if loop.index > 3 %}{% break %}{% endif %}"
      "{%- set ns.count = ns.count + 1 %}"
      "{%- if m.role == 'assistant' %}{% generation %}[{{ m.content }}]{% endgeneration %}"
      "{%- else %}{{ m.role }}:{{ m.content }};{% endif %}{% endfor %}\n"
      "{{ ns.count }} "
      "{{ dict(b=1, a=[2, 'é']) | tojson(sort_keys=true, separators=(',', ':')) }}\n"
      "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ add_generation_prompt }}|"
      "{{ tools is none }}|{{ strftime_now('%Y') }}\n"
      "    {% if add_generation_prompt %}<gen>{% endif %}\nend"  # lstrip_blocks, trim_blocks
  )
  directory = _llama_dir(tmp_path, chat_template=template)
  tok = tok_lib.HFTokenizer(directory)
  text = chat_render.render_tokenizer_chat(tok, [SYSTEM, *MULTI_TURN])
  assert text == _hf_text(transformers, directory, [SYSTEM, *MULTI_TURN])
  year = str(datetime.datetime.now().year)
  assert text == (
      "system:Be brief. Answer in words.;user:What is 2+2?;[Four.]"  # trim_blocks: no newline
      "3 {\"a\":[2,\"é\"],\"b\":1}\n"
      f"<|begin_of_text|>|<|eot_id|>||True|True|{year}\n<gen>end"
  )


def test_messages_reach_the_template_as_in_transformers(tmp_path, transformers):
  """Keys whose value is None are dropped; reasoning appears as `thinking` and
  `reasoning_content` too; the caller's messages are not modified."""
  template = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
  directory = _qwen_dir(tmp_path, chat_template=template)
  messages = [
      {"role": "user", "content": "hi", "name": None},
      {"role": "assistant", "content": None, "reasoning": "think"},
  ]
  tok = tok_lib.HFTokenizer(directory)
  text = chat_render.render_tokenizer_chat(tok, messages)
  assert text == _hf_text(transformers, directory, messages)
  assert text == (
      '{"role": "user", "content": "hi"}\n'
      '{"thinking": "think", "role": "assistant", "reasoning": "think", '
      '"reasoning_content": "think"}\n'
  )
  assert messages[0] == {"role": "user", "content": "hi", "name": None}


@pytest.mark.parametrize("added_tokens_decoder", [False, True])
def test_special_token_variables_as_transformers_reads_them(
    added_tokens_decoder, tmp_path, transformers
):
  """`special_tokens_map.json` (legacy) declares tokens only when `tokenizer_config.json` has no
  `added_tokens_decoder`; then it overrides tokenizer_config.json."""
  directory = _llama_dir(tmp_path, chat_template="{{ bos_token }}|{{ eos_token }}|{{ unk_token }}")
  config = json.loads((directory / "tokenizer_config.json").read_text())
  del config["bos_token"]
  if added_tokens_decoder:
    config["added_tokens_decoder"] = {}
  _write_json(directory / "tokenizer_config.json", config)
  _write_json(directory / "special_tokens_map.json",
              {"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|end_of_text|>"})
  tok = tok_lib.HFTokenizer(directory)
  text = chat_render.render_tokenizer_chat(tok, MULTI_TURN)
  assert text == _hf_text(transformers, directory, MULTI_TURN)
  assert text == ("|<|eot_id|>|" if added_tokens_decoder else "<|begin_of_text|>|<|end_of_text|>|")


def test_template_without_bos_gets_none_added(tmp_path, transformers):
  """Like apply_chat_template(tokenize=True), the rendered text is encoded without special
  tokens: a template that does not write the BOS gets none, even though the model has one."""
  template = "{% for m in messages %}{{ m.content }}{% endfor %}"
  directory = _llama_dir(tmp_path, chat_template=template)
  tok = tok_lib.HFTokenizer(directory)
  ids = chat_render.encode_chat(tok, MULTI_TURN)
  assert tok.bos_id is not None and tok.bos_id not in ids
  assert ids == _hf_ids(transformers, directory, MULTI_TURN)
  assert ids == tok.encode("What is 2+2?Four.  And 3+3, times ½? \n")


@pytest.mark.parametrize("layout", ["named_list", "jinja_file"])
def test_template_sources_as_transformers_reads_them(layout, tmp_path, transformers):
  """A list of named templates uses 'default'; `chat_template.jinja` overrides the config's."""
  default = "{% for m in messages %}<|im_start|>{{ m.role }}|{{ m.content }}{% endfor %}"
  other = "{{ raise_exception('not this one') }}"
  if layout == "named_list":
    directory = _qwen_dir(tmp_path, chat_template=[
        {"name": "tool_use", "template": other}, {"name": "default", "template": default}])
  else:
    directory = _qwen_dir(tmp_path, chat_template=other)
    (directory / "chat_template.jinja").write_text(default, encoding="utf-8")
  tok = tok_lib.HFTokenizer(directory)
  assert tok.chat_template == "hf"
  expected_origin = "chat_template.jinja" if layout == "jinja_file" else "entry 'default'"
  assert expected_origin in tok.jinja_chat_template.origin
  assert chat_render.render_tokenizer_chat(tok, MULTI_TURN) == (
      "<|im_start|>user|What is 2+2?<|im_start|>assistant|Four."
      "<|im_start|>user|  And 3+3, times ½? \n"
  )
  assert chat_render.encode_chat(tok, MULTI_TURN) == _hf_ids(transformers, directory, MULTI_TURN)


def test_named_templates_without_default_are_refused(tmp_path):
  directory = _qwen_dir(tmp_path, chat_template=[{"name": "tool_use", "template": "x"}])
  with pytest.raises(ValueError, match=r"\['tool_use'\] but none named 'default'"):
    tok_lib.HFTokenizer(directory)
  assert tok_lib.HFTokenizer(directory, chat_template="qwen").chat_template == "qwen"


# ------------------------------------------------------------------ choosing the template


def test_fallbacks_still_render_what_they_did(qwen_dir, llama_dir):
  """Forcing a hand-written template ignores the checkpoint's; the goldens are today's output."""
  qwen = tok_lib.HFTokenizer(qwen_dir, chat_template="qwen")
  assert qwen.chat_template == "qwen" and qwen.jinja_chat_template is None
  ids = chat_render.encode_chat(qwen, MULTI_TURN)
  assert qwen.decode(ids, skip_special=False) == QWEN_MULTI_TURN_PROMPT
  llama = tok_lib.HFTokenizer(llama_dir, chat_template="llama3")
  ids = chat_render.encode_chat(llama, [SYSTEM, *MULTI_TURN])
  assert ids.count(llama.bos_id) == 1
  assert llama.decode(ids, skip_special=False) == (
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief. Answer in words."
      "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3, times ½?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n"
  )
  plain = tok_lib.HFTokenizer(llama_dir, chat_template="plain")
  assert plain.decode(chat_render.encode_chat(plain, MULTI_TURN), skip_special=False) == (
      "<|begin_of_text|>What is 2+2?\n\nFour.\n\n  And 3+3, times ½? \n"
  )


def test_qwen_fallback_matches_the_official_template(qwen_dir, transformers):
  """For plain conversations the hand-written 'qwen' template is Qwen2.5's, token for token."""
  qwen = tok_lib.HFTokenizer(qwen_dir, chat_template="qwen")
  for messages in CONVERSATIONS.values():
    assert chat_render.encode_chat(qwen, messages) == _hf_ids(transformers, qwen_dir, messages)


def test_auto_falls_back_without_a_template_and_hf_requires_one(tmp_path):
  directory = _qwen_dir(tmp_path, chat_template=None)
  tok = tok_lib.HFTokenizer(directory)
  assert tok.chat_template == "qwen" and tok.jinja_chat_template is None
  with pytest.raises(ValueError, match=r"chat_template='hf'.*" + re.escape(str(directory))):
    tok_lib.HFTokenizer(directory, chat_template="hf")
  with pytest.raises(ValueError, match=r"chat_template='hf'.*char tokenizer"):
    tok_lib.CharTokenizer("0123456789", chat_template="hf")


def test_load_tokenizer_with_hf_template(qwen_dir):
  cfg = defaults.tokenizer_config()
  cfg.kind, cfg.path, cfg.chat_template = "hf", str(qwen_dir), "hf"
  tok = tok_lib.load_tokenizer(cfg)
  assert tok.chat_template == "hf" and isinstance(tok.jinja_chat_template, tok_lib.ChatTemplate)
  assert tok.jinja_chat_template.special_tokens == {
      "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
  cfg.chat_template = "qwen"
  assert tok_lib.load_tokenizer(cfg).jinja_chat_template is None


def test_render_chat_takes_a_chat_template_but_not_the_bare_name():
  template = tok_lib.ChatTemplate("{{ bos_token }}{{ messages[0].content | upper }}",
                                  special_tokens={"bos_token": "<s>"})
  assert chat_render.render_chat(template, [{"role": "user", "content": "hi"}]) == "<s>HI"
  with pytest.raises(ValueError, match="render_tokenizer_chat"):
    chat_render.render_chat("hf", [{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------ errors


def test_raise_exception_is_a_clear_error(llama_dir, transformers):
  """Llama-3.1's template refuses tools without a user message; both libraries raise."""
  tok = tok_lib.HFTokenizer(llama_dir)
  with pytest.raises(tok_lib.ChatTemplateError) as error:
    tok.jinja_chat_template.render([SYSTEM], tools=[WEATHER_TOOL])
  message = str(error.value)
  assert "refused the conversation: Cannot put tools in the first user message" in message
  line = next(i for i, text in enumerate(LLAMA31_TEMPLATE.splitlines(), 1)
              if "raise_exception(\"Cannot put tools" in text)
  assert str(llama_dir / "tokenizer_config.json") in message and f"template line {line})" in message
  hf = transformers.AutoTokenizer.from_pretrained(str(llama_dir))
  with pytest.raises(Exception, match="Cannot put tools in the first user message"):
    hf.apply_chat_template([SYSTEM], tools=[WEATHER_TOOL], tokenize=False)


def test_raise_exception_through_encode_chat(tmp_path):
  template = (
      "{% for m in messages %}\n"
      "{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}\n"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}\n"
      "{% endif %}{{ m.content }}{% endfor %}"
  )
  tok = tok_lib.HFTokenizer(_qwen_dir(tmp_path, chat_template=template))
  ids = chat_render.encode_chat(tok, MULTI_TURN)
  assert tok.decode(ids) == "What is 2+2?Four.  And 3+3, times ½? \n"
  with pytest.raises(tok_lib.ChatTemplateError,
                     match=r"key 'chat_template'\) \(template line 3\) refused the conversation: "
                           r"Conversation roles must alternate"):
    chat_render.encode_chat(tok, [SYSTEM, *MULTI_TURN])


def test_template_errors_name_the_file_and_line(tmp_path):
  directory = _qwen_dir(tmp_path, chat_template="{% for m in messages %}\n{{ m.content }\n")
  with pytest.raises(tok_lib.ChatTemplateError,
                     match=r"tokenizer_config\.json \(key 'chat_template'\) does not parse: "
                           r"template line 2"):
    tok_lib.HFTokenizer(directory)
  template = tok_lib.ChatTemplate("a\n{{ messages[0].content + 1 }}", origin="x.jinja")
  with pytest.raises(tok_lib.ChatTemplateError, match=r"x\.jinja failed \(template line 2\): "
                                                      r"TypeError"):
    template.render([{"role": "user", "content": "hi"}])
  with pytest.raises(ValueError, match="empty conversation"):
    template.render([])
  with pytest.raises(ValueError, match="message 0 needs a string 'role'"):
    template.render([{"content": "hi"}])
  (directory / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>",\n}')
  with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid JSON: line 2"):
    tok_lib.HFTokenizer(directory)


def test_sandbox_blocks_attribute_escapes():
  template = tok_lib.ChatTemplate("{{ messages.__class__.__mro__ }}")
  with pytest.raises(tok_lib.ChatTemplateError, match="SecurityError: access to attribute "
                                                      "'__class__' of 'list' object is unsafe"):
    template.render([{"role": "user", "content": "x"}])
  namespace = tok_lib.ChatTemplate("{% set ns = namespace(_x=1) %}{{ ns._x }}")
  with pytest.raises(tok_lib.ChatTemplateError, match="underscore"):
    namespace.render([{"role": "user", "content": "x"}])


# ------------------------------------------------------------------ stop ids


def test_generation_config_eos_ids_are_stop_ids(tmp_path):
  directory = _llama_dir(tmp_path)
  tok = tok_lib.HFTokenizer(directory)
  names = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")
  assert tok.stop_ids == tuple(tok.token_to_id(t) for t in names)
  # A single int, naming a token that is not a conventional terminator, also stops.
  python_tag = tok.token_to_id("<|python_tag|>")
  _write_json(directory / "generation_config.json", {"eos_token_id": python_tag})
  tok = tok_lib.HFTokenizer(directory)
  assert python_tag in tok.stop_ids and tok.eos_id == tok.token_to_id("<|eot_id|>")
  for bad, problem in ((10_000, "outside the tokenizer's vocabulary"), ("2", "an int or a list")):
    _write_json(directory / "generation_config.json", {"eos_token_id": [python_tag, bad]})
    with pytest.raises(ValueError, match=r"generation_config\.json: eos_token_id .*" + problem):
      tok_lib.HFTokenizer(directory)
