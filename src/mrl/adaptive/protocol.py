"""The paper's evaluation protocol for adaptive classification, and the cost-accuracy curve.

MRL (Kusupati et al., NeurIPS 2022, section 4.2.1 and appendix) fits the thresholds on a random
part of the held-out set, measures on the rest, repeats over seeds (30 in the released notebook)
and reports mean +- std; it compares with the oracle upper bound (a sample counts as right if any
size is right) and the share of samples that every size gets wrong. Everything here works on
confidences and correctness arrays [S, N] computed once, so 30 seeds cost 30 threshold fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from mrl.adaptive.cascading import evaluate_thresholds, head_costs
from mrl.adaptive.classifier import AdaptiveClassifier
from mrl.adaptive.search import sweep_thresholds
from mrl.errors import MRLError

METRICS = ("accuracy", "expected_dims", "expected_cumulative_dims", "expected_flops")


def oracle_accuracy(correct: np.ndarray) -> float:
    """Share of samples some size gets right (correct: [S, N] booleans): the cascade's ceiling.

    Example:
        >>> oracle_accuracy(np.array([[1, 0, 0], [0, 0, 1]]))
        0.6666666666666666
    """
    return float(np.asarray(correct, dtype=bool).any(axis=0).mean())


def share_wrong_at_every_size(correct: np.ndarray) -> float:
    """Share of samples every size gets wrong (correct: [S, N] booleans).

    Example:
        >>> share_wrong_at_every_size(np.array([[1, 0, 0], [0, 0, 1]]))
        0.3333333333333333
    """
    return float((~np.asarray(correct, dtype=bool)).all(axis=0).mean())


def mean_std(values: Sequence[float]) -> dict:
    """{"mean", "std"} (population std, as numpy's default) of a list of numbers."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def thresholds_to_json(thresholds: np.ndarray) -> list:
    """Floats, with the infinities spelt "inf" / "-inf" (JSON has no infinity).

    Example:
        >>> thresholds_to_json(np.array([0.5, np.inf, -np.inf]))
        [0.5, 'inf', '-inf']
    """
    return [float(t) if math.isfinite(t) else ("inf" if t > 0 else "-inf") for t in np.asarray(thresholds, dtype=float)]


def repeated_splits(
    classifier: AdaptiveClassifier,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    num_classes: int,
    seeds: int = 30,
    fit_fraction: float = 0.5,
    target: float | None = None,
    budget: float | None = None,
    progress: bool = False,
) -> dict:
    """Fit on a random ``fit_fraction`` of val, measure on the rest of val and on test; repeat.

    Args:
        classifier: an unfitted template; it is refitted for every seed (its parameters are kept).
        val: (confidences [S, N], correct [S, N]) of the held-out split.
        test: the same for the test split, or None.
        num_classes: C (for FLOPs).
        seeds: repetitions 0..seeds-1. fit_fraction: share of val used to fit.
        target, budget: passed to ``fit`` (budget policy).

    Returns:
        {"heldout": {metric: {"mean", "std"}}, "test": {...}, "thresholds": [per seed], "fit_size": n,
        "certified_seeds": how many fits certified their target (None without a target)}.
        The fit data's own target (for the default target) is the fit half's largest-size accuracy
        minus ``classifier.target_drop``, as a user without test labels would set it.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> conf, correct = rng.random((2, 100)), rng.random((2, 100)) < 0.8
        >>> out = repeated_splits(AdaptiveClassifier([8, 16]), (conf, correct), None, 10, seeds=3)
        >>> sorted(out["heldout"]), out["fit_size"]
        (['accuracy', 'expected_cumulative_dims', 'expected_dims', 'expected_flops'], 50)
    """
    conf_val, correct_val = (np.asarray(a, dtype=np.float64) for a in val)
    n = conf_val.shape[1]
    if not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise MRLError(f"seeds must be a positive integer, got {seeds!r}")
    if not 0.0 < fit_fraction < 1.0:
        raise MRLError(f"fit_fraction must lie in (0, 1), got {fit_fraction}")
    n_fit = int(round(n * fit_fraction))
    if n_fit < 1 or n_fit >= n:
        raise MRLError(f"fit_fraction={fit_fraction} of {n} held-out samples leaves an empty fit or evaluation part")
    runs: dict[str, list] = {"heldout": [], "test": [], "thresholds": [], "fit_accuracy": [], "certified": []}
    for seed in tqdm(range(seeds), desc=f"{classifier.policy}/{classifier.cost} seeds", disable=not progress):
        order = np.random.default_rng(seed).permutation(n)
        fit_idx, rest_idx = order[:n_fit], order[n_fit:]
        classifier._fit_arrays(conf_val[:, fit_idx], correct_val[:, fit_idx], num_classes, target=target, budget=budget)
        runs["heldout"].append(classifier._evaluate_arrays(conf_val[:, rest_idx], correct_val[:, rest_idx]))
        if test is not None:
            runs["test"].append(classifier._evaluate_arrays(*(np.asarray(a, dtype=np.float64) for a in test)))
        runs["thresholds"].append(thresholds_to_json(classifier.thresholds_))
        runs["fit_accuracy"].append(classifier.fit_accuracy_)
        runs["certified"].append(classifier.certified_)
    out = {
        "seeds": int(seeds),
        "fit_size": n_fit,
        "heldout": {k: mean_std([r[k] for r in runs["heldout"]]) for k in METRICS},
        "fit_accuracy": mean_std(runs["fit_accuracy"]),
        "thresholds": runs["thresholds"],
        # seeds whose fit part certified the target (None: the policy has no target to certify)
        "certified_seeds": None if runs["certified"][0] is None else int(sum(runs["certified"])),
    }
    if test is not None:
        out["test"] = {k: mean_std([r[k] for r in runs["test"]]) for k in METRICS}
    return out


def bootstrap_fit(
    classifier: AdaptiveClassifier,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    resamples: int = 30,
    target: float | None = None,
    budget: float | None = None,
) -> dict:
    """Fit on all of val, and on ``resamples`` bootstrap resamples of it to show the fit's spread on test.

    Fitting on all of val uses twice the data of a half split; the bootstrap refits (val rows drawn
    with replacement, seeds 0..resamples-1) estimate how much the thresholds, and so the test
    figures, move with the fit data.

    Returns:
        {"thresholds": all-val fit, "certified": its flag, "test": its test metrics,
        "bootstrap": {"resamples", "test": {metric: {"mean", "std"}}, "certified_resamples"}}.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> conf, correct = rng.random((2, 100)), rng.random((2, 100)) < 0.8
        >>> out = bootstrap_fit(AdaptiveClassifier([8, 16]), (conf, correct), (conf, correct), 10, resamples=3)
        >>> out["bootstrap"]["resamples"], sorted(out["test"])[:2]
        (3, ['accuracy', 'expected_cumulative_dims'])
    """
    conf_val, correct_val = (np.asarray(a, dtype=np.float64) for a in val)
    test = tuple(np.asarray(a, dtype=np.float64) for a in test)
    n = conf_val.shape[1]
    classifier._fit_arrays(conf_val, correct_val, num_classes, target=target, budget=budget)
    out = {"thresholds": thresholds_to_json(classifier.thresholds_), "certified": classifier.certified_,
           "test": _metrics(classifier._evaluate_arrays(*test))}
    draws, certified = [], []
    for seed in range(resamples):
        rows = np.random.default_rng(seed).integers(0, n, n)
        classifier._fit_arrays(conf_val[:, rows], correct_val[:, rows], num_classes, target=target, budget=budget)
        draws.append(classifier._evaluate_arrays(*test))
        certified.append(classifier.certified_)
    out["bootstrap"] = {
        "resamples": int(resamples),
        "test": {k: mean_std([d[k] for d in draws]) for k in METRICS},
        "certified_resamples": None if not certified or certified[0] is None else int(sum(certified)),
    }
    return out


def _metrics(stats: dict) -> dict:
    return {k: stats[k] for k in (*METRICS, "share_per_size")}


def pareto_curve(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    nesting: Sequence[int],
    cost: str = "final",
    num_classes: int | None = None,
    n_quantiles: int = 100,
    n_lambdas: int = 48,
) -> dict:
    """Cost-accuracy front fitted on all of val, each of its thresholds measured on test.

    Returns:
        {"thresholds": [P] lists, "val_cost", "val_accuracy", "test_dims", "test_cumulative_dims",
        "test_accuracy": lists [P]}, sorted by val cost.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> conf, correct = rng.random((2, 80)), rng.random((2, 80)) < 0.8
        >>> curve = pareto_curve((conf, correct), (conf, correct), [8, 16])
        >>> curve["val_accuracy"] == curve["test_accuracy"]
        True
    """
    costs = head_costs(nesting, cost, num_classes)
    sweep = sweep_thresholds(*val, costs, n_quantiles=n_quantiles, n_lambdas=n_lambdas)
    conf_test, correct_test = test
    test_dims, test_acc = evaluate_thresholds(conf_test, correct_test, sweep.thresholds, head_costs(nesting, "final"))
    test_cum, _ = evaluate_thresholds(conf_test, correct_test, sweep.thresholds, head_costs(nesting, "cumulative"))
    return {
        "cost": cost,
        "thresholds": [thresholds_to_json(t) for t in sweep.thresholds],
        "val_cost": sweep.cost.tolist(),
        "val_accuracy": sweep.utility.tolist(),
        "test_dims": test_dims.tolist(),
        "test_cumulative_dims": test_cum.tolist(),
        "test_accuracy": test_acc.tolist(),
    }
