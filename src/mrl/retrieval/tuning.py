"""Choose a funnel by measurement: the cheapest one that reproduces exact search well enough.

The MRL paper (Kusupati et al., NeurIPS 2022, section 4.3 and appendix G) picks funnel shapes by
hand (16 -> 2048 with 200 candidates; 16 -> 32 -> 64 -> 128 -> 2048 with 800, 400, 200, 50, 10).
:class:`FunnelTuner` instead measures kNN-recall@k against exact full-dim search on sample
queries for a grid of funnels and keeps the cheapest whose recall reaches the target, by measured
wall-clock (default) or by theoretical FLOPs (which leave out the gather and top-k every stage
pays), in the scikit-learn style: parameters in ``__init__``, state ending in ``_`` learned by
:meth:`FunnelTuner.fit`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mrl.errors import MRLError, NotFittedError
from mrl.metrics import knn_recall_at_k
from mrl.retrieval.funnel import Funnel, format_funnel, validate_funnel
from mrl.retrieval.ground_truth import exact_search
from mrl.retrieval.shortlist import ShortlistSpec
from mrl.validation import check_choice, check_int

if TYPE_CHECKING:
    from mrl.retrieval.funnel import FunnelIndex

logger = logging.getLogger(__name__)

OBJECTIVES = ("ms", "flops")
MAX_HEADROOM = 64  # grid steps to spare: sqrt(2) each, so 64 already multiplies a shortlist by 2^32


def candidate_funnels(dim: int, shortlist_dim: int, n_database: int, k: int, max_length: int = 2048,
                      rescore: bool = False) -> list[Funnel]:
    """A grid of funnels from ``shortlist_dim`` to ``dim`` ending with k results.

    Shortlist lengths n_1 = k, then 2k, 2.8k, 4k, 5.7k, 8k, ... in steps of sqrt(2) (up to
    ``max_length``, the paper's largest shortlist, and N): with doubling steps the first length
    meeting a recall target can be up to twice the one needed, and stage costs grow with it (on the
    demo's MRL embeddings the tuned HNSW 128-dim shortlist keeps 113 candidates). For each length,
    three shapes:
    two stages (d_1 -> D), three stages (d_1 -> 4 d_1 -> D) and the doubling cascade
    (d_1 -> 2 d_1 -> 4 d_1 -> ... -> D), lengths shrinking geometrically from n_1 to k.
    With ``rescore`` (a quantised shortlist) and d_1 = D, the one shape is quantised codes -> the
    float vectors on the same D dims; without it a full-dim shortlist is its own answer.

    Example:
        >>> candidate_funnels(64, 16, 100, 10)[:3]
        [[(16, 10)], [(16, 20), (64, 10)], [(16, 20), (32, 14), (64, 10)]]
        >>> candidate_funnels(64, 64, 100, 10, rescore=True)[:3]
        [[(64, 10)], [(64, 20), (64, 10)], [(64, 28), (64, 10)]]
    """
    if shortlist_dim == dim and not rescore:
        return [[(dim, k)]]
    chains = [[shortlist_dim, dim]]  # at d_1 = D (rescore) the doubling cascade is this chain too
    if 4 * shortlist_dim < dim:
        chains.append([shortlist_dim, 4 * shortlist_dim, dim])
    doubling = [shortlist_dim]
    while doubling[-1] * 2 < dim:
        doubling.append(doubling[-1] * 2)
    doubling.append(dim)
    if doubling not in chains:
        chains.append(doubling)
    out: list[Funnel] = [[(shortlist_dim, k)]]
    step = 0
    while (length := int(round(2 * k * 2 ** (step / 2)))) <= min(max_length, n_database):
        step += 1
        for chain in chains:
            steps = len(chain) - 1
            lengths = [int(round(length * (k / length) ** (i / steps))) for i in range(steps + 1)]
            funnel = list(zip(chain, lengths))
            if funnel not in out:
                out.append(funnel)
    return out


def _dominates(cheaper: Funnel, funnel: Funnel) -> bool:
    """True when ``funnel`` has the same stage dims as ``cheaper`` and no shorter shortlist."""
    return [d for d, _ in cheaper] == [d for d, _ in funnel] and all(a <= b for (_, a), (_, b) in zip(cheaper, funnel))


def holding_target(rows: Sequence[dict], target: float, headroom: int = 0) -> list[dict]:
    """The measured points that meet ``target`` with ``headroom`` grid steps to spare.

    A point holds the target when its kNN-recall reaches it and so do at least ``headroom``
    other points measured on the same structure and breadth (``shortlist``, ``nprobe``,
    ``ef_search`` where the rows have them) whose funnels have the same stage dims and no longer
    shortlists. With headroom 0 that is every point meeting the target. A target met on a sample
    by the shortest funnel that reaches it can fail on other queries (the tuned funnel that found
    every one of 3,000 neighbours on 300 WordNet queries missed 2 of 10,000 on 1,000 others); the
    next longer funnels on the grid meet it with room to spare.

    Example:
        >>> rows = [{"funnel": [(16, n), (64, 10)], "knn_recall": r} for n, r in ((20, 0.97), (28, 1.0), (40, 1.0))]
        >>> [row["funnel"][0][1] for row in holding_target(rows, 1.0, headroom=1)]
        [40]
    """
    def group(row: dict) -> tuple:
        return row.get("shortlist"), row.get("nprobe"), row.get("ef_search")

    meeting = [r for r in rows if r["knn_recall"] >= target]
    return [r for r in meeting
            if sum(o is not r and group(o) == group(r) and _dominates(o["funnel"], r["funnel"]) for o in meeting) >= headroom]


class FunnelTuner:
    """Measure candidate funnels on sample queries and keep the cheapest that meets a recall target.

    Args:
        k: results per query compared with exact search.
        target_recall: required mean kNN-recall@k against exact full-dim search, in (0, 1].
        candidates: funnels to try (default :func:`candidate_funnels`).
        repeats: timed searches per candidate after one warm-up; ms_per_query is their median.
        search_options: keyword arguments passed to every search (``nprobe``, ``ef_search``).
        objective: what "cheapest" means: ``"ms"`` (measured ms/query, then FLOPs) or
            ``"flops"`` (theoretical FLOPs per query, then ms; reproducible across machines).
        headroom: grid steps to spare: the choice is the cheapest funnel whose ``headroom``
            next-shorter candidates on the same stage dims also meet the target
            (:func:`holding_target`), so a target met by chance on the sample is not the pick.

    Attributes:
        exact_ids_: int [Q, k] exact full-dim results for the sample.
        results_: one dict per measured candidate: funnel, spec, knn_recall, flops_per_query, mflops,
            ms_per_query, meets_target, holds_target (meets it with ``headroom`` to spare).
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

    def __init__(
        self, k: int = 10, target_recall: float = 0.99, candidates: Sequence[Sequence[tuple[int, int]]] | None = None,
        repeats: int = 1, search_options: dict | None = None, objective: str = "ms", headroom: int = 0,
    ) -> None:
        self.k = k
        self.target_recall = target_recall
        self.candidates = candidates
        self.repeats = repeats
        self.search_options = search_options
        self.objective = objective
        self.headroom = headroom

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
        check_choice("objective", self.objective, OBJECTIVES)
        check_int("headroom", self.headroom, min=0, max=MAX_HEADROOM)
        if not isinstance(self.target_recall, (int, float)) or not 0 < self.target_recall <= 1:
            raise MRLError(f"target_recall must be in (0, 1], got {self.target_recall!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= index.ntotal:
            raise MRLError(f"k must be an integer in [1, {index.ntotal}], got {self.k!r}")
        if self.candidates is None:
            candidates = candidate_funnels(index.dim, index.shortlist_dim, index.ntotal, self.k, rescore=index.encoding != "float32")
        else:
            candidates = [validate_funnel(f, index.dim, index.shortlist_dim, index.ntotal, self.k, rescore_first=index.encoding != "float32")
                          for f in self.candidates]
            if not candidates:
                raise MRLError("candidates must hold at least one funnel")
        if exact_ids is None:
            _, exact_ids = exact_search(index.vectors, sample_queries, self.k, metric=index.metric)
        elif len(exact_ids) != len(sample_queries):
            raise MRLError(f"exact_ids has {len(exact_ids)} rows but there are {len(sample_queries)} sample queries")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise MRLError(f"repeats must be a positive integer, got {self.repeats!r}")
        options = dict(self.search_options or {})
        index.search(sample_queries[: min(8, len(sample_queries))], self.k, candidates[0], **options)  # warm-up
        results = []
        for funnel in candidates:
            if sum(_dominates(r["funnel"], funnel) for r in results if r["meets_target"]) > self.headroom:
                continue
            runs = [index.search(sample_queries, self.k, funnel, return_stats=True, **options) for _ in range(self.repeats + (self.repeats > 1))]
            runs = runs[1:] if self.repeats > 1 else runs  # with repeats, the first run is one more warm-up
            _, ids, stats = runs[-1]
            ms = float(np.median([r[2].ms_per_query for r in runs]))
            recall = float(knn_recall_at_k(ids, exact_ids, self.k).mean())
            results.append(
                {
                    "funnel": funnel,
                    "spec": format_funnel(funnel),
                    "knn_recall": recall,
                    "flops_per_query": stats.flops_per_query,
                    "mflops": stats.flops_per_query / 1e6,
                    "ms_per_query": ms,
                    "meets_target": recall >= self.target_recall,
                }
            )
        meeting = holding_target(results, self.target_recall, self.headroom)
        for row in results:
            row["holds_target"] = any(row is r for r in meeting)
        if meeting:
            keys = ("ms_per_query", "flops_per_query") if self.objective == "ms" else ("flops_per_query", "ms_per_query")
            best = min(meeting, key=lambda r: tuple(r[key] for key in keys))
        else:
            best = max(results, key=lambda r: (r["knn_recall"], -r["flops_per_query"]))
            logger.warning(
                "no funnel reached knn_recall@%d >= %.3f with %d grid steps to spare; keeping the most accurate (%s, %.4f)",
                self.k, self.target_recall, self.headroom, best["spec"], best["knn_recall"],
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


# Spec fields a shortlist entry may set by name after its positional fields (``hnsw:int8:192:hnsw_m=48``).
SHORTLIST_OPTIONS = ("coarse_dim", "nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_m", "pq_nbits", "opq_niter")


def parse_shortlists(text: str) -> list[ShortlistSpec]:
    """Parse ``"flat:float32:16;ivf:int8:32:16"`` (``;``-separated entries) into specs.

    An entry is ``kind:encoding:dim``, then optionally the positional fourth field, then any of
    :data:`SHORTLIST_OPTIONS` as ``name=value`` (integers): ``hnsw:int8:192:hnsw_m=48:ef_construction=200``,
    ``ivf:pq:384:384:pq_m=32:nlist=2048``. Encoding ``opq`` is ``pq`` with an OPQ rotation
    (AdANNS-OPQ when dim is a prefix); its positional fourth field is the number of rotation-learning
    rounds (``flat:opq:64:10``), as the fourth field of ``ivf`` (or any kind, where it is then
    refused when the spec is checked) is the coarse prefix. Values are checked against the data when
    the spec is resolved; here only the form is.

    Example:
        >>> [(s.kind, s.encoding, s.dim, s.coarse_dim, s.opq, s.opq_niter) for s in parse_shortlists("hnsw:int8:16; ivf:pq:32:8; flat:opq:64:10")]
        [('hnsw', 'int8', 16, None, False, None), ('ivf', 'pq', 32, 8, False, None), ('flat', 'pq', 64, None, True, 10)]
        >>> spec = parse_shortlists("hnsw:int8:192:hnsw_m=48:ef_construction=200")[0]
        >>> (spec.hnsw_m, spec.ef_construction, format_shortlist(spec))
        (48, 200, 'hnsw:int8:192:hnsw_m=48:ef_construction=200')
    """
    form = ("shortlists must be ';'-separated kind:encoding:dim[:coarse_dim | :opq_niter][:name=value ...] entries such as "
            f"hnsw:int8:16 or hnsw:int8:192:hnsw_m=48 (names: {', '.join(SHORTLIST_OPTIONS)})")
    specs = []
    for part in str(text).split(";"):
        if not part.strip():
            continue
        fields = [f.strip() for f in part.split(":")]
        positional = [f for f in fields if "=" not in f]
        named = [f.split("=", 1) for f in fields if "=" in f]
        if not 3 <= len(positional) <= 4 or fields[: len(positional)] != positional:  # names come after every positional field
            raise MRLError(f"{form}, got {part.strip()!r}")
        opq = positional[1] == "opq"
        values = positional[2:] + [value for _, value in named]
        if not all(v.strip().lstrip("+-").isdigit() for v in values):
            raise MRLError(f"{form}, got {part.strip()!r} (dim and every value must be an integer)")
        options: dict[str, int] = {}
        if len(positional) == 4:
            options["opq_niter" if opq else "coarse_dim"] = int(positional[3])
        for name, value in named:
            name = name.strip()
            if name not in SHORTLIST_OPTIONS:
                raise MRLError(f"unknown shortlist option {name!r} in {part.strip()!r}; known: {', '.join(SHORTLIST_OPTIONS)}")
            if name in options:
                raise MRLError(f"shortlist option {name!r} given twice in {part.strip()!r}")
            options[name] = int(value)
        dim = int(positional[2])
        specs.append(ShortlistSpec(kind=positional[0], encoding="pq" if opq else positional[1], dim=dim, opq=opq, **options))
    if not specs:
        raise MRLError(f"shortlists must name at least one kind:encoding:dim entry, got {text!r}")
    return specs


def format_shortlist(spec: ShortlistSpec) -> str:
    """The entry :func:`parse_shortlists` reads back as ``spec``: fields at their defaults are left out.

    Example:
        >>> format_shortlist(ShortlistSpec("ivf", "pq", 384, coarse_dim=96, pq_m=32))
        'ivf:pq:384:96:pq_m=32'
        >>> format_shortlist(ShortlistSpec("flat", "pq", 64, opq=True, opq_niter=10))
        'flat:opq:64:10'
    """
    parts = [spec.kind, "opq" if spec.opq else spec.encoding, str(spec.dim)]
    fourth = "opq_niter" if spec.opq else "coarse_dim"
    if getattr(spec, fourth) is not None:
        parts.append(str(getattr(spec, fourth)))
    defaults = ShortlistSpec()
    parts += [f"{name}={getattr(spec, name)}" for name in SHORTLIST_OPTIONS
              if name != fourth and getattr(spec, name) != getattr(defaults, name)]
    return ":".join(parts)


def default_shortlists(dim: int, shortlist_dim: int) -> list[ShortlistSpec]:
    """A small grid of stage-1 structures on the prefixes d_1 and 2 d_1 (those below ``dim``).

    Exact float, SQ8, sign bits rescored in float, HNSW and AdANNS-IVF with SQ8 codes and PQ.
    """
    specs = []
    for d1 in (shortlist_dim, 2 * shortlist_dim):
        if d1 > dim:
            continue
        specs += [ShortlistSpec("flat", "float32", d1), ShortlistSpec("flat", "int8", d1), ShortlistSpec("hnsw", "float32", d1),
                  ShortlistSpec("ivf", "int8", d1), ShortlistSpec("ivf", "pq", d1)]
        if d1 % 8 == 0:
            specs.append(ShortlistSpec("flat", "binary", 4 * d1 if 4 * d1 <= dim else d1))
    return specs


def pareto_front(rows: Sequence[dict], keys: Sequence[tuple[str, bool]] = (("knn_recall", True), ("ms_per_query", False),
                                                                          ("ram_bytes_per_vector", False))) -> list[dict]:
    """Rows no other row dominates: at least as good in every key and better in one (key, larger_is_better).

    Example:
        >>> rows = [{"knn_recall": 0.9, "ms_per_query": 1.0, "ram_bytes_per_vector": 10},
        ...         {"knn_recall": 0.8, "ms_per_query": 2.0, "ram_bytes_per_vector": 10}]
        >>> pareto_front(rows) == rows[:1]
        True
    """
    def at_least(a: dict, b: dict) -> bool:
        return all((a[key] >= b[key]) if larger else (a[key] <= b[key]) for key, larger in keys)

    return [r for r in rows if not any(at_least(o, r) and any(o[key] != r[key] for key, _ in keys) for o in rows if o is not r)]


class IndexTuner:
    """Choose the shortlist structure, its search breadth and the funnel for a recall target under budgets.

    For each structure (kind, encoding, prefix d_1, coarse prefix) built over the index's own
    vectors, and each search breadth (ivf ``nprobe``; HNSW ``ef_search``), a :class:`FunnelTuner`
    measures the candidate funnels (stage sizes) with warm-up and ``repeats`` timed runs. Every
    measured point gets kNN-recall@k, ms/query, RAM bytes per vector (shortlist structure, plus
    the full vectors when the index keeps them in memory) and build seconds.

    Args:
        k: results per query. target_recall: required mean kNN-recall@k against exact full-dim search.
        shortlists: structures to try (default :func:`default_shortlists`).
        nprobes: ivf lists probed per query to try. ef_searches: HNSW beams to try.
        max_ram_bytes_per_vector: RAM budget per vector, or None. max_ms_per_query: latency budget, or None.
        repeats: timed runs per point (median).
        candidates: funnels to try per structure (default :func:`candidate_funnels` at its d_1).
        headroom: grid steps to spare (see :class:`FunnelTuner`): a point counts as meeting the
            target only when it holds it (:func:`holding_target`).

    Attributes:
        results_: every measured point (dict: shortlist, nprobe, ef_search, spec, funnel, knn_recall,
            ms_per_query, ram_bytes_per_vector, build_seconds, mflops, meets_target, holds_target, within_budget).
        pareto_: the points no other point beats in recall, ms/query, RAM and build seconds.
        best_: the fastest point meeting the target within the budgets (else the most accurate
            within them; ``target_met_`` says which); best_shortlist_: its built structure.
    """

    def __init__(
        self, k: int = 10, target_recall: float = 0.99, shortlists: Sequence[ShortlistSpec] | None = None,
        nprobes: Sequence[int] = (4, 16, 64), ef_searches: Sequence[int] = (64, 256),
        max_ram_bytes_per_vector: float | None = None, max_ms_per_query: float | None = None, repeats: int = 3,
        candidates: Sequence[Sequence[tuple[int, int]]] | None = None, headroom: int = 0,
    ) -> None:
        self.k = k
        self.target_recall = target_recall
        self.shortlists = shortlists
        self.nprobes = nprobes
        self.ef_searches = ef_searches
        self.max_ram_bytes_per_vector = max_ram_bytes_per_vector
        self.max_ms_per_query = max_ms_per_query
        self.repeats = repeats
        self.candidates = candidates
        self.headroom = headroom

    def fit(self, index: FunnelIndex, sample_queries: np.ndarray, exact_ids: np.ndarray | None = None) -> IndexTuner:
        """Build, measure and choose; ``index`` keeps its own shortlist (see :meth:`FunnelIndex.tune`). Returns self."""
        from mrl.retrieval.shortlist import Shortlist

        for name in ("results_", "pareto_", "best_", "best_shortlist_", "target_met_", "exact_ids_"):
            self.__dict__.pop(name, None)
        check_int("headroom", self.headroom, min=0, max=MAX_HEADROOM)
        for name in ("max_ram_bytes_per_vector", "max_ms_per_query"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise MRLError(f"{name} must be a positive number or None, got {value!r}")
        specs = list(self.shortlists) if self.shortlists is not None else default_shortlists(index.dim, index.shortlist_dim)
        if not specs:
            raise MRLError("shortlists must hold at least one structure")
        names = []
        for spec in specs:  # every spec checked before anything is built
            resolved = spec.resolved(index.ntotal, index.dim, index.metric)
            # The entry parse_shortlists reads back: the options asked for, and the coarse prefix used.
            names.append(format_shortlist(dataclasses.replace(spec, coarse_dim=resolved.coarse_dim)))
            if names[-1] in names[:-1]:
                raise MRLError(f"shortlist {names[-1]} is listed twice")
        if exact_ids is None:
            _, exact_ids = exact_search(index.vectors, sample_queries, self.k, metric=index.metric)
        vector_ram = index.memory_bytes()["vectors"]
        original = index._shortlist
        results: list[dict] = []
        structures = {}
        try:
            for spec, name in zip(specs, names):
                start = time.perf_counter()
                shortlist = Shortlist.build(index.vectors, spec, index.metric)
                build = time.perf_counter() - start
                index._shortlist, index._shortlist_bytes = shortlist, None
                ram = (vector_ram + shortlist.nbytes()) / index.ntotal
                structures[name] = shortlist
                breadths = [{}]
                if shortlist.spec.kind == "ivf":
                    breadths = [{"nprobe": p} for p in sorted({min(p, shortlist.spec.nlist) for p in self.nprobes})]
                elif shortlist.spec.kind == "hnsw":
                    breadths = [{"ef_search": e} for e in self.ef_searches]
                candidates = None if self.candidates is None else [f for f in self.candidates if f[0][0] == shortlist.spec.dim]
                for options in breadths:
                    tuner = FunnelTuner(self.k, self.target_recall, candidates or None, self.repeats, options,
                                        headroom=self.headroom).fit(index, sample_queries, exact_ids)
                    for row in tuner.results_:
                        results.append({"shortlist": name, **{"nprobe": None, "ef_search": None, **options}, **row,
                                        "ram_bytes_per_vector": ram, "build_seconds": build})
        finally:
            index._shortlist, index._shortlist_bytes = original, None
        for row in results:
            row["within_budget"] = (self.max_ram_bytes_per_vector is None or row["ram_bytes_per_vector"] <= self.max_ram_bytes_per_vector) and (
                self.max_ms_per_query is None or row["ms_per_query"] <= self.max_ms_per_query)
        allowed = [r for r in results if r["within_budget"]] or results
        meeting = [r for r in allowed if r["holds_target"]]
        if meeting:
            best = min(meeting, key=lambda r: (r["ms_per_query"], r["ram_bytes_per_vector"]))
        else:
            best = max(allowed, key=lambda r: (r["knn_recall"], -r["ms_per_query"]))
            logger.warning("no structure reached knn_recall@%d >= %.3f within the budgets; keeping the most accurate (%s %s, %.4f)",
                           self.k, self.target_recall, best["shortlist"], best["spec"], best["knn_recall"])
        self.exact_ids_ = exact_ids
        self.results_ = results
        self.pareto_ = pareto_front(results, (("knn_recall", True), ("ms_per_query", False), ("ram_bytes_per_vector", False),
                                              ("build_seconds", False)))
        self.best_ = best
        self.best_funnel_ = list(best["funnel"])
        self.best_shortlist_ = structures[best["shortlist"]]
        self.target_met_ = bool(meeting)
        return self

    def summary(self, pareto_only: bool = True) -> str:
        """A markdown table of the Pareto points (or every point), the chosen one marked with *."""
        if not hasattr(self, "results_"):
            raise NotFittedError("this IndexTuner is not fitted yet; call fit(index, sample_queries) first")
        rows = self.pareto_ if pareto_only else self.results_
        lines = [f"| shortlist | nprobe/ef | funnel | knn_recall@{self.k} | ms/query | RAM B/vector | build s |", "|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (-r["knn_recall"], r["ms_per_query"])):
            mark = " *" if r is self.best_ else ""
            breadth = r["nprobe"] if r["nprobe"] is not None else (r["ef_search"] if r["ef_search"] is not None else "-")
            lines.append(f"| {r['shortlist']} | {breadth} | {r['spec']}{mark} | {r['knn_recall']:.4f} | {r['ms_per_query']:.3f} | "
                         f"{r['ram_bytes_per_vector']:.1f} | {r['build_seconds']:.2f} |")
        return "\n".join(lines)
