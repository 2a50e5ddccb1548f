"""The relevance study: do RL-trained annotators (GRPO, AGPO) label better than the warm start,
on the minority classes especially, and do students distilled from their labels get better?

    python -m experiments.relevance_study --workdir=runs/relevance_study --jobs=2

One warm start (SFT on gold-labelled synthetic pairs, `WORKDIR/base`, trained once and evaluated
once: `experiments/sweep.py`'s shared base), then for each seed (`--seeds`, default 0,1,2) one
run of `configs/relevance.py` in `WORKDIR/seed<S>` from a copy of it: GRPO and AGPO (the
pipeline), `annotate` (each annotator, the warm start included, labels the 2,000-pair unlabeled
pool by majority of `annotate.n` samples) and `distill` (a hashed n-gram student per annotator,
and one on gold labels, scored on the held-out gold pairs). Seeds vary the RL runs, the
annotation samples and the students, not the warm start (`--own_base`: each seed trains its
own, so seeds vary everything); the pairs are the same. Each step runs in a subprocess and is
skipped when its results exist, so an interrupted study resumes.

Outputs in `--out` (default `experiments/results/relevance/`): `relevance_table.md` (mean and 95%
t-interval over seeds of accuracy, macro-F1 and each class's F1, for annotators and students),
`relevance_results.json` (every seed's numbers) and `relevance_f1.png`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib

import numpy as np

from experiments import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/relevance.py"


def run_seed(workdir: pathlib.Path, seed: int, fixed: dict[str, str]) -> pathlib.Path:
  """Pipeline, annotate and distill for one seed (each skipped when already done; a shared
  warm start is copied in beforehand by `main`)."""
  run_dir = workdir / f"seed{seed}"
  run_dir.mkdir(parents=True, exist_ok=True)
  overrides = {"seed": str(seed), **fixed}
  steps = [("pipeline", run_dir / "results.json"), ("annotate", run_dir / "annotate" /
                                                    "results.json"),
           ("distill", run_dir / "distill" / "results.json")]
  for mode, done in steps:
    if done.exists():
      print(f"seed {seed} {mode}: done, skipped", flush=True)
      continue
    print(f"seed {seed} {mode}", flush=True)
    command = sweep.main_command(CONFIG, run_dir, {**overrides, "mode": mode, "arms": "grpo,agpo"})
    sweep.run(command, run_dir / f"{mode}.log")
  return run_dir


def _model_name(label: str) -> str:
  """'agpo-step60' -> 'agpo'; 'sft' -> 'sft (warm start)'."""
  return {"sft": "sft (warm start)"}.get(label, label.split("-step")[0])


def collect(run_dirs: list[pathlib.Path]) -> dict:
  """`{"annotators": {model: {metric: [per seed]}}, "students": {...}, "labels": [...]}`."""
  out: dict = {"annotators": {}, "students": {}}
  for run_dir in run_dirs:
    annotators = json.loads((run_dir / "annotate" / "results.json").read_text())
    students = json.loads((run_dir / "distill" / "results.json").read_text())["reports"]
    for kind, reports in (("annotators", annotators), ("students", students)):
      for label, report in reports.items():
        out["labels"] = report["labels"]
        metrics = out[kind].setdefault(_model_name(label), {})
        metrics.setdefault("accuracy", []).append(report["accuracy"])
        metrics.setdefault("macro_f1", []).append(report["macro_f1"])
        for cls, values in report["per_class"].items():
          metrics.setdefault(f"f1 {cls}", []).append(values["f1"])
          metrics.setdefault(f"support {cls}", []).append(values["support"])
  return out


def table(results: dict) -> str:
  """Markdown: annotators then students, mean ± 95% half-width over seeds, in %."""
  labels = results["labels"]
  some = next(iter(results["annotators"].values()))
  order = sorted(labels, key=lambda c: np.mean(some[f"support {c}"]))  # rarest class first
  columns = ["accuracy", "macro_f1", *(f"f1 {c}" for c in order)]
  lines = []
  for kind, title in (("annotators", "annotator"), ("students", "student trained on")):
    lines += [f"| {title} | seeds | " + " | ".join(c.replace("_", "-") for c in columns) + " |",
              "|---|---:|" + "---:|" * len(columns)]
    rows = dict(results[kind])
    if "agpo" in rows and "grpo" in rows:  # paired by seed: the same warm start and seed
      rows["agpo − grpo (paired)"] = {c: np.subtract(rows["agpo"][c], rows["grpo"][c]).tolist()
                                      for c in columns}
    for model, metrics in rows.items():
      cells = []
      for column in columns:
        mean, half = sweep.mean_ci(metrics[column])
        sign = "+" if model.endswith("(paired)") and mean >= 0 else ""
        cells.append(f"{sign}{100 * mean:.1f} ± {100 * half:.1f}")
      lines.append(f"| {model} | {len(metrics['accuracy'])} | " + " | ".join(cells) + " |")
    lines.append("")
  supports = ", ".join(f"{c} {int(np.mean(some[f'support {c}']))}" for c in order)
  return ("\n".join(lines)
          + f"(annotators: the unlabeled pool's gold, pairs per class: {supports})\n")


def plot(results: dict, path: pathlib.Path) -> None:
  """Macro-F1 and the rarest class's F1 of each annotator and its student, with 95% bars."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415

  labels = results["labels"]
  some = next(iter(results["annotators"].values()))
  rare = min(labels, key=lambda c: np.mean(some[f"support {c}"]))
  fig = Figure(figsize=(8, 3.5), layout="constrained")
  FigureCanvasAgg(fig)
  for index, (kind, title) in enumerate((("annotators", "annotator on the pool"),
                                         ("students", "student on held-out gold"))):
    ax = fig.add_subplot(1, 2, index + 1)
    models = list(results[kind])
    x = np.arange(len(models))
    for offset, metric in ((-0.2, "macro_f1"), (0.2, f"f1 {rare}")):
      stats = [sweep.mean_ci(results[kind][m][metric]) for m in models]
      ax.bar(x + offset, [100 * s[0] for s in stats], 0.4, yerr=[100 * s[1] for s in stats],
             label=metric.replace("_", "-"), capsize=3)
    ax.set_xticks(x, models, rotation=20)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8)
  fig.savefig(path, format="png", dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/relevance_study")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "relevance"))
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="an override for every run, e.g. --set train.steps=30")
  parser.add_argument("--own_base", action="store_true",
                      help="each seed trains its own warm start (default: one shared)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="seeds run at once (each seed's steps stay in order)")
  parser.add_argument("--analyze_only", action="store_true")
  args = parser.parse_args()
  fixed = dict(item.split("=", 1) for item in args.set)
  workdir = pathlib.Path(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  if args.analyze_only:
    run_dirs = [workdir / f"seed{s}" for s in seeds]
  else:
    if not args.own_base:  # the shared warm start first, once, before any seed runs
      for s in seeds:
        sweep.prepare_shared_base(CONFIG, workdir, fixed, workdir / f"seed{s}")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # subprocesses do the work
      run_dirs = list(pool.map(lambda s: run_seed(workdir, s, fixed), seeds))
  results = collect(run_dirs)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  text = table(results)
  (out / "relevance_table.md").write_text(text)
  (out / "relevance_results.json").write_text(json.dumps(results) + "\n")
  plot(results, out / "relevance_f1.png")
  print(text)


if __name__ == "__main__":
  main()
