"""The evaluation loop: n samples per problem, counts that survive an interruption exactly."""

import pathlib

import jax
import numpy as np

from agpo_jax import configs, sampling
from agpo_jax.evaluation.counts import read_counts
from agpo_jax.evaluation.evaluate import evaluate
from agpo_jax.evaluation.passk import pass_at_k
from agpo_jax.models import transformer
from agpo_jax.models.config import resolve_model_config
from agpo_jax.tasks import make_task
from agpo_jax.tokenizers import load_tokenizer
from agpo_jax.verifiers.inline import InlineVerifier

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup():
  cfg = configs.load_config_file(str(ROOT / "configs" / "default.py"))
  cfg.model.num_layers = 1
  cfg.eval.n = 8
  cfg.eval.samples_per_call = 4  # two sampler calls per chunk
  cfg.eval.batch_prompts = 4
  cfg.eval.max_problems = 10  # chunks of 4, 4, 2
  tokenizer = load_tokenizer(cfg.tokenizer)
  model_cfg = resolve_model_config(cfg.model, tokenizer.vocab_size)
  params = transformer.init_params(model_cfg, jax.random.key(0, impl="rbg"))
  problems = make_task(cfg.task).split("heldout")
  sampler = sampling.Sampler.from_config(cfg, model_cfg, tokenizer)
  return cfg, params, sampler, tokenizer, problems


def test_interrupted_evaluation_resumes_to_identical_counts(tmp_path):
  cfg, params, sampler, tokenizer, problems = _setup()
  verifier = InlineVerifier("exact")
  full_path = tmp_path / "full.jsonl"
  records, summary = evaluate(cfg, params, sampler, tokenizer, problems, verifier, full_path)
  assert [r["id"] for r in records] == [p.id for p in problems[:10]]
  assert all(r["n"] == 8 and len(r["answers"]) == 8 for r in records)

  # A run killed after its first chunk: four complete lines and a torn fifth one.
  lines = full_path.read_text().splitlines(keepends=True)
  resumed_path = tmp_path / "resumed.jsonl"
  resumed_path.write_text("".join(lines[:4]) + lines[4][:10])
  resumed, resumed_summary = evaluate(cfg, params, sampler, tokenizer, problems, verifier,
                                      resumed_path)
  assert resumed == records
  assert read_counts(resumed_path) == read_counts(full_path)
  assert resumed_summary["pass@k"] == summary["pass@k"]


def test_counts_follow_the_verifier_and_give_pass_at_k(tmp_path):
  """Grade against answers the model actually produces, so c varies between 0 and n."""
  cfg, params, sampler, tokenizer, problems = _setup()
  first, _ = evaluate(cfg, params, sampler, tokenizer, problems, InlineVerifier("exact"))
  # Re-grade with each problem's most common sampled answer as the gold answer.
  relabelled = []
  for problem, record in zip(problems[:10], first):
    answers = [a for a in record["answers"] if a]
    gold = max(set(answers), key=answers.count)
    relabelled.append(type(problem)(id=problem.id, prompt=problem.prompt, answer=gold))
  records, summary = evaluate(cfg, params, sampler, tokenizer, relabelled,
                              InlineVerifier("exact"))
  counts = [r["c"] for r in records]
  assert all(c == r["answers"].count(p.answer) for c, r, p in zip(counts, records, relabelled))
  assert all(c >= 1 for c in counts)  # the same seed draws the same samples again
  expected = np.mean([pass_at_k(8, c, 2) for c in counts])
  assert abs(summary["pass@k"][2] - expected) < 1e-12
