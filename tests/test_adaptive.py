"""Tests for mrl.adaptive: cascade, costs, threshold search, the classifier and the protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrl.adaptive import (
    AdaptiveClassifier,
    SharedCosts,
    bootstrap_fit,
    as_logits,
    budget_thresholds,
    cascade,
    cascade_outcome,
    evaluate_thresholds,
    exhaustive_thresholds,
    greedy_thresholds,
    head_costs,
    max_softmax,
    oracle_accuracy,
    pareto_curve,
    pareto_front,
    quantile_candidates,
    repeated_splits,
    select_with_confidence,
    share_wrong_at_every_size,
    sweep_thresholds,
)
import mrl.adaptive.cascading as cascade_module
from mrl.errors import MRLError, NotFittedError


def synthetic(num_sizes: int, n: int, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits [S, N, C] whose larger sizes are more often right, and labels [N]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(num_sizes, n, num_classes))
    for s in range(num_sizes):
        logits[s, np.arange(n), labels] += (0.5 + 0.6 * s) * rng.gamma(2.0, 1.0, size=n)
    return logits.astype(np.float32), labels


def reference_cascade(conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    out = []
    for n in range(conf.shape[1]):
        chosen = conf.shape[0] - 1
        for s, t in enumerate(thresholds):
            if conf[s, n] >= t:
                chosen = s
                break
        out.append(chosen)
    return np.array(out)


# --- cascade and confidences ---------------------------------------------------------------------


def test_cascade_matches_loop_reference():
    rng = np.random.default_rng(1)
    conf = rng.random((4, 200))
    thresholds = np.array([0.8, -np.inf, 0.5])
    np.testing.assert_array_equal(cascade(conf, thresholds), reference_cascade(conf, thresholds))
    thresholds = np.array([0.8, np.inf, 0.5])
    np.testing.assert_array_equal(cascade(conf, thresholds), reference_cascade(conf, thresholds))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    thresholds=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    raise_at=st.integers(0, 2),
    by=st.floats(0, 1),
)
def test_raising_a_threshold_never_answers_earlier_than_that_size(seed, thresholds, raise_at, by):
    conf = np.random.default_rng(seed).random((4, 50))
    low = np.array(thresholds)
    high = low.copy()
    high[raise_at] += by
    before, after = cascade(conf, low), cascade(conf, high)
    # only samples answered at raise_at can move, and only to a larger size
    moved = before != after
    assert (before[moved] == raise_at).all() and (after[moved] > raise_at).all()


def test_max_softmax_matches_torch_and_chunks(monkeypatch):
    logits = np.random.default_rng(2).normal(scale=30, size=(3, 50, 7)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits).double(), dim=-1).amax(-1).numpy()
    np.testing.assert_allclose(max_softmax(logits), expected, rtol=1e-12)
    monkeypatch.setattr(cascade_module, "_CHUNK", 7)
    np.testing.assert_allclose(max_softmax(logits), expected, rtol=1e-12)


def test_as_logits_accepts_lists_and_tensors():
    parts = [np.zeros((4, 3)), np.ones((4, 3))]
    assert as_logits(parts).shape == (2, 4, 3)
    assert as_logits(torch.zeros(2, 4, 3)).shape == (2, 4, 3)


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (np.zeros((4, 3)), r"logits must be \[S, N, C\]"),
        ([np.zeros((4, 3)), np.zeros((5, 3))], "same shape"),
        (np.full((2, 4, 3), np.nan), "NaN"),
        (np.zeros((2, 0, 3)), "must not be empty"),
    ],
)
def test_as_logits_errors(logits, match):
    with pytest.raises(MRLError, match=match):
        as_logits(logits)


def test_cascade_errors():
    conf = np.full((3, 4), 0.5)
    with pytest.raises(MRLError, match=r"thresholds must have shape \[2\]"):
        cascade(conf, np.array([0.5]))
    with pytest.raises(MRLError, match="thresholds must not be NaN"):
        cascade(conf, np.array([0.5, np.nan]))
    with pytest.raises(MRLError, match="confidences contain NaN"):
        cascade(np.full((3, 4), np.nan), np.array([0.5, 0.5]))
    with pytest.raises(MRLError, match=r"must be a non-empty \[S, N\] array"):
        cascade(np.zeros(4), np.array([]))


# --- costs ---------------------------------------------------------------------------------------


def test_costs_add_up():
    nesting = [8, 16, 32, 64]
    rng = np.random.default_rng(3)
    conf, correct = rng.random((4, 100)), rng.integers(0, 2, (4, 100)).astype(float)
    thresholds = np.array([0.7, np.inf, 0.4])  # size 16 is skipped
    final = cascade_outcome(conf, correct, thresholds, head_costs(nesting, "final"))
    cumulative = cascade_outcome(conf, correct, thresholds, head_costs(nesting, "cumulative"))
    flops = cascade_outcome(conf, correct, thresholds, head_costs(nesting, "flops", num_classes=10))
    chosen = reference_cascade(conf, thresholds)
    np.testing.assert_array_equal(final.chosen, chosen)
    np.testing.assert_array_equal(final.cost, np.array(nesting)[chosen])
    consulted = {0: 8, 1: None, 2: 8 + 32, 3: 8 + 32 + 64}
    np.testing.assert_array_equal(cumulative.cost, [consulted[c] for c in chosen])
    np.testing.assert_array_equal(flops.cost, cumulative.cost * 10)
    np.testing.assert_array_equal(final.utility, correct[chosen, np.arange(100)])
    assert final.mean_cost == pytest.approx(np.mean(np.array(nesting)[chosen]))


def test_evaluate_thresholds_matches_one_at_a_time():
    logits, labels = synthetic(3, 120)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    costs = head_costs([8, 16, 32], "cumulative")
    rows = np.array([[0.5, 0.6], [-np.inf, 0.2], [np.inf, 0.9], [np.inf, np.inf], [0.3, -np.inf]])
    mean_cost, mean_util = evaluate_thresholds(conf, correct, rows, costs, chunk=2)
    for row, c, u in zip(rows, mean_cost, mean_util):
        out = cascade_outcome(conf, correct, row, costs)
        assert (c, u) == pytest.approx((out.mean_cost, out.mean_utility))


def test_head_costs_errors():
    with pytest.raises(MRLError, match="cost must be one of"):
        head_costs([8, 16], "dims")
    with pytest.raises(MRLError, match="needs num_classes"):
        head_costs([8, 16], "flops")
    with pytest.raises(MRLError, match="strictly ascending"):
        head_costs([16, 8], "final")


# --- threshold search ----------------------------------------------------------------------------


def test_greedy_thresholds_hand_built():
    # step 8->16: t=0 -> 2/4, t=0.5 -> samples 0,1 stop (right), 2,3 go on (right, wrong) -> 3/4,
    # t=0.7 -> sample 0 stops, 1 goes on (wrong) -> 2/4 ... best 3/4 first reached at t=0.5.
    # step 16->32: size 32 is always right; 16 is right exactly on its confident samples (0.95, 0.85),
    # so t=0.7 (stop those two) is the smallest threshold reaching 4/4.
    conf = np.array([[0.9, 0.6, 0.3, 0.2], [0.95, 0.5, 0.85, 0.1], [0.5, 0.5, 0.5, 0.5]])
    correct = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
    grid = np.array([0.0, 0.5, 0.7, 0.9, 1.0])
    np.testing.assert_array_equal(greedy_thresholds(conf, correct, grid), [0.5, 0.7])


def test_greedy_ties_go_to_the_smallest_threshold():
    conf = np.array([[0.9, 0.8], [1.0, 1.0]])
    correct = np.array([[1, 1], [1, 1]])
    assert greedy_thresholds(conf, correct, 11)[0] == 0.0


def test_pareto_front_keeps_exactly_the_non_dominated():
    rng = np.random.default_rng(4)
    cost, util = rng.integers(0, 10, 300).astype(float), rng.integers(0, 10, 300).astype(float)
    keep = pareto_front(cost, util)
    assert (np.diff(cost[keep]) > 0).all() and (np.diff(util[keep]) > 0).all()
    kept = set(keep.tolist())
    for i in range(300):
        dominated = ((cost <= cost[i]) & (util >= util[i]) & ((cost < cost[i]) | (util > util[i]))).any()
        if i in kept:
            assert not dominated
        elif not dominated:  # a duplicate of a kept point
            assert any(cost[k] == cost[i] and util[k] == util[i] for k in kept)


@pytest.mark.parametrize("cost", ["final", "cumulative"])
def test_sweep_returns_no_point_dominated_by_one_it_evaluated(cost):
    logits, labels = synthetic(4, 400, seed=5)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    sweep = sweep_thresholds(conf, correct, head_costs([8, 16, 32, 64], cost), n_quantiles=20, keep_evaluated=True)
    assert sweep.n_evaluated == sweep.evaluated_cost.size
    for c, u in zip(sweep.cost, sweep.utility):
        better = (sweep.evaluated_cost <= c + 1e-12) & (sweep.evaluated_utility >= u - 1e-12)
        strictly = (sweep.evaluated_cost < c - 1e-12) | (sweep.evaluated_utility > u + 1e-12)
        assert not (better & strictly).any()
    # the reported numbers are what the thresholds really give
    mean_cost, mean_util = evaluate_thresholds(conf, correct, sweep.thresholds, head_costs([8, 16, 32, 64], cost))
    np.testing.assert_allclose(mean_cost, sweep.cost)
    np.testing.assert_allclose(mean_util, sweep.utility)


def test_sweep_two_sizes_is_exact_on_its_grid():
    logits, labels = synthetic(2, 300, seed=6)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    costs = head_costs([8, 64], "cumulative")
    sweep = sweep_thresholds(conf, correct, costs, n_quantiles=15)
    exact = exhaustive_thresholds(conf, correct, costs, [quantile_candidates(conf[0], 15)])
    np.testing.assert_allclose(sweep.cost, exact.cost)
    np.testing.assert_allclose(sweep.utility, exact.utility)


def test_sweep_close_to_exhaustive_on_four_sizes():
    logits, labels = synthetic(4, 300, seed=0)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    costs = head_costs([8, 16, 32, 64], "cumulative")
    sweep = sweep_thresholds(conf, correct, costs, n_quantiles=12)
    exact = exhaustive_thresholds(conf, correct, costs, [quantile_candidates(conf[s], 12) for s in range(3)])
    assert sweep.utility[-1] == pytest.approx(exact.utility[-1])
    for target in np.linspace(exact.utility[0], exact.utility[-1], 15):
        assert sweep.cost[sweep.select(min_utility=target)] <= exact.cost[exact.select(min_utility=target)] + 0.5


def test_select_target_and_budget():
    logits, labels = synthetic(3, 300, seed=7)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    sweep = sweep_thresholds(conf, correct, head_costs([8, 16, 32]), n_quantiles=20)
    i = sweep.select(min_utility=0.8)
    assert sweep.utility[i] >= 0.8 and (i == 0 or sweep.utility[i - 1] < 0.8)
    j = sweep.select(max_cost=20.0)
    assert sweep.cost[j] <= 20.0 and (j == len(sweep.cost) - 1 or sweep.cost[j + 1] > 20.0)
    with pytest.raises(MRLError, match="exactly one of min_utility"):
        sweep.select()


# --- AdaptiveClassifier --------------------------------------------------------------------------


def test_classifier_greedy_matches_function_and_predicts_at_chosen_size():
    logits, labels = synthetic(3, 300, seed=8)
    clf = AdaptiveClassifier([8, 16, 32], policy="greedy", grid=51).fit(logits, labels)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    np.testing.assert_array_equal(clf.thresholds_, greedy_thresholds(conf, correct, 51))
    predicted, sizes_used = clf.predict(list(logits))
    chosen = reference_cascade(conf, clf.thresholds_)
    np.testing.assert_array_equal(sizes_used, np.array([8, 16, 32])[chosen])
    np.testing.assert_array_equal(predicted, logits[chosen, np.arange(300)].argmax(-1))
    assert clf.fit_accuracy_ == pytest.approx((predicted == labels).mean())
    assert clf.expected_dims_ == pytest.approx(sizes_used.mean())
    assert clf.sweep_ is None and clf.target_ is None


def test_classifier_budget_reaches_target_and_costs_add_up():
    logits, labels = synthetic(4, 400, seed=9)
    largest = (logits[-1].argmax(-1) == labels).mean()
    clf = AdaptiveClassifier([8, 16, 32, 64], policy="budget", cost="cumulative", n_quantiles=30, confidence=0.5)
    clf.fit(logits, labels)
    assert clf.target_ == pytest.approx(largest - 0.002)
    assert clf.fit_accuracy_ >= clf.target_
    report = clf.evaluate(logits, labels)
    assert report["expected_cumulative_dims"] == pytest.approx(clf.expected_cumulative_dims_)
    assert report["expected_flops"] == pytest.approx(report["expected_cumulative_dims"] * 10)
    assert report["expected_dims"] <= report["expected_cumulative_dims"]
    assert sum(report["share_per_size"].values()) == pytest.approx(1.0)
    # no cheaper point on the front reaches the target
    i = int(np.flatnonzero((clf.sweep_.thresholds == clf.thresholds_).all(axis=1))[0])
    assert i == 0 or clf.sweep_.utility[i - 1] < clf.target_


def test_budget_margin_holds_a_lower_confidence_bound():
    logits, labels = synthetic(4, 600, seed=15)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    plain = AdaptiveClassifier([8, 16, 32, 64], policy="budget", confidence=0.5).fit(logits, labels)
    safe = AdaptiveClassifier([8, 16, 32, 64], policy="budget", confidence=0.95).fit(logits, labels)
    assert safe.expected_dims_ >= plain.expected_dims_
    diff = correct[cascade(conf, safe.thresholds_), np.arange(600)] - correct[-1]
    assert diff.mean() - 1.6448536 * diff.std(ddof=1) / np.sqrt(600) >= -0.002 - 1e-9
    # the front point just before it does not clear the bound
    i = int(np.flatnonzero((safe.sweep_.thresholds == safe.thresholds_).all(axis=1))[0])
    assert i > 0
    prev = correct[cascade(conf, safe.sweep_.thresholds[i - 1]), np.arange(600)] - correct[-1]
    assert prev.mean() - 1.6448536 * prev.std(ddof=1) / np.sqrt(600) < -0.002


def test_classifier_budget_under_a_cost_budget():
    logits, labels = synthetic(3, 300, seed=10)
    clf = AdaptiveClassifier([8, 16, 32], policy="budget", n_quantiles=30).fit(logits, labels, budget=12.0)
    assert clf.expected_dims_ <= 12.0
    assert clf.target_ is None


def test_refit_forgets():
    logits, labels = synthetic(3, 200, seed=11)
    clf = AdaptiveClassifier([8, 16, 32], policy="budget", n_quantiles=10).fit(logits, labels)
    assert clf.sweep_ is not None
    clf.policy = "greedy"
    clf.fit(logits, labels)
    assert clf.sweep_ is None and clf.target_ is None


def test_predict_before_fit():
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit"):
        AdaptiveClassifier([8, 16]).predict(np.zeros((2, 3, 4)))


@pytest.mark.parametrize(
    ("kwargs", "logits", "labels", "match"),
    [
        ({"nesting": [16, 8]}, np.zeros((2, 4, 3)), np.zeros(4, int), "strictly ascending"),
        ({"nesting": [8, 16, 32]}, np.zeros((2, 4, 3)), np.zeros(4, int), "logits have 2 sizes but nesting has 3"),
        ({"nesting": [8, 16]}, np.full((2, 4, 3), np.nan), np.zeros(4, int), "NaN"),
        ({"nesting": [8, 16]}, np.zeros((2, 4, 3)), np.zeros(5, int), r"labels must be \[N\] = \[4\]"),
        ({"nesting": [8, 16]}, np.zeros((2, 4, 3)), np.full(4, 3), r"labels must lie in \[0, 2\]"),
        ({"nesting": [8, 16]}, np.zeros((2, 4, 3)), np.zeros(4), "labels must be integers"),
        ({"nesting": [8, 16], "policy": "best"}, np.zeros((2, 4, 3)), np.zeros(4, int), "policy must be one of"),
        ({"nesting": [8, 16], "cost": "time"}, np.zeros((2, 4, 3)), np.zeros(4, int), "cost must be one of"),
        ({"nesting": [8]}, np.zeros((1, 4, 3)), np.zeros(4, int), "at least 2 nesting sizes"),
    ],
)
def test_classifier_fit_errors(kwargs, logits, labels, match):
    with pytest.raises(MRLError, match=match):
        AdaptiveClassifier(**kwargs).fit(logits, labels)


def test_classifier_goal_errors():
    logits, labels = synthetic(2, 50)
    with pytest.raises(MRLError, match="apply to policy='budget'"):
        AdaptiveClassifier([8, 16]).fit(logits, labels, target=0.9)
    with pytest.raises(MRLError, match="not both"):
        AdaptiveClassifier([8, 16], policy="budget").fit(logits, labels, target=0.9, budget=10)
    with pytest.raises(MRLError, match=r"confidence is a level in \[0.5, 1\), got 1.5"):
        AdaptiveClassifier([8, 16], policy="budget", confidence=1.5).fit(logits, labels)
    with pytest.raises(MRLError, match=r"target is an accuracy in \(0, 1\], got 90"):
        AdaptiveClassifier([8, 16], policy="budget").fit(logits, labels, target=90)
    clf = AdaptiveClassifier([8, 16]).fit(logits, labels)
    with pytest.raises(MRLError, match="fitted on 10"):
        clf.predict(logits[:, :, :5])


# --- protocol ------------------------------------------------------------------------------------


def test_oracle_and_share_wrong():
    correct = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    assert oracle_accuracy(correct) == 0.75
    assert share_wrong_at_every_size(correct) == 0.25


def test_repeated_splits_match_a_manual_loop():
    logits, labels = synthetic(3, 200, seed=12)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    template = AdaptiveClassifier([8, 16, 32], grid=21)
    out = repeated_splits(template, (conf, correct), (conf[:, :50], correct[:, :50]), 10, seeds=3)
    heldout = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(200)
        clf = AdaptiveClassifier([8, 16, 32], grid=21).fit(logits[:, order[:100]], labels[order[:100]])
        heldout.append(clf.evaluate(logits[:, order[100:]], labels[order[100:]])["accuracy"])
    assert out["heldout"]["accuracy"]["mean"] == pytest.approx(np.mean(heldout))
    assert out["heldout"]["accuracy"]["std"] == pytest.approx(np.std(heldout))
    assert len(out["thresholds"]) == 3 and out["fit_size"] == 100
    with pytest.raises(MRLError, match="fit_fraction must lie in"):
        repeated_splits(template, (conf, correct), None, 10, fit_fraction=1.0)


def test_pareto_curve_on_test_is_measured_with_the_val_thresholds():
    logits, labels = synthetic(3, 300, seed=13)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    val, test = (conf[:, :150], correct[:, :150]), (conf[:, 150:], correct[:, 150:])
    curve = pareto_curve(val, test, [8, 16, 32], n_quantiles=20)
    assert np.all(np.diff(curve["val_cost"]) > 0) and np.all(np.diff(curve["val_accuracy"]) > 0)
    thr = np.array([[float(t) for t in row] for row in curve["thresholds"]])
    dims, acc = evaluate_thresholds(*test, thr, head_costs([8, 16, 32]))
    np.testing.assert_allclose(dims, curve["test_dims"])
    np.testing.assert_allclose(acc, curve["test_accuracy"])


def test_budget_thresholds_with_a_loss_meets_the_mean_loss_goal_at_least_cost():
    rng = np.random.default_rng(14)
    hard = rng.random(500) < 0.4  # easy tokens are as easy at every size; hard ones need size
    nll = np.where(hard, np.array([[3.0], [2.0], [1.5], [1.0]]), 0.1) * rng.uniform(0.8, 1.2, size=(4, 500))
    conf = np.exp(-nll) + rng.normal(scale=0.05, size=nll.shape)  # a noisy confidence signal
    costs = head_costs([64, 128, 256, 512], "flops", num_classes=8000)
    goal = float(nll[-1].mean() + 0.1)
    thresholds, sweep = budget_thresholds(conf, -nll, costs, min_utility=-goal, n_quantiles=30)
    out = cascade_outcome(conf, -nll, thresholds, costs)
    assert -out.mean_utility <= goal + 1e-12
    cheaper = sweep.cost < out.mean_cost
    assert (-sweep.utility[cheaper] > goal).all()
    assert out.mean_cost < costs.per_answer(np.full(3, np.inf))[-1]  # cheaper than always the largest


def test_select_with_confidence_errors_and_no_margin_equals_plain_select():
    logits, labels = synthetic(3, 200, seed=16)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    sweep = sweep_thresholds(conf, correct, head_costs([8, 16, 32]), n_quantiles=15)
    assert select_with_confidence(sweep, conf, correct, 0.8, z=0.0) == sweep.select(min_utility=0.8)
    with pytest.raises(MRLError, match=r"reference must be \[N\] = \[200\]"):
        select_with_confidence(sweep, conf, correct, 0.8, reference=np.zeros(5))
    with pytest.raises(MRLError, match="z must be >= 0"):
        select_with_confidence(sweep, conf, correct, 0.8, z=-1.0)


# --- saturated confidences (max-softmax exactly 1.0) ---------------------------------------------


def paper_step_scores(conf: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Best two-size score per step under the paper's rule: stop at s when conf[s] > t, t in grid."""
    return np.array([
        max(np.where(conf[s] > t, correct[s], correct[s + 1]).mean() for t in grid) for s in range(len(conf) - 1)
    ])


@pytest.mark.parametrize("policy", ["greedy", "budget"])
def test_saturated_confidence_can_be_passed_on(policy):
    # The smaller head is confidently wrong on sample 0 with a float32 softmax of exactly 1.0; only
    # "never answer at size 8" gets both samples right.
    logits = np.array([[[50, 0], [0, 50]], [[0, 50], [0, 50]]], dtype=np.float32)
    assert max_softmax(logits)[0].tolist() == [1.0, 1.0]
    clf = AdaptiveClassifier([8, 16], policy=policy).fit(logits, np.array([1, 1]))
    assert clf.fit_accuracy_ == 1.0
    assert clf.predict(logits)[1].tolist() == [16, 16]


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0])
def test_greedy_step_scores_match_the_papers_strict_rule_at_any_logit_scale(scale):
    logits, labels = synthetic(9, 400, seed=int(scale))
    logits = (logits * scale).astype(np.float32)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    if scale == 100.0:
        assert (conf == 1.0).mean() > 0.5  # the case that matters: most confidences saturate
    grid = np.linspace(0.0, 1.0, 101)
    thresholds = greedy_thresholds(conf, correct, grid)
    ours = np.array([np.where(conf[s] >= thresholds[s], correct[s], correct[s + 1]).mean() for s in range(8)])
    brute = np.array([
        max(np.where(conf[s] >= t, correct[s], correct[s + 1]).mean() for t in [*grid, np.inf]) for s in range(8)
    ])
    np.testing.assert_allclose(ours, brute, atol=1e-12)
    # every stop set of the paper's rule is one of ours ({conf > 1.0} is the +inf one)
    assert (ours >= paper_step_scores(conf, correct, grid) - 1e-12).all()


def test_greedy_reaches_the_largest_size_when_every_smaller_head_is_saturated_and_worse():
    # 9 sizes at logit scale 60: sizes 0-7 answer with confidence 1.0 and are right on a growing
    # share; the largest is always right. Passing every sample on is the only way to 100%.
    rng = np.random.default_rng(3)
    n, num_classes = 500, 10
    labels = rng.integers(0, num_classes, n)
    guesses = np.where(rng.random((9, n)) < np.linspace(0.5, 0.9, 9)[:, None], labels, (labels + 1) % num_classes)
    guesses[-1] = labels
    logits = 60.0 * np.eye(num_classes, dtype=np.float32)[guesses]
    for policy in ("greedy", "budget"):
        clf = AdaptiveClassifier([8 * 2**i for i in range(9)], policy=policy).fit(logits, labels)
        assert clf.fit_accuracy_ == 1.0, policy
        assert np.isinf(clf.thresholds_).all(), policy


# --- targets that cannot be certified -------------------------------------------------------------


def test_uncertifiable_target_answers_with_the_largest_size():
    logits, labels = synthetic(3, 400, seed=21)
    correct = (logits.argmax(-1) == labels).astype(float)
    conf = max_softmax(logits)
    sweep = sweep_thresholds(conf, correct, head_costs([8, 16, 32]), n_quantiles=15)
    assert select_with_confidence(sweep, conf, correct, correct[-1].mean() + 0.05) is None
    clf = AdaptiveClassifier([8, 16, 32], policy="budget").fit(logits, labels, target=correct[-1].mean() + 0.05)
    assert clf.certified_ is False
    assert np.isinf(clf.thresholds_).all()
    assert (clf.predict(logits)[1] == 32).all()
    assert clf.fit_accuracy_ == pytest.approx(correct[-1].mean())
    reachable = AdaptiveClassifier([8, 16, 32], policy="budget").fit(logits, labels)
    assert reachable.certified_ is True
    assert AdaptiveClassifier([8, 16, 32]).fit(logits, labels).certified_ is None  # greedy: no target


def test_bootstrap_fit_reports_spread_and_certification():
    logits, labels = synthetic(3, 600, seed=22)
    conf, correct = max_softmax(logits), (logits.argmax(-1) == labels).astype(float)
    val, test = (conf[:, :300], correct[:, :300]), (conf[:, 300:], correct[:, 300:])
    clf = AdaptiveClassifier([8, 16, 32], policy="budget", n_quantiles=10)
    out = bootstrap_fit(clf, val, test, 10, resamples=4)
    reference = AdaptiveClassifier([8, 16, 32], policy="budget", n_quantiles=10).fit(logits[:, :300], labels[:300])
    assert out["test"]["accuracy"] == pytest.approx(reference.evaluate(logits[:, 300:], labels[300:])["accuracy"])
    assert out["certified"] is True and 0 <= out["bootstrap"]["certified_resamples"] <= 4
    assert out["bootstrap"]["test"]["accuracy"]["std"] >= 0.0
    unreachable = bootstrap_fit(clf, val, test, 10, resamples=3, target=1.0)
    assert unreachable["certified"] is False and unreachable["bootstrap"]["certified_resamples"] == 0
    assert unreachable["test"]["accuracy"] == pytest.approx(test[1][-1].mean())


def test_shared_costs_pay_each_part_once_at_its_largest_need_as_a_brute_force_walk():
    rng = np.random.default_rng(7)
    need = rng.integers(0, 50, size=(5, 7)).astype(float) * (rng.random((5, 7)) < 0.6)
    costs = SharedCosts(need)
    conf = rng.random((5, 300))
    correct = (rng.random((5, 300)) < 0.7).astype(float)
    thresholds = np.array([[0.5, np.inf, 0.7, 0.2], [np.inf, np.inf, np.inf, np.inf], [0.9, 0.1, np.inf, 0.3]])
    mean_cost, mean_util = evaluate_thresholds(conf, correct, thresholds, costs)
    for row, (cost, util) in zip(thresholds, zip(mean_cost, mean_util)):
        walked_cost, walked_util = [], []
        for n in range(300):
            paid = np.zeros(7)
            for s in range(5):
                last = s == 4
                if last or row[s] < np.inf:
                    paid = np.maximum(paid, need[s])
                if last or conf[s, n] >= row[s]:
                    break
            walked_cost.append(paid.sum())
            walked_util.append(correct[s, n])
        assert cost == pytest.approx(np.mean(walked_cost)) and util == pytest.approx(np.mean(walked_util))
    # stages that share nothing cost what per-head (cumulative) costs do
    own = np.diag([8.0, 16.0, 32.0])
    np.testing.assert_array_equal(SharedCosts(own).per_answer(np.array([0.5, np.inf])),
                                  head_costs([8, 16, 32], "cumulative").per_answer(np.array([0.5, np.inf])))
    for bad in (np.zeros((0, 2)), np.array([[1.0, -1.0]]), np.array([[np.nan]]), np.ones(3)):
        with pytest.raises(MRLError, match=r"need must be a non-empty \[S, K\] array of finite costs >= 0"):
            SharedCosts(bad)


def test_a_cost_model_must_have_one_stage_per_size():
    logits, labels = np.zeros((2, 4, 3)), np.zeros(4, dtype=int)
    with pytest.raises(MRLError, match="the cost model has 3 stages but nesting has 2"):
        AdaptiveClassifier([8, 16], cost=SharedCosts(np.eye(3)), policy="budget").fit(logits, labels)
    with pytest.raises(MRLError, match=r"cost must be one of \['final', 'cumulative', 'flops'\] or a cost model, got 'dims'"):
        AdaptiveClassifier([8, 16], cost="dims", policy="budget").fit(logits, labels)
