"""Where the advantage mass lands over training, arm by arm, from a boundary-study workdir.

    python -m experiments.mechanism --workdir=runs/boundary --arms=grpo,agpo,agpo[mask_shared]

Reads each arm's seed-0 run (`rl/metrics.jsonl`, written by every RL run: the `tokens/*`
diagnostics of `algorithms/token_mass.py` and the `algo/*` advantage masses) and prints, at the
steps `--steps`, one markdown row per arm and step: the reward on the training prompts, the
policy's entropy on the tokens in the loss, the negative / positive advantage mass of the batch
(`algo/negative_mass`, `algo/positive_mass`: sums of |A| over completions), and the shares of
the negative token mass on the stop token, the first token, tokens the whole group shares and the
last quarter of each completion. The last column is the periodic held-out pass@1 where the run
logged one (`train.eval_every`).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from experiments import boundary_study as study
from experiments import sweep

COLUMNS = (("reward", "reward", "{:.3f}"), ("entropy", "entropy_mean", "{:.3f}"),
           ("neg / pos mass", None, None), ("neg on stop", "tokens/neg_eos", "{:.2f}"),
           ("neg on first", "tokens/neg_first", "{:.2f}"),
           ("neg on shared", "tokens/neg_shared", "{:.2f}"),
           ("neg on last quarter", "tokens/neg_q4", "{:.2f}"),
           ("held-out pass@1", "eval/pass@1", "{:.3f}"))


def rows(workdir: pathlib.Path, labels: list[str], steps: list[int], seed: int = 0
         ) -> list[str]:
  """Markdown rows (header first) for the arms `labels` at `steps`."""
  by_label = {a.label: a for a in study.ARMS}
  out = ["| arm | step | " + " | ".join(c[0] for c in COLUMNS) + " |",
         "|---|---:|" + "---:|" * len(COLUMNS)]
  for label in labels:
    run_dir = workdir / sweep.run_name(study.run_overrides(by_label[label], seed))
    path = run_dir / "rl" / "metrics.jsonl"
    if not path.exists():
      continue
    records = {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}
    for step in steps:
      if step not in records:
        continue
      r = records[step]
      cells = []
      for _, key, fmt in COLUMNS:
        if key is None:
          cells.append(f"{r['algo/negative_mass']:.0f} / {r['algo/positive_mass']:.0f}")
        else:
          cells.append(fmt.format(r[key]) if key in r else "")
      out.append(f"| {label} | {step} | " + " | ".join(cells) + " |")
  return out


def main(argv: list[str] | None = None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--arms", default="grpo,agpo,agpo[mask_shared]")
  parser.add_argument("--steps", default="1,50,100,150")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  lines = rows(args.workdir, args.arms.split(","), [int(s) for s in args.steps.split(",")],
               args.seed)
  print("\n".join(lines))
  return lines


if __name__ == "__main__":
  main()
