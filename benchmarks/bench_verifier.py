"""Verifier throughput: the process pool against grading in-process.

    python benchmarks/bench_verifier.py [--runs 5] [--num-workers N]

Workloads (median items/s over `--runs`, runs of the two interleaved; memoisation is off so
that each run pays for every parse):
  math500 refs           every MATH500 gold answer, boxed, against itself (string fast path hits)
  math500 refs, sympy    the same with the fast path off: Math-Verify parses and compares all
  long completions       ~4k-token synthetic reasoning ending in a box; half the answers are
                         the gold in another form (`\\dfrac`, `$...$`), half are wrong
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agpo_jax.tasks.benchmarks import load_benchmark  # noqa: E402
from agpo_jax.verifiers import (  # noqa: E402
    MathGrader,
    Reference,
    VerifierPool,
    default_num_workers,
)

FILLER = [
    "Let us consider the expression $f(x) = x^2 + 3x - 4$ and factor it as $(x+4)(x-1)$.",
    "By the triangle inequality, $|a + b| \\le |a| + |b|$, with equality when $ab \\ge 0$.",
    "Substituting $n = 2k + 1$ gives $n^2 = 4k^2 + 4k + 1 \\equiv 1 \\pmod 4$.",
    "We compute $\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$, so the total is $55$.",
    "Wait, let me double-check this step carefully before moving on.",
    "Therefore the area is $\\frac{1}{2} \\cdot 6 \\cdot 8 = 24$ square units.",
]


def long_completion(answer: str, rng: random.Random, num_chars: int = 16_000) -> str:
  """About 4k tokens of reasoning (~4 characters per token) ending in `\\boxed{answer}`."""
  parts, length = [], 0
  while length < num_chars:
    parts.append(rng.choice(FILLER))
    length += len(parts[-1]) + 1
  return " ".join(parts) + f"\n\nThe final answer is $\\boxed{{{answer}}}$."


def workloads(rng: random.Random) -> dict[str, tuple[list[str], list[Reference], bool]]:
  problems = load_benchmark("math500")
  references = [p.reference for p in problems]
  boxed = ["\\boxed{" + p.answer + "}" for p in problems]
  long = [
      long_completion(p.answer.replace("\\frac", "\\dfrac") if i % 2 else p.answer + "+1", rng)
      for i, p in enumerate(problems)
  ]
  return {
      "math500 refs": (boxed, references, True),
      "math500 refs, sympy": (boxed, references, False),
      "long completions": (long, references, True),
  }


def in_process_rate(grader: MathGrader, completions, references) -> float:
  start = time.perf_counter()
  for completion, reference in zip(completions, references):
    grader.grade(completion, reference.answer)
  return len(completions) / (time.perf_counter() - start)


def pool_rate(pool: VerifierPool, completions, references) -> float:
  start = time.perf_counter()
  pool.grade(completions, references)
  return len(completions) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--num-workers", type=int, default=default_num_workers())
  args = parser.parse_args()
  print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
  print(f"{args.num_workers} pool workers, median of {args.runs} runs, items/s")
  print(f"{'workload':24s} {'items':>6s} {'in-process':>11s} {'pool':>9s}")
  for name, (completions, references, fast_path) in workloads(random.Random(0)).items():
    # Memoisation off: every run pays for every parse, as the first sight of an answer does.
    grader = MathGrader(string_fast_path=fast_path, cache_size=0)
    grader.grade("\\boxed{0.5}", "\\frac{1}{2}")  # Math-Verify's first-call cost
    start = time.perf_counter()
    with VerifierPool(
        args.num_workers, timeout_s=30, string_fast_path=fast_path, cache_size=0
    ) as pool:
      startup_s = time.perf_counter() - start
      local, pooled = [], []
      for _ in range(args.runs):  # interleaved, so that load from other jobs hits both alike
        local.append(in_process_rate(grader, completions, references))
        pooled.append(pool_rate(pool, completions, references))
    print(
        f"{name:24s} {len(completions):6d} {statistics.median(local):11.1f} "
        f"{statistics.median(pooled):9.1f}   (pool startup {startup_s:.1f}s)"
    )


if __name__ == "__main__":
  main()
