"""Retrieval metrics against two independent implementations: trec_eval (pytrec-eval-terrier) and ranx.

Random label-form cases with padding (-1) and queries whose class is absent from the database
(R = 0), scored per query. trec_eval's ``map_cut_k`` and ranx's ``map@k`` divide by R, so they
check ``normalize="relevant"`` directly and the other two conventions through Z: AP@k * Z is the
same sum for every convention.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval
import ranx

from mrl.metrics import Relevance, average_precision_at_k, ndcg_at_k, precision_at_k, recall_at_k, top_k_accuracy

CUTOFFS = (1, 3, 10)


def random_case(seed: int, n_queries: int = 40, n_db: int = 60, width: int = 12):
    """Retrieved ids [Q, width] (distinct, best first, tails padded with -1), query and database labels."""
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    db = rng.integers(0, n_classes, n_db)
    queries = rng.integers(0, n_classes + 2, n_queries)  # classes >= n_classes have no relevant item
    ids = np.stack([rng.permutation(n_db)[:width] for _ in range(n_queries)])
    valid = rng.integers(1, width + 1, n_queries)  # every row keeps at least one real result
    ids[np.arange(width)[None, :] >= valid[:, None]] = -1
    return ids, queries, db


def qrels_and_run(ids: np.ndarray, queries: np.ndarray, db: np.ndarray) -> tuple[dict, dict]:
    """TREC-style dicts; a query without relevant items keeps one judged non-relevant document so
    both libraries count it (as 0) instead of dropping it."""
    qrels, run = {}, {}
    for q, (row, label) in enumerate(zip(ids, queries)):
        relevant = {f"d{j}": 1 for j in np.flatnonzero(db == label)}
        qrels[f"q{q}"] = relevant or {f"d{int(np.flatnonzero(db != label)[0])}": 0}
        # strictly decreasing scores: no tie-breaking rule can reorder the list
        run[f"q{q}"] = {f"d{j}": float(len(row) - rank) for rank, j in enumerate(row) if j >= 0}
    return qrels, run


def ours(ids: np.ndarray, queries: np.ndarray, db: np.ndarray, k: int) -> dict[str, np.ndarray]:
    return {
        "precision": precision_at_k(ids, queries, db, k=k),
        "recall": recall_at_k(ids, queries, db, k=k),
        "ap_relevant": average_precision_at_k(ids, queries, db, k=k, normalize="relevant"),
        "ndcg": ndcg_at_k(ids, queries, db, k=k),
        "top_k": top_k_accuracy(ids, queries, db, k=k),
    }


@pytest.mark.parametrize("seed", range(3))
def test_every_metric_matches_trec_eval(seed):
    ids, queries, db = random_case(seed)
    qrels, run = qrels_and_run(ids, queries, db)
    measures = {f"{name}.{','.join(map(str, CUTOFFS))}" for name in ("P", "recall", "map_cut", "ndcg_cut", "success")}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    assert (Relevance.from_labels(ids, queries, db).n_relevant == 0).any()  # the R = 0 case is covered
    for k in CUTOFFS:
        mine = ours(ids, queries, db, k)
        for key, name in (("precision", "P"), ("recall", "recall"), ("ap_relevant", "map_cut"), ("ndcg", "ndcg_cut"),
                          ("top_k", "success")):
            reference = np.array([trec[f"q{q}"][f"{name}_{k}"] for q in range(len(queries))])
            np.testing.assert_allclose(mine[key], reference, atol=1e-12, err_msg=f"{key}@{k}")


@pytest.mark.parametrize("seed", range(3))
def test_every_metric_matches_ranx(seed):
    ids, queries, db = random_case(100 + seed)
    qrels, run = qrels_and_run(ids, queries, db)
    names = {"precision": "precision", "recall": "recall", "ap_relevant": "map", "ndcg": "ndcg", "top_k": "hit_rate"}
    metrics = [f"{name}@{k}" for name in names.values() for k in CUTOFFS]
    reference = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), metrics, return_mean=False)
    order = [int(q[1:]) for q in ranx.Qrels(qrels).keys()]  # ranx keeps its own query order
    for k in CUTOFFS:
        mine = ours(ids, queries, db, k)
        for key, name in names.items():
            np.testing.assert_allclose(mine[key][order], reference[f"{name}@{k}"], atol=1e-12, err_msg=f"{key}@{k}")


@pytest.mark.parametrize("seed", range(3))
def test_the_three_ap_conventions_differ_only_by_their_denominator(seed):
    # trec_eval's map_cut_k = S / R for the sum S = sum_{i<=k} P@i rel_i; the other two are S / min(k, R) and S / k.
    ids, queries, db = random_case(200 + seed)
    qrels, run = qrels_and_run(ids, queries, db)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"map_cut.1,3,10"}).evaluate(run)
    r = Relevance.from_labels(ids, queries, db).n_relevant
    for k in CUTOFFS:
        total = np.array([trec[f"q{q}"][f"map_cut_{k}"] for q in range(len(queries))]) * r
        safe = np.maximum(r, 1)
        np.testing.assert_allclose(average_precision_at_k(ids, queries, db, k=k), total / np.minimum(k, safe), atol=1e-12)
        np.testing.assert_allclose(average_precision_at_k(ids, queries, db, k=k, normalize="k"), total / k, atol=1e-12)
