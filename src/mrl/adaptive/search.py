"""Learning cascade thresholds on held-out data: the paper's greedy rule and a cost-utility sweep.

- :func:`greedy_thresholds` is the rule of the MRL paper's adaptive classification (Kusupati et al.,
  NeurIPS 2022, section 4.2.1 and its released notebook): for each step m_s -> m_{s+1}, the smallest
  grid threshold that maximises the held-out utility of the two-size cascade (m_s if confident,
  else m_{s+1}).
- :func:`sweep_thresholds` solves the budget problem, min E[cost] s.t. E[utility] >= target (or max
  E[utility] s.t. E[cost] <= budget), over the joint thresholds. Each threshold ranges over the
  quantiles of its size's confidence plus -inf (always stop) and +inf (skip the size). For a sweep
  of Lagrange multipliers lam, block-coordinate descent minimises E[cost] - lam * E[utility]: one
  coordinate at a time is minimised exactly over its whole grid (one sort and a cumulative sum give
  every grid value's mean cost and utility with the other thresholds fixed), until no coordinate
  moves. The sweep runs from both ends (everything answered by the smallest size, and by the
  largest), warm-starting each lam from the last. Every point evaluated on the way, not only the
  Lagrangian optima, is kept and reduced to its Pareto front (:func:`pareto_front`), so the front
  includes non-convex points a pure Lagrangian method would miss, and no returned point is
  dominated by another evaluated one. A polish then reruns the descent from points along the
  front with the constraint itself as the goal (cheapest at that utility, best at that cost). On
  small problems where every grid combination can be scored (:func:`exhaustive_thresholds`) the
  front matches the exhaustive one at almost every target (tests/test_adaptive.py).
- :func:`select_with_confidence` picks the front point for a target with a margin for the noise of
  the fit data; :func:`budget_thresholds` is the one-call budget policy on per-sample arrays.

Utilities are "higher is better" per sample [S, N]: 0/1 correctness for classification; for a
language model pass minus the per-token loss, so "mean loss <= L" is ``min_utility=-L``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mrl.adaptive.cascading import (
    Costs,
    _cascade,
    _check_utility,
    check_confidences,
    check_thresholds,
    evaluate_thresholds,
)
from mrl.errors import MRLError

log = logging.getLogger(__name__)


def greedy_thresholds(confidences: np.ndarray, utility: np.ndarray, grid: np.ndarray | int = 101) -> np.ndarray:
    """The paper's greedy thresholds, one per step between consecutive sizes.

    For step s, threshold t scores mean(utility[s] where confidence[s] >= t, else utility[s+1]) over
    all samples; the smallest grid value with the best score wins (ties go to the cheaper cascade).
    The grid always ends with +inf, "never answer at this size": the paper's rule answers when
    confidence > t with t up to 1.0, so its t = 1.0 passes on even a saturated confidence of
    exactly 1.0 (common in float32 softmax of confident heads), which ``>=`` with a finite t cannot.

    Args:
        confidences: [S, N] max-softmax (or any score) per size.
        utility: [S, N], e.g. 1.0 where size s is correct.
        grid: ascending candidate thresholds, or a number of points evenly spaced on [0, 1];
            +inf is appended when missing.

    Returns:
        thresholds [S-1] (+inf where passing every sample on is best).

    Example:
        >>> conf = np.array([[0.9, 0.6, 0.3], [1.0, 1.0, 1.0]])
        >>> correct = np.array([[1, 1, 0], [1, 0, 1]])
        >>> greedy_thresholds(conf, correct, grid=np.array([0.0, 0.5, 0.7, 1.0]))
        array([0.5])
    """
    conf = check_confidences(confidences)
    util = _check_utility(utility, conf.shape)
    grid = _grid(grid)
    if grid[-1] != np.inf:
        grid = np.append(grid, np.inf)
    out = np.empty(conf.shape[0] - 1)
    for s in range(conf.shape[0] - 1):
        # samples answered at s for threshold t are those with conf >= t: a suffix in sorted order
        order = np.argsort(conf[s], kind="stable")
        gain = (util[s] - util[s + 1])[order]
        suffix_gain = np.concatenate([np.cumsum(gain[::-1])[::-1], [0.0]])
        first_stop = np.searchsorted(conf[s][order], grid, side="left")
        score = util[s + 1].sum() + suffix_gain[first_stop]
        out[s] = grid[int(np.argmax(np.round(score, 9)))]
    return out


def _grid(grid: np.ndarray | int) -> np.ndarray:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        if grid < 2:
            raise MRLError(f"grid must have at least 2 points, got {grid}")
        return np.linspace(0.0, 1.0, int(grid))
    arr = np.asarray(grid, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1 or np.isnan(arr).any() or (np.diff(arr) <= 0).any():
        raise MRLError(f"grid must be a strictly ascending 1-D array of thresholds, got {grid!r}")
    return arr


def pareto_front(cost: np.ndarray, utility: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates, sorted by ascending cost.

    A point is dominated when another has cost <= and utility >= with one of them strict; of
    identical points one is kept.

    Example:
        >>> pareto_front(np.array([1.0, 2.0, 2.0, 3.0, 1.5]), np.array([0.5, 0.7, 0.6, 0.7, 0.4]))
        array([0, 1])
    """
    cost = np.asarray(cost, dtype=np.float64)
    utility = np.asarray(utility, dtype=np.float64)
    order = np.lexsort((-utility, cost))
    keep = []
    best = -np.inf
    for i in order:
        if utility[i] > best:
            keep.append(i)
            best = utility[i]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class ThresholdSweep:
    """The Pareto front of a threshold search, sorted by ascending cost.

    Attributes:
        thresholds: [P, S-1]. cost: [P] mean cost. utility: [P] mean utility (both strictly
        increasing along the front). n_evaluated: threshold vectors scored to find the front.
        evaluated_cost, evaluated_utility: [n_evaluated] every scored point, when asked for.
    """

    thresholds: np.ndarray
    cost: np.ndarray
    utility: np.ndarray
    n_evaluated: int
    evaluated_cost: np.ndarray | None = None
    evaluated_utility: np.ndarray | None = None

    def select(self, min_utility: float | None = None, max_cost: float | None = None) -> int:
        """Index of the cheapest point with utility >= ``min_utility``, or of the best point with
        cost <= ``max_cost``. An unreachable goal gives the closest point (best utility, resp.
        cheapest) and logs a warning.

        Example:
            >>> sweep = ThresholdSweep(np.zeros((3, 1)), np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.8, 0.9]), 3)
            >>> sweep.select(min_utility=0.7), sweep.select(max_cost=3.0)
            (1, 1)
        """
        if (min_utility is None) == (max_cost is None):
            raise MRLError("give exactly one of min_utility (a target) and max_cost (a budget)")
        if min_utility is not None:
            ok = np.flatnonzero(self.utility >= min_utility - 1e-12)
            if ok.size == 0:
                log.warning("target utility %.6g is above the best reachable %.6g; using the best", min_utility, self.utility[-1])
                return len(self.utility) - 1
            return int(ok[0])
        ok = np.flatnonzero(self.cost <= max_cost + 1e-12)
        if ok.size == 0:
            log.warning("budget %.6g is below the cheapest reachable cost %.6g; using the cheapest", max_cost, self.cost[0])
            return 0
        return int(ok[-1])


def quantile_candidates(confidence: np.ndarray, n_quantiles: int) -> np.ndarray:
    """Candidate thresholds for one size: -inf, ``n_quantiles`` quantiles of its confidence, +inf.

    Example:
        >>> quantile_candidates(np.array([0.2, 0.4, 0.6, 0.8]), 3)
        array([-inf,  0.2,  0.5,  0.8,  inf])
    """
    qs = np.unique(np.quantile(confidence, np.linspace(0.0, 1.0, n_quantiles)))
    return np.concatenate([[-np.inf], qs, [np.inf]])


class _CoordinateSearch:
    """Exact one-coordinate scans of every grid value with the other thresholds held fixed, and
    coordinate descent built on them; every scanned point is recorded and pruned to the front."""

    def __init__(self, conf: np.ndarray, util: np.ndarray, costs: Costs, candidates: list[np.ndarray], keep_evaluated: bool):
        self.conf, self.util, self.costs, self.candidates = conf, util, costs, candidates
        self.num_sizes, self.n = conf.shape
        self.cols = np.arange(self.n)
        self.order = [np.argsort(conf[s], kind="stable") for s in range(self.num_sizes - 1)]
        self.front = (np.empty((0, self.num_sizes - 1)), np.empty(0), np.empty(0))
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.keep_evaluated = keep_evaluated
        self.evaluated: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_evaluated = 0

    def descend(self, thresholds: np.ndarray, choose: Callable[[np.ndarray, np.ndarray], int | None], max_passes: int) -> np.ndarray:
        """Coordinate descent: set each threshold in turn to the grid value ``choose(cost, utility)``
        picks (None keeps it), until a pass moves nothing."""
        thr = thresholds.copy()
        for _ in range(max_passes):
            moved = False
            for s in range(self.num_sizes - 1):
                cost, utl = self.scan(thr, s)
                block = np.repeat(thr[None, :], len(cost), axis=0)
                block[:, s] = self.candidates[s]
                self.pending.append((block, cost, utl))
                self.n_evaluated += len(cost)
                if self.keep_evaluated:
                    self.evaluated.append((cost, utl))
                pick = choose(cost, utl)
                if pick is not None and self.candidates[s][pick] != thr[s]:
                    thr[s] = self.candidates[s][pick]
                    moved = True
            if not moved:
                break
        return thr

    def compact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merge the recorded points into the Pareto front and return it (thresholds, cost, utility)."""
        thr, cost, utl = (np.concatenate([part[k] for part in [self.front, *self.pending]]) for k in range(3))
        keep = pareto_front(cost, utl)
        self.front, self.pending = (thr[keep], cost[keep], utl[keep]), []
        return self.front

    def scan(self, thresholds: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean cost and utility [K] for every candidate value of thresholds[s]."""
        cand = self.candidates[s]
        chosen = _cascade(self.conf, thresholds)
        per_answer = self.costs.per_answer(thresholds)
        reached = chosen >= s
        base_cost = per_answer[chosen[~reached]].sum()
        base_util = self.util[chosen[~reached], self.cols[~reached]].sum()
        idx = self.order[s][reached[self.order[s]]]  # reached samples, ascending confidence at s
        # what the reached samples get if they do not stop at s: the rest of the cascade
        if s + 1 < self.num_sizes - 1:
            later = _cascade(self.conf[s + 1 :, idx], thresholds[s + 1 :]) + s + 1
        else:
            later = np.full(idx.size, self.num_sizes - 1)
        active_s = thresholds.copy()
        active_s[s] = 0.0  # any finite value: head s is consulted
        cost_cont_active = self.costs.per_answer(active_s)[later]
        skip_s = thresholds.copy()
        skip_s[s] = np.inf
        cost_cont_skip = self.costs.per_answer(skip_s)[later]
        util_cont = self.util[later, idx]
        cost_stop = self.costs.per_answer(active_s)[s]
        util_stop = self.util[s, idx]
        # the samples that stop at s for a threshold are a suffix of idx: suffix sums of the changes
        d_cost = np.concatenate([np.cumsum((cost_stop - cost_cont_active)[::-1])[::-1], [0.0]])
        d_util = np.concatenate([np.cumsum((util_stop - util_cont)[::-1])[::-1], [0.0]])
        first_stop = np.searchsorted(self.conf[s, idx], cand, side="left")
        cost = base_cost + cost_cont_active.sum() + d_cost[first_stop]
        util = base_util + util_cont.sum() + d_util[first_stop]
        skip = cand == np.inf
        cost[skip] = base_cost + cost_cont_skip.sum()
        util[skip] = base_util + util_cont.sum()
        return cost / self.n, util / self.n


def sweep_thresholds(
    confidences: np.ndarray,
    utility: np.ndarray,
    costs: Costs,
    n_quantiles: int = 100,
    n_lambdas: int = 48,
    max_passes: int = 8,
    n_polish: int = 24,
    keep_evaluated: bool = False,
) -> ThresholdSweep:
    """Pareto front of mean cost vs mean utility over joint thresholds (see the module docstring).

    Args:
        confidences: [S, N] fit-set confidences; utility: [S, N] fit-set utilities.
        costs: from :func:`~mrl.adaptive.cascading.head_costs`.
        n_quantiles: grid points per threshold (quantiles of that size's confidences).
        n_lambdas: Lagrange multipliers, log-spaced over the range where the trade-off changes.
        max_passes: coordinate-descent passes per multiplier (it usually settles in 2-3).
        n_polish: front points polished by constrained coordinate descent after the sweep.
        keep_evaluated: also return the cost and utility of every point scored (for checks).

    Returns:
        :class:`ThresholdSweep`.

    Example:
        >>> from mrl.adaptive.cascading import head_costs
        >>> conf = np.array([[0.9, 0.6, 0.3, 0.95], [0.9, 0.9, 0.9, 0.9]])
        >>> correct = np.array([[1, 0, 0, 1], [1, 1, 1, 1]])
        >>> sweep = sweep_thresholds(conf, correct, head_costs([8, 64]), n_quantiles=5)
        >>> sweep.cost.tolist(), sweep.utility.tolist()
        ([8.0, 22.0, 36.0], [0.5, 0.75, 1.0])
    """
    conf = check_confidences(confidences)
    util = _check_utility(utility, conf.shape)
    num_sizes, n = conf.shape
    if num_sizes < 2:
        raise MRLError(f"a cascade needs at least 2 sizes, got {num_sizes}")
    if not isinstance(n_quantiles, (int, np.integer)) or n_quantiles < 2:
        raise MRLError(f"n_quantiles must be an integer >= 2, got {n_quantiles!r}")
    candidates = [quantile_candidates(conf[s], n_quantiles) for s in range(num_sizes - 1)]
    search = _CoordinateSearch(conf, util, costs, candidates, keep_evaluated)
    lambdas = _lambda_grid(costs, util, n, n_lambdas)
    # from "all answered by the smallest size" up, and from "all by the largest" down
    for start, lams in ((-np.inf, lambdas), (np.inf, lambdas[::-1])):
        thr = np.full(num_sizes - 1, start)
        for lam in lams:
            thr = search.descend(thr, lambda cost, utl, lam=lam: int(np.argmin(np.round(cost - lam * utl, 12))), max_passes)
        search.compact()
    # polish: from points along the front, constrained coordinate descent at their own level
    # (cheapest at that utility, best at that cost) reaches points between Lagrangian optima
    front_thr, front_cost, front_util = search.front
    picks = np.unique(np.linspace(0, len(front_cost) - 1, min(n_polish, len(front_cost))).round().astype(int))
    for i in picks:
        u, c = front_util[i], front_cost[i]
        search.descend(front_thr[i], lambda cost, utl, u=u: _lexargmin(cost, -utl, utl >= u - 1e-12), max_passes)
        search.descend(front_thr[i], lambda cost, utl, c=c: _lexargmin(-utl, cost, cost <= c + 1e-12), max_passes)
    thr, cost, utl = search.compact()
    return ThresholdSweep(
        thresholds=thr,
        cost=cost,
        utility=utl,
        n_evaluated=search.n_evaluated,
        evaluated_cost=np.concatenate([e[0] for e in search.evaluated]) if keep_evaluated else None,
        evaluated_utility=np.concatenate([e[1] for e in search.evaluated]) if keep_evaluated else None,
    )


def _lexargmin(primary: np.ndarray, secondary: np.ndarray, allowed: np.ndarray) -> int | None:
    """Index of the smallest (primary, secondary) among the allowed entries; None if none is."""
    if not allowed.any():
        return None
    idx = np.flatnonzero(allowed)
    return int(idx[np.lexsort((secondary[idx], primary[idx]))[0]])


def _lambda_grid(costs: Costs, util: np.ndarray, n: int, n_lambdas: int) -> np.ndarray:
    """Multipliers from "one sample's utility is worth the smallest cost step" to "worth N times the
    largest cost": the range over which the Lagrangian optimum can change."""
    all_active = costs.per_answer(np.zeros(len(costs.answer) - 1))
    steps = np.diff(np.concatenate([[0.0], np.sort(np.unique(np.concatenate([all_active, costs.answer])))]))
    steps = steps[steps > 0]
    spread = float(np.ptp(util)) or 1.0
    low = 0.1 * (steps.min() if steps.size else 1.0) / spread
    high = 10.0 * n * all_active.max() / spread
    return np.geomspace(low, max(high, low * 10), n_lambdas)


def exhaustive_thresholds(
    confidences: np.ndarray, utility: np.ndarray, costs: Costs, candidates: list[np.ndarray], max_points: int = 200_000
) -> ThresholdSweep:
    """Pareto front of every combination of the given per-size candidates (small problems; a
    reference for :func:`sweep_thresholds`).

    Example:
        >>> from mrl.adaptive.cascading import head_costs
        >>> conf = np.array([[0.9, 0.6], [0.9, 0.9]])
        >>> sweep = exhaustive_thresholds(conf, np.array([[1, 0], [1, 1]]), head_costs([8, 64]), [np.array([0.5, 0.7])])
        >>> sweep.cost.tolist(), sweep.utility.tolist()
        ([8.0, 36.0], [0.5, 1.0])
    """
    conf = check_confidences(confidences)
    if len(candidates) != conf.shape[0] - 1:
        raise MRLError(f"candidates must hold one array per size but the last ({conf.shape[0] - 1}), got {len(candidates)}")
    total = int(np.prod([len(c) for c in candidates]))
    if total > max_points:
        raise MRLError(f"{total} threshold combinations exceed max_points={max_points}; use sweep_thresholds")
    grid = np.stack(np.meshgrid(*candidates, indexing="ij"), axis=-1).reshape(-1, len(candidates))
    for row in grid[:1]:
        check_thresholds(row, conf.shape[0])
    cost, utl = evaluate_thresholds(conf, utility, grid, costs)
    keep = pareto_front(cost, utl)
    return ThresholdSweep(thresholds=grid[keep], cost=cost[keep], utility=utl[keep], n_evaluated=total)


def budget_thresholds(
    confidences: np.ndarray,
    utility: np.ndarray,
    costs: Costs,
    min_utility: float | None = None,
    max_cost: float | None = None,
    **sweep_options,
) -> tuple[np.ndarray, ThresholdSweep]:
    """Thresholds [S-1] of the cheapest front point with mean utility >= ``min_utility`` (or the
    best with mean cost <= ``max_cost``), and the sweep they come from.

    For a loss (lower is better) pass ``utility=-loss`` and ``min_utility=-max_mean_loss``.

    Example:
        >>> from mrl.adaptive.cascading import cascade, head_costs
        >>> nll = np.array([[0.1, 2.0, 0.2, 3.0], [0.1, 0.5, 0.2, 0.4]])  # per-token loss per size
        >>> conf = np.exp(-nll)  # e.g. the probability of the chosen token
        >>> thr, _ = budget_thresholds(conf, -nll, head_costs([64, 512]), min_utility=-0.3, n_quantiles=4)
        >>> thr.round(3), cascade(conf, thr)
        (array([0.819]), array([0, 1, 0, 1]))
    """
    sweep = sweep_thresholds(confidences, utility, costs, **sweep_options)
    return sweep.thresholds[sweep.select(min_utility=min_utility, max_cost=max_cost)].copy(), sweep


def select_with_confidence(
    sweep: ThresholdSweep,
    confidences: np.ndarray,
    utility: np.ndarray,
    min_value: float,
    reference: np.ndarray | None = None,
    z: float = 1.2815515655446004,
) -> int | None:
    """Cheapest front point whose mean utility clears ``min_value`` with a safety margin.

    The cheapest point that only just reaches a target on the fit data is chosen *because* it got
    lucky there, so it tends to fall short on new data. Here each front point's per-sample utility,
    minus ``reference`` (e.g. the largest size's utility, so the difference is paired and its noise
    small), must have a one-sided normal lower confidence bound ``mean - z * std / sqrt(N)`` of at
    least ``min_value``. z = 1.28 is a 90% bound; z = 0 is :meth:`ThresholdSweep.select`.

    Args:
        sweep: a front fitted on ``confidences``/``utility`` [S, N].
        min_value: the least mean of (utility - reference), e.g. -0.002 for "at most 0.2 points
            below the reference".
        reference: [N] per-sample reference utility, or None for 0.

    Returns:
        an index into the sweep, or None when no point qualifies (the target cannot be certified
        on this fit data; the front's most useful point there was chosen for its luck too).

    Example:
        >>> from mrl.adaptive.cascading import head_costs
        >>> rng = np.random.default_rng(0)
        >>> conf, correct = rng.random((2, 400)), (rng.random((2, 400)) < [[0.7], [0.9]]).astype(float)
        >>> sweep = sweep_thresholds(conf, correct, head_costs([8, 64]), n_quantiles=20)
        >>> plain = sweep.select(min_utility=correct[1].mean() - 0.01)
        >>> safe = select_with_confidence(sweep, conf, correct, -0.01, reference=correct[1])
        >>> bool(sweep.cost[safe] >= sweep.cost[plain])
        True
    """
    conf = check_confidences(confidences)
    util = _check_utility(utility, conf.shape)
    ref = np.zeros(conf.shape[1]) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != (conf.shape[1],):
        raise MRLError(f"reference must be [N] = [{conf.shape[1]}], got shape {ref.shape}")
    if z < 0:
        raise MRLError(f"z must be >= 0, got {z}")
    n = conf.shape[1]
    cols = np.arange(n)
    for i, thr in enumerate(sweep.thresholds):
        diff = util[_cascade(conf, thr), cols] - ref
        spread = diff.std(ddof=1) if n > 1 else 0.0
        if diff.mean() - z * spread / np.sqrt(n) >= min_value - 1e-12:
            return i
    return None
