"""Accuracy vs expected dims of adaptive classification, log2 x-axis (the MRL paper's Figure 6).

Curves are threshold sweeps (expected dims vary continuously), points are fixed-size models
(the MRL heads, FF baselines) and policies; the oracle upper bound is a dashed line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mrl.report import new_figure, save_figure

XY = tuple[Sequence[float], Sequence[float]]


def plot_cost_accuracy(
    path: str | Path,
    curves: Mapping[str, XY],
    points: Mapping[str, XY],
    oracle: float | None = None,
    title: str = "",
    xlabel: str = "expected dims",
) -> Path:
    """Write a PNG of accuracy (shares, shown x100) against cost on a log2 axis.

    Args:
        path: output .png (written atomically).
        curves: label -> (x [P], y [P]) drawn as lines.
        points: label -> (x [K], y [K]) drawn as markers (with a thin line when K > 1).
        oracle: the oracle accuracy, drawn as a horizontal dashed line.

    Example:
        >>> import tempfile, os
        >>> out = plot_cost_accuracy(os.path.join(tempfile.mkdtemp(), "a.png"), {"sweep": ([8, 20], [0.8, 0.9])}, {"FF": ([8], [0.85])})
        >>> out.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    fig = new_figure(figsize=(7.0, 4.6), dpi=120)
    ax = fig.subplots()
    for label, (x, y) in curves.items():
        ax.plot(x, [v * 100 for v in y], linewidth=1.6, label=label)
    markers = "osD^v<>pP*"
    for i, (label, (x, y)) in enumerate(points.items()):
        ax.plot(x, [v * 100 for v in y], marker=markers[i % len(markers)], markersize=6,
                linestyle="-" if len(x) > 1 else "none", linewidth=0.6, label=label)
    if oracle is not None:
        ax.axhline(oracle * 100, color="gray", linestyle="--", linewidth=1.0, label=f"oracle ({oracle * 100:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel + " (log2)")
    ax.set_ylabel("top-1 accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
