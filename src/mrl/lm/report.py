"""Tables and plots of the LM comparison: per-size perplexity (MRL, MRL-E, FF) and the adaptive-
decoding curve (perplexity vs output-head multiply-adds per token), after the paper's figures of
top-1 vs representation size (Kusupati et al. 2022, Figure 2) and adaptive cost (Figure 6)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.ticker

from mrl.report import new_figure, save_figure


def _ff_by_size(results: dict) -> dict[str, dict]:
    return {str(r["nesting"][0]): r for r in results.values() if r["head"] == "ff"}


def comparison_table(results: dict, adaptive: dict | None = None) -> str:
    """Markdown tables: perplexity and top-1 per size for each run, MRL/FF ratios, adaptive points.

    Args:
        results: run name -> :func:`mrl.lm.evaluate.evaluate_run` summary.
        adaptive: run name -> :func:`mrl.lm.evaluate.fit_adaptive` result.

    Example:
        >>> r = {"mrl": {"head": "mrl", "nesting": [8, 16], "ppl": {"8": 20.0, "16": 10.0}, "top1": {"8": 0.1, "16": 0.2}},
        ...      "ff-8": {"head": "ff", "nesting": [8], "ppl": {"8": 19.0}, "top1": {"8": 0.1}}}
        >>> print(comparison_table(r).splitlines()[2])
        | 8 | 20.00 | 19.00 | 1.053 | 10.0 | 10.0 |
    """
    ff = _ff_by_size(results)
    multi = {name: r for name, r in results.items() if r["head"] != "ff"}
    sizes = sorted({int(m) for r in results.values() for m in r["ppl"]})
    names = list(multi)
    header = ["m", *(f"{n} ppl" for n in names), "FF ppl", *(f"{n}/FF" for n in names), *(f"{n} top-1 %" for n in names), "FF top-1 %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in sizes:
        key = str(m)
        ff_ppl = ff[key]["ppl"][key] if key in ff else None
        row = [key]
        row += [f"{multi[n]['ppl'][key]:.2f}" if key in multi[n]["ppl"] else "-" for n in names]
        row.append(f"{ff_ppl:.2f}" if ff_ppl else "-")
        row += [f"{multi[n]['ppl'][key] / ff_ppl:.3f}" if ff_ppl and key in multi[n]["ppl"] else "-" for n in names]
        row += [f"{100 * multi[n]['top1'][key]:.1f}" if key in multi[n]["top1"] else "-" for n in names]
        row.append(f"{100 * ff[key]['top1'][key]:.1f}" if key in ff else "-")
        lines.append("| " + " | ".join(row) + " |")
    if adaptive:
        lines += ["", "| adaptive | thresholds | ppl (full) | ppl increase | top-1 % (full) | head MACs/token | reduction | share per size |", "|---|---|---|---|---|---|---|---|"]
        for name, a in adaptive.items():
            c, f = a["chosen"], a["full"]
            thr = ", ".join(f"{t:.3f}" if isinstance(t, float) else t for t in a["thresholds"])
            share = ", ".join(f"{s:.2f}" for s in c["share_per_size"])
            lines.append(
                f"| {name} | {thr} | {c['ppl']:.2f} ({f['ppl']:.2f}) | {100 * c['ppl_increase']:+.2f}% | "
                f"{100 * c['top1']:.1f} ({100 * f['top1']:.1f}) | {c['head_macs_per_token']:.0f} | {c['flops_reduction']:.2f}x | {share} |"
            )
    return "\n".join(lines) + "\n"


def plot_perplexity(results: dict, path: str | os.PathLike) -> Path:
    """PNG of validation perplexity (log scale) vs head size, one line per model family."""
    fig = new_figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    ff = _ff_by_size(results)
    for name, r in results.items():
        if r["head"] == "ff":
            continue
        sizes = [int(m) for m in r["nesting"]]
        axes[0].plot(sizes, [r["ppl"][str(m)] for m in sizes], "o-", label=name)
        axes[1].plot(sizes, [100 * r["top1"][str(m)] for m in sizes], "o-", label=name)
    if ff:
        sizes = sorted(int(m) for m in ff)
        axes[0].plot(sizes, [ff[str(m)]["ppl"][str(m)] for m in sizes], "s--", label="FF")
        axes[1].plot(sizes, [100 * ff[str(m)]["top1"][str(m)] for m in sizes], "s--", label="FF")
    for ax, label in zip(axes, ("validation perplexity", "next-token top-1 (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("output representation size m")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_adaptive(adaptive: dict, results: dict, path: str | os.PathLike) -> Path:
    """PNG of perplexity and top-1 vs mean output-head multiply-adds per token: the adaptive
    front (test half), each fixed size, and the fitted operating point."""
    fig = new_figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for name, a in adaptive.items():
        curve = sorted(a["curve"], key=lambda p: p["head_macs_per_token"])
        fixed = [a["fixed"][k] for k in sorted(a["fixed"], key=int)]
        for ax, key, scale in ((axes[0], "ppl", 1), (axes[1], "top1", 100)):
            line = ax.plot([p["head_macs_per_token"] for p in curve], [scale * p[key] for p in curve], "-", label=f"{name} adaptive")[0]
            ax.plot([p["head_macs_per_token"] for p in fixed], [scale * p[key] for p in fixed], "o:", color=line.get_color(), label=f"{name} fixed size")
            ax.plot([a["chosen"]["head_macs_per_token"]], [scale * a["chosen"][key]], "*", ms=14, color=line.get_color())
    for ax, label in zip(axes, ("perplexity (test half of validation)", "next-token top-1 (%)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("output-head multiply-adds per token")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    return save_figure(fig, path, dpi=120, bbox_inches="tight")
