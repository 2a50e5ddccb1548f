"""The boundary study: does RL raise pass@1 and lower pass@256, method by method?

    python -m experiments.boundary_study --workdir=runs/boundary       # multiplication
    python -m experiments.boundary_study --config=configs/countdown.py \
        --workdir=runs/boundary_countdown

Every arm (GRPO, PSR, NSR, W-REINFORCE, AGPO and the AGPO variants in `ARMS`) is trained for
the same number of RL steps from ONE shared SFT base (experiments/sweep.py's shared base, in
`WORKDIR/base`), once per seed, each run a subprocess (`python -m agpo_jax.main`) in
`WORKDIR/<run name>`. Finished runs are skipped, so an interrupted study resumes. Then:

- per run, `evaluation.boundary.compare` of its held-out count file against the base's: pass@k,
  the difference with a paired bootstrap CI over problems, and the lost / gained problems;
- per arm, mean +- std over seeds, and a paired bootstrap CI over problems of the seed-mean
  per-problem difference (each resample draws problems, the same draw for every seed);
- a frontier: held-out pass@1 vs pass@256 at several RL step counts, from the periodic evaluations
  (`train.eval_every`) each run logs to `rl/metrics.jsonl` as `eval/pass@k`;
- optionally (`--train_coverage=P`, `--train_coverage_n=N`) pass@k on the first P training
  problems (7100: all) with N samples each, base vs each arm's
  seed-0 run (`mode=evaluate`, `eval.split=train`).

Outputs in `--out` (default `experiments/results/boundary_<config stem>`): `boundary_table.md`,
`boundary_results.json` (compact: no per-problem data beyond lost / gained counts),
`passk_main.png`, `passk_delta.png`, `passk_agpo.png`, `boundary_main.png`, `frontier.png`,
`frontier_agpo.png`, `frontier_lr.png`. `--analyze_only` skips training and only rebuilds them
from the run dirs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agpo_jax.evaluation import boundary, counts, plots
from agpo_jax.evaluation.passk import pass_at_k_array
from agpo_jax.tasks import make_task, task_config
from experiments import sweep

# The study's settings on top of the task's config (configs/default.py or configs/countdown.py,
# both at temperature 1): the RL budget, and the periodic held-out evaluations the frontier is
# drawn from. (The study before the testbed reached the RLVR regime sampled at temperature 1.5;
# its results are kept in results/boundary_t1.5/.)
STUDY_SETTINGS = {
    "train.steps": "150",
    "train.eval_every": "50",
    "train.eval_problems": "300",
    "train.eval_n": "256",
}


@dataclasses.dataclass(frozen=True)
class Arm:
  label: str
  overrides: dict[str, str]
  main: bool = True  # a main method (vs an AGPO variant / constant / learning rate)
  max_seeds: int | None = None  # run only the first this many of --seeds (None: all)


MASK = {"algo.name": "agpo", "algo.agpo.mask_shared_tokens": "true"}

ARMS = [
    Arm("grpo", {"algo.name": "grpo"}),
    Arm("psr", {"algo.name": "psr"}),
    Arm("nsr", {"algo.name": "nsr"}),
    Arm("w_reinforce", {"algo.name": "w_reinforce"}),
    Arm("agpo", {"algo.name": "agpo"}),
    Arm("agpo[mask_shared]", MASK),
    Arm("agpo[nsr_plus_group]", {"algo.name": "agpo", "algo.agpo.variant": "nsr_plus_group"},
        main=False),
    Arm("agpo[weighted_rarity]", {"algo.name": "agpo", "algo.agpo.variant": "weighted_rarity"},
        main=False),
    Arm("agpo[r_neg=-0.25]", {"algo.name": "agpo", "algo.agpo.r_neg": "-0.25"}, main=False),
    Arm("agpo[lambda_pos=2]", {"algo.name": "agpo", "algo.agpo.lambda_pos": "2.0"}, main=False),
    # Other learning rates and 4 mini-batch updates per rollout (seed 0 only): more frontier
    # points per method, and the settings where AGPO's reference form collapsed.
    *(Arm(f"{label}[lr={lr}]", {**overrides, "optim.lr": lr}, main=False, max_seeds=1)
      for label, overrides in (("grpo", {"algo.name": "grpo"}), ("agpo", {"algo.name": "agpo"}),
                               ("agpo[mask_shared]", MASK))
      for lr in ("1e-4", "1e-3")),
    *(Arm(f"{label}[minibatches=4]", {**overrides, "train.num_minibatches": "4"}, main=False,
          max_seeds=1)
      for label, overrides in (("grpo", {"algo.name": "grpo"}), ("agpo", {"algo.name": "agpo"}),
                               ("agpo[mask_shared]", MASK))),
]


def run_overrides(arm: Arm, seed: int) -> dict[str, str]:
  return {**arm.overrides, "seed": str(seed)}


# ------------------------------------------------------------------------------------------
# Running (subprocesses, via experiments/sweep.py)


def run_all(config: str, workdir: pathlib.Path, fixed: dict[str, str], arms: list[Arm],
            seeds: list[int]) -> None:
  runs = [(arm, seed) for i, seed in enumerate(seeds) for arm in arms  # every arm's seed 0 first
          if arm.max_seeds is None or i < arm.max_seeds]
  for i, (arm, seed) in enumerate(runs):
    overrides = run_overrides(arm, seed)
    run_dir = workdir / sweep.run_name(overrides)
    if (run_dir / "results.json").exists():
      print(f"[{i + 1}/{len(runs)}] {run_dir.name}: done, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(runs)}] {run_dir.name}", flush=True)
    sweep.prepare_shared_base(config, workdir, fixed, run_dir)
    sweep.run(sweep.main_command(config, run_dir, {**fixed, **overrides}), run_dir / "log.txt")


def run_train_coverage(config: str, workdir: pathlib.Path, fixed: dict[str, str],
                       arms: list[Arm], seed: int, problems: int, n: int) -> None:
  """pass@k on the first `problems` training problems: the base, then each arm's run `seed`."""
  extra = {"mode": "evaluate", "eval.split": "train", "eval.max_problems": str(problems),
           "eval.n": str(n), "eval.batch_prompts": str(max(32, 8192 // n))}  # 8192 rows a call
  targets = [(workdir / "base", {})] + [
      (workdir / sweep.run_name(run_overrides(a, seed)), run_overrides(a, seed)) for a in arms]
  for run_dir, overrides in targets:
    if _find_counts(run_dir, "train", trained=run_dir.name != "base", n=n) is not None:
      continue
    print(f"train coverage: {run_dir.name}", flush=True)
    sweep.run(sweep.main_command(config, run_dir, {**fixed, **overrides, **extra}),
              run_dir / "log.txt")


# ------------------------------------------------------------------------------------------
# Analysis (pure functions of the run directories; what tests/test_boundary_study.py checks)


def _find_counts(run_dir: pathlib.Path, split: str, trained: bool,
                 n: int | None = None) -> pathlib.Path | None:
  """The run's count file for `split`: the base's or the trained model's.

  The pipeline labels the warm start `base_*`, `mode=evaluate` of a workdir without RL `sft_*`.
  """
  pattern = f"*_{split}_n{n if n is not None else '*'}_*.jsonl"
  found = sorted(p for p in (run_dir / "eval").glob(pattern)
                 if p.name.startswith(("base_", "sft_")) != trained)
  if len(found) > 1:
    raise ValueError(f"several {'trained' if trained else 'base'} count files for split "
                     f"{split!r} in {run_dir}: {[p.name for p in found]}")
  return found[0] if found else None


def per_problem_pass(records: list[dict], ids: list[str], k: int) -> np.ndarray:
  by_id = {r["id"]: r for r in records}
  return pass_at_k_array([by_id[i]["n"] for i in ids], [by_id[i]["c"] for i in ids], k)


def arm_bootstrap(base: list[dict], seeds: list[list[dict]], ks: list[int],
                  num_resamples: int = 1000, seed: int = 0, level: float = 0.95
                  ) -> dict[int, tuple[float, float]]:
  """Paired bootstrap CI over problems of mean-over-seeds pass@k(trained) - pass@k(base).

  The per-problem difference is averaged over the seeds first, so one resample of problems is
  the same draw for every seed (seeds are not resampled: the CI is over problems only).
  """
  return seed_mean_bootstrap(seeds, [base], ks, num_resamples, seed, level)[1]


def seed_mean_bootstrap(runs_a: list[list[dict]], runs_b: list[list[dict]], ks: list[int],
                        num_resamples: int = 1000, seed: int = 0, level: float = 0.95
                        ) -> tuple[dict[int, float], dict[int, tuple[float, float]]]:
  """(difference, CI) of mean-over-runs pass@k of A minus that of B, paired by problem.

  Per problem, A's runs are averaged and B's runs are averaged; the bootstrap resamples the
  problems both hold (`boundary._paired_bootstrap`, the interval `boundary.compare` uses).
  """
  ids = sorted(set.intersection(*({r["id"] for r in run} for run in [*runs_a, *runs_b])))
  diffs = np.stack([
      np.mean([per_problem_pass(run, ids, k) for run in runs_a], axis=0)
      - np.mean([per_problem_pass(run, ids, k) for run in runs_b], axis=0)
      for k in ks], axis=1)  # [problems, K]
  low, high = boundary._paired_bootstrap(diffs, num_resamples, seed, level)
  return ({k: float(d) for k, d in zip(ks, diffs.mean(axis=0))},
          {k: (float(lo), float(hi)) for k, lo, hi in zip(ks, low, high)})


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, dtype=float)
  return float(values.mean()), float(values.std())


def frontier_points(run_dir: pathlib.Path) -> list[dict]:
  """(step, pass@1, pass@K) of each periodic held-out evaluation in the run's metrics."""
  path = run_dir / "rl" / "metrics.jsonl"
  if not path.exists():
    return []
  points = []
  for line in path.read_text().splitlines():
    record = json.loads(line)
    passes = {int(key.split("@")[1]): v for key, v in record.items()
              if key.startswith("eval/pass@") and v is not None}
    if passes:
      points.append({"step": int(record["step"]), "pass@k": passes})
  return points


def analyze(workdir: pathlib.Path, arms: list[Arm], seeds: list[int], ks: list[int],
            split: str = "heldout", num_resamples: int = 1000, n: int | None = None) -> dict:
  """Every comparison the study reports, from the count files and metrics in `workdir`
  (the count files of `split`, and of sample count `n` when several exist)."""
  base_path = _find_counts(workdir / "base", split, trained=False, n=n)
  if base_path is None:
    raise FileNotFoundError(f"no base count file for split {split!r} in {workdir / 'base'}")
  base = counts.read_counts(base_path)
  # The runs may evaluate fewer problems than the base did (eval.max_problems set for the
  # runs only): the base row then covers the runs' problems, as the paired differences do.
  for arm, seed in ((a, s) for a in arms for s in seeds):
    run_dir = workdir / sweep.run_name(run_overrides(arm, seed))
    path = _find_counts(run_dir, split, trained=True, n=n) if run_dir.exists() else None
    if path is not None:
      run_ids = {r["id"] for r in counts.read_counts(path)}
      base = [r for r in base if r["id"] in run_ids] if run_ids < {r["id"] for r in base} \
          else base
      break
  base_summary = counts.summarize(base)
  result = {"split": split, "ks": ks, "num_problems": len(base), "n": base_summary["n"],
            "base": {"pass@k": base_summary["pass@k"]}, "arms": {}}
  records_by_arm = {}
  for arm in arms:
    runs, trained_records = [], []
    for seed in seeds:
      run_dir = workdir / sweep.run_name(run_overrides(arm, seed))
      path = _find_counts(run_dir, split, trained=True, n=n) if run_dir.exists() else None
      if path is None:
        continue
      records = counts.read_counts(path)
      report = boundary.compare(base, records, ks=ks, num_resamples=num_resamples, seed=0)
      trained_records.append(records)
      runs.append({
          "seed": seed, "model": path.name.split(f"_{split}_")[0],
          "pass@k": counts.summarize(records)["pass@k"],
          "difference": report.difference, "ci": report.ci,
          "lost": len(report.lost), "gained": len(report.gained),
          "frontier": frontier_points(run_dir),
      })
    if not runs:
      continue
    entry = {"overrides": arm.overrides, "main": arm.main, "runs": runs,
             "pass@k": {}, "difference": {}, "lost": _mean_std([r["lost"] for r in runs]),
             "gained": _mean_std([r["gained"] for r in runs])}
    for k in runs[0]["pass@k"]:
      entry["pass@k"][k] = _mean_std([r["pass@k"][k] for r in runs])
    for k in ks:
      entry["difference"][k] = float(np.mean([r["difference"][k] for r in runs]))
    entry["ci"], entry["ci_curve"] = {}, {}
    if num_resamples:  # one bootstrap for every k (its draws do not depend on the ks)
      curve_ks = sorted((set(result["base"]["pass@k"]) & set(entry["pass@k"])) | set(ks))
      entry["ci_curve"] = arm_bootstrap(base, trained_records, curve_ks, num_resamples)
      entry["ci"] = {k: entry["ci_curve"][k] for k in ks}
    result["arms"][arm.label] = entry
    records_by_arm[arm.label] = trained_records
  # Each arm against GRPO, the baseline the boundary literature measures: same CI machinery.
  if "grpo" in records_by_arm and num_resamples:
    for label, entry in result["arms"].items():
      if label != "grpo":
        difference, ci = seed_mean_bootstrap(records_by_arm[label], records_by_arm["grpo"], ks,
                                             num_resamples)
        entry["vs_grpo"] = {"difference": difference, "ci": ci}
  return result


def _pct(mean_std: tuple[float, float], seeds: int) -> str:
  mean, std = mean_std
  return f"{100 * mean:.1f} ± {100 * std:.1f}" if seeds > 1 else f"{100 * mean:.1f}"


def _delta(result: dict, label: str, k: int) -> str:
  arm = result["arms"][label]
  text = f"{100 * arm['difference'][k]:+.1f}"
  if k in arm.get("ci", {}):
    low, high = arm["ci"][k]
    text += f" [{100 * low:+.1f}, {100 * high:+.1f}]"
  return text


def markdown_table(result: dict) -> str:
  """pass@k as mean ± std over seeds, Δ vs base with its 95% CI, lost / gained problems."""
  ks = result["ks"]
  head = (["model", "seeds"] + [f"pass@{k}" for k in ks]
          + [f"Δ pass@{k} [95% CI]" for k in (ks[0], ks[-1])] + ["lost", "gained"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  base = result["base"]["pass@k"]
  lines.append("| base | - | " + " | ".join(f"{100 * base[k]:.1f}" for k in ks)
               + " | - | - | - | - |")
  for label, arm in result["arms"].items():
    seeds = len(arm["runs"])
    cells = [label, str(seeds)] + [_pct(arm["pass@k"][k], seeds) for k in ks]
    cells += [_delta(result, label, k) for k in (ks[0], ks[-1])]
    cells += [_pct_count(arm["lost"], seeds), _pct_count(arm["gained"], seeds)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _pct_count(mean_std: tuple[float, float], seeds: int) -> str:
  mean, std = mean_std
  return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.0f}"


def per_run_table(result: dict) -> str:
  """One row per run: Δ pass@k vs base with the run's own paired bootstrap CI."""
  ks = result["ks"]
  head = ["model", "seed"] + [f"Δ pass@{k} [95% CI]" for k in ks] + ["lost", "gained"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, arm in result["arms"].items():
    for run in arm["runs"]:
      cells = [label, str(run["seed"])]
      for k in ks:
        low, high = run["ci"].get(k, (float("nan"), float("nan")))
        cells.append(f"{100 * run['difference'][k]:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
      cells += [str(run["lost"]), str(run["gained"])]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def vs_grpo_table(result: dict) -> str:
  """Each arm minus GRPO (means over seeds), with the paired bootstrap CI over problems."""
  ks = result["ks"]
  head = ["model", "seeds"] + [f"Δ pass@{k} vs GRPO [95% CI]" for k in ks]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, arm in result["arms"].items():
    if "vs_grpo" not in arm:
      continue
    cells = [label, str(len(arm["runs"]))]
    for k in ks:
      low, high = arm["vs_grpo"]["ci"][k]
      cells.append(f"{100 * arm['vs_grpo']['difference'][k]:+.1f} "
                   f"[{100 * low:+.1f}, {100 * high:+.1f}]")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Plots


def _curves(result: dict, labels: list[str]) -> tuple[dict, dict]:
  curves = {"base": dict(result["base"]["pass@k"])}
  bands = {}
  for label in labels:
    arm = result["arms"][label]
    curves[label] = {k: v[0] for k, v in arm["pass@k"].items()}
    if len(arm["runs"]) > 1:
      bands[label] = ({k: v[0] - v[1] for k, v in arm["pass@k"].items()},
                      {k: v[0] + v[1] for k, v in arm["pass@k"].items()})
  return curves, bands


def plot_frontier(result: dict, labels: list[str], path: pathlib.Path,
                  base_point: tuple[float, float] | None, k_high: int) -> Figure:
  """pass@1 vs pass@k_high along training (mean over seeds at each periodic evaluation)."""
  fig = Figure(figsize=(6, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for label in labels:
    by_step: dict[int, list[tuple[float, float]]] = {}
    for run in result["arms"][label]["runs"]:
      for p in run["frontier"]:
        if 1 in p["pass@k"] and k_high in p["pass@k"]:
          by_step.setdefault(p["step"], []).append((p["pass@k"][1], p["pass@k"][k_high]))
    steps = sorted(by_step)
    if not steps:
      continue
    xs = [100 * np.mean([v[0] for v in by_step[s]]) for s in steps]
    ys = [100 * np.mean([v[1] for v in by_step[s]]) for s in steps]
    if base_point is not None:
      xs, ys = [100 * base_point[0]] + xs, [100 * base_point[1]] + ys
    (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.annotate(f"{steps[-1]}", (xs[-1], ys[-1]), fontsize=7, color=line.get_color())
  if base_point is not None:
    ax.plot([100 * base_point[0]], [100 * base_point[1]], marker="*", markersize=12, color="black",
            linestyle="none", label="base")
  ax.set_xlabel("pass@1 (%)")
  ax.set_ylabel(f"pass@{k_high} (%)")
  ax.set_title("Frontier along RL: base, then each periodic evaluation\n"
               "(held-out subset; mean over seeds; last step labelled)", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(path, format="png", dpi=100)
  return fig


def frontier_base_point(workdir: pathlib.Path, problems: int, k_high: int,
                        split: str = "heldout") -> tuple[float, float] | None:
  """The base's pass@1 / pass@k_high on the problems the periodic evaluations use."""
  path = _find_counts(workdir / "base", split, trained=False)
  if path is None or not problems:
    return None
  config = json.loads((workdir / "base" / "config.json").read_text())
  saved = config.get("task", {})
  task_cfg = task_config(saved.get("name", "multiplication"))  # the task's defaults, then the run's
  task_cfg.update({k: v for k, v in saved.items() if k in task_cfg})
  ids = [p.id for p in make_task(task_cfg).split(split)[:problems]]
  records = counts.read_counts(path)
  return (float(per_problem_pass(records, ids, 1).mean()),
          float(per_problem_pass(records, ids, k_high).mean()))


def _plot_delta(result: dict, labels: list[str], out: pathlib.Path) -> None:
  """`passk_delta.png`: each arm's pass@k minus the base's, with its bootstrap band."""
  base_curve = result["base"]["pass@k"]
  delta = {label: {k: 100 * (v[0] - base_curve[k])
                   for k, v in result["arms"][label]["pass@k"].items() if k in base_curve}
           for label in labels}
  delta_bands = {label: tuple({k: 100 * ci[i] for k, ci in
                               result["arms"][label]["ci_curve"].items() if k in delta[label]}
                              for i in (0, 1))
                 for label in labels if result["arms"][label].get("ci_curve")}
  fig = plots.plot_pass_at_k(delta, f"{result['split']} pass@k − base pass@k (points), "
                             "95% bootstrap CI", out / "passk_delta.png", delta_bands)
  fig.axes[0].set_ylabel("Δ pass@k (points)")
  fig.axes[0].axhline(0.0, color="black", linewidth=0.8)
  fig.savefig(out / "passk_delta.png", format="png", dpi=120)


def write_outputs(result: dict, out: pathlib.Path, workdir: pathlib.Path | None = None,
                  frontier_problems: int = 0, train_result: dict | None = None,
                  command: str = "") -> None:
  out.mkdir(parents=True, exist_ok=True)
  main = [label for label, arm in result["arms"].items() if arm["main"]]
  variants = [label for label, arm in result["arms"].items() if not arm["main"]]
  ks = result["ks"]
  parts = [f"# Boundary study: {result['split']} pass@k (%), "
           f"{result['num_problems']} problems, n = {result['n']}", ""]
  if command:
    parts += ["```", command, "```", ""]
  parts += [markdown_table(result), "",
            "Mean ± std over seeds. Δ = arm − base (mean over seeds), with a 95% paired "
            "bootstrap CI over problems of the seed-mean per-problem difference. lost: problems "
            f"the base solves at least once in n = {result['n']} and the trained model never; "
            "gained: the reverse (mean ± std over seeds).", "",
            "## Against GRPO (each arm's seed mean minus GRPO's seed mean; paired bootstrap "
            "over problems)", "",
            vs_grpo_table(result), "",
            "## Per run (each with its own paired bootstrap CI vs the base)", "",
            per_run_table(result), ""]
  if train_result is not None:
    parts += [f"## Training problems: {train_result['num_problems']}, "
              f"n = {train_result['n']} (seed-0 runs)", "", markdown_table(train_result), ""]
  (out / "boundary_table.md").write_text("\n".join(parts))
  compact = {"heldout": _jsonable(result)}
  if train_result is not None:
    compact["train"] = _jsonable(train_result)
  (out / "boundary_results.json").write_text(json.dumps(compact) + "\n")

  title = f"{result['split']} pass@k, mean ± std over seeds"
  if main:  # a study of variants alone (e.g. --arms of learning rates) has no main figure
    curves, bands = _curves(result, main)
    plots.plot_pass_at_k(curves, title, out / "passk_main.png", bands)
    _plot_delta(result, main, out)
  if variants:
    family = [label for label in main if label in ("grpo", "agpo")] + [
        label for label in variants if "[lr=" not in label]
    curves, bands = _curves(result, family)
    plots.plot_pass_at_k(curves, title + " (AGPO variants)", out / "passk_agpo.png", bands)
  if main:
    reports = {}
    for label in main:  # seed 0's run (or the first available) per method
      run = result["arms"][label]["runs"][0]
      reports[f"{label}\n(seed {run['seed']})"] = _fake_report(run)
    plots.plot_boundary(reports, out / "boundary_main.png",
                        title=f"Lost / gained vs base ({result['split']}, n = {result['n']})")
  k_high = max(k for k in ks)
  if workdir is not None and any(r["frontier"] for a in result["arms"].values()
                                 for r in a["runs"]):
    base_point = frontier_base_point(workdir, frontier_problems, k_high, result["split"])
    if main:
      plot_frontier(result, main, out / "frontier.png", base_point, k_high)
    anchors = [label for label in main if label in ("grpo", "agpo", "agpo[mask_shared]")]
    budget = ("[lr=", "[minibatches=")
    constants = [label for label in variants if not any(b in label for b in budget)]
    # Other learning rates / update counts; a collapsed run (pass@1 under 1%) would squash the
    # axes: left out of the figure (it is in the table).
    rates = [label for label in variants if any(b in label for b in budget)
             and result["arms"][label]["pass@k"][1][0] >= 0.01]
    if constants:
      plot_frontier(result, anchors + constants, out / "frontier_agpo.png", base_point, k_high)
    if rates:
      plot_frontier(result, anchors + rates, out / "frontier_lr.png", base_point, k_high)


def _fake_report(run: dict) -> boundary.BoundaryReport:
  """A report carrying only the run's lost / gained counts, for `plots.plot_boundary`."""
  dummy = boundary.ProblemChange("", 0, 0, 0, 0)
  return boundary.BoundaryReport(ks=[], num_paired=0, base_pass={}, trained_pass={},
                                 difference={}, ci={}, ci_level=0.95,
                                 lost=[dummy] * run["lost"], gained=[dummy] * run["gained"],
                                 only_in_base=[], only_in_trained=[])


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, float):
    return round(value, 5)
  return value


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--out", default=None, type=pathlib.Path,
                      help="default: experiments/results/boundary_<config file stem>")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--arms", default=",".join(a.label for a in ARMS),
                      help="comma-separated labels from ARMS")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="an override shared by every run, on top of STUDY_SETTINGS")
  parser.add_argument("--ks", default="1,16,256")
  parser.add_argument("--train_coverage", type=int, default=0,
                      help="also evaluate base and seed-0 runs on this many training problems "
                      "(the first ones of the split; 7100 = all)")
  parser.add_argument("--train_coverage_n", type=int, default=32,
                      help="samples per training problem (the table reads these count files)")
  parser.add_argument("--bootstrap", type=int, default=1000, help="resamples (0: no CIs)")
  parser.add_argument("--analyze_only", action="store_true")
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = pathlib.Path("experiments/results") / f"boundary_{pathlib.Path(args.config).stem}"

  fixed = {**STUDY_SETTINGS, **dict(item.partition("=")[::2] for item in args.set)}
  by_label = {a.label: a for a in ARMS}
  unknown = [a for a in args.arms.split(",") if a not in by_label]
  if unknown:
    parser.error(f"unknown arms {unknown}; choose from {list(by_label)}")
  arms = [by_label[a] for a in args.arms.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  ks = [int(k) for k in args.ks.split(",")]
  args.workdir.mkdir(parents=True, exist_ok=True)
  if not args.analyze_only:
    run_all(args.config, args.workdir, fixed, arms, seeds)
    if args.train_coverage:
      run_train_coverage(args.config, args.workdir, fixed,
                         [a for a in arms if a.max_seeds is None], seeds[0],
                         args.train_coverage, args.train_coverage_n)

  result = analyze(args.workdir, arms, seeds, ks, "heldout", args.bootstrap)
  train_result = None
  n_train = args.train_coverage_n
  if _find_counts(args.workdir / "base", "train", trained=False, n=n_train) is not None:
    train_arms = [a for a in arms
                  if (args.workdir / sweep.run_name(run_overrides(a, seeds[0]))).exists()]
    train_ks = sorted({k for k in ks if k <= n_train} | {n_train})
    train_result = analyze(args.workdir, train_arms, seeds[:1], train_ks, "train",
                           args.bootstrap, n=n_train)
  command = "python -m experiments.boundary_study " + " ".join(
      a for a in (argv if argv is not None else sys.argv[1:]) if a != "--analyze_only")
  write_outputs(result, args.out, args.workdir, int(fixed.get("train.eval_problems", 0))
                if int(fixed.get("train.eval_every", 0)) else 0, train_result, command)
  print((args.out / "boundary_table.md").read_text())
  return result


if __name__ == "__main__":
  main()
