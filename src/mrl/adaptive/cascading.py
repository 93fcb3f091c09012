"""Confidence cascades over nesting sizes: run the smallest head, stop when it is confident.

MRL (Kusupati et al., NeurIPS 2022, section 4.2.1 "Adaptive Classification") classifies each input
with the smallest prefix z[:m] whose max-softmax probability clears a threshold, and moves to the
next size otherwise; the largest size always answers. This module holds the array-level pieces that
work on per-sample arrays, so they serve any task with per-size outputs (classification here,
adaptive decoding of a Matryoshka language model in :mod:`mrl.lm`):

- :func:`max_softmax`: confidence [S, N] from logits, chunked so [S, N, C] never doubles in memory;
- :func:`cascade`: confidences [S, N] and thresholds [S-1] -> the size index that answers [N];
- :class:`HeadCosts` / :func:`head_costs`: what answering at each size costs. ``final`` counts the
  dims of the head that answered (the paper's 37 expected dims on ImageNet), ``cumulative`` the dims
  of every head consulted (the paper's 62), ``flops`` the multiply-adds m * C of every head consulted;
  :class:`SharedCosts`: stages that share work (a wider submodel reusing a narrower one's rows), each
  shared part paid once per sample;
- :func:`cascade_outcome` / :func:`evaluate_thresholds`: per-sample or mean cost and utility.

Threshold convention: size s answers when ``confidence[s] >= thresholds[s]``. ``-inf`` means "always
stop here", ``+inf`` means "never stop here" and, because nobody can stop at it, the head is skipped
and costs nothing under ``cumulative``/``flops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrl.errors import MRLError
from mrl.nesting import validate_nesting

COSTS = ("final", "cumulative", "flops")
_CHUNK = 1 << 16  # rows per softmax chunk: bounds the temporary to 64k x C floats


def as_logits(logits: Sequence[np.ndarray] | np.ndarray, name: str = "logits") -> np.ndarray:
    """Per-size logits as one float array [S, N, C]; a list of [N, C] arrays or a tensor is accepted.

    Raises:
        MRLError: on a wrong number of dimensions, mismatched sizes, or NaN/inf values.

    Example:
        >>> as_logits([np.zeros((2, 3)), np.ones((2, 3))]).shape
        (2, 2, 3)
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    if isinstance(logits, (list, tuple)):
        shapes = {np.shape(part) for part in logits}
        if len(shapes) > 1:
            raise MRLError(f"{name} per size must all have the same shape [N, C], got {sorted(shapes)}")
        logits = np.stack([np.asarray(part) for part in logits]) if logits else np.empty((0, 0, 0))
    arr = np.asarray(logits)
    if arr.ndim != 3:
        raise MRLError(f"{name} must be [S, N, C] (sizes, samples, classes), got shape {arr.shape}")
    if 0 in arr.shape:
        raise MRLError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise MRLError(f"{name} contain NaN or infinite values")
    return arr


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Largest softmax probability over the last axis, computed stably in row chunks.

    Args:
        logits: [..., C] (for example [S, N, C] or one size's [N, C]).

    Returns:
        float64 confidences [...], in [1/C, 1].

    Example:
        >>> max_softmax(np.array([[0.0, 0.0], [0.0, np.log(3.0)]])).round(3)
        array([0.5 , 0.75])
    """
    logits = np.asarray(logits)
    flat = logits.reshape(-1, logits.shape[-1])
    out = np.empty(flat.shape[0], dtype=np.float64)
    for start in range(0, flat.shape[0], _CHUNK):
        block = flat[start : start + _CHUNK].astype(np.float64)
        block = block - block.max(axis=1, keepdims=True)
        out[start : start + _CHUNK] = 1.0 / np.exp(block).sum(axis=1)
    return out.reshape(logits.shape[:-1])


def check_confidences(confidences: np.ndarray, name: str = "confidences") -> np.ndarray:
    """Validate per-size, per-sample scores [S, N] (finite floats) and return them as float64."""
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.ndim != 2 or 0 in conf.shape:
        raise MRLError(f"{name} must be a non-empty [S, N] array (sizes, samples), got shape {conf.shape}")
    if np.isnan(conf).any():
        raise MRLError(f"{name} contain NaN")
    return conf


def check_thresholds(thresholds: np.ndarray, num_sizes: int) -> np.ndarray:
    """Validate a threshold vector [S-1] (no NaN; +-inf allowed) and return it as float64."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (num_sizes - 1,):
        raise MRLError(f"thresholds must have shape [{num_sizes - 1}] (one per size but the last), got {thr.shape}")
    if np.isnan(thr).any():
        raise MRLError(f"thresholds must not be NaN, got {thr.tolist()}")
    return thr


def cascade(confidences: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the size that answers each sample: the first s with confidence >= threshold.

    Args:
        confidences: [S, N] scores per size and sample (e.g. :func:`max_softmax` of each head).
        thresholds: [S-1]; the last size answers whatever is left.

    Returns:
        int64 [N], values in 0..S-1.

    Example:
        >>> conf = np.array([[0.9, 0.2, 0.4], [0.5, 0.8, 0.1], [0.3, 0.3, 0.3]])
        >>> cascade(conf, np.array([0.5, 0.6]))
        array([0, 1, 2])
    """
    conf = check_confidences(confidences)
    return _cascade(conf, check_thresholds(thresholds, conf.shape[0]))


def _cascade(conf: np.ndarray, thr: np.ndarray) -> np.ndarray:
    chosen = np.full(conf.shape[1], conf.shape[0] - 1, dtype=np.int64)
    open_ = np.ones(conf.shape[1], dtype=bool)  # row by row: argmax over axis 0 is strided and slow
    for s, t in enumerate(thr):
        if t == np.inf:
            continue
        stop = open_ & (conf[s] >= t)
        chosen[stop] = s
        open_ &= ~stop
    return chosen


@dataclass(frozen=True)
class HeadCosts:
    """Cost of answering at each size: ``answer[s]`` once, plus ``consult[j]`` per head run.

    A sample answered by size s pays ``answer[s] + sum(consult[j] for active j <= s)``, where a
    head is active unless its threshold is ``+inf`` (it can never stop anything, so it is skipped).
    """

    answer: np.ndarray  # [S]
    consult: np.ndarray  # [S]

    def per_answer(self, thresholds: np.ndarray) -> np.ndarray:
        """Cost [S] of a sample answered at each size, given the thresholds [S-1].

        Example:
            >>> HeadCosts(np.zeros(3), np.array([8.0, 16.0, 32.0])).per_answer(np.array([0.5, np.inf]))
            array([ 8., 24., 40.])
        """
        return self.per_answer_batch(_active(np.asarray(thresholds, dtype=np.float64)[None]))[0]

    def per_answer_batch(self, active: np.ndarray) -> np.ndarray:
        """Cost [P, S] of a sample answered at each size, for P cascades given as active heads [P, S]."""
        paid = self.consult[None, :] * active
        # the answering head itself always runs, even where no sample can reach it
        return self.answer[None, :] + np.cumsum(paid, axis=1) - paid + self.consult[None, :]


@dataclass(frozen=True)
class SharedCosts:
    """Cost of answering at each stage when stages share work (a cascade over (width, dim) pairs).

    ``need[s, k]`` is what stage s spends on part k of the computation. Parts are nested within a
    column: a stage that needs less of part k uses a prefix of what a stage needing more computes
    (the first rows of a layer, the first units of a representation), so a sample answered at s pays,
    for each part, the most that any stage run for it needs: ``sum_k max(need[j, k])`` over the
    active stages j <= s and s itself. A part only one stage needs is that stage's own cost.

    Example:
        >>> # stage 0: 2 rows of a shared layer + its own head; stage 1: 4 rows + its own head
        >>> costs = SharedCosts(np.array([[20.0, 5.0, 0.0], [40.0, 0.0, 7.0]]))
        >>> costs.per_answer(np.array([0.5])), costs.per_answer(np.array([np.inf]))
        (array([25., 52.]), array([25., 47.]))
    """

    need: np.ndarray  # [S, K]

    def __post_init__(self) -> None:
        need = np.asarray(self.need, dtype=np.float64)
        if need.ndim != 2 or 0 in need.shape or not np.isfinite(need).all() or (need < 0).any():
            raise MRLError(f"need must be a non-empty [S, K] array of finite costs >= 0, got shape {need.shape}")
        object.__setattr__(self, "need", need)

    @property
    def answer(self) -> np.ndarray:
        """Nothing is paid per answer beyond the stages run (as ``cumulative`` head costs)."""
        return np.zeros(self.need.shape[0])

    def per_answer(self, thresholds: np.ndarray) -> np.ndarray:
        """Cost [S] of a sample answered at each stage, given the thresholds [S-1]."""
        return self.per_answer_batch(_active(np.asarray(thresholds, dtype=np.float64)[None]))[0]

    def per_answer_batch(self, active: np.ndarray) -> np.ndarray:
        """Cost [P, S] of a sample answered at each stage, for P cascades given as active stages [P, S]."""
        run = np.where(active[:, :, None], self.need[None], 0.0)  # [P, S, K]
        # the answering stage itself always runs, even where no sample can reach it
        return np.maximum(np.maximum.accumulate(run, axis=1), self.need[None]).sum(axis=2)


Costs = HeadCosts | SharedCosts
"""A cascade's cost model: per-head costs, or stages sharing work."""


def _active(thresholds: np.ndarray) -> np.ndarray:
    """Stages a cascade runs [P, S], from thresholds [P, S-1]: +inf skips a stage; the last always runs."""
    return np.concatenate([thresholds < np.inf, np.ones((thresholds.shape[0], 1), dtype=bool)], axis=1)


def head_costs(nesting: Sequence[int], cost: str = "final", num_classes: int | None = None) -> HeadCosts:
    """Cost model for a nesting list.

    Args:
        nesting: ascending sizes [S].
        cost: ``final`` (dims of the answering head), ``cumulative`` (dims of all heads run) or
            ``flops`` (multiply-adds m * C of all heads run; needs ``num_classes``).
        num_classes: C, the output size of each head (classes, or vocabulary size for a LM).

    Example:
        >>> head_costs([8, 16, 32], "cumulative").per_answer(np.array([0.5, 0.5]))
        array([ 8., 24., 56.])
        >>> head_costs([8, 16], "flops", num_classes=10).per_answer(np.array([0.5]))
        array([ 80., 240.])
    """
    sizes = np.asarray(validate_nesting(nesting), dtype=np.float64)
    zeros = np.zeros_like(sizes)
    if cost == "final":
        return HeadCosts(answer=sizes, consult=zeros)
    if cost == "cumulative":
        return HeadCosts(answer=zeros, consult=sizes)
    if cost == "flops":
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise MRLError(f"cost 'flops' needs num_classes, a positive integer, got {num_classes!r}")
        return HeadCosts(answer=zeros, consult=sizes * int(num_classes))
    raise MRLError(f"cost must be one of {list(COSTS)}, got {cost!r}")


@dataclass(frozen=True)
class CascadeOutcome:
    """Per-sample result of a cascade: answering size index, cost and utility, each [N]."""

    chosen: np.ndarray
    cost: np.ndarray
    utility: np.ndarray

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())

    @property
    def mean_utility(self) -> float:
        return float(self.utility.mean())


def cascade_outcome(confidences: np.ndarray, utility: np.ndarray, thresholds: np.ndarray, costs: Costs) -> CascadeOutcome:
    """Run the cascade and read off each sample's cost and utility.

    Args:
        confidences: [S, N].
        utility: [S, N], what answering sample n at size s is worth (1/0 correctness for
            classification; minus the loss, e.g. -NLL, for a language model).
        thresholds: [S-1].
        costs: from :func:`head_costs`.

    Example:
        >>> conf = np.array([[0.9, 0.2], [0.5, 0.8]])
        >>> correct = np.array([[1.0, 0.0], [1.0, 1.0]])
        >>> out = cascade_outcome(conf, correct, np.array([0.5]), head_costs([8, 16], "cumulative"))
        >>> out.chosen, out.cost, out.mean_utility
        (array([0, 1]), array([ 8., 24.]), 1.0)
    """
    chosen = cascade(confidences, thresholds)
    util = _check_utility(utility, np.shape(confidences))
    per_answer = costs.per_answer(thresholds)
    return CascadeOutcome(chosen=chosen, cost=per_answer[chosen], utility=util[chosen, np.arange(chosen.size)])


def evaluate_thresholds(
    confidences: np.ndarray, utility: np.ndarray, thresholds: np.ndarray, costs: Costs, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cost and mean utility of many threshold vectors at once.

    Args:
        confidences: [S, N]; utility: [S, N]; thresholds: [P, S-1]; costs: from :func:`head_costs`.
        chunk: threshold rows per vectorised block (memory is chunk x S x N booleans).

    Returns:
        (mean_cost [P], mean_utility [P]).

    Example:
        >>> conf = np.array([[0.9, 0.2], [0.5, 0.8]])
        >>> correct = np.array([[1.0, 0.0], [1.0, 1.0]])
        >>> evaluate_thresholds(conf, correct, np.array([[0.5], [np.inf]]), head_costs([8, 16]))
        (array([12., 16.]), array([1., 1.]))
    """
    conf = check_confidences(confidences)
    util = _check_utility(utility, conf.shape)
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 2 or thr.shape[1] != conf.shape[0] - 1:
        raise MRLError(f"thresholds must be [P, {conf.shape[0] - 1}], got shape {thr.shape}")
    if np.isnan(thr).any():
        raise MRLError("thresholds must not be NaN")
    active = _active(thr)
    mean_cost = np.empty(thr.shape[0])
    mean_util = np.empty(thr.shape[0])
    cols = np.arange(conf.shape[1])
    for start in range(0, thr.shape[0], chunk):
        block = thr[start : start + chunk]
        stops = np.ones((block.shape[0],) + conf.shape, dtype=bool)
        stops[:, :-1] = conf[None, :-1] >= block[:, :, None]
        chosen = stops.argmax(axis=1)  # [p, N]
        mean_util[start : start + chunk] = util[chosen, cols].mean(axis=1)
        per_answer = costs.per_answer_batch(active[start : start + chunk])  # [p, S]
        mean_cost[start : start + chunk] = np.take_along_axis(per_answer, chosen, axis=1).mean(axis=1)
    return mean_cost, mean_util


def _check_utility(utility: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    util = np.asarray(utility, dtype=np.float64)
    if util.shape != tuple(shape):
        raise MRLError(f"utility must have the shape of confidences {tuple(shape)}, got {util.shape}")
    if not np.isfinite(util).all():
        raise MRLError("utility contains NaN or infinite values")
    return util
