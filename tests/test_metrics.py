"""Retrieval metrics: hand-computed cases, a per-query loop reference, invariants and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrl.errors import MRLError
from mrl.metrics import (
    Relevance,
    average_precision_at_k,
    knn_recall_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
    retrieval_summary,
    top_k_accuracy,
)

# Database labels: class 0 has 3 items (ids 0, 2, 5), class 1 has 2 (ids 1, 3), class 2 has 1 (id 4).
DB = np.array([0, 1, 0, 1, 2, 0])
IDS = np.array(
    [
        [0, 1, 2, 3],  # query class 0: rel = 1 0 1 0, R = 3
        [4, 1, 0, 3],  # query class 1: rel = 0 1 0 1, R = 2
        [4, -1, -1, -1],  # query class 2: rel = 1 . . ., R = 1 (fewer relevant than k), padding
        [0, 1, 2, 3],  # query class 9: no relevant item in the database
    ]
)
Q = np.array([0, 1, 2, 9])


def test_precision_hand_computed():
    np.testing.assert_allclose(precision_at_k(IDS, Q, DB, k=4), [2 / 4, 2 / 4, 1 / 4, 0])
    np.testing.assert_allclose(precision_at_k(IDS, Q, DB, k=1), [1, 0, 1, 0])


def test_recall_uses_database_counts():
    np.testing.assert_allclose(recall_at_k(IDS, Q, DB, k=4), [2 / 3, 2 / 2, 1 / 1, 0])
    np.testing.assert_allclose(recall_at_k(IDS, Q, DB, k=2), [1 / 3, 1 / 2, 1, 0])


def test_average_precision_three_normalisations():
    # query 0: P@1 = 1, P@3 = 2/3 -> sum 5/3; query 1: P@2 = 1/2, P@4 = 2/4 -> sum 1; query 2: P@1 = 1
    ap = average_precision_at_k(IDS, Q, DB, k=4)
    np.testing.assert_allclose(ap, [(5 / 3) / 3, 1 / 2, 1 / 1, 0])
    ap_k = average_precision_at_k(IDS, Q, DB, k=4, normalize="k")
    np.testing.assert_allclose(ap_k, [(5 / 3) / 4, 1 / 4, 1 / 4, 0])
    ap_r = average_precision_at_k(IDS, Q, DB, k=2, normalize="relevant")  # R = 3, 2, 1, 0
    np.testing.assert_allclose(ap_r, [1 / 3, (1 / 2) / 2, 1 / 1, 0])


def test_ap_matches_mrl_repository_formula():
    rng = np.random.default_rng(0)
    db = rng.integers(0, 5, 300)
    q = rng.integers(0, 5, 40)
    ids = np.stack([rng.permutation(300)[:20] for _ in range(40)])
    k = 10
    ref = []
    for i in range(len(q)):  # the MRL repo's compute_mAP_recall_at_k, one query at a time
        matches = db[ids[i, :k]] == q[i]
        precs = np.cumsum(matches) / np.arange(1, k + 1)
        ref.append(np.sum(precs[matches]) / k)
    np.testing.assert_allclose(average_precision_at_k(ids, q, db, k=k, normalize="k"), ref)


def test_ndcg_hand_computed():
    d = [1 / math.log2(i + 1) for i in range(1, 5)]
    expected = [
        (d[0] + d[2]) / (d[0] + d[1] + d[2]),
        (d[1] + d[3]) / (d[0] + d[1]),
        d[0] / d[0],
        0.0,
    ]
    np.testing.assert_allclose(ndcg_at_k(IDS, Q, DB, k=4), expected)


def test_reciprocal_rank_hand_computed():
    # First relevant item at ranks 1, 2 and 1; the class-9 query has none.
    np.testing.assert_allclose(reciprocal_rank_at_k(IDS, Q, DB, k=4), [1.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(reciprocal_rank_at_k(IDS, Q, DB, k=1), [1.0, 0.0, 1.0, 0.0])


def test_top_k_accuracy_hand_computed():
    np.testing.assert_allclose(top_k_accuracy(IDS, Q, DB, k=1), [1, 0, 1, 0])
    np.testing.assert_allclose(top_k_accuracy(IDS, Q, DB, k=2), [1, 1, 1, 0])


def test_knn_recall_hand_computed_and_padding():
    retrieved = np.array([[3, 1, 4], [2, 7, 1], [5, -1, -1]])
    exact = np.array([[1, 3, 5], [2, 1, 7], [5, -1, -1]])
    np.testing.assert_allclose(knn_recall_at_k(retrieved, exact, k=2), [1.0, 0.5, 1.0])
    np.testing.assert_allclose(knn_recall_at_k(retrieved, exact, k=3), [2 / 3, 1.0, 1.0])


def test_knn_recall_with_huge_ids():
    retrieved = np.array([[10**12, 1]])
    exact = np.array([[1, 10**12]])
    np.testing.assert_allclose(knn_recall_at_k(retrieved, exact, k=2), [1.0])


def test_relevance_from_sets_matches_labels():
    rel_sets = [np.nonzero(DB == label)[0].tolist() for label in Q]
    by_sets = Relevance.from_sets(IDS, rel_sets)
    by_labels = Relevance.from_labels(IDS, Q, DB)
    np.testing.assert_array_equal(by_sets.hits, by_labels.hits)
    np.testing.assert_array_equal(by_sets.n_relevant, by_labels.n_relevant)
    for metric in (precision_at_k, recall_at_k, average_precision_at_k, ndcg_at_k, top_k_accuracy):
        np.testing.assert_allclose(metric(by_sets, k=3), metric(IDS, Q, DB, k=3))


def test_relevance_from_sets_counts_repeats_once():
    rel = Relevance.from_sets(np.array([[4, 9], [1, 2]]), [[9, 9, 3], []])
    assert rel.hits.tolist() == [[False, True], [False, False]]
    assert rel.n_relevant.tolist() == [2, 0]


def test_relevance_matrix_form():
    rel = Relevance(np.array([[False, True, True]]), np.array([5]))
    np.testing.assert_allclose(recall_at_k(rel, k=3), [2 / 5])
    np.testing.assert_allclose(average_precision_at_k(rel, k=3), [(1 / 2 + 2 / 3) / 3])


def test_summary_keys_and_values():
    exact = IDS.copy()
    s = retrieval_summary(IDS, Q, DB, k=4, exact_ids=exact)
    assert s["map@4"] == pytest.approx(np.mean([(5 / 3) / 3, 1 / 2, 1, 0]))
    assert s["top1"] == pytest.approx(0.5)
    assert s["knn_recall@4"] == pytest.approx(1.0)
    assert set(s) == {"map@4", "precision@4", "recall@4", "ndcg@4", "top1", "top_k_accuracy@4", "knn_recall@4"}


@settings(max_examples=40, deadline=None)
@given(
    n_db=st.integers(1, 30),
    n_classes=st.integers(1, 4),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_metrics_in_unit_interval_and_ordered(n_db, n_classes, k, seed):
    rng = np.random.default_rng(seed)
    db = rng.integers(0, n_classes, n_db)
    q = rng.integers(0, n_classes + 1, 6)
    width = max(k, 1)
    ids = np.full((6, width), -1)
    take = min(width, n_db)
    for i in range(6):
        ids[i, :take] = rng.permutation(n_db)[:take]
    values = [
        f(ids, q, db, k=k) for f in (precision_at_k, recall_at_k, average_precision_at_k, ndcg_at_k, top_k_accuracy)
    ]
    for v in values:
        assert v.shape == (6,)
        assert np.all((v >= 0) & (v <= 1 + 1e-12))
    ap_std = average_precision_at_k(ids, q, db, k=k)
    ap_k = average_precision_at_k(ids, q, db, k=k, normalize="k")
    ap_r = average_precision_at_k(ids, q, db, k=k, normalize="relevant")
    assert np.all(ap_k <= ap_std + 1e-12) and np.all(ap_r <= ap_std + 1e-12)
    # precision@k <= top-k accuracy (any hit) and recall grows with k
    assert np.all(values[0] <= values[4])
    if k > 1:
        assert np.all(recall_at_k(ids, q, db, k=k - 1) <= values[1] + 1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: precision_at_k(IDS, Q, DB, k=5), r"k=5 is larger than the 4 results"),
        (lambda: precision_at_k(IDS, Q, DB, k=0), r"k must be a positive integer, got 0"),
        (lambda: precision_at_k(IDS[0], Q, DB), r"retrieved_ids must be a 2-D array"),
        (lambda: precision_at_k(IDS.astype(float), Q, DB), r"retrieved_ids must hold integer ids"),
        (lambda: precision_at_k(IDS - 2, Q, DB), r"ids >= 0 or -1"),
        (lambda: precision_at_k(IDS + 3, Q, DB), r"holds id 7 but the database has 6 items"),
        (lambda: precision_at_k(IDS, Q[:2], DB), r"query_labels must have shape \(4,\)"),
        (lambda: precision_at_k(np.array([[1, 1]]), Q[:1], DB, k=2), r"row 0 lists an id more than once"),
        (lambda: precision_at_k(IDS, Q), r"needs query_labels and database_labels"),
        (lambda: precision_at_k(Relevance.from_labels(IDS, Q, DB), Q, DB), r"not both"),
        (lambda: average_precision_at_k(IDS, Q, DB, k=2, normalize="R"), r"normalize must be"),
        (lambda: Relevance(np.array([[True, True]]), np.array([1])), r"n_relevant\[0\] = 1 is smaller than the 2 hits"),
        (lambda: Relevance(np.array([[1, 0]]), np.array([1])), r"hits must be boolean"),
        (lambda: Relevance.from_sets(IDS, [[0]]), r"one set per query \(4\), got 1"),
        (lambda: Relevance.from_sets(IDS[:1], [[-3]]), r"relevant_ids must hold ids >= 0"),
        (lambda: knn_recall_at_k(IDS, IDS[:2]), r"4 queries but exact_ids has 2"),
        (lambda: knn_recall_at_k(IDS, IDS, k=9), r"k=9 is larger than the results per query"),
    ],
)
def test_errors(call, match):
    with pytest.raises(MRLError, match=match):
        call()
