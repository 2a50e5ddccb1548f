r"""The query-ad relevance study: label parsing and reward ('relevance' references), the
synthetic generator's rules, the JSONL and ESCI loaders, majority-vote annotation, the student
classifier, and per-class metrics."""

import collections
import functools
import json
import re

import jax
import ml_collections
import numpy as np
import pytest

from agpo_jax import configs, sampling
from agpo_jax.evaluation import annotate as annotate_lib
from agpo_jax.evaluation.classification import classification_report, format_report
from agpo_jax.evaluation.distill import StudentConfig, distill, evaluate_student, train_student
from agpo_jax.models import transformer
from agpo_jax.models.config import ModelConfig
from agpo_jax.tasks import encode_prompt, make_task, task_config
from agpo_jax.tasks import relevance as rel
from agpo_jax.tasks import relevance_data as rel_data
from agpo_jax.tokenizers import CharTokenizer
from agpo_jax.verifiers.grades import CORRECT, INCORRECT, UNPARSEABLE, Reference
from agpo_jax.verifiers.inline import InlineVerifier
from agpo_jax.verifiers.labels import grade_string
from agpo_jax.verifiers.relevance import (
    ESCI,
    GRADED,
    decode_reference,
    encode_reference,
    parse_label,
    resolve_label_set,
)

R, P, I = GRADED  # relevant, partially relevant, irrelevant


def _task(**fields):
  cfg = task_config("relevance")
  cfg.update(dict(num_train=200, num_heldout=50, num_unlabeled=20), **fields)
  return make_task(cfg)


# --------------------------------------------------------------------------------------------
# Parsing and reward


@pytest.mark.parametrize("completion, label", [
    ("irrelevant", I),
    ("Partially Relevant.", P),
    ("RELEVANT", R),
    ("colour differs so partially relevant", P),  # the last label named
    ("type differs so irrelevant", I),
    ("It mentions relevant words, but the final label is irrelevant", I),
    ("The colour is wrong. \\boxed{partially relevant}", P),
    ("\\boxed{\\text{Relevant}}", R),
    ("relevant at first sight... The answer is: partially-relevant", P),
    ("not relevant", I),  # a 'graded' alias
    ("partially_relevant", P),
])
def test_parse_label_graded(completion, label):
  assert parse_label(completion, GRADED) == (label, "")


@pytest.mark.parametrize("completion", [
    "", "no idea", "relevance is hard to judge", "\\boxed{maybe}",
    "\\boxed{relevant or irrelevant}",  # a stated answer must name one label
    "irrelevantly", "\\boxed{x}" * 2,
])
def test_parse_label_unparseable(completion):
  label, reason = parse_label(completion, GRADED)
  assert label is None and reason
  grade = grade_string(completion, encode_reference(I, GRADED, 0.5), "relevance")
  assert (grade.reward, grade.status, grade.answer) == (0.0, UNPARSEABLE, "")


@pytest.mark.parametrize("completion, label", [
    ("exact", "exact"), ("\\boxed{Substitute}", "substitute"), ("\\boxed{E}", "exact"),
    ("\\boxed{c}", "complement"), ("an accessory, so complement", "complement"),
    ("irrelevant", "irrelevant"),
])
def test_parse_label_esci(completion, label):
  assert parse_label(completion, ESCI) == (label, "")
  assert parse_label("relevant", ESCI)[0] is None  # not an ESCI label


def test_reward_with_and_without_partial_credit_on_both_label_sets():
  graded = encode_reference(P, GRADED, 0.5)
  assert graded == "partially relevant|relevant,partially relevant,irrelevant|0.5"
  assert decode_reference(graded) == (P, GRADED, 0.5)
  expected = {R: (0.5, INCORRECT), P: (1.0, CORRECT), I: (0.5, INCORRECT)}
  for label, (reward, status) in expected.items():
    grade = grade_string(f"so {label}", graded, "relevance")
    assert (grade.reward, grade.status, grade.answer) == (reward, status, label)
  strict = encode_reference(P, GRADED)
  assert [grade_string(label, strict, "relevance").reward for label in GRADED] == [0, 1, 0]
  # The far end of the scale earns nothing even with partial credit.
  assert grade_string(R, encode_reference(I, GRADED, 0.5), "relevance").reward == 0.0

  esci = encode_reference("substitute", ESCI, 0.25)
  rewards = [grade_string(f"\\boxed{{{label}}}", esci, "relevance").reward for label in ESCI]
  assert rewards == [0.25, 1.0, 0.25, 0.0]
  # Through the in-process verifier, as training and evaluation grade.
  verifier = InlineVerifier("relevance")
  rewards, statuses = verifier(["exact", "irrelevant", "??"],
                               [Reference(esci, "relevance")] * 3)
  assert rewards.tolist() == [0.25, 0.0, 0.0]
  assert statuses == [INCORRECT, INCORRECT, UNPARSEABLE]


def test_reference_and_label_set_errors():
  assert resolve_label_set("good, ok, bad") == ("good", "ok", "bad")
  assert resolve_label_set("esci") == ESCI
  for bad in ("relevant", "a,a", "Good,bad", "a|b,c"):
    with pytest.raises(ValueError):
      resolve_label_set(bad)
  with pytest.raises(ValueError, match="not one of"):
    encode_reference("maybe", GRADED)
  with pytest.raises(ValueError, match="credit"):
    encode_reference(R, GRADED, 1.0)
  for bad in ("relevant", "maybe|relevant,irrelevant|0", "relevant|relevant,irrelevant|x"):
    with pytest.raises(ValueError, match="'relevance' reference"):
      decode_reference(bad)


# --------------------------------------------------------------------------------------------
# The generator's rules


SHOE = {"category": "shoes", "product_type": "running shoes", "brand": "nike",
        "colour": "blue", "size": "9", "gender": "men", "price_band": "mid"}


@pytest.mark.parametrize("query, item, graded, esci", [
    # Every named attribute matches (unnamed ones do not matter).
    ({"category": "shoes", "product_type": "running shoes", "colour": "blue"}, SHOE, R,
     "exact"),
    ({"category": "shoes", "product_type": "running shoes", "brand": "Nike", "size": "9",
      "gender": "men", "price_band": "mid"}, SHOE, R, "exact"),
    # A unisex item fits either gender; an attribute the item lacks does not conflict.
    ({"category": "shoes", "product_type": "running shoes", "gender": "women"},
     {**SHOE, "gender": "unisex"}, R, "exact"),
    ({"category": "shoes", "product_type": "running shoes", "colour": "red"},
     {k: v for k, v in SHOE.items() if k != "colour"}, R, "exact"),
    # Attribute conflicts.
    ({"category": "shoes", "product_type": "running shoes", "colour": "red"}, SHOE, P,
     "substitute"),
    ({"category": "shoes", "product_type": "running shoes", "size": "10"}, SHOE, P,
     "substitute"),
    ({"category": "shoes", "product_type": "running shoes", "gender": "women"}, SHOE, P,
     "substitute"),
    ({"category": "shoes", "product_type": "running shoes", "brand": "adidas"}, SHOE, P,
     "substitute"),
    # Same category, another product type.
    ({"category": "shoes", "product_type": "boots", "colour": "blue"}, SHOE, P, "substitute"),
    # An accessory of the queried product.
    ({"category": "electronics", "product_type": "smartphone"},
     {"category": "accessories", "product_type": "phone case", "colour": "black"}, I,
     "complement"),
    ({"category": "shoes", "product_type": "running shoes"},
     {"category": "accessories", "product_type": "running socks"}, I, "complement"),
    # Another category (an accessory is not a complement the other way round).
    ({"category": "kitchen", "product_type": "kettle", "colour": "blue"}, SHOE, I,
     "irrelevant"),
    ({"category": "accessories", "product_type": "phone case"},
     {"category": "electronics", "product_type": "smartphone"}, I, "irrelevant"),
])
def test_gold_label_rules_on_hand_made_pairs(query, item, graded, esci):
  assert rel_data.gold_label(query, item) == graded
  assert rel_data.gold_label(query, item, "esci") == esci


def test_gold_label_needs_category_and_type():
  with pytest.raises(ValueError, match="product_type"):
    rel_data.gold_label({"category": "shoes"}, SHOE)


def test_generator_proportions_noise_determinism_and_disjoint_splits():
  task = _task(num_train=1500, num_heldout=200, num_unlabeled=500,
               class_proportions="0.2,0.3,0.5", noise_rate=0.2, seed=3)
  train, heldout, unlabeled = (task.pairs(s) for s in task.SPLITS)
  clean = collections.Counter(p.clean_label for p in train + heldout + unlabeled)
  total = sum(clean.values())
  for label, share in zip(GRADED, (0.2, 0.3, 0.5)):
    assert abs(clean[label] / total - share) < 0.03, (label, clean)
  # Every clean label is what the rules say about the pair's structured query and item.
  for pair in train + heldout + unlabeled:
    assert pair.clean_label == rel_data.gold_label(dict(pair.intent), pair.fields)
  flipped = np.mean([p.label != p.clean_label for p in train])
  assert abs(flipped - 0.2) < 0.03
  assert all(p.label == p.clean_label for p in heldout + unlabeled)
  # Disjoint splits: no id and no (query, item) in two of them.
  keys = [{(p.query, p.item) for p in split} for split in (train, heldout, unlabeled)]
  assert sum(len(k) for k in keys) == len(set().union(*keys)) == 2200
  assert len({p.id for p in train + heldout + unlabeled}) == 2200
  # Deterministic per seed; another seed draws other pairs.
  again = _task(num_train=1500, num_heldout=200, num_unlabeled=500,
                class_proportions="0.2,0.3,0.5", noise_rate=0.2, seed=3)
  assert again.pairs("train") == train and again.split("heldout") == task.split("heldout")
  other = _task(num_train=1500, num_heldout=200, num_unlabeled=500, seed=4)
  assert [p.query for p in other.pairs("heldout")] != [p.query for p in heldout]


def test_default_proportions_make_irrelevant_dominant():
  counts = collections.Counter(p.label for p in _task(num_train=1000).pairs("train"))
  assert counts[I] > counts[P] > counts[R]
  assert abs(counts[I] / 1000 - 0.6) < 0.05
  esci = collections.Counter(p.label for p in _task(label_set="esci").pairs("train"))
  assert set(esci) == set(ESCI) and esci.most_common(1)[0][0] == "irrelevant"


def test_text_and_chat_prompts_and_demonstrations_grade_correct():
  text = _task(answer_format="reason", partial_credit=0.5)
  tokenizer = CharTokenizer(rel.RelevanceTask.alphabet)
  for split in text.SPLITS:
    for problem in text.split(split):
      tokenizer.encode(problem.prompt + problem.answer)  # every character is in the alphabet
      assert problem.prompt.endswith("=") and problem.prompt.count("|") == 2
      grade = grade_string(problem.answer, problem.reference.answer, "relevance")
      assert grade.status == CORRECT and grade.answer == problem.label
  problem = text.split("train")[0]
  assert problem.reference.kind == "relevance" and problem.reference.answer.endswith("|0.5")
  assert problem.answer.endswith(" so " + problem.label)
  assert problem.messages is None
  chat = _task(prompt_format="chat", label_set="esci", system_prompt="Be brief.")
  for problem in chat.split("heldout"):
    (system, _), (role, content) = problem.chat
    assert system == "system" and role == "user" and "\\boxed{}" in content
    assert f"Query: {problem.pair.query}" in content and problem.answer == (
        f"\\boxed{{{problem.label}}}")
    assert grade_string(problem.answer, problem.reference.answer, "relevance").reward == 1.0


def test_config_errors_name_the_key(tmp_path):
  for fields, key in [({"label_set": "a,a"}, "label_set"), ({"partial_credit": 1.5},
                      "partial_credit"), ({"prompt_format": "xml"}, "prompt_format"),
                      ({"class_proportions": "1,2"}, "class_proportions"),
                      ({"noise_rate": -0.1}, "noise_rate"),
                      ({"source": str(tmp_path / "none.jsonl")}, "source"),
                      ({"label_set": "good,bad"}, "label_set")]:
    with pytest.raises(configs.ConfigError, match=f"config.task.{key}"):
      _task(**fields)
  with pytest.raises(configs.ConfigError, match="unlabeled"):
    _task().split("test")


# --------------------------------------------------------------------------------------------
# Loaders


def test_jsonl_loader_and_task_from_jsonl(tmp_path):
  path = tmp_path / "pairs.jsonl"
  rows = [{"id": f"p{i}", "query": f"query {i // 3}",
           "item": {"title": f"Item {i}", "category": "shoes", "color": "Red"},
           "label": GRADED[i % 3].upper()} for i in range(30)]
  rows.append({"query": "flat fields", "product_title": "A Flat Item", "brand": "acme"})
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  pairs = rel_data.load_jsonl(path)
  assert len(pairs) == 31 and pairs[0].label == R and pairs[1].label == P
  assert pairs[0].fields == {"title": "Item 0", "category": "shoes", "colour": "Red"}
  assert pairs[-1].id == "31" and pairs[-1].label is None
  assert pairs[-1].fields == {"title": "A Flat Item", "brand": "acme"}
  assert rel.text_prompt(pairs[0]) == "query 0|item 0|shoes,-,red,-,-,-="

  labelled = tmp_path / "labelled.jsonl"
  labelled.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
  task = _task(source=str(labelled), num_heldout=6, num_unlabeled=6, num_train=0)
  splits = [task.pairs(s) for s in task.SPLITS]
  assert [len(s) for s in splits] == [18, 6, 6]
  queries = [{p.query for p in s} for s in splits]
  assert not (queries[0] & queries[1] or queries[0] & queries[2] or queries[1] & queries[2])


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    (json.dumps({"query": "", "item": {"title": "x"}}), "'query'"),
    (json.dumps({"query": "q", "item": {"category": "x"}}), "'title'"),
    (json.dumps({"query": "q", "title": "t", "label": "maybe"}), "label 'maybe'"),
    (json.dumps({"id": "1", "query": "q", "title": "t"}), "repeats"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"id": "1", "query": "q", "title": "t", "label": "relevant"})
                  + "\n\n" + line + "\n")
  with pytest.raises(ValueError, match=f"{path}:3: .*{message}"):
    rel_data.load_jsonl(path)


def test_esci_table_loader_tsv_and_csv(tmp_path):
  header = ["example_id", "query", "product_id", "product_title", "product_brand",
            "product_color", "product_description", "esci_label"]
  rows = [["e1", "red shoe", "B1", "Red Runner", "Acme", "red", "long text", "E"],
          ["e2", "red shoe", "B2", "Blue Runner", "Acme", "blue", "", "S"],
          ["e3", "phone", "B3", "Phone case, black", "Cazy", "black", "", "C"],
          ["e4", "phone", "B4", "Kettle", "", "", "", "I"]]
  tsv = tmp_path / "esci.tsv"
  tsv.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
  pairs = rel_data.load_esci(tsv)
  assert [p.label for p in pairs] == list(ESCI)
  assert pairs[0].id == "e1" and pairs[0].fields == {"title": "Red Runner", "brand": "Acme",
                                                      "colour": "red"}
  assert pairs[3].fields == {"title": "Kettle"}
  assert [p.label for p in rel_data.load_esci(tsv, GRADED)] == [R, P, I, I]
  csv_path = tmp_path / "esci.csv"
  csv_path.write_text("\n".join(",".join(f'"{c}"' for c in r) for r in [header] + rows))
  assert rel_data.load_pairs(csv_path, ESCI) == pairs  # the comma in a quoted title survives

  bad = tmp_path / "bad.tsv"
  bad.write_text("\n".join("\t".join(r) for r in [header] + rows[:1] + [rows[1][:-1] + ["X"]]))
  with pytest.raises(ValueError, match=f"{bad}:3: esci_label 'X'"):
    rel_data.load_esci(bad)
  bad.write_text("query\tproduct_title\nq\tt\n")
  with pytest.raises(ValueError, match=f"{bad}:1: .*esci_label"):
    rel_data.load_esci(bad)
  with pytest.raises(ValueError, match="only onto"):
    rel_data.load_esci(tsv, ("good", "bad"))


# --------------------------------------------------------------------------------------------
# Annotation


def _canned(texts_per_problem):
  """A deterministic policy: problem i of the pool answers `texts_per_problem[i]`."""
  def sample(problems, n, chunk):
    return [texts_per_problem[int(p.id)] for p in problems]
  return sample


class _Pool:
  def __init__(self, i, label=None):
    self.id, self.label = str(i), label


def test_majority_vote_exact_counts_ties_and_unparseable(tmp_path):
  texts = [
      ["irrelevant"] * 5 + ["\\boxed{relevant}"] * 3 + ["no idea"] * 2,
      ["partially relevant", "relevant", "so relevant", "type differs so partially relevant"],
      ["??"] * 4,
  ]
  pool = [_Pool(0, I), _Pool(1, R), _Pool(2)]
  records = [annotate_lib.vote(t, GRADED) for t in texts]
  assert records[0] == {"label": I, "confidence": 0.5, "n": 10, "votes": {R: 3, I: 5},
                        "unparsed": 2}
  assert records[1]["label"] == P and records[1]["confidence"] == 0.5  # tie: first seen
  assert records[2] == {"label": None, "confidence": 0.0, "n": 4, "votes": {}, "unparsed": 4}
  path = tmp_path / "ann.jsonl"
  uneven = [t[:4] for t in texts]
  out = annotate_lib.annotate(pool, _canned(uneven), 4, GRADED, path, batch_size=2)
  assert [r["label"] for r in out] == [I, P, None] and out[0]["gold"] == I
  assert "gold" not in out[2]
  assert annotate_lib.read_annotations(path) == out
  report = annotate_lib.annotation_report(out, GRADED)
  assert report["num_pairs"] == 2 and report["accuracy"] == 0.5


def test_majority_vote_on_a_stochastic_policy_recovers_its_probabilities(tmp_path):
  probabilities = {R: 0.7, P: 0.2, I: 0.1}
  styles = ["{}", "\\boxed{{{}}}", "all match so {}"]

  def sample(problems, n, chunk):
    rng = np.random.default_rng(chunk)
    out = []
    for _ in problems:
      picks = rng.choice(len(GRADED), size=n, p=list(probabilities.values()))
      out.append([styles[i % 3].format(GRADED[k]) for i, k in enumerate(picks)])
    return out

  pool = _task(num_unlabeled=7).split("unlabeled")
  records = annotate_lib.annotate(pool, sample, 2000, GRADED, tmp_path / "a.jsonl",
                                  batch_size=3)
  for record, problem in zip(records, pool):
    assert record["label"] == R and abs(record["confidence"] - 0.7) < 0.04
    assert abs(record["votes"][P] / 2000 - 0.2) < 0.04 and record["unparsed"] == 0
    assert record["gold"] == problem.label

  # Killed after its first chunk (three lines and a torn fourth): a rerun samples only the
  # chunks left and writes the same file.
  lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
  resumed = tmp_path / "b.jsonl"
  resumed.write_text("".join(lines[:3]) + lines[3][:15])
  calls = []

  def counting(problems, n, chunk):
    calls.append(chunk)
    return sample(problems, n, chunk)

  again = annotate_lib.annotate(pool, counting, 2000, GRADED, resumed, batch_size=3)
  assert calls == [1, 2] and again == records
  assert resumed.read_text() == (tmp_path / "a.jsonl").read_text()


def test_policy_sampler_draws_from_a_model():
  """The real path: a random tiny model on the char tokenizer; the records are the vote over
  exactly what the sampler draws for each chunk (fold_in of the chunk index)."""
  tokenizer = CharTokenizer(rel.RelevanceTask.alphabet)
  model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, d_model=32,
                          num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                          max_seq_len=256)
  shapes = jax.eval_shape(functools.partial(transformer.init_params, model_cfg),
                          jax.random.key(0, impl="rbg"))
  rng_np = np.random.default_rng(0)  # random weights without compiling the initialisers
  params = jax.tree.map(lambda s: (0.5 * rng_np.standard_normal(s.shape)).astype(s.dtype),
                        shapes)
  sp = sampling.SamplingParams(max_new_tokens=6, stop_ids=tuple(tokenizer.stop_ids))
  sampler = sampling.Sampler(model_cfg, tokenizer.pad_id, sampling=sp)
  rng = jax.random.key(1, impl="rbg")
  pool = _task(num_unlabeled=3).split("unlabeled")
  sample = annotate_lib.policy_sampler(sampler, tokenizer, params, rng, samples_per_call=2)
  texts = sample(pool, 4, 5)
  assert [len(t) for t in texts] == [4, 4, 4]
  prompts = [encode_prompt(tokenizer, p) for p in pool]
  chunk_rng = jax.random.fold_in(rng, 5)
  direct = [sampling.decode_completions(tokenizer, sampler.generate(
      params, prompts, 2, jax.random.fold_in(chunk_rng, call))) for call in range(2)]
  assert texts == [direct[0][2 * i:2 * i + 2] + direct[1][2 * i:2 * i + 2] for i in range(3)]
  records = annotate_lib.annotate(pool, sample, 4, GRADED, batch_size=8)  # one chunk: 0
  assert records == [{"id": p.id, "gold": p.label, **annotate_lib.vote(t, GRADED)}
                     for p, t in zip(pool, sample(pool, 4, 0))]


# --------------------------------------------------------------------------------------------
# The student and the metrics


def test_student_on_annotator_labels_beats_shuffled_labels():
  task = _task(num_train=50, num_heldout=300, num_unlabeled=1200, seed=1)
  pool, heldout = task.pairs("unlabeled"), task.pairs("heldout")
  config = StudentConfig(num_buckets=4096, hidden=32, steps=150, batch_size=128, seed=0)
  perfect = [{"id": p.id, "label": p.label, "confidence": 1.0} for p in pool]
  perfect.append({"id": pool[0].id, "label": None, "confidence": 0.0})
  result = distill(perfect, pool, heldout, GRADED, config)
  assert result["num_train"] == 1200 and result["num_skipped"] == 1
  shuffled = list(np.random.default_rng(0).permutation([p.label for p in pool]))
  baseline = evaluate_student(train_student(pool, shuffled, GRADED, config), heldout)
  good = result["report"]
  assert good["accuracy"] > baseline["accuracy"] + 0.15, (good, baseline)
  assert good["macro_f1"] > baseline["macro_f1"] + 0.25
  assert good["per_class"][R]["f1"] > 0.5  # the minority class is learnt too
  with pytest.raises(ValueError, match="not a pair of the pool"):
    distill([{"id": "nope", "label": R, "confidence": 1.0}], pool, heldout, GRADED, config)


def test_student_is_deterministic_per_seed():
  pairs = _task(num_train=60).pairs("train")
  targets = [p.label for p in pairs]
  config = StudentConfig(num_buckets=512, dim=8, hidden=0, steps=30, batch_size=16, seed=2)
  first = train_student(pairs, targets, GRADED, config).probabilities(pairs)
  again = train_student(pairs, targets, GRADED, config).probabilities(pairs)
  np.testing.assert_array_equal(first, again)
  assert first.shape == (60, 3) and np.allclose(first.sum(axis=1), 1.0, atol=1e-5)


def test_classification_report_on_a_worked_example():
  gold = [R, R, P, P, P, I, I, I, I, I]
  predicted = [R, P, P, None, I, I, I, I, I, I]
  report = classification_report(gold, predicted, GRADED)
  # Confusion (rows gold, columns predicted R, P, I, none).
  assert report["confusion"] == [[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 5, 0]]
  # R: tp 1 of 1 predicted, 2 gold -> P 1, R 1/2, F1 2/3.
  # P: tp 1 of 2 predicted, 3 gold -> P 1/2, R 1/3, F1 2/5.
  # I: tp 5 of 6 predicted, 5 gold -> P 5/6, R 1, F1 10/11.
  expected = {R: (1.0, 0.5, 2 / 3, 2), P: (0.5, 1 / 3, 0.4, 3), I: (5 / 6, 1.0, 10 / 11, 5)}
  for label, (precision, recall, f1, support) in expected.items():
    m = report["per_class"][label]
    assert m["precision"] == pytest.approx(precision) and m["recall"] == pytest.approx(recall)
    assert m["f1"] == pytest.approx(f1) and m["support"] == support
  assert report["accuracy"] == pytest.approx(0.7)
  assert report["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 10 / 11) / 3)
  assert report["unparsed"] == 1
  table = format_report(report).splitlines()
  assert table[1].startswith("relevant ") and table[3].startswith("irrelevant ")  # rarest first
  assert "20.0%" in table[1] and "macro-F1 0.659" in table[-1]
  with pytest.raises(ValueError, match="'maybe'"):
    classification_report([R], ["maybe"], GRADED)


def test_vocabulary_covers_every_word_of_the_synthetic_text_prompts_and_answers():
  words = set(rel_data.vocabulary())
  assert rel.RelevanceTask.words.split() == sorted(words)
  tok = CharTokenizer(rel.RelevanceTask.alphabet, words=rel.RelevanceTask.words.split())
  for label_set in ("graded", "esci"):
    task = rel.RelevanceTask(ml_collections.ConfigDict(dict(
        label_set=label_set, answer_format="reason", num_train=1500, num_heldout=10,
        num_unlabeled=10)))
    for problem in task.split("train"):
      text = f"{problem.prompt} {problem.answer}"
      used = {w for w in re.findall(r"[a-z0-9]+", text) if len(w) > 1}
      assert used <= words, (text, used - words)
      # Every word is one token: the encoding is words + separators + single characters.
      assert len(tok.encode(text)) == len(re.findall(r"[a-z0-9]+|[^a-z0-9]", text))


def test_balance_by_label_repeats_rarer_labels_up_to_the_largest():
  from agpo_jax.tasks.problem import balance_by_label  # noqa: PLC0415
  make = lambda i, label: rel.RelevanceProblem(  # noqa: E731
      id=f"p{i}", prompt="q", answer=label, reference_kind="relevance", label=label)
  problems = ([make(i, "irrelevant") for i in range(6)] + [make(6, "relevant")]
              + [make(i, "partially relevant") for i in range(7, 11)])
  out = balance_by_label(problems, seed=0)
  by_label = collections.Counter(p.label for p in out)
  assert by_label == {"irrelevant": 6, "relevant": 6, "partially relevant": 6}
  # 'partially relevant' (4 problems): each once, then 2 of them a second time; 'relevant' 6x.
  partial = collections.Counter(p.id for p in out if p.label == "partially relevant")
  assert sorted(partial.values()) == [1, 1, 2, 2]
  assert [p.id for p in out if p.label == "irrelevant"] == [f"p{i}" for i in range(6)]
  assert out == balance_by_label(problems, seed=0)  # deterministic per seed
  with pytest.raises(ValueError, match="problem 'x' has no gold label"):
    balance_by_label([rel.RelevanceProblem(id="x", prompt="q", answer="a",
                                           reference_kind="relevance")], seed=0)
