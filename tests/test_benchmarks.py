"""Benchmark registry, JSONL loading (plain and gzipped), the shipped data, prompt messages, and
the TFDS route. AGPO_DATA_DIR is unset for every test: the repository's own copy is tested."""

import gzip
import importlib.util
import json
import pathlib

import pytest

from agpo_jax.tasks import benchmarks
from agpo_jax.tasks.benchmarks import (
    BENCHMARKS,
    MATH_INSTRUCTION,
    benchmark_names,
    build_math_messages,
    load_benchmark,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "benchmarks"
SHARED = REPO / ".." / "shared" / "data" / "benchmarks"

EXPECTED_COUNTS = {
    "math500": 500,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "minerva": 272,
    "olympiadbench": 674,
    "gsm8k": 1319,
    "gsm8k_train": 7473,
}


def test_registry_names():
  assert set(benchmark_names()) == set(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_every_benchmark_loads(name):
  problems = load_benchmark(name)
  assert len(problems) == EXPECTED_COUNTS[name] == BENCHMARKS[name].num_problems
  assert len({p.id for p in problems}) == len(problems)
  for problem in problems:
    assert problem.benchmark == name
    assert problem.question.strip() and problem.answer.strip()
    assert MATH_INSTRUCTION not in problem.question  # stripped; the prompt adds it once
    assert problem.reference.answer == problem.answer and problem.reference.kind == "math"
  if name.startswith("gsm8k"):
    assert all(p.answer.lstrip("-").replace(".", "", 1).isdigit() for p in problems)
    assert all(p.solution and "####" in p.solution for p in problems)


def test_field_mapping():
  (first,) = load_benchmark("math500")[:1]
  assert first.id == "math500/0"
  assert first.question.startswith("Convert the point $(0,3)$ in rectangular coordinates")
  assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
  gsm8k = load_benchmark("gsm8k")
  assert gsm8k[0].question.startswith("Janet")
  assert gsm8k[0].answer == "18"
  assert "2,125" not in {p.answer for p in gsm8k} and "2125" in {p.answer for p in gsm8k}


def test_math_messages():
  messages = build_math_messages("What is $1+1$?")
  assert messages == [{"role": "user", "content": "What is $1+1$?\n\n" + MATH_INSTRUCTION}]
  problem = load_benchmark("aime25")[0]
  assert problem.messages == build_math_messages(problem.question)
  with_system = build_math_messages("What is $1+1$?", system_prompt="Be brief.")
  assert with_system[0] == {"role": "system", "content": "Be brief."}
  assert with_system[1] == messages[0]
  # A question that already carries the instruction does not get it twice.
  already = build_math_messages("What is $1+1$?\n" + MATH_INSTRUCTION)
  assert already == messages


def test_benchmark_prompt_renders_with_qwen_template():
  chat_render = pytest.importorskip("agpo_jax.chat_render")
  problem = load_benchmark("aime24")[0]
  prompt = chat_render.render_chat("qwen", build_math_messages(problem.question))
  assert prompt.count(MATH_INSTRUCTION) == 1
  assert prompt.endswith(MATH_INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n")


def _write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_data_dir_argument_and_env_override(tmp_path, monkeypatch):
  _write_lines(tmp_path / "aime24.jsonl", [json.dumps({"problem": "1+1?", "answer": "2"})])
  assert [p.answer for p in load_benchmark("aime24", data_dir=tmp_path)] == ["2"]
  monkeypatch.setenv(benchmarks.DATA_DIR_ENV, str(tmp_path))
  assert [p.answer for p in load_benchmark("aime24")] == ["2"]


def test_default_search_path_is_relative_to_the_repo():
  searched = [p.resolve() for p in benchmarks.DEFAULT_DATA_DIRS]
  assert searched[0] == SHIPPED.resolve()  # the repository's copy first
  assert all(REPO.resolve() in p.parents for p in searched)  # nothing outside the repository


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_benchmarks_load_from_the_shipped_gzipped_copy(name):
  path = benchmarks.benchmark_path(name)
  assert path == SHIPPED.resolve() / (BENCHMARKS[name].filename + ".gz")
  assert not (SHIPPED / BENCHMARKS[name].filename).exists()  # one form per file: gzipped


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared reference copy here")
@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_shipped_copy_matches_the_shared_reference(name):
  filename = BENCHMARKS[name].filename
  shipped = gzip.decompress((SHIPPED / (filename + ".gz")).read_bytes())
  assert shipped == (SHARED / filename).read_bytes()


def _write_gzip_lines(path, lines):
  path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode("utf-8")))


def test_gzipped_file_reads_like_the_plain_one(tmp_path):
  lines = [json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) for i in range(3)]
  _write_gzip_lines(tmp_path / "aime24.jsonl.gz", lines)
  from_gzip = load_benchmark("aime24", data_dir=tmp_path)
  assert [(p.id, p.question, p.answer) for p in from_gzip] == [
      ("aime24/0", "0+1?", "1"), ("aime24/1", "1+1?", "2"), ("aime24/2", "2+1?", "3")]
  _write_lines(tmp_path / "aime24.jsonl", lines[:1])  # a plain file is preferred when both are
  assert [p.answer for p in load_benchmark("aime24", data_dir=tmp_path)] == ["1"]
  _write_gzip_lines(tmp_path / "gsm8k_test.jsonl.gz",
                    [json.dumps({"question": "q", "answer": "so\n#### 1,234"})])
  (gsm8k,) = load_benchmark("gsm8k", data_dir=tmp_path)
  assert gsm8k.answer == "1234" and gsm8k.solution == "so\n#### 1,234"


def test_bad_line_in_a_gzipped_file_names_file_and_line(tmp_path):
  path = tmp_path / "math500.jsonl.gz"
  good = json.dumps({"problem": "1+1?", "answer": "2"})
  _write_gzip_lines(path, [good, good, '{"problem": 3, "answer": "2"}'])
  with pytest.raises(ValueError, match="field 'problem' must be a string, got int 3") as error:
    load_benchmark("math500", data_dir=tmp_path)
  assert f"{path}:3:" in str(error.value)


def test_corrupt_gzip_names_the_file(tmp_path):
  path = tmp_path / "aime25.jsonl.gz"
  path.write_bytes(gzip.compress(b'{"problem": "1+1?", "answer": "2"}\n' * 50)[:-30])
  with pytest.raises(ValueError, match="unreadable gzip data") as error:
    load_benchmark("aime25", data_dir=tmp_path)
  assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"problem": "2+2?", "answer": ', "malformed JSON"),
        ('{"problem": "2+2?"}', r"missing field 'answer' \(has \['problem'\]\)"),
        ('{"problem": "2+2?", "answer": ""}', "field 'answer' is empty"),
        ('{"problem": "2+2?", "answer": "  "}', "field 'answer' is empty"),
        ('{"problem": "", "answer": "4"}', "field 'problem' is empty"),
        ('{"problem": "2+2?", "answer": null}', "field 'answer' must be a string or a number, "
         "got NoneType None"),
        ('{"problem": "2+2?", "answer": true}', "field 'answer' must be a string or a number"),
        ('["not", "an", "object"]', "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
  path = tmp_path / "math500.jsonl"
  good = json.dumps({"problem": "1+1?", "answer": "2"})
  _write_lines(path, [good, "", good, bad_line, good])
  with pytest.raises(ValueError, match=message) as error:
    load_benchmark("math500", data_dir=tmp_path)
  assert f"{path}:4:" in str(error.value)


def test_gsm8k_line_without_marker_names_the_line(tmp_path):
  line = json.dumps({"question": "q", "answer": "no marker"})
  _write_lines(tmp_path / "gsm8k_test.jsonl", [line])
  with pytest.raises(ValueError, match=r"gsm8k_test.jsonl:1: .*####"):
    load_benchmark("gsm8k", data_dir=tmp_path)


@pytest.mark.parametrize("solution", ["so\n####", "so\n####  ", "so\n#### five", "so\n#### 1,2x"])
def test_gsm8k_marker_without_a_number_names_the_line(tmp_path, solution):
  good = json.dumps({"question": "q", "answer": "so\n#### 7"})
  _write_lines(tmp_path / "gsm8k_test.jsonl", [good, json.dumps({"question": "q",
                                                                "answer": solution})])
  with pytest.raises(ValueError, match=r"gsm8k_test.jsonl:2: GSM8K solution has no number "
                     r"after its last '####'"):
    load_benchmark("gsm8k", data_dir=tmp_path)


def test_numeric_answers_are_read_as_their_string_form(tmp_path):
  lines = [json.dumps({"problem": "6*7?", "answer": 42}), json.dumps({"problem": "1/2?",
                                                                      "answer": 0.5}),
           json.dumps({"problem": "-3?", "answer": -3})]
  _write_lines(tmp_path / "amc2023.jsonl", lines)
  assert [p.answer for p in load_benchmark("amc23", data_dir=tmp_path)] == ["42", "0.5", "-3"]
  # GSM8K: a number where the solution would be is the final answer itself.
  _write_lines(tmp_path / "gsm8k_test.jsonl", [json.dumps({"question": "q", "answer": 18})])
  (problem,) = load_benchmark("gsm8k", data_dir=tmp_path)
  assert problem.answer == "18" and problem.solution is None


@pytest.mark.parametrize("content, what", [(b"", "an empty file"),
                                           (b"\n  \n\n", "only blank lines")])
def test_a_file_without_problems_is_an_error(tmp_path, content, what):
  path = tmp_path / "aime24.jsonl"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=f"no problems \\({what}\\)") as error:
    load_benchmark("aime24", data_dir=tmp_path)
  assert str(error.value).startswith(f"{path}: ")
  gzipped = tmp_path / "gz" / "aime24.jsonl.gz"
  gzipped.parent.mkdir()
  gzipped.write_bytes(gzip.compress(content))
  with pytest.raises(ValueError, match=f"{gzipped}: no problems"):
    load_benchmark("aime24", data_dir=gzipped.parent)


@pytest.mark.parametrize("gzipped", [False, True])
def test_invalid_utf8_names_file_and_line(tmp_path, gzipped):
  good = json.dumps({"problem": "1+1?", "answer": "2"}).encode()
  content = good + b"\n" + good + b'\n{"problem": "caf\xe9?", "answer": "2"}\n' + good + b"\n"
  path = tmp_path / ("math500.jsonl.gz" if gzipped else "math500.jsonl")
  path.write_bytes(gzip.compress(content) if gzipped else content)
  with pytest.raises(ValueError, match=r"not valid UTF-8 \(byte 0xe9") as error:
    load_benchmark("math500", data_dir=tmp_path)
  assert str(error.value).startswith(f"{path}:3: ")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
  path = tmp_path / "math500.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"problem": "1+1?", "answer": "2"}).encode())
  assert [p.answer for p in load_benchmark("math500", data_dir=tmp_path)] == ["2"]


def test_missing_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    load_benchmark("olympiadbench", data_dir=tmp_path)
  text = str(error.value)
  assert str(tmp_path / "olympiadbench.jsonl") in text
  assert str(tmp_path / "olympiadbench.jsonl.gz") in text
  assert benchmarks.DATA_DIR_ENV in text and "'problem' and 'answer'" in text


def test_unknown_benchmark():
  with pytest.raises(KeyError, match="math500"):
    load_benchmark("math5000")


# --------------------------------------------------------------------------------------------
# TFDS route, with a local builder: nothing here may download.
# --------------------------------------------------------------------------------------------

TFDS_MODULES = ("tensorflow_datasets", "array_record", "importlib_resources")
HAS_TFDS = all(importlib.util.find_spec(module) for module in TFDS_MODULES)


@pytest.mark.skipif(
    not HAS_TFDS,
    reason="optional extra: pip install tensorflow-datasets array_record importlib_resources",
)
def test_tfds_route_with_a_local_builder(tmp_path):
  import tensorflow_datasets as tfds

  class AgpoTinyMath(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"question": text, "answer": text})
      )

    def _split_generators(self, dl_manager):
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      yield 0, {"question": "What is 1+1?", "answer": "2"}
      yield 1, {"question": "Add 999 and 1.\n" + MATH_INSTRUCTION, "answer": "So 1000.\n#### 1,000"}

  AgpoTinyMath(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  problems = load_benchmark("tfds:agpo_tiny_math:test", data_dir=tmp_path)
  # TFDS stores examples in the order of their hashed keys.
  by_answer = {p.answer: p for p in problems}
  assert sorted(by_answer) == ["1000", "2"]
  assert by_answer["2"].question == "What is 1+1?" and by_answer["2"].solution is None
  assert by_answer["1000"].question == "Add 999 and 1."
  assert by_answer["1000"].solution == "So 1000.\n#### 1,000"
  assert sorted(p.id for p in problems) == ["agpo_tiny_math/test/0", "agpo_tiny_math/test/1"]
  with pytest.raises(FileNotFoundError, match="never downloads"):
    load_benchmark("tfds:agpo_tiny_math:train", data_dir=tmp_path)


def test_tfds_source_parsing():
  from agpo_jax.tasks.tfds_source import parse_tfds_source

  assert parse_tfds_source("tfds:gsm8k") == ("gsm8k", "test")
  assert parse_tfds_source("tfds:gsm8k:train") == ("gsm8k", "train")
  with pytest.raises(ValueError):
    parse_tfds_source("tfds:")
