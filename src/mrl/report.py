"""Tables and plots from run directories: markdown tables and accuracy-vs-size PNGs.

Plots put the nesting size on a log2 axis, as the paper's Figures 2-4 do, with one line per method.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from mrl.io import atomic_write_bytes

Series = Mapping[int, float]


def _fmt(value: float | None, std: float | None = None, percent: bool = True) -> str:
    if value is None:
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{value * scale:.2f}"
    if std is not None:
        text += f" ± {std * scale:.2f}"
    return text


def markdown_table(
    columns: Mapping[str, Series], sizes: Sequence[int] | None = None, stds: Mapping[str, Series] | None = None,
    first: str = "m", percent: bool = True,
) -> str:
    """Rows = sizes, columns = methods; missing cells show "–". Values are shares (x100 when ``percent``).

    Example:
        >>> print(markdown_table({"MRL": {8: 0.5, 16: 0.75}, "FF": {16: 0.7}}))
        | m | MRL | FF |
        |---:|---:|---:|
        | 8 | 50.00 | – |
        | 16 | 75.00 | 70.00 |
    """
    sizes = sorted({m for col in columns.values() for m in col}) if sizes is None else list(sizes)
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    for m in sizes:
        cells = [_fmt(col.get(m), (stds or {}).get(name, {}).get(m), percent) for name, col in columns.items()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def new_figure(**kwargs) -> Figure:
    """A figure outside pyplot's global state, so drawing never touches the user's backend or figures."""
    return Figure(**kwargs)


def save_figure(fig: Figure, path: str | Path, **savefig_kwargs) -> Path:
    """Render ``fig`` as PNG and write it atomically to ``path``."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def plot_vs_size(
    path: str | Path, columns: Mapping[str, Series], ylabel: str, title: str = "",
    stds: Mapping[str, Series] | None = None, percent: bool = True, points: Collection[str] = (),
) -> Path:
    """One line per method, log2 x-axis; written atomically as PNG.

    Methods named in ``points`` (and any with a single size) are drawn as markers only: FF is a
    separate model at each size it was trained at, and a line through it would suggest values at
    sizes no model was trained for.
    """
    fig = new_figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    scale = 100.0 if percent else 1.0
    for name, col in columns.items():
        sizes = sorted(col)
        values = [col[m] * scale for m in sizes]
        err = [stds[name].get(m, 0.0) * scale for m in sizes] if stds and name in stds else None
        ax.errorbar(sizes, values, yerr=err, marker="D" if name in points else "o", capsize=3, label=name,
                    linestyle="-" if len(sizes) > 1 and name not in points else "none",
                    markersize=7 if name in points else 4)
    ax.set_xscale("log", base=2)
    all_sizes = sorted({m for col in columns.values() for m in col})
    ax.set_xticks(all_sizes)
    ax.set_xticklabels([str(m) for m in all_sizes])
    ax.set_xlabel("representation size m")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
