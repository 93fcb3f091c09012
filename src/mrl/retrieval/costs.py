"""Theoretical cost of a funnel search, counted as the MRL paper counts it.

Section 4.3 and appendix G of the MRL paper (Kusupati et al., NeurIPS 2022) count one FLOP per
multiply-add of a dot product and ignore sorting: exact search over N vectors of d dims costs N*d
per query, and a funnel costs N*d_1 for its shortlist plus n_{i-1}*d_i for stage i, which reranks
the n_{i-1} survivors of the stage before with d_i dims. An HNSW shortlist does not compare the
query with all N vectors; pass the measured number of distance computations per query instead.
"""

from __future__ import annotations

from collections.abc import Sequence


def stage_flops(funnel: Sequence[tuple[int, int]], n_database: int, shortlist_distances: float | None = None) -> list[float]:
    """FLOPs per query of each funnel stage.

    Args:
        funnel: [(d_1, n_1), ..., (d_L, n_L)] stage dims and shortlist lengths.
        n_database: N, the number of stored vectors.
        shortlist_distances: distance computations of stage 1 per query (default N, exact search).

    Returns:
        One float per stage: ``[D1 * d_1, n_1 * d_2, ..., n_{L-1} * d_L]`` with D1 the distances.

    Example:
        >>> stage_flops([(16, 200), (2048, 10)], n_database=1_000_000)
        [16000000.0, 409600.0]
    """
    first = float(n_database if shortlist_distances is None else shortlist_distances)
    costs = [first * funnel[0][0]]
    costs += [float(funnel[i - 1][1] * funnel[i][0]) for i in range(1, len(funnel))]
    return costs


def funnel_flops(funnel: Sequence[tuple[int, int]], n_database: int, shortlist_distances: float | None = None) -> float:
    """Total FLOPs per query of a funnel (the sum of :func:`stage_flops`).

    Example:
        >>> funnel_flops([(2048, 10)], n_database=1000)  # exact search: N * d
        2048000.0
    """
    return float(sum(stage_flops(funnel, n_database, shortlist_distances)))
