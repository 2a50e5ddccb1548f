"""Is a testbed preset in the RLVR regime? The numbers, from a boundary-study workdir.

    python -m experiments.regime --workdir=runs/boundary            # configs/default.py's study
    python -m experiments.regime --workdir=runs/boundary_countdown  # configs/countdown.py's

Reads the base's held-out count file (`WORKDIR/base/eval`) and the GRPO runs of seeds 0, 1, 2
(`experiments/boundary_study.py` writes both; no training here) and prints, against the
criteria of the regime the paper starts from (a strong base whose most likely answer beats a
sample, sharpened by RL at the cost of coverage):

- base pass@1 at temperature 1, within [30, 60] %;
- maj@K - pass@1 at least 10 points (K = the samples per problem, 256 in the study);
- GRPO's pass@1 gain over the base, mean over seeds with a 95% Student t-interval over seeds,
  at least 5 points and the interval above 0;
- GRPO's pass@K change over the base, mean and t-interval over seeds: below 0 (RL shrinks the
  set of problems solved at large k).

The problems are those the runs evaluated (the base's row restricted to them).
"""

from __future__ import annotations

import argparse
import pathlib

from agpo_jax.evaluation import counts
from experiments import boundary_study as study
from experiments import sweep

def t_interval(values: list[float]) -> tuple[float, float, float]:
  """(mean, low, high): the 95% Student t-interval of the mean (a point for one value)."""
  mean, half = sweep.mean_ci(values)
  return mean, mean - half, mean + half


def regime(workdir: pathlib.Path, arm: str = "grpo", seeds: tuple[int, ...] = (0, 1, 2)
           ) -> dict:
  """The regime numbers of a boundary-study workdir (fractions, not %)."""
  by_label = {a.label: a for a in study.ARMS}
  runs = []
  for seed in seeds:
    run_dir = workdir / sweep.run_name(study.run_overrides(by_label[arm], seed))
    path = study._find_counts(run_dir, "heldout", trained=True)  # noqa: SLF001
    if path is None:
      raise FileNotFoundError(f"no trained held-out count file in {run_dir}")
    runs.append(counts.read_counts(path))
  base_path = study._find_counts(workdir / "base", "heldout", trained=False)  # noqa: SLF001
  if base_path is None:
    raise FileNotFoundError(f"no base held-out count file in {workdir / 'base'}")
  ids = {r["id"] for r in runs[0]}
  base = [r for r in counts.read_counts(base_path) if r["id"] in ids]
  summary = counts.summarize(base)
  k = summary["n"]
  out = {"problems": len(base), "k": k, "base_pass@1": summary["pass@k"][1],
         # None when the count files carry no answers (maj@k needs them)
         "base_maj@k": summary["maj@k"].get(k), "base_pass@k": summary["pass@k"][k],
         "arm": arm, "seeds": list(seeds)}
  trained = [counts.summarize(run)["pass@k"] for run in runs]
  out["trained_pass@1"] = t_interval([t[1] for t in trained])
  out["delta_pass@1"] = t_interval([t[1] - out["base_pass@1"] for t in trained])
  out["delta_pass@k"] = t_interval([t[k] - out["base_pass@k"] for t in trained])
  return out


def report(numbers: dict) -> str:
  """The criteria table, in %."""
  k = numbers["k"]
  p1 = 100 * numbers["base_pass@1"]
  maj = None if numbers["base_maj@k"] is None else 100 * numbers["base_maj@k"]
  d1 = [100 * x for x in numbers["delta_pass@1"]]
  dk = [100 * x for x in numbers["delta_pass@k"]]
  ok = lambda flag: "yes" if flag else "**no**"  # noqa: E731
  arm, seeds = numbers["arm"], len(numbers["seeds"])
  rows = [
      ("base pass@1", f"{p1:.1f}", "30 to 60", ok(30 <= p1 <= 60)),
      (f"base maj@{k} - pass@1",
       "not recorded" if maj is None else f"{maj - p1:.1f} ({maj:.1f} - {p1:.1f})", ">= 10",
       ok(maj is not None and maj - p1 >= 10)),
      (f"{arm} Δ pass@1, {seeds} seeds [95% t-CI]", f"{d1[0]:+.1f} [{d1[1]:+.1f}, {d1[2]:+.1f}]",
       ">= 5, CI above 0", ok(d1[0] >= 5 and d1[1] > 0)),
      (f"{arm} Δ pass@{k}, {seeds} seeds [95% t-CI]",
       f"{dk[0]:+.1f} [{dk[1]:+.1f}, {dk[2]:+.1f}]", "< 0", ok(dk[0] < 0)),
  ]
  lines = [f"held-out problems: {numbers['problems']}, {k} samples each, temperature as run",
           "", "| criterion | measured | needed | met |", "|---|---|---|---|"]
  lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--arm", default="grpo")
  parser.add_argument("--seeds", default="0,1,2")
  args = parser.parse_args(argv)
  numbers = regime(args.workdir, args.arm, tuple(int(s) for s in args.seeds.split(",")))
  print(report(numbers), end="")
  return numbers


if __name__ == "__main__":
  main()
