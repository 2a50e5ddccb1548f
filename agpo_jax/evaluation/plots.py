"""pass@k curves and boundary bar charts, saved as PNG.

Figures are built as ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot:
no display is touched, nothing is registered in pyplot's global figure list, and a figure is
freed with its last reference, so there is nothing to close. The figure is returned so that
callers and tests can inspect it.
"""

import os
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agpo_jax.evaluation.boundary import BoundaryReport

Curve = Mapping[int, float]  # k -> pass@k


def plot_pass_at_k(
    curves: Mapping[str, Curve],
    title: str,
    path: str | os.PathLike,
    bands: Mapping[str, tuple[Curve, Curve]] | None = None,
) -> Figure:
    """One line per run (label -> {k: pass@k}) on a log2 k axis, saved to ``path`` as PNG.

    ``bands`` optionally maps a label to ``(low, high)`` curves, drawn as a shaded band in the
    run's colour (e.g. a bootstrap interval).
    """
    if not curves:
        raise ValueError("plot_pass_at_k needs at least one curve")
    bands = bands or {}
    unknown = set(bands) - set(curves)
    if unknown:
        raise ValueError(f"bands given for runs without a curve: {sorted(unknown)}")
    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_ks = set()
    for label, curve in curves.items():
        ks = sorted(curve)
        all_ks.update(ks)
        (line,) = ax.plot(ks, [curve[k] for k in ks], marker="o", markersize=3, label=label)
        if label in bands:
            low, high = bands[label]
            band_ks = sorted(set(low) & set(high))
            ax.fill_between(
                band_ks,
                [low[k] for k in band_ks],
                [high[k] for k in band_ks],
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_ks), labels=[str(k) for k in sorted(all_ks)])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png", dpi=120)
    return fig


def plot_boundary(
    reports: BoundaryReport | Mapping[str, BoundaryReport],
    path: str | os.PathLike,
    title: str = "Boundary",
) -> Figure:
    """Bar chart of lost and gained problem counts, one pair of bars per run, saved as PNG.

    ``reports`` is one ``BoundaryReport`` or a mapping label -> report (e.g. one per training
    method against the same base). Lost bars are the first bar container, gained the second.
    """
    if isinstance(reports, BoundaryReport):
        reports = {"trained vs base": reports}
    if not reports:
        raise ValueError("plot_boundary needs at least one report")
    labels = list(reports)
    positions = range(len(labels))
    width = 0.38
    fig = Figure(figsize=(max(4, 1.6 * len(labels) + 2), 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for offset, (kind, color) in zip(
        (-width / 2, width / 2), (("lost", "tab:red"), ("gained", "tab:green"))
    ):
        heights = [len(getattr(reports[label], kind)) for label in labels]
        bars = ax.bar([p + offset for p in positions], heights, width, label=kind, color=color)
        ax.bar_label(bars)
    ax.set_xticks(list(positions), labels=labels)
    ax.set_ylabel("problems")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, format="png", dpi=120)
    return fig
