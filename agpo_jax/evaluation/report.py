"""The paper-style results table: one row per model, one column group per benchmark.

    results = {"base": {"math500": summary, "aime24": summary}, "agpo-step300": {...}}
    print(benchmark_table(results))

A summary is what `counts.summarize` returns for one benchmark. Each benchmark's group holds
avg@n (the unbiased pass@1 estimate from n samples, the number papers report as "pass@1"),
pass@k at the largest k every model has (the reasoning boundary) and, when the count files
hold the extracted answers, maj@k at that k. Values are percentages with one decimal. A
model with no summary for a benchmark gets "-" in its group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

Summary = Mapping  # counts.summarize's dict


def _int_keys(curve: Mapping) -> dict[int, float]:
  return {int(k): float(v) for k, v in curve.items()}


def _shared_k(summaries: list[Summary], key: str) -> int | None:
  """The largest k that every summary's `key` curve has (None if one has none)."""
  common = None
  for summary in summaries:
    ks = set(_int_keys(summary.get(key) or {}))
    common = ks if common is None else common & ks
  return max(common) if common else None


def benchmark_table(results: Mapping[str, Mapping[str, Summary]]) -> str:
  """Markdown table of `results[model][benchmark]` summaries (see the module docstring)."""
  if not results:
    raise ValueError("benchmark_table needs at least one model")
  benchmarks: list[str] = []
  for per_benchmark in results.values():
    benchmarks += [b for b in per_benchmark if b not in benchmarks]
  header, rule, columns = ["model"], ["---"], []
  for bench in benchmarks:
    present = [r[bench] for r in results.values() if bench in r]
    n = min(int(s["n"]) for s in present)
    k_pass, k_maj = _shared_k(present, "pass@k"), _shared_k(present, "maj@k")
    group = [("avg@n", f"{bench} avg@{n}", None)]
    if k_pass is not None and k_pass > 1:
      group.append(("pass@k", f"{bench} pass@{k_pass}", k_pass))
    if k_maj is not None:
      group.append(("maj@k", f"{bench} maj@{k_maj}", k_maj))
    columns += [(bench, key, k) for key, _, k in group]
    header += [title for _, title, _ in group]
    rule += ["---"] * len(group)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
  for model, per_benchmark in results.items():
    cells = [model]
    for bench, key, k in columns:
      summary = per_benchmark.get(bench)
      if summary is None:
        cells.append("-")
      elif k is None:
        cells.append(f"{100 * float(summary[key]):.1f}")
      else:
        cells.append(f"{100 * _int_keys(summary[key])[k]:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_benchmarks(results: Mapping[str, Mapping[str, Summary]], directory: str | os.PathLike
                    ) -> list[str]:
  """One pass@k plot per benchmark (a curve per model) as `directory/passk_<benchmark>.png`;
  returns the paths. Imports matplotlib only when called."""
  from agpo_jax.evaluation import plots

  benchmarks: list[str] = []
  for per_benchmark in results.values():
    benchmarks += [b for b in per_benchmark if b not in benchmarks]
  paths = []
  for bench in benchmarks:
    curves = {model: _int_keys(per_benchmark[bench]["pass@k"])
              for model, per_benchmark in results.items() if bench in per_benchmark}
    path = os.path.join(os.fspath(directory), f"passk_{bench.replace(':', '_')}.png")
    plots.plot_pass_at_k(curves, f"pass@k on {bench}", path)
    paths.append(path)
  return paths


def versus_base(base_records, trained: Mapping[str, list], num_resamples: int = 1000,
                seed: int = 0) -> tuple[str, dict]:
  """Each trained model against the base, problem by problem (`boundary.compare`).

  Args:
    base_records: the base model's count records.
    trained: `{model: count records}` on the same problems.
    num_resamples: paired bootstrap resamples of the confidence intervals (95%).
    seed: the bootstrap's seed.

  Returns:
    A markdown table (a row per model: the change of pass@1 and of pass@k at the largest k,
    each with its 95% interval, in points, and the problems lost and gained) and
    `{model: BoundaryReport.to_dict()}`.
  """
  from agpo_jax.evaluation.boundary import compare

  lines, reports = [], {}
  for model, records in trained.items():
    report = compare(base_records, records, num_resamples=num_resamples, seed=seed)
    reports[model] = report.to_dict()
    k_max = max(report.ks)
    if not lines:
      lines = [f"| model vs base | Δ pass@1 | 95% CI | Δ pass@{k_max} | 95% CI | lost | gained |",
               "|---|---:|:---:|---:|:---:|---:|---:|"]
    cells = [model]
    for k in (1, k_max):
      low, high = report.ci.get(k, (float("nan"), float("nan")))
      cells += [f"{100 * report.difference[k]:+.1f}", f"[{100 * low:+.1f}, {100 * high:+.1f}]"]
    cells += [str(len(report.lost)), str(len(report.gained))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines), reports
