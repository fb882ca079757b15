"""Metrics against hand-computed examples; full ranking masks training items and breaks ties stably."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.core.evaluator import evaluate, metrics_from_hits, rank


def test_metrics_hand_computed():
    # user A: relevant {1, 3}, ranking [3, 5, 1, 7, 9]; user B: relevant {4}, ranking [0, 2, 6, 4, 8]
    hits = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=bool)
    n_rel = np.array([2, 1])
    m = metrics_from_hits(hits, n_rel, [1, 3, 5])
    idcg2 = 1 + 1 / math.log2(3)
    assert m["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@3"] == pytest.approx((1.0 + 0) / 2)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["precision@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert m["ndcg@1"] == pytest.approx((1 + 0) / 2)
    assert m["ndcg@3"] == pytest.approx(((1 + 1 / math.log2(4)) / idcg2 + 0) / 2)
    assert m["ndcg@5"] == pytest.approx(((1 + 0.5) / idcg2 + 1 / math.log2(5)) / 2)
    assert m["map@1"] == pytest.approx((1 + 0) / 2)  # A: P(1) / min(2, 1)
    assert m["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2)
    assert m["map@5"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 4) / 1) / 2)


def reference_metrics(hits: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, float]:
    """A plain per-user loop, written from the definitions, to check the vectorised code."""
    rec, prec, ndcg, ap = [], [], [], []
    for h, n in zip(hits, n_rel, strict=True):
        h = h[:k]
        rec.append(h.sum() / n)
        prec.append(h.sum() / k)
        dcg = sum(1 / math.log2(r + 2) for r in range(k) if h[r])
        idcg = sum(1 / math.log2(r + 2) for r in range(min(n, k)))
        ndcg.append(dcg / idcg)
        ap.append(sum(h[: r + 1].sum() / (r + 1) for r in range(k) if h[r]) / min(n, k))
    return {f"recall@{k}": np.mean(rec), f"precision@{k}": np.mean(prec), f"ndcg@{k}": np.mean(ndcg),
            f"map@{k}": np.mean(ap)}  # fmt: skip


def test_vectorised_metrics_match_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    hits = rng.random((200, 50)) < 0.1
    n_rel = np.maximum(hits.sum(axis=1), 1) + rng.integers(0, 5, 200)
    got = metrics_from_hits(hits, n_rel, [5, 10, 20, 50])
    for k in (5, 10, 20, 50):
        for name, value in reference_metrics(hits, n_rel, k).items():
            assert got[name] == pytest.approx(value), name


def test_rank_masks_training_items_and_breaks_ties_by_index():
    scores = torch.tensor([[5.0, 4.0, 4.0, 1.0, 4.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=np.float32))
    truth = sp.csr_matrix(np.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=np.float32))
    ranking = rank(lambda users: scores[users], train, truth, max_k=3)
    assert ranking.topk.tolist() == [[1, 2, 4], [0, 2, 3]]  # item 0 / item 1 masked; ties in index order
    assert ranking.hits.tolist() == [[False, False, False], [False, False, False]]
    ranking = rank(lambda users: scores[users], train, truth, max_k=4)
    assert ranking.hits[0].tolist() == [False, False, False, True]


def test_evaluate_skips_users_without_training_or_truth():
    train = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=np.float32))
    truth = sp.csr_matrix(np.array([[0, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32))
    metrics, ranking = evaluate(lambda u: torch.tensor([[0.0, 2.0, 1.0]]).repeat(len(u), 1), train, truth, [1, 2])
    assert ranking.users.tolist() == [0]  # user 1 has no training items, user 2 nothing to find
    assert metrics["recall@1"] == 1.0 and metrics["ndcg@2"] == 1.0
    with pytest.raises(ValueError, match="no user"):
        evaluate(lambda u: torch.zeros(len(u), 3), train, sp.csr_matrix((3, 3)), [1])


def test_stable_topk_equals_a_stable_full_sort_with_many_ties():
    from models.core.evaluator import stable_topk

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (300, 40), generator=generator).float()  # heavy ties
    scores[:10] = 0.0  # whole rows tied
    scores[10:20, 5:] = -torch.inf  # masked items
    values, index = stable_topk(scores, 7)
    ref_values, ref_index = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(index, ref_index[:, :7]) and torch.equal(values, ref_values[:, :7])
    distinct = torch.randn(50, 1000, generator=generator)
    assert torch.equal(
        stable_topk(distinct, 20)[1], torch.sort(distinct, dim=1, descending=True, stable=True)[1][:, :20]
    )


def test_per_user_metrics_average_to_the_reported_ones():
    from models.core.evaluator import metrics_from_hits, per_user_metrics

    hits = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    n_relevant = np.array([2, 1, 3])
    per_user = per_user_metrics(hits, n_relevant, [2, 3])
    np.testing.assert_allclose(per_user["recall@3"], [1.0, 0.0, 1 / 3])
    np.testing.assert_allclose(
        per_user["ndcg@2"], [1.0 / (1 + 1 / np.log2(3)), 0.0, (1 / np.log2(3)) / (1 + 1 / np.log2(3))]
    )
    means = metrics_from_hits(hits, n_relevant, [2, 3])
    assert means == {name: pytest.approx(float(values.mean())) for name, values in per_user.items()}
