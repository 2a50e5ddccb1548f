"""Boundary comparison (worked example, paired bootstrap) and the PNG plots."""

import json

import pytest

from agpo_jax.evaluation.boundary import ProblemChange, bootstrap_ci, compare
from agpo_jax.evaluation.plots import plot_boundary, plot_pass_at_k

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def counts(**cs: int) -> list[dict]:
    return [{"id": pid, "n": 4, "c": c} for pid, c in cs.items()]


# Paired problems p1..p4 (n = 4); p1 is lost, p3 gained. By hand, with pass@2 = 1 − C(4−c, 2)/6:
#   base    c = 2, 1, 0, 3: pass@1 6/16, pass@2 (5/6 + 1/2 + 0 + 1)/4 = 14/24, pass@4 3/4
#   trained c = 0, 3, 2, 4: pass@1 9/16, pass@2 (0 + 1 + 5/6 + 1)/4 = 17/24, pass@4 3/4
BASE = counts(p3=0, p1=2, p2=1, p4=3, b_only=0)
TRAINED = counts(t_only=1, p4=4, p2=3, p1=0, p3=2)


def test_compare_worked_example():
    report = compare(BASE, TRAINED, num_resamples=200)
    assert report.ks == [1, 2, 4]
    assert report.num_paired == 4
    assert report.base_pass == pytest.approx({1: 6 / 16, 2: 14 / 24, 4: 0.75}, abs=1e-12)
    assert report.trained_pass == pytest.approx({1: 9 / 16, 2: 17 / 24, 4: 0.75}, abs=1e-12)
    assert report.difference == pytest.approx({1: 3 / 16, 2: 1 / 8, 4: 0.0}, abs=1e-12)
    assert report.lost == [ProblemChange("p1", base_c=2, base_n=4, trained_c=0, trained_n=4)]
    assert report.gained == [ProblemChange("p3", base_c=0, base_n=4, trained_c=2, trained_n=4)]
    assert report.only_in_base == ["b_only"]
    assert report.only_in_trained == ["t_only"]
    assert set(report.ci) == {1, 2, 4}


def test_report_serialises_to_json_and_markdown():
    report = compare(BASE, TRAINED, ks=[1, 4], num_resamples=100)
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["difference"]["1"] == pytest.approx(3 / 16)
    assert [p["id"] for p in as_dict["lost"]] == ["p1"]
    assert as_dict["gained"][0] == {
        "id": "p3",
        "base_c": 0,
        "base_n": 4,
        "trained_c": 2,
        "trained_n": 4,
    }
    assert as_dict["only_in_base"] == ["b_only"] and as_dict["only_in_trained"] == ["t_only"]
    markdown = report.to_markdown()
    assert "| 1 | 37.50 | 56.25 | +18.75 |" in markdown
    assert "| p1 | 2/4 | 0/4 |" in markdown and "| p3 | 0/4 | 2/4 |" in markdown
    assert "Only in base (1): b_only" in markdown and "Only in trained (1): t_only" in markdown


def test_compare_rejects_duplicates_and_disjoint_runs():
    with pytest.raises(ValueError, match="duplicate.*base"):
        compare(BASE + counts(p1=1), TRAINED)
    with pytest.raises(ValueError, match="share no problem"):
        compare(counts(a=1), counts(b=1))


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_problems():
    base_cs = [0, 1, 2, 3, 4, 2, 1, 0, 4, 3, 2, 2]
    trained_cs = [1, 3, 2, 4, 4, 0, 2, 0, 4, 4, 3, 1]
    small_base = [{"id": f"q{i}", "n": 4, "c": c} for i, c in enumerate(base_cs)]
    small_trained = [{"id": f"q{i}", "n": 4, "c": c} for i, c in enumerate(trained_cs)]
    # The same problems, 16 times over: the estimate stays, the interval narrows ~4x.
    big_base = [{**r, "id": f"{r['id']}_{copy}"} for copy in range(16) for r in small_base]
    big_trained = [{**r, "id": f"{r['id']}_{copy}"} for copy in range(16) for r in small_trained]
    for k in (1, 2):
        estimate = compare(small_base, small_trained, ks=[k], num_resamples=0).difference[k]
        assert estimate > 0
        low, high = bootstrap_ci(small_base, small_trained, k, num_resamples=2000)
        big_low, big_high = bootstrap_ci(big_base, big_trained, k, num_resamples=2000)
        assert low <= estimate <= high and big_low <= estimate <= big_high
        assert 0 < big_high - big_low < 0.5 * (high - low)
    # Reproducible, independent of record order, and the same draws as compare's interval.
    interval = bootstrap_ci(small_base, small_trained, 2, num_resamples=500, seed=3)
    assert bootstrap_ci(small_base[::-1], small_trained, 2, num_resamples=500, seed=3) == interval
    assert (
        compare(small_base, small_trained, ks=[1, 2], num_resamples=500, seed=3).ci[2] == interval
    )


def test_bootstrap_is_paired_by_problem_id():
    base = [{"id": f"q{i}", "n": 8, "c": i % 9} for i in range(30)]
    shuffled_copy = sorted(base, key=lambda r: r["id"][::-1])
    # Identical runs differ by exactly 0 on every resample only if problems are paired.
    assert bootstrap_ci(base, shuffled_copy, 4) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Plots


def test_plot_pass_at_k_writes_png_with_one_line_per_run_on_log2_axis(tmp_path):
    curves = {
        "base": {1: 0.63, 2: 0.72, 4: 0.80, 8: 0.86, 16: 0.916},
        "grpo": {1: 0.763, 2: 0.80, 4: 0.84, 8: 0.88, 16: 0.906},
        "agpo": {1: 0.77, 2: 0.81, 4: 0.86, 8: 0.90, 16: 0.93},
    }
    bands = {
        "agpo": (
            {k: v - 0.01 for k, v in curves["agpo"].items()},
            {k: v + 0.01 for k, v in curves["agpo"].items()},
        )
    }
    path = tmp_path / "pass_at_k.png"
    fig = plot_pass_at_k(curves, "MATH500", path, bands=bands)
    assert path.read_bytes()[:8] == PNG_MAGIC
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["base", "grpo", "agpo"]
    assert list(lines[1].get_xdata()) == [1, 2, 4, 8, 16]
    assert list(lines[1].get_ydata()) == [0.763, 0.80, 0.84, 0.88, 0.906]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert len(ax.collections) == 1  # one error band
    assert ax.get_title() == "MATH500"


def test_plot_boundary_bar_heights(tmp_path):
    report = compare(BASE, TRAINED, num_resamples=0)
    path = tmp_path / "boundary.png"
    fig = plot_boundary(report, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    lost_bars, gained_bars = fig.axes[0].containers
    assert [bar.get_height() for bar in lost_bars] == [1]
    assert [bar.get_height() for bar in gained_bars] == [1]

    # One pair of bars per run.
    many_lost = compare(counts(a=1, b=2, c=3, d=0), counts(a=0, b=0, c=1, d=0), num_resamples=0)
    fig = plot_boundary({"grpo": many_lost, "agpo": report}, tmp_path / "runs.png")
    lost_bars, gained_bars = fig.axes[0].containers
    assert [bar.get_height() for bar in lost_bars] == [2, 1]
    assert [bar.get_height() for bar in gained_bars] == [0, 1]
    assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["grpo", "agpo"]
