"""Each model against its formula: a handful of users and items, the answer computed here independently
(dense numpy in float64, explicit loops over nodes and edges), compared with what the model computes.

Nothing here reuses the code under test to build the expected value: the kNN graphs, degrees,
normalisations, propagations, fusions and losses are written out from the papers' definitions (as each
model file's docstring states them). Each test names the mutation it exists to catch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.bm3 import BM3
from models.bpr import BPR
from models.core.base import TrainData
from models.core.graph import bipartite_adjacency, self_loop_row_normalize, sym_normalize
from models.core.layers import bpr_loss
from models.freedom import FREEDOM
from models.itemknn import ItemKNN
from models.lattice import LATTICE
from models.lightgcn import LightGCN
from models.micro import MICRO
from models.micro import info_nce as micro_info_nce
from models.rearm import PRESETS, REARM, PositionAttention, orthogonality, softmax_rows
from models.rearm import info_nce as rearm_info_nce
from models.vbpr import VBPR
from stages import graphs

STORED_K = 4  # neighbours per row the "graphs stage" stores here
K = 3  # neighbours the models ask for (fewer than stored: the models' own top-k cut is exercised)
DIM = 4

# 5 users x 7 items; item 6 is cold (no training interaction); user 0 has many items, the others few,
# so that degrees differ (what the normalisations and FREEDOM's pruning weigh).
TRAIN = np.array(
    [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 1, 0],
        [0, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [1, 0, 0, 0, 1, 1, 0],
    ],
    dtype=np.float32,
)


def tiny() -> TrainData:
    rng = np.random.default_rng(7)
    features = {"image": rng.normal(size=(7, 5)).astype(np.float32), "text": rng.normal(size=(7, 6)).astype(np.float32)}
    train = sp.csr_matrix(TRAIN)
    return TrainData(
        n_users=5,
        n_items=7,
        train=train,
        features={m: torch.from_numpy(f) for m, f in features.items()},
        knn={m: graphs.knn_graph(f, STORED_K, True) for m, f in features.items()},
        user_co=graphs.cooccurrence(train, STORED_K),
        item_co=graphs.cooccurrence(train.T.tocsr(), STORED_K),
        user_knn={m: graphs.knn_graph(graphs.user_interests(train, f), STORED_K, True) for m, f in features.items()},
    )


# ------------------------------------------------------------------------------ references (numpy)


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def topk_cosine(f: np.ndarray, k: int) -> np.ndarray:
    """Dense [n, n]: row i keeps the cosine of its k most similar rows (itself included), zeros elsewhere."""
    f = np.asarray(f, dtype=np.float64)
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = unit @ unit.T
    out = np.zeros_like(cos)
    for i in range(len(f)):
        for j in np.argsort(-cos[i], kind="stable")[:k]:
            out[i, j] = cos[i, j]
    return out


def sym_norm(a: np.ndarray) -> np.ndarray:
    """a_ij / sqrt(d_i d_j), d the row sums (a directed kNN graph uses row sums on both sides)."""
    d = a.sum(axis=1)
    out = np.zeros_like(a, dtype=np.float64)
    for i, j in zip(*np.nonzero(a), strict=True):
        out[i, j] = a[i, j] / math.sqrt(d[i] * d[j])
    return out


def bipartite_sym(train: np.ndarray) -> np.ndarray:
    """LightGCN's adjacency, edge by edge: 1 / sqrt(deg_u * deg_i) between u and n_users + i."""
    n_users, n_items = train.shape
    a = np.zeros((n_users + n_items, n_users + n_items))
    deg_u, deg_i = train.sum(axis=1), train.sum(axis=0)
    for u, i in zip(*np.nonzero(train), strict=True):
        a[u, n_users + i] = a[n_users + i, u] = 1.0 / math.sqrt(deg_u[u] * deg_i[i])
    return a


def bipartite_self_loop_row(train: np.ndarray) -> np.ndarray:
    """D^-1 (A + I) of the bipartite graph, row by row: each neighbour and the node itself get 1 / (deg + 1)."""
    n_users, n_items = train.shape
    a = np.eye(n_users + n_items)
    for u, i in zip(*np.nonzero(train), strict=True):
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    return a / a.sum(axis=1, keepdims=True)


def layer_mean(a: np.ndarray, x: np.ndarray, layers: int) -> np.ndarray:
    out, h = [x], x
    for _ in range(layers):
        h = a @ h
        out.append(h)
    return np.mean(out, axis=0)


def l2_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def bpr(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(np.mean([-math.log(1e-10 + 1.0 / (1.0 + math.exp(-(p - n)))) for p, n in zip(pos, neg, strict=True)]))


def linear(layer: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    out = x @ np_(layer.weight).T
    return out + np_(layer.bias) if layer.bias is not None else out


USERS, POS, NEG = torch.tensor([0, 1, 3, 4]), torch.tensor([2, 5, 3, 0]), torch.tensor([5, 2, 1, 3])


def close(actual: torch.Tensor | float, expected: np.ndarray | float, rtol: float = 1e-5) -> None:
    actual = np_(actual) if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-6)


# ------------------------------------------------------------------------------ graphs


def test_graph_normalisations_edge_by_edge():
    """Mutations caught: row instead of symmetric normalisation; self loops forgotten or counted twice."""
    close(torch.from_numpy(sym_normalize(bipartite_adjacency(TRAIN)).toarray()), bipartite_sym(TRAIN))
    close(
        torch.from_numpy(self_loop_row_normalize(bipartite_adjacency(TRAIN)).toarray()), bipartite_self_loop_row(TRAIN)
    )
    knn = topk_cosine(np.random.default_rng(0).normal(size=(6, 3)), 2)
    close(torch.from_numpy(sym_normalize(sp.csr_matrix(knn)).toarray()), sym_norm(knn))


def test_stored_knn_graph_is_the_top_k_cosine():
    """Mutations caught: dot product instead of cosine, self excluded, one neighbour too few."""
    data = tiny()
    for m, f in data.features.items():
        close(torch.from_numpy(data.knn[m].toarray()), topk_cosine(f.numpy(), STORED_K))


# ------------------------------------------------------------------------------ ID models


def test_lightgcn_is_the_mean_of_normalised_propagations_and_its_loss_bpr_plus_embloss():
    """Mutations caught: no symmetric normalisation, layer 0 left out of the mean, a sum instead of the
    mean, BPR with its sign flipped, the regulariser on final instead of ego embeddings."""
    torch.manual_seed(0)
    model = LightGCN(tiny(), LightGCN.HParams(embedding_size=DIM, n_layers=2, reg_weight=0.3))
    ego = np.vstack([np_(model.user_emb), np_(model.item_emb)])
    final = layer_mean(bipartite_sym(TRAIN), ego, 2)
    users, items = model.final_embeddings()
    close(users, final[:5])
    close(items, final[5:])
    u, p, n = final[USERS.numpy()], final[5 + POS.numpy()], final[5 + NEG.numpy()]
    reg = sum(np.linalg.norm(ego[idx]) for idx in (USERS.numpy(), 5 + POS.numpy(), 5 + NEG.numpy())) / len(USERS)
    expected = bpr((u * p).sum(1), (u * n).sum(1)) + 0.3 * reg
    close(model.loss(USERS, POS, NEG).item(), expected)


def test_bpr_loss_is_minus_log_sigmoid_of_the_difference():
    """Mutation caught: the sign of the difference flipped (the model would learn to rank positives last)."""
    pos, neg = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.5])
    expected = np.mean([math.log1p(math.exp(-(p - n))) for p, n in ((2, 1), (-1, 1), (0.5, 0.5))])
    close(bpr_loss(pos, neg).item(), expected)
    ahead, behind = torch.tensor([3.0]), torch.tensor([1.0])
    assert bpr_loss(ahead, behind) < bpr_loss(behind, ahead)  # a positive ranked ahead costs less


def test_bpr_mf_scores_are_dot_products_and_its_loss_bpr_plus_embloss():
    torch.manual_seed(0)
    model = BPR(tiny(), BPR.HParams(embedding_size=DIM, reg_weight=0.2))
    users, items = np_(model.user_emb), np_(model.item_emb)
    close(model.scorer()(torch.tensor([1, 3])), users[[1, 3]] @ items.T)
    u, p, n = users[USERS.numpy()], items[POS.numpy()], items[NEG.numpy()]
    reg = (np.linalg.norm(u) + np.linalg.norm(p) + np.linalg.norm(n)) / len(USERS)
    close(model.loss(USERS, POS, NEG).item(), bpr((u * p).sum(1), (u * n).sum(1)) + 0.2 * reg)


# ------------------------------------------------------------------------------ feature models


def test_vbpr_item_is_id_and_projected_content_with_the_cold_id_half_zeroed():
    """Mutations caught: the cold item's untrained ID row used; one modality left out of the content."""
    torch.manual_seed(0)
    data = tiny()
    model = VBPR(data, VBPR.HParams(embedding_size=DIM, reg_weight=0.0))
    content = np.hstack([data.features["image"].numpy(), data.features["text"].numpy()])  # sorted modalities
    ids = np_(model.item_emb) * (TRAIN.sum(axis=0) > 0)[:, None]
    items = np.hstack([ids, linear(model.project, content)])
    close(model.scorer()(torch.arange(5)), np_(model.user_emb) @ items.T)


def test_bm3_loss_is_its_bootstrap_cosines_without_dropout():
    """Mutations caught: a bootstrap term dropped, the predictor left out of the online side, the cosine
    replaced by a dot product, the regulariser over the batch instead of all nodes."""
    torch.manual_seed(0)
    data = tiny()
    hp = BM3.HParams(embedding_size=DIM, n_layers=1, dropout=0.0, reg_weight=0.1, cl_weight=2.0)
    model = BM3(data, hp)
    ego = np.vstack([np_(model.user_emb), np_(model.item_emb)])
    out = layer_mean(bipartite_sym(TRAIN), ego, 1)
    user_all, item_all = out[:5], out[5:] + np_(model.item_emb)

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - float(np.mean((l2_rows(a) * l2_rows(b)).sum(1)))

    def predict(x: np.ndarray) -> np.ndarray:
        return linear(model.predictor, x)

    u, i = user_all[USERS.numpy()], item_all[POS.numpy()]
    expected = distance(predict(u), i) + distance(predict(i), u)
    for m in ("image", "text"):
        f = linear(model.project[m], data.features[m].numpy()[POS.numpy()])
        expected += 2.0 * (distance(predict(f), i) + distance(predict(f), f))
    expected += 0.1 * (np.linalg.norm(user_all) + np.linalg.norm(item_all)) / 7
    close(model.loss(USERS, POS, NEG).item(), expected)
    close(model.scorer()(torch.tensor([2])), predict(user_all[[2]]) @ predict(item_all).T)


# ------------------------------------------------------------------------------ graph models


def test_itemknn_scores_sum_the_neighbour_similarities_of_the_users_items():
    data = tiny()
    sim = topk_cosine(data.features["image"].numpy(), STORED_K) + topk_cosine(data.features["text"].numpy(), STORED_K)
    expected = np.array([[sum(sim[j, i] for j in np.flatnonzero(TRAIN[u])) for i in range(7)] for u in range(5)])
    close(ItemKNN(data, ItemKNN.HParams()).scorer()(torch.arange(5)), expected)


def test_freedom_item_graph_is_the_weighted_binarised_knn_and_items_add_its_convolution():
    """Mutations caught: kNN values kept instead of binarised, the image weight on text, the item-graph
    term or the degree normalisation of the user-item graph dropped."""
    torch.manual_seed(0)
    data = tiny()
    hp = FREEDOM.HParams(embedding_size=DIM, knn_k=K, mm_image_weight=0.3, n_mm_layers=2, n_ui_layers=2, dropout=0.5)
    model = FREEDOM(data, hp)
    mm = np.zeros((7, 7))
    for m, weight in (("image", 0.3), ("text", 0.7)):
        for i, row in enumerate(topk_cosine(data.features[m].numpy(), K)):
            for j in np.flatnonzero(row):
                mm[i, j] += weight / K  # binary row of k ones, D^-1/2 A D^-1/2 with d = k on both sides
    close(model.mm_adj.to_dense(), mm)
    ego = np.vstack([np_(model.user_emb), np_(model.item_emb)])
    ui = layer_mean(bipartite_sym(TRAIN), ego, 2)
    users, items = model.final_embeddings()
    close(users, ui[:5])
    close(items, ui[5:] + mm @ mm @ np_(model.item_emb))


def test_freedom_prunes_edges_with_probability_proportional_to_inverse_sqrt_degrees():
    """Keeping one edge per epoch, each edge's frequency over many epochs must approach
    1/sqrt(d_u d_i) / sum (sampling without replacement draws its first edge with exactly that
    probability); the kept graph is re-normalised with its own degrees.
    Mutations caught: uniform pruning, weights sqrt(d_u d_i), the full graph's degrees after pruning."""
    data = tiny()
    edges = list(zip(*np.nonzero(TRAIN), strict=True))
    dropout = 1 - 1.5 / len(edges)  # int(E * (1 - dropout)) = 1 edge kept
    model = FREEDOM(data, FREEDOM.HParams(embedding_size=DIM, knn_k=K, dropout=dropout))
    deg_u, deg_i = TRAIN.sum(axis=1), TRAIN.sum(axis=0)
    weights = np.array([1 / math.sqrt(deg_u[u] * deg_i[i]) for u, i in edges])
    expected = weights / weights.sum()
    rng = np.random.default_rng(0)
    draws = 3000
    counts = dict.fromkeys(edges, 0)
    for epoch in range(draws):
        model.on_epoch_start(epoch, rng)
        dense = model.train_adj.to_dense().numpy()
        kept = [(u, i) for u, i in edges if dense[u, 5 + i] != 0]
        assert len(kept) == 1 and dense[kept[0][0], 5 + kept[0][1]] == pytest.approx(1.0)  # degree 1 on both ends
        counts[kept[0]] += 1
    observed = np.array([counts[e] for e in edges]) / draws
    tolerance = 4 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(observed - expected) <= tolerance), np.c_[observed, expected]

    model = FREEDOM(data, FREEDOM.HParams(embedding_size=DIM, knn_k=K, dropout=0.5))
    model.on_epoch_start(1, np.random.default_rng(1))
    dense = model.train_adj.to_dense().numpy()
    kept = np.zeros_like(TRAIN)
    for u, i in edges:
        kept[u, i] = dense[u, 5 + i] != 0
    assert kept.sum() == int(len(edges) * 0.5)
    close(torch.from_numpy(dense), bipartite_sym(kept))


def test_micro_item_graphs_attention_fusion_and_item_embeddings():
    """A_m = (1 - lambda) symnorm(kNN(projected features)) + lambda symnorm(kNN(raw features)),
    h_m = A_m^L E, softmax attention over modalities, item = mean of D^-1 (A + I) propagations +
    normalise(fused). Mutations caught: lambda on the learned graph, attention weights not softmaxed over
    the modalities (or over items), the fused term not normalised, the user-item graph without self loops."""
    torch.manual_seed(0)
    data = tiny()
    lam = 0.7
    hp = MICRO.HParams(embedding_size=DIM, knn_k=K, lambda_coeff=lam, n_layers=2, n_ui_layers=2)
    model = MICRO(data, hp).eval()
    items_emb = np_(model.item_emb)
    per_modality, scores = {}, {}
    for m in ("image", "text"):
        learned = sym_norm(topk_cosine(linear(model.project[m], data.features[m].numpy()), K))
        original = sym_norm(topk_cosine(data.features[m].numpy(), K))
        a = (1 - lam) * learned + lam * original
        per_modality[m] = a @ a @ items_emb
        hidden = np.tanh(linear(model.query[0], per_modality[m]))
        scores[m] = linear(model.query[2], hidden)[:, 0]
    weights = np.exp(np.stack([scores["image"], scores["text"]]))
    weights /= weights.sum(axis=0)
    fused = weights[0][:, None] * per_modality["image"] + weights[1][:, None] * per_modality["text"]
    ui = layer_mean(bipartite_self_loop_row(TRAIN), np.vstack([np_(model.user_emb), items_emb]), 2)
    users, items, got_per_modality, got_fused = model.propagate()
    for m in ("image", "text"):
        close(got_per_modality[m], per_modality[m])
    close(got_fused, fused)
    close(users, ui[:5])
    close(items, ui[5:] + l2_rows(fused))


def test_micro_info_nce_counts_both_views_as_negatives():
    """-log exp(a_i.b_i / t) / (sum_{j != i} exp(a_i.a_j / t) + sum_j exp(a_i.b_j / t)), cosines.
    Mutations caught: the anchor counted among its own negatives, the intra-view negatives left out."""
    rng = np.random.default_rng(3)
    z1, z2, tau = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), 0.5
    a, b = l2_rows(z1), l2_rows(z2)
    losses = []
    for i in range(6):
        intra = sum(math.exp(a[i] @ a[j] / tau) for j in range(6) if j != i)
        inter = sum(math.exp(a[i] @ b[j] / tau) for j in range(6))
        losses.append(-math.log(math.exp(a[i] @ b[i] / tau) / (intra + inter)))
    close(micro_info_nce(torch.tensor(z1), torch.tensor(z2), tau, chunk=4).item(), np.mean(losses))


def test_lattice_item_graph_mixes_by_softmaxed_modal_weights_and_items_add_its_convolution():
    """G = (1 - lambda) symnorm(sum_m w_m kNN(projected_m)) + lambda sum_m w_m symnorm(kNN(raw_m)),
    w = softmax(modal weights). Mutations caught: the learned mix normalised per modality (or not at
    all), raw weights instead of softmax, lambda on the learned graph."""
    torch.manual_seed(0)
    data = tiny()
    lam = 0.6
    hp = LATTICE.HParams(embedding_size=DIM, feat_embed_dim=3, knn_k=K, lambda_coeff=lam, n_layers=1, n_ui_layers=2)
    model = LATTICE(data, hp).eval()
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.8, -0.4]))
    w = np.exp([0.8, -0.4]) / np.exp([0.8, -0.4]).sum()
    learned = sum(
        w[n] * topk_cosine(linear(model.project[m], data.features[m].numpy()), K)
        for n, m in enumerate(("image", "text"))
    )
    original = sum(w[n] * sym_norm(topk_cosine(data.features[m].numpy(), K)) for n, m in enumerate(("image", "text")))
    graph = (1 - lam) * sym_norm(learned) + lam * original
    close(model.build_item_graph().to_dense(), graph)
    ui = layer_mean(bipartite_self_loop_row(TRAIN), np.vstack([np_(model.user_emb), np_(model.item_emb)]), 2)
    users, items = model.final_embeddings()
    close(users, ui[:5])
    close(items, ui[5:] + l2_rows(graph @ np_(model.item_emb)))


# ------------------------------------------------------------------------------ REARM


def co_softmax(train: np.ndarray, k: int) -> np.ndarray:
    """REARM's co-occurrence graph over the rows of `train`: shared-column counts (no self), the k largest
    per row (ties: smaller index), softmax over the kept counts; a row with none links to the k most
    popular rows with weights softmax(their popularity shares), as the official code."""
    counts = train @ train.T
    np.fill_diagonal(counts, 0)
    popularity = train.sum(axis=1)
    out = np.zeros_like(counts, dtype=np.float64)
    for r in range(len(counts)):
        keep = [j for j in np.argsort(-counts[r], kind="stable")[:k] if counts[r, j] > 0]
        if keep:
            e = np.exp(counts[r, keep] - counts[r, keep].max())
            out[r, keep] = e / e.sum()
        else:
            popular = [j for j in np.argsort(-popularity, kind="stable")[:k] if popularity[j] > 0]
            share = popularity[popular] / popularity[popular].sum()
            out[r, popular] = np.exp(share) / np.exp(share).sum()
    return out


def test_rearm_homogeneous_graphs_mix_softmaxed_cooccurrence_and_knn():
    """G = w * softmax-rows(top-k co-occurrence) + (1 - w) * (image weight * kNN_image / k + ... text).
    Mutations caught: co-occurrence weights not softmaxed, the cold item without its popularity fallback,
    the kNN part not divided by k, the user graph from item features."""
    torch.manual_seed(0)
    data = tiny()
    flags = {**PRESETS["sports"], "item_knn_k": K, "user_knn_k": 2, "i_mm_image_weight": 0.2, "u_mm_image_weight": 0.4}
    model = REARM(data, REARM.HParams(**flags, embedding_size=DIM))
    item_sim = 0.2 * topk_cosine(data.features["image"].numpy(), K) + 0.8 * topk_cosine(
        data.features["text"].numpy(), K
    )
    item_graph = 0.2 * co_softmax(TRAIN.T, K) + 0.8 * item_sim / K  # ii_co_weight 0.2 (sports)
    close(model.item_graph.to_dense(), item_graph)
    interest = {m: (TRAIN @ data.features[m].numpy()) / TRAIN.sum(axis=1, keepdims=True) for m in ("image", "text")}
    user_sim = 0.4 * topk_cosine(interest["image"], 2) + 0.6 * topk_cosine(interest["text"], 2)
    close(model.user_graph.to_dense(), 0.9 * co_softmax(TRAIN, 2) + 0.1 * user_sim / 2)  # uu_co_weight 0.9


def test_rearm_softmax_rows_by_hand():
    counts = sp.csr_matrix(np.array([[0, 2, 1], [0, 0, 0], [3, 3, 0]], dtype=np.float32))
    popularity = np.array([5.0, 1.0, 2.0])
    got = softmax_rows(counts, popularity, 2).toarray()
    e = np.exp([2.0, 1.0])
    f = np.exp([5 / 7, 2 / 7])  # the empty row: softmax of the two most popular nodes' shares
    np.testing.assert_allclose(
        got, [[0, e[0] / e.sum(), e[1] / e.sum()], [f[0] / f.sum(), 0, f[1] / f.sum()], [0.5, 0.5, 0]], rtol=1e-6
    )


def test_rearm_position_attention_is_one_head_attention_over_the_positions():
    """out_i = w_o * sum_j softmax_j(q_i k_j) v_j + b_o with q, k, v affine in each 1-d position.
    Mutation caught: the softmax over the query positions instead of the keys."""
    torch.manual_seed(0)
    attention = PositionAttention(dropout=0.3).eval()
    with torch.no_grad():
        attention.qkv_bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        attention.out.bias.fill_(0.05)
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    a, b = np_(attention.qkv), np_(attention.qkv_bias)
    w_out, b_out = attention.out.weight.item(), attention.out.bias.item()
    expected = np.zeros((2, 8))
    for n in range(2):
        q, k, v = np_(x[n]) * a[0] + b[0], np_(y[n]) * a[1] + b[1], np_(y[n]) * a[2] + b[2]
        for i in range(8):
            e = np.exp(q[i] * k - (q[i] * k).max())
            expected[n, i] = w_out * (e / e.sum()) @ v + b_out
    close(attention(x, y), expected)


def test_rearm_contrastive_and_orthogonality_terms():
    """InfoNCE: cross-entropy of cosine / t with the same row as the target; orthogonality: the mean
    squared cross-correlation of the centred, row-normalised channels. Mutations caught: a missing
    temperature, rows not centred."""
    rng = np.random.default_rng(5)
    x1, x2, tau = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), 0.6
    a, b = l2_rows(x1), l2_rows(x2)
    logits = a @ b.T / tau
    nce = np.mean([-(logits[i, i] - math.log(np.exp(logits[i]).sum())) for i in range(5)])
    close(rearm_info_nce(torch.tensor(x1), torch.tensor(x2), tau).item(), nce)
    c1, c2 = x1 - x1.mean(axis=0), x2 - x2.mean(axis=0)
    c1 = c1 / (np.linalg.norm(c1, axis=1, keepdims=True) + 1e-6)
    c2 = c2 / (np.linalg.norm(c2, axis=1, keepdims=True) + 1e-6)
    close(orthogonality(torch.tensor(x1), torch.tensor(x2)).item(), np.mean((c1.T @ c2) ** 2))
