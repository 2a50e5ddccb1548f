"""pass@k, maj@k and count files: enumeration, exact rationals, properties, hand-made files."""

import itertools
import json
import logging
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agpo_jax.evaluation import counts as counts_lib
from agpo_jax.evaluation.counts import (
    append_counts,
    make_record,
    read_counts,
    summarize,
    write_counts,
)
from agpo_jax.evaluation.passk import (
    avg_at_n,
    default_ks,
    maj_at_k,
    maj_at_k_curve,
    majority_answer,
    majority_vote_accuracy,
    pass_at_k,
    pass_at_k_array,
    pass_at_k_curve,
)

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


def enumerated_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


def enumerated_maj_at_k(answers, correct, k: int) -> float:
    """Vote over every k-subset; ties go to the answer first seen among all n samples."""
    first_seen, is_correct = {}, {}
    for i, (answer, verdict) in enumerate(zip(answers, correct)):
        if answer:
            first_seen.setdefault(answer, i)
            is_correct[answer] = is_correct.get(answer, False) or bool(verdict)
    wins = total = 0
    for subset in itertools.combinations(range(len(answers)), k):
        votes = {}
        for i in subset:
            if answers[i]:
                votes[answers[i]] = votes.get(answers[i], 0) + 1
        total += 1
        if votes:
            wins += is_correct[min(votes, key=lambda a: (-votes[a], first_seen[a]))]
    return wins / total


# ---------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(enumerated_pass_at_k(n, c, k), abs=1e-12), (
                n,
                c,
                k,
            )


def test_pass_at_k_closed_forms():
    for n in range(1, 40):
        for k in range(1, n + 1):
            assert pass_at_k(n, 0, k) == 0.0
            assert pass_at_k(n, n, k) == 1.0
        for c in range(n + 1):
            assert pass_at_k(n, c, n) == (1.0 if c > 0 else 0.0)
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-15)


def test_pass_at_k_rejects_invalid_arguments():
    with pytest.raises(ValueError, match=r"k=5.*n=4"):
        pass_at_k(4, 1, 5)
    for n, c, k in ((4, 1, 0), (4, -1, 1), (4, 5, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@PROPERTY_SETTINGS
@given(
    st.integers(1, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
    )
)
def test_pass_at_k_is_non_decreasing_in_k_and_c(args):
    n, c, k = args
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= value
    if c < n:
        assert pass_at_k(n, c + 1, k) >= value


@pytest.mark.parametrize("c", [0, 1, 2, 5, 32, 128, 200, 250, 255, 256])
def test_pass_at_k_matches_exact_rationals_at_n256(c):
    n = 256
    for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 3, 100, 251):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert abs(pass_at_k(n, c, k) - float(exact)) < 1e-12, (c, k)
        assert abs(pass_at_k_array([n], [c], k)[0] - float(exact)) < 1e-12, (c, k)


def test_pass_at_k_array_and_curve_match_scalar_means():
    rng = np.random.default_rng(0)
    ns = rng.choice([16, 20, 64], size=500)
    cs = rng.integers(0, ns + 1)
    curve = pass_at_k_curve(ns, cs, ks=[1, 3, 16])
    for k in (1, 3, 16):
        scalar = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs)]
        np.testing.assert_allclose(pass_at_k_array(ns, cs, k), scalar, rtol=0, atol=1e-14)
        assert curve[k] == pytest.approx(np.mean(scalar), abs=1e-14)
    assert list(pass_at_k_curve(ns, cs)) == [1, 2, 4, 8, 16]  # default ks stop at min(n)
    np.testing.assert_allclose(
        pass_at_k_array([8, 8, 8, 8], [0, 4, 5, 8], 4), [0, 1 - 1 / 70, 1, 1], atol=1e-15
    )
    with pytest.raises(ValueError, match="min"):
        pass_at_k_curve(ns, cs, ks=[32])


def test_default_ks():
    assert default_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(1) == [1]


def test_avg_at_n_is_mean_of_per_problem_accuracy():
    assert avg_at_n([4, 8], [1, 8]) == pytest.approx((0.25 + 1.0) / 2)
    assert avg_at_n([10], [0]) == 0.0


# ---------------------------------------------------------------------------------------------
# maj@k

ANSWER = st.sampled_from([None, "", "a", "b", "c", "d"])


@PROPERTY_SETTINGS
@given(
    st.integers(1, 9).flatmap(
        lambda n: st.tuples(
            st.lists(ANSWER, min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
        )
    )
)
def test_majority_vote_accuracy_matches_subset_enumeration(args):
    answers, correct = args
    n = len(answers)
    got = majority_vote_accuracy(answers, correct, range(1, n + 1))
    expected = [enumerated_maj_at_k(answers, correct, k) for k in range(1, n + 1)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_majority_answer_ties_and_unparseable():
    assert majority_answer(["3", "7", "7", "3"]) == "3"  # tie: first seen
    assert majority_answer([None, "", "", "5"]) == "5"  # unparseable never wins
    assert majority_answer([None, ""]) is None


def test_maj_at_k_identities_at_n256():
    rng = np.random.default_rng(1)
    answers = [None if x > 6 else str(x) for x in rng.zipf(1.6, size=256)]
    correct = [int(a == "2") for a in answers]
    maj1, maj256 = majority_vote_accuracy(answers, correct, [1, 256])
    # One sample: its own answer wins if it has one.
    assert maj1 == pytest.approx(sum(correct) / 256, abs=1e-12)
    assert maj256 == float(majority_answer(answers) == "2")
    assert 0.0 <= maj_at_k([answers], [correct], 16) <= 1.0


# Four problems, n = 4 ("-" is null). maj@k worked by hand over the 6 two-subsets; ties go to
# the answer first seen among all 4 samples, and "" never votes:
#   p1 4,4,5,-    maj@1 2/4, maj@2 5/6 (only {5,-} fails; {4,5} ties -> 4), maj@4 1
#   p2 7,3,3,-    maj@1 2/4, maj@2 3/6 (every subset holding the 7 fails),     maj@4 1
#   p3 "",-,"",2  maj@1 1/4, maj@2 3/6 (the subsets holding the 2),            maj@4 1
#   p4 7,3,7,3    maj@1 2/4, maj@2 1/6 (only {3,3}; a 3-7 tie goes to 7),      maj@4 0
HAND_MADE_COUNTS = """\
{"id": "p1", "n": 4, "c": 2, "answers": ["4", "4", "5", null], "correct": [1, 1, 0, 0]}
{"id": "p2", "n": 4, "c": 2, "answers": ["7", "3", "3", null], "correct": [0, 1, 1, 0]}
{"id": "p3", "n": 4, "c": 1, "answers": ["", null, "", "2"], "correct": [0, 0, 0, 1]}
{"id": "p4", "n": 4, "c": 2, "answers": ["7", "3", "7", "3"], "correct": [0, 1, 0, 1]}
"""


def test_summary_of_hand_made_count_file(tmp_path):
    path = tmp_path / "math500.jsonl"
    path.write_text(HAND_MADE_COUNTS)
    records = read_counts(path)
    summary = summarize(records)
    assert summary["num_problems"] == 4
    assert summary["n"] == 4
    assert summary["avg@n"] == pytest.approx(0.4375)
    expected_maj = {
        1: (0.5 + 0.5 + 0.25 + 0.5) / 4,
        2: (5 / 6 + 3 / 6 + 3 / 6 + 1 / 6) / 4,
        4: 0.75,
    }
    expected_pass = {1: 0.4375, 2: (3 * (5 / 6) + 0.5) / 4, 4: 1.0}
    assert summary["maj@k"] == pytest.approx(expected_maj, abs=1e-12)
    assert summary["pass@k"] == pytest.approx(expected_pass, abs=1e-12)
    answers = [r["answers"] for r in records]
    correct = [r["correct"] for r in records]
    assert maj_at_k(answers, correct, 2) == pytest.approx(0.5, abs=1e-12)
    assert maj_at_k_curve(answers, correct) == pytest.approx(expected_maj, abs=1e-12)
    json.dumps(summary)  # the per-benchmark summary is JSON-ready


def test_summary_without_answers_has_no_maj():
    summary = summarize([{"id": "a", "n": 4, "c": 1}, {"id": "b", "n": 8, "c": 8}])
    assert summary["maj@k"] == {}
    assert summary["n"] == 4
    assert summary["pass@k"][4] == pytest.approx((1.0 + 1.0) / 2)


# ---------------------------------------------------------------------------------------------
# Count files


def test_write_read_roundtrip_and_make_record(tmp_path):
    path = tmp_path / "counts.jsonl"
    records = [
        make_record("q1", [True, False, True], answers=["x", "y", "x"]),
        make_record("q2", [0, 0, 0]),
        {"id": "q3", "n": 3, "c": 1, "benchmark": "aime24"},
    ]
    assert records[0] == {
        "id": "q1",
        "n": 3,
        "c": 2,
        "answers": ["x", "y", "x"],
        "correct": [1, 0, 1],
    }
    write_counts(path, records)
    assert read_counts(path) == records
    assert os.listdir(tmp_path) == ["counts.jsonl"]  # no temporary file left behind


def test_write_counts_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "counts.jsonl"
    write_counts(path, [{"id": "old", "n": 2, "c": 1}])

    def crash(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(counts_lib.os, "replace", crash)
    with pytest.raises(OSError):
        write_counts(path, [{"id": "new", "n": 2, "c": 2}])
    assert [r["id"] for r in read_counts(path)] == ["old"]
    assert os.listdir(tmp_path) == ["counts.jsonl"]


def test_write_counts_rejects_invalid_records(tmp_path):
    path = tmp_path / "counts.jsonl"
    with pytest.raises(ValueError, match="sum"):
        write_counts(path, [{"id": "a", "n": 2, "c": 1, "correct": [1, 1]}])
    with pytest.raises(ValueError, match="duplicate"):
        write_counts(path, [{"id": "a", "n": 2, "c": 1}, {"id": "a", "n": 2, "c": 0}])
    with pytest.raises(ValueError, match="length"):
        write_counts(path, [{"id": "a", "n": 2, "c": 0, "answers": ["1"]}])
    assert not path.exists()


def test_append_counts_in_chunks_flushes_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(counts_lib.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "counts.jsonl"
    append_counts(path, [make_record("a", [1, 0])])
    append_counts(path, [make_record("b", [0, 0]), make_record("c", [1, 1])])
    assert [r["id"] for r in read_counts(path)] == ["a", "b", "c"]
    assert len(synced) == 2


def test_read_counts_drops_a_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "counts.jsonl"
    lines = HAND_MADE_COUNTS.splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:25])  # killed mid-write
    with caplog.at_level(logging.WARNING):
        records = read_counts(path)
    assert [r["id"] for r in records] == ["p1", "p2", "p3"]
    assert "truncated" in caplog.text and "counts.jsonl:4" in caplog.text

    # A resumed run appends after cutting the remnant off.
    append_counts(path, [make_record("p4", [0, 1, 0, 1])])
    assert [r["id"] for r in read_counts(path)] == ["p1", "p2", "p3", "p4"]
    assert path.read_text().count("\n") == 4


def test_append_keeps_a_complete_record_missing_its_newline(tmp_path):
    path = tmp_path / "counts.jsonl"
    path.write_text(HAND_MADE_COUNTS.splitlines()[0])  # whole record, no newline
    assert [r["id"] for r in read_counts(path)] == ["p1"]
    append_counts(path, [make_record("p2", [1, 1, 0, 0])])
    assert [r["id"] for r in read_counts(path)] == ["p1", "p2"]


def test_read_counts_names_file_and_line_of_a_malformed_middle_line(tmp_path):
    path = tmp_path / "counts.jsonl"
    lines = HAND_MADE_COUNTS.splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    with pytest.raises(ValueError, match=r"counts\.jsonl:2: malformed"):
        read_counts(path)
    # A newline-terminated last line was completely written: malformed means corrupt.
    path.write_text(lines[0] + lines[1][:20] + "\n")
    with pytest.raises(ValueError, match=r"counts\.jsonl:2"):
        read_counts(path)
    path.write_text(lines[0] + '{"id": "p9", "n": 4, "c": 9}\n')
    with pytest.raises(ValueError, match=r"counts\.jsonl:2: invalid"):
        read_counts(path)


def test_read_counts_rejects_duplicate_ids(tmp_path):
    path = tmp_path / "counts.jsonl"
    lines = HAND_MADE_COUNTS.splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + lines[0])
    with pytest.raises(ValueError, match=r"counts\.jsonl:3: duplicate id 'p1' \(first on line 1\)"):
        read_counts(path)
