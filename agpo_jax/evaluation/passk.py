"""pass@k, avg@n and maj@k from per-problem sample counts (docs/ALGORITHMS.md, "Evaluation").

A problem sampled ``n`` times with ``c`` correct completions has the unbiased estimator

    pass@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{j=n−c+1}^{n} (1 − k/j)      (1 when n − c < k),

the probability that a uniformly random k-subset of the n samples holds at least one correct
one. The product form never forms a binomial coefficient, so it stays exact to float64 rounding
at n = 256 where C(n, k) reaches 1e76. Benchmark values are plain means over problems.

maj@k (majority vote over extracted answers) is defined in ``majority_vote_accuracy``: the
exact probability, over uniformly random k-subsets of the n samples, that the subset's
majority answer is correct. It is computed exactly (no Monte-Carlo noise, so two runs can be
compared at any k), by counting subsets with a generating-function product.
"""

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct out of ``n`` samples."""
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    miss_all = 1.0
    for j in range(n - c + 1, n + 1):
        miss_all *= 1.0 - k / j
    return 1.0 - miss_all


def default_ks(n: int) -> list[int]:
    """``[1, 2, 4, …]`` up to ``n``, plus ``n`` itself when it is not a power of two."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_array(
    ns: Sequence[int] | np.ndarray, cs: Sequence[int] | np.ndarray, k: int
) -> np.ndarray:
    """Per-problem pass@k ``[num_problems]`` (float64); the vectorised ``pass_at_k``.

    The product is formed once per distinct ``(n, c)`` pair (a benchmark at fixed n has at
    most n + 1 of them), as a ``[pairs, max c]`` matrix of factors ``1 − k/j`` padded with 1.
    When n − c < k the range of j holds j = k, whose factor is exactly 0, so pass@k is exactly 1
    without a special case.
    """
    ns, cs = _as_counts(ns, cs)
    if k < 1 or k > ns.min():
        raise ValueError(f"k must be in [1, min(n)]; got k={k}, min(n)={ns.min()}")
    pairs, inverse = np.unique(np.stack([ns, cs], axis=1), axis=0, return_inverse=True)
    n, c = pairs[:, 0:1], pairs[:, 1:2]
    offsets = np.arange(max(int(c.max()), 1))[None, :]
    j = n - c + 1 + offsets
    factors = np.where(offsets < c, 1.0 - k / j, 1.0)
    return (1.0 - np.prod(factors, axis=1))[inverse.reshape(-1)]


def pass_at_k_curve(
    ns: Sequence[int] | np.ndarray, cs: Sequence[int] | np.ndarray, ks: Sequence[int] | None = None
) -> dict[int, float]:
    """Benchmark pass@k (mean over problems) for each k; ks default to ``default_ks(min n)``."""
    ns, cs = _as_counts(ns, cs)
    ks = default_ks(int(ns.min())) if ks is None else [int(k) for k in ks]
    return {k: float(pass_at_k_array(ns, cs, k).mean()) for k in ks}


def avg_at_n(ns: Sequence[int] | np.ndarray, cs: Sequence[int] | np.ndarray) -> float:
    """Mean accuracy over all samples of each problem, averaged over problems (= pass@1)."""
    ns, cs = _as_counts(ns, cs)
    return float(np.mean(cs / ns))


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent parseable answer; ties go to the answer seen first. None if no answer."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer:  # None and "" (unparseable) never vote
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None
    return max(counts, key=counts.__getitem__)  # dicts keep first-seen order; max keeps the first


def majority_vote_accuracy(
    answers: Sequence[str | None], correct: Sequence[int | bool], ks: Sequence[int]
) -> np.ndarray:
    """maj@k of one problem for each k in ``ks``, exactly; returns ``[len(ks)]`` float64.

    Definition. ``answers[i]`` is the answer extracted from sample i (None or "" when nothing
    could be extracted), ``correct[i]`` its verdict. A distinct answer string is correct when
    any sample carrying it is graded correct (answers are compared as strings; a verifier
    timeout on one copy does not make the string wrong). For a set S of samples, the vote
    winner is the parseable answer with the most votes in S; ties go to the answer whose
    first occurrence among all n samples is earliest (for k = n this is "first seen"; the
    rule does not depend on which subset was drawn). If S holds no parseable answer there is
    no winner, which counts as incorrect. maj@k is P(winner of S is correct) for S uniform
    over the C(n, k) k-subsets; maj@n is the correctness of ``majority_answer(answers)``.

    Computation. For a correct answer a with m_a copies winning with x votes, every earlier
    answer b must get < x votes and every later one <= x; the number of ways to pick the other
    k − x samples is the coefficient of t^(k−x) in
    (1 + t)^free · Π_restricted Σ_{j <= limit_b} C(m_b, j) t^j. Summing C(m_a, x) times that
    over x and over correct answers, divided by C(n, k), gives maj@k. Answers with m_b <= limit
    are free, so the work is at most ~2n short convolutions per correct answer, for all ks.
    """
    return _majority_vote_accuracy(answers, correct, ks, _binomial_table(len(answers)))


def _majority_vote_accuracy(
    answers: Sequence[str | None],
    correct: Sequence[int | bool],
    ks: Sequence[int],
    binom: np.ndarray,
) -> np.ndarray:
    """``majority_vote_accuracy`` with a precomputed ``_binomial_table`` of size >= n + 1."""
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"answers and correct differ in length: {n} vs {len(correct)}")
    ks = np.asarray([int(k) for k in ks], dtype=np.int64)
    if ks.size and (ks.min() < 1 or ks.max() > n):
        raise ValueError(f"every k must be in [1, n]; got ks={ks.tolist()}, n={n}")

    votes: dict[str, list[int]] = {}  # answer -> [count, is_correct], in first-seen order
    for answer, verdict in zip(answers, correct):
        if answer:  # None and "" (unparseable) never vote
            entry = votes.setdefault(answer, [0, 0])
            entry[0] += 1
            entry[1] |= bool(verdict)
    counts = [count for count, _ in votes.values()]
    winning_subsets = np.zeros(n + 1)  # [subset size]: k-subsets whose winner is correct
    for rank, (count_a, is_correct) in enumerate(votes.values()):
        if not is_correct:
            continue
        # Rivals by decreasing count: at x votes for a, only those with >= x copies can tie or win.
        rivals = sorted(
            ((m, rank_b < rank) for rank_b, m in enumerate(counts) if rank_b != rank), reverse=True
        )
        for x in range(1, count_a + 1):
            free = n - count_a
            ways = np.ones(1)
            for m_b, earlier in rivals:
                if m_b < x:
                    break
                limit = x - 1 if earlier else x  # ties go to the earlier answer
                if m_b > limit:
                    free -= m_b
                    if limit > 0:
                        ways = np.convolve(ways, binom[m_b, : limit + 1])
            ways = np.convolve(ways, binom[free, : free + 1])  # [j]: ways to add j other samples
            winning_subsets[x : x + ways.size] += binom[count_a, x] * ways
    return winning_subsets[ks] / binom[n, ks]


def maj_at_k_curve(
    answers_per_problem: Sequence[Sequence[str | None]],
    correct_per_problem: Sequence[Sequence[int | bool]],
    ks: Sequence[int] | None = None,
) -> dict[int, float]:
    """Benchmark maj@k (mean over problems of ``majority_vote_accuracy``) for each k."""
    if len(answers_per_problem) != len(correct_per_problem) or not answers_per_problem:
        raise ValueError(
            "need the same, non-zero number of problems in answers and correct; got "
            f"{len(answers_per_problem)} and {len(correct_per_problem)}"
        )
    if ks is None:
        ks = default_ks(min(len(answers) for answers in answers_per_problem))
    ks = [int(k) for k in ks]
    binom = _binomial_table(max(len(answers) for answers in answers_per_problem))
    per_problem = np.stack(
        [
            _majority_vote_accuracy(answers, correct, ks, binom)
            for answers, correct in zip(answers_per_problem, correct_per_problem)
        ]
    )
    return {k: float(value) for k, value in zip(ks, per_problem.mean(axis=0))}


def maj_at_k(
    answers_per_problem: Sequence[Sequence[str | None]],
    correct_per_problem: Sequence[Sequence[int | bool]],
    k: int,
) -> float:
    """Benchmark maj@k at one k (exact; see ``majority_vote_accuracy``)."""
    return maj_at_k_curve(answers_per_problem, correct_per_problem, [k])[int(k)]


def _check_counts(n: int, c: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"k must be <= n; got k={k} > n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n]; got c={c}, n={n}")


def _as_counts(ns, cs) -> tuple[np.ndarray, np.ndarray]:
    ns, cs = np.asarray(ns), np.asarray(cs)
    if ns.ndim != 1 or ns.shape != cs.shape or ns.size == 0:
        raise ValueError(
            f"ns and cs must be equal-length, non-empty 1-D; got {ns.shape} and {cs.shape}"
        )
    if not (np.issubdtype(ns.dtype, np.integer) and np.issubdtype(cs.dtype, np.integer)):
        raise ValueError(f"ns and cs must be integers; got dtypes {ns.dtype} and {cs.dtype}")
    if ns.min() < 1 or cs.min() < 0 or np.any(cs > ns):
        raise ValueError("counts must satisfy n >= 1 and 0 <= c <= n for every problem")
    return ns.astype(np.int64), cs.astype(np.int64)


def _binomial_table(n: int) -> np.ndarray:
    """``[n + 1, n + 1]`` float64 table of C(i, j) (0 for j > i), by Pascal's rule."""
    table = np.zeros((n + 1, n + 1))
    table[:, 0] = 1.0
    for i in range(1, n + 1):
        table[i, 1 : i + 1] = table[i - 1, 1 : i + 1] + table[i - 1, :i]
    return table
