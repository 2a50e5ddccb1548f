"""The relevance application's modes: `annotate` and `distill` (a label task such as 'relevance').

    python -m agpo_jax.main --config=configs/relevance.py --workdir=runs/rel             # train
    python -m agpo_jax.main --config=configs/relevance.py --workdir=runs/rel --config.mode=annotate
    python -m agpo_jax.main --config=configs/relevance.py --workdir=runs/rel --config.mode=distill

`annotate` labels the `config.annotate.split` pool (default 'unlabeled') with every annotator
the workdir holds: the warm start and each RL arm's newest checkpoint, by majority vote over
`config.annotate.n` samples (the vote share is the confidence), into
WORKDIR/annotate/<model>_<split>.jsonl (resumable), and scores each against the pool's hidden
gold labels: accuracy, macro-F1, per-class F1, rarest class first (table.md, summary.json).
`distill` trains a student (`config.student`: a hashed n-gram classifier) on each annotation
file, and one on the pool's gold labels as the ceiling, and scores each on the 'heldout' gold
pairs (WORKDIR/distill/table.md, results.json).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import jax
from ml_collections import config_dict

from agpo_jax import configs, runs, sampling
from agpo_jax.evaluation import annotate as annotate_lib
from agpo_jax.evaluation import distill as distill_lib
from agpo_jax.evaluation.evaluate import eval_sampling_params
from agpo_jax.tasks import make_task


def _label_task(task, mode: str):
  if not hasattr(task, "labels") or not hasattr(task, "pairs"):
    raise configs.ConfigError(f"mode {mode!r} needs a label task (config.task.name="
                              f"'relevance'), not {task.name!r}")
  return task


def metrics_table(reports: dict[str, dict], labels: Sequence[str], title: str) -> str:
  """Markdown: a row per model (accuracy, macro-F1, each class's F1 rarest first, unparsed)."""
  some = next(iter(reports.values()))
  order = sorted(labels, key=lambda label: some["per_class"][label]["support"])
  lines = [f"| {title} | accuracy | macro-F1 | " + " | ".join(f"F1 {label}" for label in order)
           + " | unlabeled |", "|---|" + "---:|" * (len(order) + 3)]
  for model, report in reports.items():
    cells = [f"{100 * report['accuracy']:.1f}", f"{100 * report['macro_f1']:.1f}"]
    cells += [f"{100 * report['per_class'][label]['f1']:.1f}" for label in order]
    cells.append(str(report["unparsed"]))
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  supports = ", ".join(f"{label} {some['per_class'][label]['support']}" for label in order)
  return "\n".join(lines) + f"\n\n(gold pairs per class: {supports})"


def _write(directory: pathlib.Path, table: str, results: dict) -> None:
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "table.md").write_text(table + "\n")
    (directory / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")


def run_annotate(config: config_dict.ConfigDict, workdir: pathlib.Path,
                 explicit_keys: Sequence[str] = ()) -> dict:
  """Annotate the pool with every annotator of the workdir; see the module docstring."""
  tokenizer, model_cfg, task, mesh = runs.setup(config, workdir)
  task = _label_task(task, "annotate")
  cfg = config.annotate
  start, start_label = runs.initial_params(config, workdir, model_cfg, tokenizer, task, mesh)
  models = {start_label: start}
  models.update(runs.trained_models(config, workdir, model_cfg, start, mesh, explicit_keys))
  sampler = sampling.Sampler.from_config(config, model_cfg, tokenizer, mesh)
  params_s = eval_sampling_params(sampler.sampling, cfg)
  pool = task.split(cfg.split)
  reports, records = {}, {}
  for label, params in models.items():
    sample = annotate_lib.policy_sampler(sampler, tokenizer, params,
                                         jax.random.key(cfg.seed, impl=config.prng_impl),
                                         params_s, min(cfg.samples_per_call, cfg.n))
    records[label] = annotate_lib.annotate(
        pool, sample, cfg.n, task.labels, workdir / "annotate" / f"{label}_{cfg.split}.jsonl",
        batch_size=cfg.batch_prompts)
    if all(r.get("gold") is not None for r in records[label]):
      reports[label] = annotate_lib.annotation_report(records[label], task.labels)
  if reports:
    table = metrics_table(reports, task.labels, "annotator")
    runs.report(f"\nannotation of {len(pool)} '{cfg.split}' pairs, majority of n = {cfg.n} at "
                f"temperature {cfg.temperature}, against their gold labels (%):\n{table}")
    _write(workdir / "annotate", table, reports)
  return {"records": records, "reports": reports}


def run_distill(config: config_dict.ConfigDict, workdir: pathlib.Path) -> dict:
  """Train a student on each annotation file (and on gold), score each on 'heldout' gold."""
  task = _label_task(make_task(config.task), "distill")
  split = config.annotate.split
  files = sorted((workdir / "annotate").glob(f"*_{split}.jsonl"),
                 key=lambda p: p.stat().st_mtime)
  if not files:
    raise FileNotFoundError(f"no annotation files {workdir}/annotate/*_{split}.jsonl: run "
                            "--config.mode=annotate first")
  pool, heldout = task.pairs(split), task.pairs("heldout")
  student_cfg = distill_lib.StudentConfig(**config.student.to_dict())
  sources = {f.name[:-len(f"_{split}.jsonl")]: annotate_lib.read_annotations(f) for f in files}
  if all(p.label is not None for p in pool):  # the ceiling: the pool's own gold labels
    sources["gold labels"] = [{"id": p.id, "label": p.label, "confidence": 1.0} for p in pool]
  reports, counts, unusable = {}, {}, []
  for name, records in sources.items():
    if not any(r.get("label") is not None and r.get("confidence", 1.0) >=
               config.annotate.min_confidence for r in records):
      unusable.append(name)  # e.g. an annotator that never wrote a label
      continue
    result = distill_lib.distill(records, pool, heldout, task.labels, student_cfg,
                                 config.annotate.min_confidence)
    reports[name], counts[name] = result["report"], result["num_train"]
  if not reports:
    raise ValueError(f"no annotation file in {workdir}/annotate has a label with confidence >= "
                     f"{config.annotate.min_confidence} to train a student on")
  table = metrics_table(reports, task.labels, "student trained on")
  if unusable:
    table += f"\n(no student for {', '.join(unusable)}: no usable label)"
  runs.report(f"\nstudents ({student_cfg.steps} steps) trained on {split} pairs labelled by each "
              f"annotator (confidence >= {config.annotate.min_confidence}), scored on "
              f"{len(heldout)} held-out gold pairs (%):\n{table}")
  _write(workdir / "distill", table, {"reports": reports, "num_train": counts,
                                      "unusable": unusable})
  return {"reports": reports, "num_train": counts, "unusable": unusable}
