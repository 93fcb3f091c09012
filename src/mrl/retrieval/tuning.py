"""Choose a funnel by measurement: the cheapest one that reproduces exact search well enough.

The MRL paper (Kusupati et al., NeurIPS 2022, section 4.3 and appendix G) picks funnel shapes by
hand (16 -> 2048 with 200 candidates; 16 -> 32 -> 64 -> 128 -> 2048 with 800, 400, 200, 50, 10).
:class:`FunnelTuner` instead measures kNN-recall@k against exact full-dim search on sample
queries for a grid of funnels and keeps the cheapest (theoretical FLOPs, then wall-clock) whose
recall reaches the target, in the scikit-learn style: parameters in ``__init__``, state ending in
``_`` learned by :meth:`FunnelTuner.fit`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mrl.errors import MRLError, NotFittedError
from mrl.metrics import knn_recall_at_k
from mrl.retrieval.funnel import Funnel, format_funnel, validate_funnel
from mrl.retrieval.ground_truth import exact_search

if TYPE_CHECKING:
    from mrl.retrieval.funnel import FunnelIndex

logger = logging.getLogger(__name__)


def candidate_funnels(dim: int, shortlist_dim: int, n_database: int, k: int, max_length: int = 2048) -> list[Funnel]:
    """A grid of funnels from ``shortlist_dim`` to ``dim`` ending with k results.

    Shortlist lengths n_1 = k, 2k, 4k, ... (up to ``max_length``, the paper's largest shortlist,
    and N); for each, three shapes:
    two stages (d_1 -> D), three stages (d_1 -> 4 d_1 -> D) and the doubling cascade
    (d_1 -> 2 d_1 -> 4 d_1 -> ... -> D), lengths shrinking geometrically from n_1 to k.

    Example:
        >>> candidate_funnels(64, 16, 100, 10)[:3]
        [[(16, 10)], [(16, 20), (64, 10)], [(16, 20), (32, 14), (64, 10)]]
    """
    if shortlist_dim == dim:
        return [[(dim, k)]]
    chains = [[shortlist_dim, dim]]
    if 4 * shortlist_dim < dim:
        chains.append([shortlist_dim, 4 * shortlist_dim, dim])
    doubling = [shortlist_dim]
    while doubling[-1] * 2 < dim:
        doubling.append(doubling[-1] * 2)
    doubling.append(dim)
    if doubling not in chains:
        chains.append(doubling)
    out: list[Funnel] = [[(shortlist_dim, k)]]
    length = 2 * k
    while length <= min(max_length, n_database):
        for chain in chains:
            steps = len(chain) - 1
            lengths = [int(round(length * (k / length) ** (i / steps))) for i in range(steps + 1)]
            funnel = list(zip(chain, lengths))
            if funnel not in out:
                out.append(funnel)
        length *= 2
    return out


def _dominates(cheaper: Funnel, funnel: Funnel) -> bool:
    """True when ``funnel`` has the same stage dims as ``cheaper`` and no shorter shortlist."""
    return [d for d, _ in cheaper] == [d for d, _ in funnel] and all(a <= b for (_, a), (_, b) in zip(cheaper, funnel))


class FunnelTuner:
    """Measure candidate funnels on sample queries and keep the cheapest that meets a recall target.

    Args:
        k: results per query compared with exact search.
        target_recall: required mean kNN-recall@k against exact full-dim search, in (0, 1].
        candidates: funnels to try (default :func:`candidate_funnels`).

    Attributes:
        exact_ids_: int [Q, k] exact full-dim results for the sample.
        results_: one dict per measured candidate: funnel, spec, knn_recall, flops_per_query, mflops,
            ms_per_query, meets_target.
        best_: the chosen entry of ``results_``; best_funnel_: its funnel.
        target_met_: False when no candidate met the target and the most accurate one was kept.

    Example:
        >>> from mrl.retrieval import FunnelIndex
        >>> rng = np.random.default_rng(0)
        >>> scale = (1.0 / np.arange(1, 33)).astype(np.float32)  # early coordinates carry most signal
        >>> index = FunnelIndex(rng.standard_normal((300, 32)).astype(np.float32) * scale, shortlist_dim=8)
        >>> tuner = FunnelTuner(k=5, target_recall=0.9).fit(index, rng.standard_normal((20, 32)).astype(np.float32) * scale)
        >>> tuner.best_["knn_recall"] >= 0.9
        True
    """

    def __init__(self, k: int = 10, target_recall: float = 0.99, candidates: Sequence[Sequence[tuple[int, int]]] | None = None) -> None:
        self.k = k
        self.target_recall = target_recall
        self.candidates = candidates

    def fit(self, index: FunnelIndex, sample_queries: np.ndarray, exact_ids: np.ndarray | None = None) -> FunnelTuner:
        """Search ``sample_queries`` [Q, D] with the candidates and choose; returns self.

        A candidate is skipped when one already measured with the same stage dims and no longer
        shortlists met the target: it costs at least as much, so it cannot be chosen.

        Args:
            index: the index to tune.
            sample_queries: [Q, D] float queries.
            exact_ids: int [Q, >= k] exact full-dim results for the sample, when already computed
                (default: computed here with :func:`~mrl.retrieval.exact_search`).
        """
        for name in ("exact_ids_", "results_", "best_", "best_funnel_", "target_met_"):
            self.__dict__.pop(name, None)
        if not isinstance(self.target_recall, (int, float)) or not 0 < self.target_recall <= 1:
            raise MRLError(f"target_recall must be in (0, 1], got {self.target_recall!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= index.ntotal:
            raise MRLError(f"k must be an integer in [1, {index.ntotal}], got {self.k!r}")
        if self.candidates is None:
            candidates = candidate_funnels(index.dim, index.shortlist_dim, index.ntotal, self.k)
        else:
            candidates = [validate_funnel(f, index.dim, index.shortlist_dim, index.ntotal, self.k, rescore_first=index.encoding != "float32")
                          for f in self.candidates]
            if not candidates:
                raise MRLError("candidates must hold at least one funnel")
        if exact_ids is None:
            _, exact_ids = exact_search(index.vectors, sample_queries, self.k, metric=index.metric)
        elif len(exact_ids) != len(sample_queries):
            raise MRLError(f"exact_ids has {len(exact_ids)} rows but there are {len(sample_queries)} sample queries")
        index.search(sample_queries[: min(8, len(sample_queries))], self.k, candidates[0])  # warm-up
        results = []
        for funnel in candidates:
            if any(_dominates(r["funnel"], funnel) for r in results if r["meets_target"]):
                continue
            _, ids, stats = index.search(sample_queries, self.k, funnel, return_stats=True)
            recall = float(knn_recall_at_k(ids, exact_ids, self.k).mean())
            results.append(
                {
                    "funnel": funnel,
                    "spec": format_funnel(funnel),
                    "knn_recall": recall,
                    "flops_per_query": stats.flops_per_query,
                    "mflops": stats.flops_per_query / 1e6,
                    "ms_per_query": stats.ms_per_query,
                    "meets_target": recall >= self.target_recall,
                }
            )
        meeting = [r for r in results if r["meets_target"]]
        if meeting:
            best = min(meeting, key=lambda r: (r["flops_per_query"], r["ms_per_query"]))
        else:
            best = max(results, key=lambda r: (r["knn_recall"], -r["flops_per_query"]))
            logger.warning(
                "no funnel reached knn_recall@%d >= %.3f; keeping the most accurate (%s, %.4f)",
                self.k, self.target_recall, best["spec"], best["knn_recall"],
            )
        self.exact_ids_ = exact_ids
        self.results_ = results
        self.best_ = best
        self.best_funnel_ = list(best["funnel"])
        self.target_met_ = bool(meeting)
        return self

    def summary(self) -> str:
        """A markdown table of every candidate (the chosen one marked with *)."""
        if not hasattr(self, "results_"):
            raise NotFittedError("this FunnelTuner is not fitted yet; call fit(index, sample_queries) first")
        lines = [f"| funnel | knn_recall@{self.k} | MFLOPs/query | ms/query |", "|---|---|---|---|"]
        for r in self.results_:
            mark = " *" if r is self.best_ else ""
            lines.append(f"| {r['spec']}{mark} | {r['knn_recall']:.4f} | {r['mflops']:.3f} | {r['ms_per_query']:.3f} |")
        return "\n".join(lines)
