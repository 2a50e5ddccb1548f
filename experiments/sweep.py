"""Run one config under a grid of `--config` overrides, one run after another, and collect.

    python -m experiments.sweep --config=configs/default.py --workdir=runs/sweep \
        --grid algo.name=agpo,grpo,nsr --grid seed=0,1,2 --set train.steps=300

Every combination of the `--grid` values is a run in `WORKDIR/<name>` (the name spells its
overrides), started as `python -m agpo_jax.main` in a subprocess so that runs share nothing.
A run that already wrote `results.json` is skipped, so an interrupted sweep resumes; a run
interrupted halfway resumes from its own checkpoint. With `--share_base` (the default) the SFT
warm start and the base model's evaluation happen once, in `WORKDIR/base`, and every run starts
from them: seeds then vary the RL run, not the base model.

Collected results go to `WORKDIR/sweep.json` (one record per run) and `WORKDIR/sweep.md`
(pass@k as mean +- std over the `--aggregate` axis, default `seed`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


# Two-sided 95% Student t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
  """Mean and the half-width of its 95% t-interval (0 for a single value)."""
  values = np.asarray(values, float)
  if len(values) < 2:
    return float(values.mean()), 0.0
  half = _T95.get(len(values) - 1, 1.96) * values.std(ddof=1) / math.sqrt(len(values))
  return float(values.mean()), float(half)


def parse_axis(text: str) -> tuple[str, list[str]]:
  """'algo.name=agpo,grpo' -> ('algo.name', ['agpo', 'grpo'])."""
  key, sep, values = text.partition("=")
  if not sep or not key or not values:
    raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,... got {text!r}")
  return key, values.split(",")


def run_name(overrides: dict[str, str]) -> str:
  return ",".join(f"{k}={v}" for k, v in overrides.items()).replace("/", "_") or "default"


def grid_runs(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
  keys = [k for k, _ in axes]
  return [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in axes))]


def main_command(config: str, workdir: pathlib.Path, overrides: dict[str, str]) -> list[str]:
  """The `agpo_jax.main` command of one run: one RL arm (`config.algo`, `--config.arms=`)
  unless the overrides name the arms."""
  overrides = {"arms": "", **overrides}
  return [sys.executable, "-m", "agpo_jax.main", f"--config={config}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def run(command: list[str], log: pathlib.Path) -> None:
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  with open(log, "a") as out:
    result = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  if result.returncode:
    raise RuntimeError(f"run failed (exit {result.returncode}): {' '.join(command)}; see {log}")


def prepare_shared_base(config: str, sweep_dir: pathlib.Path, fixed: dict[str, str],
                        run_dir: pathlib.Path) -> None:
  """Warm start and evaluate the base once; give each run a copy of both."""
  base_dir = sweep_dir / "base"
  if not (base_dir / "results.json").exists():
    base_dir.mkdir(parents=True, exist_ok=True)
    run(main_command(config, base_dir, {**fixed, "mode": "pipeline", "train.steps": "0"}),
        base_dir / "log.txt")
  run_dir.mkdir(parents=True, exist_ok=True)
  if not (run_dir / "sft").exists():
    shutil.copytree(base_dir / "sft", run_dir / "sft")
  (run_dir / "eval").mkdir(exist_ok=True)
  for counts in (base_dir / "eval").glob("base_*.jsonl"):
    if not (run_dir / "eval" / counts.name).exists():
      shutil.copy(counts, run_dir / "eval" / counts.name)


def collect(sweep_dir: pathlib.Path, runs: list[dict[str, str]]) -> list[dict]:
  records = []
  for overrides in runs:
    results = json.loads((sweep_dir / run_name(overrides) / "results.json").read_text())
    for model, summary in results["summaries"].items():
      records.append({"run": run_name(overrides), "overrides": overrides, "model": model,
                      "pass@k": {int(k): v for k, v in summary["pass@k"].items()},
                      "avg@n": summary["avg@n"]})
  return records


def markdown_table(records: list[dict], aggregate: str, ks: list[int]) -> str:
  """pass@k (%) as mean +- std over runs that differ only in the `aggregate` axis."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    label = r["model"] if r["model"] == "base" else r["model"].split("-step")[0]
    key = (label, tuple((k, v) for k, v in r["overrides"].items() if k != aggregate))
    if r["model"] == "base":
      key = ("base", ())
    groups.setdefault(key, []).append(r)
  header = "| model | settings | runs | " + " | ".join(f"pass@{k}" for k in ks) + " |"
  lines = [header, "|" + "---|" * (len(ks) + 3)]
  for (label, settings), members in groups.items():
    if label == "base":
      members = members[:1]  # the shared base is evaluated once
    cells = []
    for k in ks:
      values = 100 * np.array([m["pass@k"][k] for m in members])
      cells.append(f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1
                   else f"{values[0]:.1f}")
    settings_text = ", ".join(f"{k}={v}" for k, v in settings) or "-"
    lines.append(f"| {label} | {settings_text} | {len(members)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--grid", action="append", type=parse_axis, default=[],
                      help="KEY=V1,V2,...; repeat for more axes")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="an override shared by every run")
  parser.add_argument("--aggregate", default="seed", help="axis averaged in the table")
  parser.add_argument("--ks", default="1,16,256")
  parser.add_argument("--no-share-base", dest="share_base", action="store_false")
  args = parser.parse_args(argv)

  fixed = dict(item.partition("=")[::2] for item in args.set)
  runs = grid_runs(args.grid)
  args.workdir.mkdir(parents=True, exist_ok=True)
  for i, overrides in enumerate(runs):
    run_dir = args.workdir / run_name(overrides)
    if (run_dir / "results.json").exists():
      print(f"[{i + 1}/{len(runs)}] {run_name(overrides)}: done, skipped")
      continue
    print(f"[{i + 1}/{len(runs)}] {run_name(overrides)}", flush=True)
    if args.share_base:
      prepare_shared_base(args.config, args.workdir, fixed, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run(main_command(args.config, run_dir, {**fixed, **overrides}), run_dir / "log.txt")

  records = collect(args.workdir, runs)
  (args.workdir / "sweep.json").write_text(json.dumps(records, indent=2) + "\n")
  ks = [int(k) for k in args.ks.split(",")]
  available = set.intersection(*(set(r["pass@k"]) for r in records)) if records else set()
  table = markdown_table(records, args.aggregate, [k for k in ks if k in available])
  (args.workdir / "sweep.md").write_text(table + "\n")
  print(table)
  return records


if __name__ == "__main__":
  main()
