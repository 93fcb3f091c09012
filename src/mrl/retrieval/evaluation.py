"""Side-by-side evaluation of search configurations: accuracy, kNN-recall, FLOPs and wall-clock.

The MRL paper's adaptive-retrieval comparison (Kusupati et al., NeurIPS 2022, section 4.3, table 3
and figure 8) puts exact search at several prefix sizes next to funnels and reports mAP@10,
precision@10, top-1 and FLOPs; this module computes those rows for any list of configurations,
plus kNN-recall@k against exact full-dim search and the measured milliseconds per query.

A configuration is a string: ``"exact"`` (exact search with all D dims), ``"exact:64"`` (exact
search on the 64-dim prefix) or a funnel ``"16:200,2048:10"`` (see :func:`parse_funnel`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrl.errors import MRLError
from mrl.metrics import Relevance, knn_recall_at_k, retrieval_summary
from mrl.retrieval._vectors import check_labels
from mrl.retrieval.costs import funnel_flops
from mrl.retrieval.funnel import FunnelIndex, format_funnel, parse_funnel
from mrl.retrieval.ground_truth import exact_search


def run_configuration(index: FunnelIndex, queries: np.ndarray, k: int, config: str) -> tuple[np.ndarray, float, float]:
    """Search ``queries`` with one configuration; return (ids [Q, k], ms per query, FLOPs per query)."""
    config = config.strip()
    if config == "exact" or config.startswith("exact:"):
        dim = index.dim if config == "exact" else _parse_dim(config, index.dim)
        start = time.perf_counter()
        _, ids = exact_search(index.vectors, queries, k, metric=index.metric, dim=dim)
        seconds = time.perf_counter() - start
        return ids, 1000.0 * seconds / max(len(queries), 1), funnel_flops([(dim, k)], index.ntotal)
    _, ids, stats = index.search(queries, k, parse_funnel(config), return_stats=True)
    return ids, stats.ms_per_query, stats.flops_per_query


def _parse_dim(config: str, dim: int) -> int:
    try:
        value = int(config.split(":", 1)[1])
    except ValueError:
        raise MRLError(f"exact configurations are 'exact' or 'exact:DIM', got {config!r}") from None
    if not 1 <= value <= dim:
        raise MRLError(f"exact prefix dim must be in [1, {dim}], got {value} in {config!r}")
    return value


def default_configurations(index: FunnelIndex, k: int = 10) -> list[str]:
    """Exact full-dim, exact at the shortlist dim, the paper's two funnels and any tuned funnel.

    The two funnels of the MRL paper (appendix G) scaled to the index: d_1 -> D reranking 200
    candidates, and the cascade d_1 -> 2 d_1 -> 4 d_1 -> 8 d_1 -> D keeping 800, 400, 200, 50, k
    (stages at or beyond D are dropped; lengths are clipped to N).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> default_configurations(FunnelIndex(rng.standard_normal((1000, 256)).astype(np.float32)), k=10)
        ['exact', 'exact:16', '16:200,256:10', '16:800,32:400,64:200,128:50,256:10']
    """
    d1, dim, n = index.shortlist_dim, index.dim, index.ntotal
    configs = ["exact"]
    if d1 < dim:
        configs.append(f"exact:{d1}")
        configs.append(format_funnel([(d1, min(max(200, k), n)), (dim, k)]))
        cascade = [(d1 * 2**i, min(max(length, k), n)) for i, length in enumerate((800, 400, 200, 50)) if d1 * 2**i < dim]
        cascade.append((dim, k))
        if len(cascade) > 2:
            configs.append(format_funnel(cascade))
    if index.funnel is not None and format_funnel(index.funnel) not in configs and index.funnel[-1][1] >= k:
        configs.append(format_funnel(index.funnel))
    return configs


def evaluate_configurations(
    index: FunnelIndex,
    queries: np.ndarray,
    query_labels: np.ndarray | None = None,
    configurations: Sequence[str] | None = None,
    k: int = 10,
) -> list[dict]:
    """One row per configuration: label metrics (when both sides have labels), kNN-recall@k, cost.

    Args:
        index: the funnel index (its ``labels`` are the database labels).
        queries: [Q, D] float queries.
        query_labels: int [Q] labels, or None for kNN-recall and cost only.
        configurations: strings as in the module docstring (default :func:`default_configurations`).
        k: cut-off of every metric.

    Returns:
        Dicts with keys ``config``, ``map@k``, ``precision@k``, ``recall@k``, ``ndcg@k``, ``top1``
        (label metrics only with labels), ``knn_recall@k``, ``mflops``, ``ms_per_query``.
    """
    if configurations is not None:
        configurations = list(configurations)
        if not configurations or not all(isinstance(c, str) and c.strip() for c in configurations):
            raise MRLError(f"configurations must be a non-empty list of strings such as 'exact' or '16:200,2048:10' "
                           f"(None for the defaults), got {configurations!r}")
    configurations = configurations or default_configurations(index, k)
    if query_labels is not None:
        query_labels = check_labels(query_labels, len(queries))  # integers, one per query, as stored labels
    with_labels = query_labels is not None and index.labels is not None
    run_configuration(index, queries[: min(8, len(queries))], k, "exact")  # warm-up
    exact = run_configuration(index, queries, k, "exact")  # the ground truth, timed once
    exact_ids = exact[0]
    rows = []
    for config in configurations:
        ids, ms, flops = exact if config.strip() == "exact" else run_configuration(index, queries, k, config)
        row: dict = {"config": config}
        if with_labels:
            summary = retrieval_summary(Relevance.from_labels(ids, query_labels, index.labels), k=k)
            row.update({key: summary[key] for key in (f"map@{k}", f"precision@{k}", f"recall@{k}", f"ndcg@{k}", "top1")})
        row[f"knn_recall@{k}"] = float(knn_recall_at_k(ids, exact_ids, k).mean())
        row["mflops"] = flops / 1e6
        row["ms_per_query"] = ms
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Rows of :func:`evaluate_configurations` as a markdown table.

    Example:
        >>> print(format_table([{"config": "exact", "mflops": 2.0, "ms_per_query": 0.5}]))
        | config | mflops | ms_per_query |
        |---|---|---|
        | exact | 2.0000 | 0.5000 |
    """
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[key]:.4f}" if isinstance(row[key], float) else str(row[key]) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy_vs_flops(path: str | Path, rows: Sequence[dict], metric: str = "map@10", title: str = "") -> Path:
    """Scatter ``metric`` against MFLOPs per query (log x), one labelled point per configuration; PNG written atomically."""
    from mrl.report import new_figure, save_figure

    points = [r for r in rows if metric in r]
    if not points:
        raise MRLError(f"no row holds {metric!r}; rows have {sorted(rows[0]) if rows else []}")
    fig = new_figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    for r in points:
        ax.scatter(r["mflops"], r[metric] * 100, s=24)
        ax.annotate(r["config"], (r["mflops"], r[metric] * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MFLOPs per query (log scale)")
    ax.set_ylabel(f"{metric} (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
