"""Reasoning-boundary comparison of a trained model against its base, problem by problem.

The boundary of a model on a benchmark is its pass@n (docs/ALGORITHMS.md, "Evaluation").
``compare`` pairs two runs' count records by problem id and reports, on the problems both
runs hold: pass@k of each and the difference (trained − base) with a paired bootstrap
confidence interval; the problems "lost" (base solves at n, c > 0; trained never does, c == 0)
and "gained" (the reverse). Problems present in only one run are listed, never dropped
silently, and are left out of every paired number.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from agpo_jax.evaluation.counts import validate_record
from agpo_jax.evaluation.passk import default_ks, pass_at_k_array


@dataclasses.dataclass(frozen=True)
class ProblemChange:
    """One problem's counts in both runs."""

    id: str
    base_c: int
    base_n: int
    trained_c: int
    trained_n: int


@dataclasses.dataclass(frozen=True)
class BoundaryReport:
    """Trained vs base on the problems both runs hold; pass@k values are fractions in [0, 1]."""

    ks: list[int]
    num_paired: int
    base_pass: dict[int, float]
    trained_pass: dict[int, float]
    difference: dict[int, float]  # trained − base
    ci: dict[int, tuple[float, float]]  # paired bootstrap interval of the difference
    ci_level: float
    lost: list[ProblemChange]  # base c > 0, trained c == 0
    gained: list[ProblemChange]  # base c == 0, trained c > 0
    only_in_base: list[str]
    only_in_trained: list[str]

    def to_dict(self) -> dict:
        """JSON-ready (``json.dumps`` turns the integer ks into strings)."""
        return {
            "ks": list(self.ks),
            "num_paired": self.num_paired,
            "base_pass@k": dict(self.base_pass),
            "trained_pass@k": dict(self.trained_pass),
            "difference": dict(self.difference),
            "ci": {k: [low, high] for k, (low, high) in self.ci.items()},
            "ci_level": self.ci_level,
            "lost": [dataclasses.asdict(p) for p in self.lost],
            "gained": [dataclasses.asdict(p) for p in self.gained],
            "only_in_base": list(self.only_in_base),
            "only_in_trained": list(self.only_in_trained),
        }

    def to_markdown(self) -> str:
        """A pass@k table (in %) followed by the lost, gained and unpaired problems."""
        level = f"{self.ci_level:.0%}"
        lines = [
            f"pass@k on {self.num_paired} paired problems (%)",
            "",
            f"| k | base | trained | Δ | {level} CI of Δ |",
            "|---:|---:|---:|---:|:---:|",
        ]
        for k in self.ks:
            interval = (
                f"[{100 * self.ci[k][0]:+.2f}, {100 * self.ci[k][1]:+.2f}]" if k in self.ci else "–"
            )
            lines.append(
                f"| {k} | {100 * self.base_pass[k]:.2f} | {100 * self.trained_pass[k]:.2f} "
                f"| {100 * self.difference[k]:+.2f} | {interval} |"
            )
        for title, changes in (("Lost", self.lost), ("Gained", self.gained)):
            lines += ["", f"{title}: {len(changes)} problems"]
            if changes:
                lines += ["", "| id | base c/n | trained c/n |", "|---|---:|---:|"]
                lines += [
                    f"| {p.id} | {p.base_c}/{p.base_n} | {p.trained_c}/{p.trained_n} |"
                    for p in changes
                ]
        for title, ids in (
            ("Only in base", self.only_in_base),
            ("Only in trained", self.only_in_trained),
        ):
            if ids:
                lines += ["", f"{title} ({len(ids)}): " + ", ".join(ids)]
        return "\n".join(lines) + "\n"


def compare(
    base_records: Sequence[Mapping],
    trained_records: Sequence[Mapping],
    ks: Sequence[int] | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BoundaryReport:
    """Compares two runs' count records; ks default to ``default_ks(min n over paired problems)``.

    ``num_resamples=0`` skips the bootstrap (``ci`` is then empty).
    """
    base, trained = _by_id(base_records, "base"), _by_id(trained_records, "trained")
    paired = sorted(base.keys() & trained.keys())
    if not paired:
        raise ValueError("the two runs share no problem id")
    base_n, base_c, trained_n, trained_c = _paired_counts(base, trained, paired)
    if ks is None:
        ks = default_ks(int(min(base_n.min(), trained_n.min())))
    ks = [int(k) for k in ks]
    base_pass = np.stack([pass_at_k_array(base_n, base_c, k) for k in ks], axis=1)  # [paired, K]
    trained_pass = np.stack([pass_at_k_array(trained_n, trained_c, k) for k in ks], axis=1)
    differences = trained_pass - base_pass
    ci = {}
    if num_resamples > 0:
        low, high = _paired_bootstrap(differences, num_resamples, seed, level)
        ci = {k: (float(lo), float(hi)) for k, lo, hi in zip(ks, low, high)}

    changes = [
        ProblemChange(pid, int(bc), int(bn), int(tc), int(tn))
        for pid, bn, bc, tn, tc in zip(paired, base_n, base_c, trained_n, trained_c)
    ]
    return BoundaryReport(
        ks=ks,
        num_paired=len(paired),
        base_pass={k: float(v) for k, v in zip(ks, base_pass.mean(axis=0))},
        trained_pass={k: float(v) for k, v in zip(ks, trained_pass.mean(axis=0))},
        difference={k: float(v) for k, v in zip(ks, differences.mean(axis=0))},
        ci=ci,
        ci_level=level,
        lost=[p for p in changes if p.base_c > 0 and p.trained_c == 0],
        gained=[p for p in changes if p.base_c == 0 and p.trained_c > 0],
        only_in_base=sorted(base.keys() - trained.keys()),
        only_in_trained=sorted(trained.keys() - base.keys()),
    )


def bootstrap_ci(
    base_records: Sequence[Mapping],
    trained_records: Sequence[Mapping],
    k: int,
    num_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of pass@k(trained) − pass@k(base), paired by problem id.

    Each resample draws the paired problems with replacement (the same draw for both runs,
    so per-problem difficulty cancels). Problems are ordered by id, so the interval does not
    depend on record order; for a given seed it matches ``compare``'s interval at this k.
    """
    base, trained = _by_id(base_records, "base"), _by_id(trained_records, "trained")
    paired = sorted(base.keys() & trained.keys())
    if not paired:
        raise ValueError("the two runs share no problem id")
    base_n, base_c, trained_n, trained_c = _paired_counts(base, trained, paired)
    differences = pass_at_k_array(trained_n, trained_c, k) - pass_at_k_array(base_n, base_c, k)
    low, high = _paired_bootstrap(differences[:, None], num_resamples, seed, level)
    return float(low[0]), float(high[0])


def _by_id(records: Sequence[Mapping], run: str) -> dict[str, dict]:
    by_id = {}
    for record in records:
        record = validate_record(record)
        if record["id"] in by_id:
            raise ValueError(f"duplicate problem id {record['id']!r} in the {run} records")
        by_id[record["id"]] = record
    return by_id


def _paired_counts(base: dict, trained: dict, paired: list[str]) -> tuple[np.ndarray, ...]:
    """``(base_n, base_c, trained_n, trained_c)``, each ``[len(paired)]`` int64."""
    return tuple(
        np.array([run[pid][key] for pid in paired], dtype=np.int64)
        for run in (base, trained)
        for key in ("n", "c")
    )


def _paired_bootstrap(
    differences: np.ndarray, num_resamples: int, seed: int, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean of ``differences[problems, K]`` over problem resamples.

    Each resample is a row of draw counts per problem, so its means for all K are one matmul
    and memory stays ``[block, problems]``; the index stream does not depend on K, so one k or
    many give the same draws.
    """
    if num_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need num_resamples >= 1 and 0 < level < 1; got {num_resamples}, {level}")
    rng = np.random.default_rng(seed)
    num_problems = differences.shape[0]
    means, block = [], 256
    for start in range(0, num_resamples, block):
        rows = min(block, num_resamples - start)
        indices = rng.integers(0, num_problems, size=(rows, num_problems))
        flat = (indices + num_problems * np.arange(rows)[:, None]).ravel()
        draws = np.bincount(flat, minlength=rows * num_problems).reshape(rows, num_problems)
        means.append(draws @ differences / num_problems)  # [rows, K]
    means = np.concatenate(means)
    tail = (1.0 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1.0 - tail, axis=0)
