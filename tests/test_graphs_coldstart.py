"""graphs and coldstart: blockwise kNN equals the dense reference, co-occurrence, MICRO's cold split."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from mmpipe.io import read_csr
from stages import coldstart, features, graphs


def dense_topk(x: np.ndarray, k: int, include_self: bool) -> list[list[int]]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    if not include_self:
        np.fill_diagonal(sims, -np.inf)
    # ties: smaller index first
    return [sorted(range(len(x)), key=lambda j: (-sims[i, j], j))[:k] for i in range(len(x))]


@pytest.mark.parametrize("include_self", [True, False])
def test_blockwise_knn_matches_dense_reference(include_self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(57, 8)).astype(np.float32)
    x[10] = x[20] = x[30] = x[40]  # exact ties, across blocks
    g = graphs.knn_graph(x, k=4, include_self=include_self, block_mb=16 * 4 * 57 / 2**20)  # 16-row blocks
    ref = dense_topk(x, 4, include_self)
    for i in range(len(x)):
        row = g.getrow(i)
        assert sorted(row.indices.tolist()) == sorted(ref[i]), i
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(g[3, ref[3][0]], u[3] @ u[ref[3][0]], atol=1e-6)
    assert g.nnz == 57 * 4


def test_knn_tie_break_prefers_smaller_index():
    x = np.ones((6, 3), dtype=np.float32)  # everything ties
    g = graphs.knn_graph(x, k=2, include_self=False, block_mb=4 * 4 * 6 / 2**20)
    assert [g.getrow(i).indices.tolist() for i in range(6)] == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]


def test_cooccurrence_counts_shared_items_topk_without_self():
    train = sp.csr_matrix(
        np.array(
            [
                [1, 1, 1, 0],  # u0
                [1, 1, 0, 0],  # u1 shares 2 with u0
                [1, 0, 0, 1],  # u2 shares 1 with u0, 1 with u1
                [0, 0, 0, 1],  # u3 shares 1 with u2
            ],
            dtype=np.float32,
        )
    )
    g = graphs.cooccurrence(train, k=1, block_mb=2 * 4 * 4 / 2**20).toarray()
    assert g.tolist() == [[0, 2, 0, 0], [2, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    full = graphs.cooccurrence(train, k=10, block_mb=3 * 4 * 4 / 2**20).toarray()
    np.testing.assert_array_equal(full, (train @ train.T).toarray() - np.diag((train @ train.T).diagonal()))


def test_coldstart_follows_micro(tmp_path, params, demo_project):
    root = tmp_path / "p"
    shutil.copytree(demo_project / "processed", root)
    stats = coldstart.run("demo", params, root)
    inter = pq.read_table(root / "demo/interactions.parquet").to_pandas()
    cold = pq.read_table(root / "demo/coldstart.parquet").to_pandas()
    assert cold[["user_idx", "item_idx", "timestamp"]].equals(inter[["user_idx", "item_idx", "timestamp"]])
    n_items = inter.item_idx.max() + 1
    valid_items, test_items = set(cold[cold.split == 1].item_idx), set(cold[cold.split == 2].item_idx)
    train_items = set(cold[cold.split == 0].item_idx)
    assert not (valid_items | test_items) & train_items  # a cold item is never seen in training
    assert not valid_items & test_items
    # the draw is 20% of the items; MICRO gives the first half (floored) to test, the rest to valid
    n_cold = int(0.2 * n_items)
    assert (stats["cold_items"]["test"], stats["cold_items"]["valid"]) == (n_cold // 2, n_cold - n_cold // 2)
    assert (len(test_items), len(valid_items)) == (n_cold // 2, n_cold - n_cold // 2)  # all their interactions
    assert stats["interactions"]["train"] == int((cold.split == 0).sum())
    again = tmp_path / "q"
    shutil.copytree(demo_project / "processed", again)
    coldstart.run("demo", params, again)
    assert (again / "demo/coldstart.parquet").read_bytes() == (root / "demo/coldstart.parquet").read_bytes()


def test_coldstart_rejects_bad_ratio(params):
    params["coldstart"]["ratio"] = 1.5
    with pytest.raises(ValueError, match="coldstart.ratio must be in"):
        coldstart.cold_items(10, 1.5, 0)


def test_graphs_stage_is_deterministic_and_uses_setting_splits(tmp_path, params, demo_project):
    outs = []
    for name in ("a", "b"):
        root = tmp_path / name
        shutil.copytree(demo_project / "processed", root)
        for modality in ("text", "image"):
            features.run("demo", "default", modality, params, root)
        coldstart.run("demo", params, root)
        graphs.run("demo", "default", params, root)
        outs.append(root / "demo/graphs/default")
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.npz"))
    per_setting = ["item_co.npz", "user_co.npz", "user_knn_image.npz", "user_knn_text.npz"]
    expected = [f"cold/{f}" for f in per_setting] + ["knn/image.npz", "knn/text.npz"]
    assert [str(f) for f in files] == expected + [f"warm/{f}" for f in per_setting]
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    knn = read_csr(outs[0] / "knn/text.npz")
    assert (np.diff(knn.indptr) == params["graphs"]["item_knn_k"]).all()
    # the cold item-item graph never links a cold item: it has no training interactions
    cold = pq.read_table(tmp_path / "a/demo/coldstart.parquet").to_pandas()
    cold_items = np.unique(cold[cold.split > 0].item_idx)
    ii = read_csr(outs[0] / "cold/item_co.npz")
    assert ii[cold_items].nnz == 0 and ii[:, cold_items].nnz == 0
