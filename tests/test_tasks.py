"""The task registry: the testbed and the math tasks through `make_task`, the shared `Problem`,
`PromptIterator`, `encode_prompt`, and the import structure of `agpo_jax.tasks`.

The math tasks read the benchmark files shipped in `<repo>/data/benchmarks` (AGPO_DATA_DIR is
unset for every test here).
"""

import ast
import gzip
import hashlib
import itertools
import json
import pathlib

import numpy as np
import pytest
from tokenizers import Tokenizer as HFRawTokenizer
from tokenizers import decoders, models, pre_tokenizers

import agpo_jax.tasks as tasks
from agpo_jax import configs
from agpo_jax import chat_render
from agpo_jax import tokenizers as tok_lib
from agpo_jax.tasks import (
    CountdownTask,
    MultiplicationTask,
    Problem,
    PromptIterator,
    encode_prompt,
    make_task,
    math_task_config,
    task_config,
)
from agpo_jax.tasks import benchmarks, math_format, testbed, tfds_source
from agpo_jax.tasks.math_format import MATH_INSTRUCTION, build_math_messages
from agpo_jax.verifiers.grades import Reference
from agpo_jax.verifiers.labels import grade_string
from tests.test_benchmarks import EXPECTED_COUNTS

REPO = pathlib.Path(__file__).resolve().parents[1]
# The registered counts of every evaluation benchmark (a math task each).
MATH_TASKS = {k: v for k, v in EXPECTED_COUNTS.items() if k != "gsm8k_train"}


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory) -> tok_lib.HFTokenizer:
  """A byte-level tokenizer (one token per byte, no merges) with Qwen's ChatML markers."""
  directory = tmp_path_factory.mktemp("chatml")
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  raw = HFRawTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  raw.decoder = decoders.ByteLevel()
  raw.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  raw.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
  tokenizer = tok_lib.HFTokenizer(directory)
  assert tokenizer.chat_template == "qwen"
  return tokenizer


# ------------------------------------------------------------------------------- the registry


def test_registry_names_every_task():
  assert tasks.task_names() == ["multiplication", "countdown", "arithmetic", "relevance",
                                *MATH_TASKS]
  assert set(tasks.TASKS) == {"multiplication", "countdown", "arithmetic", "relevance",
                              *MATH_TASKS}
  assert "gsm8k_train" not in tasks.TASKS  # a training set, not a task


def test_unknown_task_name_names_the_key_and_the_choices():
  cfg = tasks.testbed_config()
  cfg.name = "math5000"
  with pytest.raises(ValueError, match=r"config\.task\.name='math5000' is not one of") as error:
    make_task(cfg)
  assert isinstance(error.value, configs.ConfigError)
  for name in ["multiplication", "countdown", "arithmetic", "relevance", *MATH_TASKS]:
    assert repr(name) in str(error.value)
  with pytest.raises(ValueError, match=r"config\.task\.name='nope'"):
    task_config("nope")
  with pytest.raises(ValueError, match=r"config\.task\.name='multiplication'"):
    math_task_config("multiplication")


def test_task_config_gives_each_tasks_block():
  assert task_config("multiplication").to_dict() == tasks.testbed_config().to_dict()
  block = task_config("aime24")
  assert block.name == "aime24" and block.train_source == "gsm8k_train"
  assert block.data_dir is None and block.system_prompt is None and block.max_problems == 0
  block.data_dir = "/somewhere"  # placeholders take a string from a --config override
  block.system_prompt = "Be brief."


@pytest.mark.parametrize("name", sorted(MATH_TASKS))
def test_math_task_builds_from_its_name(name, chatml_tokenizer):
  task = make_task(math_task_config(name))
  assert isinstance(task, tasks.MathTask) and task.name == name
  test = task.split("test")
  assert len(test) == MATH_TASKS[name] == benchmarks.BENCHMARKS[name].num_problems
  assert task.split("heldout") is test
  assert all(p.benchmark == name and p.reference.kind == "math" for p in test)
  train = task.split("train")
  assert len(train) == 7473 and train[0].benchmark == "gsm8k_train"
  for split, problems in (("train", train), ("test", test)):
    order = PromptIterator(len(problems), batch_size=4, seed=0)
    batch = [problems[i] for i in order.next_indices()]
    assert len(batch) == 4 and order.state() == {"epoch": 0, "position": 4}
    for problem in batch:
      ids = encode_prompt(chatml_tokenizer, problem)
      assert ids and all(isinstance(i, int) and 0 <= i < chatml_tokenizer.vocab_size for i in ids)
      rendered = chat_render.render_chat("qwen", problem.messages)
      assert chatml_tokenizer.decode(ids, skip_special=False) == rendered, split
      assert ids.count(chatml_tokenizer.token_to_id("<|im_start|>")) == 3  # system, user, gen
      assert rendered.count(MATH_INSTRUCTION) == 1


def test_math_task_from_the_testbed_block_with_only_the_name_changed():
  cfg = tasks.testbed_config()  # what --config.task.name=math500 gives under configs/default.py
  cfg.name = "math500"
  task = make_task(cfg)
  assert task.train_source == "gsm8k_train" and task.data_dir is None
  assert len(task.split("heldout")) == 500


def test_other_benchmarks_are_splits_of_any_math_task():
  task = make_task(math_task_config("gsm8k"))
  assert [len(task.split(s)) for s in ("math500", "aime24", "gsm8k_train")] == [500, 30, 7473]
  assert task.split("aime24")[0].id == "aime24/0"
  with pytest.raises(ValueError, match=r"split 'aime2024' \(config\.eval\.split\)") as error:
    task.split("aime2024")
  assert "'aime24'" in str(error.value) and "tfds:" in str(error.value)


def test_math_task_options(tmp_path):
  cfg = math_task_config("aime25")
  cfg.system_prompt = "Be brief."
  cfg.max_problems = 3
  task = make_task(cfg)
  problems = task.split("test")
  assert [p.id for p in problems] == ["aime25/0", "aime25/1", "aime25/2"]
  assert problems[0].messages == build_math_messages(problems[0].question, "Be brief.")
  assert len(task.split("train")) == 3
  cfg.train_source = "aime24"
  assert make_task(cfg).split("train")[0].id == "aime24/0"
  cfg.data_dir = str(tmp_path)  # an explicit data_dir is the only place looked in
  (tmp_path / "aime24.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
  assert [p.answer for p in make_task(cfg).split("train")] == ["2"]
  with pytest.raises(FileNotFoundError, match="aime25.jsonl"):
    make_task(cfg).split("test")
  cfg.train_source = "gsm8k_training"
  with pytest.raises(ValueError, match=r"config\.task\.train_source='gsm8k_training'"):
    make_task(cfg)
  cfg.train_source, cfg.max_problems = "gsm8k_train", -1
  with pytest.raises(ValueError, match=r"config\.task\.max_problems=-1"):
    make_task(cfg)


# -------------------------------------------------------------------------------- the testbed

# Pinned against the testbed as it was before the task modules were reorganised: the prompt
# text, answers and order of these problems feed every number of the default run.
TESTBED_PINS = {
    "train": (7100, [("10*10", "0010"), ("10*12", "0210"), ("10*13", "0310")],
              "b3971028ef923fb844a4cadd7e48e0176cd404e8ab8c1685fe58d7f94bf6ef88"),
    "heldout": (1000, [("10*11", "0110"), ("10*22", "0220"), ("10*27", "0720")],
                "6c1270fb0e6e6157485b226618e483de335dfff2dca48e5fd33791622f468d42"),
}


@pytest.mark.parametrize("split", sorted(TESTBED_PINS))
def test_testbed_problems_are_unchanged(split):
  size, first, digest = TESTBED_PINS[split]
  problems = make_task(tasks.testbed_config()).split(split)
  assert len(problems) == size
  assert [(p.id, p.answer) for p in problems[:3]] == first
  assert all(p.prompt == p.id + "=" and p.messages is None for p in problems)
  assert all(p.reference == Reference(p.answer, kind="exact") for p in problems)
  text = "\n".join(f"{p.id}|{p.prompt}|{p.answer}" for p in problems)
  assert hashlib.sha256(text.encode()).hexdigest() == digest


def test_testbed_split_errors_and_prompt_encoding():
  task = make_task(tasks.testbed_config())
  assert isinstance(task, MultiplicationTask)
  with pytest.raises(ValueError, match=r"split 'test' \(config\.eval\.split\) is not one of"):
    task.split("test")
  tokenizer = tok_lib.CharTokenizer(MultiplicationTask.alphabet)
  problem = task.split("train")[0]
  assert encode_prompt(tokenizer, problem) == [tokenizer.bos_id, *tokenizer.encode("10*10=")]


# ------------------------------------------------------------------------------- arithmetic


def _python_value(expression: str) -> int:
  """The expression's value by Python's own parser and evaluator (an independent check)."""
  tree = ast.parse(expression, mode="eval")
  allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult)
  assert all(isinstance(node, allowed) for node in ast.walk(tree)), expression
  return eval(compile(tree, "<expression>", "eval"), {"__builtins__": {}})  # noqa: S307


@pytest.mark.parametrize("terms, ops", [(2, "+-"), (4, "+-*"), (3, "*")])
def test_arithmetic_answers_match_pythons_evaluation(terms, ops):
  cfg = task_config("arithmetic")
  cfg.update(dict(terms=terms, ops=ops, low=0, high=30, num_train=300, num_heldout=100))
  task = make_task(cfg)
  problems = task.split("train") + task.split("heldout")
  assert len(problems) == 400 and len({p.id for p in problems}) == 400
  for problem in problems:
    assert problem.answer == str(_python_value(problem.id))
    assert problem.prompt == f"What is {problem.id}?"
    assert problem.reference == Reference(problem.answer, kind="number")
    assert len(problem.id.split()) == 2 * terms - 1
    assert set(problem.id.split()[1::2]) <= set(ops)
  if ops == "+-*":  # precedence really exercised: some expressions differ left to right
    assert any(_python_value(p.id) != _left_to_right(p.id) for p in problems)


def _left_to_right(expression: str) -> int:
  parts = expression.split()
  value = int(parts[0])
  for op, operand in zip(parts[1::2], parts[2::2]):
    value = {"+": value + int(operand), "-": value - int(operand), "*": value * int(operand)}[op]
  return value


def test_arithmetic_split_is_by_problem_and_seeded(chatml_tokenizer):
  task = make_task(task_config("arithmetic"))
  train, heldout = task.split("train"), task.split("heldout")
  assert (len(train), len(heldout)) == (2000, 200)
  assert not {p.id for p in train} & {p.id for p in heldout}
  assert task.split("test") == heldout
  again = make_task(task_config("arithmetic"))
  assert [p.id for p in again.split("train")] == [p.id for p in train]
  other = task_config("arithmetic")
  other.seed = 1
  assert [p.id for p in make_task(other).split("heldout")] != [p.id for p in heldout]
  problem = heldout[0]
  assert problem.messages == [{"role": "user",
                               "content": f"{problem.prompt}\n\n{MATH_INSTRUCTION}"}]
  assert encode_prompt(chatml_tokenizer, problem) == chat_render.encode_chat(
      chatml_tokenizer, problem.messages)
  with pytest.raises(ValueError, match=r"split 'train2' \(config\.eval\.split\)"):
    task.split("train2")


def test_arithmetic_prompt_options_and_errors():
  cfg = task_config("arithmetic")
  cfg.instruction, cfg.system_prompt = "", "Be brief."
  problem = make_task(cfg).split("heldout")[0]
  assert problem.messages == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": problem.prompt}]
  for override, message in [
      (dict(ops="+/"), r"config\.task\.ops='\+/'"),
      (dict(terms=1), r"config\.task\.terms=1 must be >= 2"),
      (dict(low=5, high=4), r"config\.task\.low=5 and config\.task\.high=4"),
      (dict(low=1, high=9, num_train=100, num_heldout=10), r"more than half of the 162 distinct"),
  ]:
    bad = task_config("arithmetic")
    bad.update(override)
    with pytest.raises(configs.ConfigError, match=message):
      make_task(bad)


def test_prompt_iterator_order_and_state_are_unchanged():
  order = PromptIterator(7100, 5, seed=0)
  assert [order.next_indices().tolist() for _ in range(2)] == [
      [3168, 6752, 2371, 2481, 410], [2601, 3171, 2218, 6945, 6845]]
  assert order.state() == {"epoch": 0, "position": 10}
  small = PromptIterator(3, 5, seed=1)
  assert [small.next_indices().tolist() for _ in range(2)] == [[0, 1, 2, 2, 0], [1, 0, 1, 2, 0]]
  assert small.state() == {"epoch": 3, "position": 1}
  resumed = PromptIterator(3, 5, seed=1, state={"epoch": 1, "position": 2})
  replay = PromptIterator(3, 5, seed=1)
  replay.next_indices()
  assert np.array_equal(resumed.next_indices(), replay.next_indices())


# ------------------------------------------------------------------ one Problem, no import circle


def test_one_problem_type():
  assert testbed.Problem is benchmarks.Problem is tfds_source.Problem is Problem
  assert testbed.PromptIterator is PromptIterator  # agpo_jax.train imports it from testbed
  assert type(benchmarks.load_benchmark("aime24")[0]) is Problem
  assert type(make_task(tasks.testbed_config()).split("train")[0]) is Problem


def test_problem_fields():
  text = Problem("7*8", "7*8=", "65")
  assert text.reference.kind == "exact" and text.messages is None and text.question == "7*8="
  chat = math_format.math_problem("x/0", "What is $1+1$?\n" + MATH_INSTRUCTION, " 2 ", "x")
  assert chat.prompt == chat.question == "What is $1+1$?" and chat.answer == "2"
  assert chat.messages == build_math_messages("What is $1+1$?")
  assert chat.reference.kind == "math" and hash(chat) == hash(chat)  # frozen and hashable
  with pytest.raises(ValueError, match="reference_kind"):
    Problem("a", "b", "c", reference_kind="fuzzy")
  with pytest.raises(ValueError, match="chat role"):
    Problem.from_messages([{"role": "robot", "content": "hi"}], id="a", prompt="", answer="")


def _package_imports(path: pathlib.Path) -> set[str]:
  """Modules of agpo_jax.tasks that `path` imports at module level (not inside functions)."""
  found = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    else:
      continue
    found |= {n.split(".")[2] for n in names
              if n.startswith("agpo_jax.tasks.") and (REPO / "agpo_jax/tasks" /
                                                      (n.split(".")[2] + ".py")).is_file()}
  return found


def test_task_modules_import_without_a_circle():
  directory = REPO / "agpo_jax" / "tasks"
  graph = {p.stem: _package_imports(p) for p in directory.glob("*.py") if p.stem != "__init__"}
  assert "benchmarks" not in graph["tfds_source"]
  done, visiting = set(), []

  def visit(module):
    assert module not in visiting, f"import circle: {' -> '.join(visiting + [module])}"
    if module not in done:
      visiting.append(module)
      for imported in graph[module]:
        visit(imported)
      visiting.pop()
      done.add(module)

  for module in graph:
    visit(module)
  # No module imports another lazily (inside a function) either.
  for path in directory.glob("*.py"):
    nested = [n for n in ast.walk(ast.parse(path.read_text()))
              if isinstance(n, (ast.Import, ast.ImportFrom)) and n.col_offset > 0
              and "agpo_jax.tasks" in ast.unparse(n)]
    assert not nested, f"{path.name} imports inside a function: {ast.unparse(nested[0])}"



def test_math_task_trains_on_a_jsonl_file(tmp_path):
  path = tmp_path / "math_train.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write(json.dumps({"problem": "What is $1+1$?", "answer": "2"}) + "\n")
    f.write(json.dumps({"problem": "What is $2\\cdot 3$?", "answer": "6"}) + "\n")
  cfg = math_task_config("math500")
  cfg.train_source = str(path)
  task = make_task(cfg)
  train = task.split("train")
  assert [p.answer for p in train] == ["2", "6"]
  assert train[0].reference == Reference("2", "math")
  assert "What is $1+1$?" in train[0].messages[-1]["content"]
  cfg.train_source = str(tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match="config.task.train_source=.*missing.jsonl"):
    make_task(cfg)


# ------------------------------------------------------------------------------- countdown


def _countdown(**overrides):
  cfg = task_config("countdown")
  cfg.update(dict(num_train=300, num_heldout=100, **overrides))
  return make_task(cfg)


@pytest.mark.parametrize("numbers, ops", [(4, "+-*"), (3, "+-"), (3, "*")])
def test_countdown_gold_answers_solve_their_problems(numbers, ops):
  task = _countdown(numbers=numbers, ops=ops)
  problems = task.split("train") + task.split("heldout")
  assert len({p.id for p in problems}) == 400
  for problem in problems:
    given, target = problem.id.split(":")
    assert problem.prompt == problem.id + "=" and problem.reference_kind == "countdown"
    # The gold expression, evaluated by Python, reaches the target with the given numbers.
    assert _python_value(problem.answer) == int(target)
    gold_numbers = [int(x) for x in problem.answer.replace("-", " ").replace("+", " ")
                    .replace("*", " ").split()]
    assert sorted(gold_numbers) == sorted(int(x) for x in given.split(","))
    assert len(gold_numbers) == numbers and set(problem.answer) - set("0123456789") <= set(ops)
    assert set(problem.prompt + problem.answer) <= set(CountdownTask.alphabet)


def test_countdown_split_is_by_problem_and_seeded():
  task = _countdown()
  train, heldout = task.split("train"), task.split("heldout")
  assert (len(train), len(heldout)) == (300, 100)
  assert not {p.id for p in train} & {p.id for p in heldout}
  assert [p.id for p in _countdown().split("heldout")] == [p.id for p in heldout]
  assert [p.id for p in _countdown(seed=1).split("heldout")] != [p.id for p in heldout]
  with pytest.raises(ValueError, match=r"split 'test' \(config\.eval\.split\) is not one of"):
    task.split("test")
  for override, message in [(dict(numbers=6), r"config\.task\.numbers=6 must be in \[2, 5\]"),
                            (dict(ops="++"), r"config\.task\.ops='\+\+' must be distinct"),
                            (dict(low=1, high=2, numbers=2), r"could not draw that many")]:
    with pytest.raises(configs.ConfigError, match=message):
      _countdown(**override)


def test_countdown_uniform_guesser_by_brute_force():
  """The guess rate against every (order, operators) choice enumerated here and graded by
  the verifier; and pass@k of the uniform guesser from it."""
  task = _countdown()
  for problem in task.split("heldout")[:20]:
    given = [int(x) for x in problem.id.split(":")[0].split(",")]
    guesses = ["".join(f"{x}{o}" for x, o in zip(order, ops)) + str(order[-1])
               for order in itertools.permutations(given)
               for ops in itertools.product("+-*", repeat=3)]
    assert len(guesses) == 24 * 27
    hits = [grade_string(g, problem.answer, "countdown").reward for g in guesses]
    assert task.uniform_guess_rate(problem) == pytest.approx(np.mean(hits))
    assert problem.answer in [g for g, h in zip(guesses, hits) if h][:1]  # the first solution
  rates = np.array([task.uniform_guess_rate(p) for p in task.split("heldout")])
  rng = np.random.default_rng(0)
  simulated = (rng.random((len(rates), 4000, 8)) < rates[:, None, None]).any(-1).mean()
  assert simulated == pytest.approx(np.mean(1 - (1 - rates) ** 8), abs=0.01)


def test_countdown_grading():
  gold = "8*3-6+5"
  for completion, status in [("8*3-6+5", "correct"), ("3*8+5-6", "correct"),
                             ("5-6+3*8", "correct"), ("8*3-5+6", "incorrect"),
                             ("8*3-6", "incorrect"), ("8*3-6+5+0", "incorrect"),
                             ("8*3-(6-5)", "unparseable"), ("", "unparseable"),
                             ("-6+8*3+5", "unparseable")]:
    assert grade_string(completion, gold, "countdown").status == status, completion
  # Majority voting groups by the value reached with the right numbers.
  assert grade_string("3*8+5-6", gold, "countdown").answer == "23"
  assert grade_string("8*3-5+6", gold, "countdown").answer == "25"
  assert grade_string("8*3-6", gold, "countdown").answer == "8*3-6"
