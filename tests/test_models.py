"""Models: loss shapes and gradients on a tiny graph, one epoch lowers the loss on demo data, trainer rules."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from mmpipe.paths import run_dir
from models.core.base import HParams, TrainData
from models.core.data import load_train_data
from models.core.graph import bipartite_adjacency, self_loop_row_normalize, sparse_tensor
from models.core.registry import MODELS, all_models, get_model, model_config, model_names
from models.core.spmm import layer_mean
from models.core.trainer import NegativeSampler, TrainConfig, fit, state_on_cpu
from stages import coldstart, evaluate, features, graphs, train
from tests.conftest import ROOT

log = logging.getLogger("test")


TINY_K = 3  # neighbours per row in the tiny graphs


def tiny_data(n_users: int = 6, n_items: int = 8, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.4).astype(np.float32)
    dense[:, 0] = 1  # every user has a training item
    dense[:, -1] = 0  # the last item is cold: no training interaction
    features = {"image": torch.randn(n_items, 5), "text": torch.randn(n_items, 7)}
    train = sp.csr_matrix(dense)
    return TrainData(
        n_users=n_users,
        n_items=n_items,
        train=train,
        features=features,
        knn={m: graphs.knn_graph(f.numpy(), TINY_K, True) for m, f in features.items()},
        user_co=graphs.cooccurrence(train, TINY_K),
        item_co=graphs.cooccurrence(train.T.tocsr(), TINY_K),
        user_knn={
            m: graphs.knn_graph(graphs.user_interests(train, f.numpy()), TINY_K, True) for m, f in features.items()
        },
    )


def hp_for(name: str, params: dict, tiny: bool = False) -> HParams:
    """The model's resolved hyperparameters; on the tiny graphs, neighbour counts cut to TINY_K."""
    hp, _ = model_config(name, params["train"][name])
    if tiny:
        hp = dataclasses.replace(hp, **{k: TINY_K for k in ("knn_k", "user_knn_k", "item_knn_k") if hasattr(hp, k)})
    return hp


# every recommender of the registry outside the sequential family (pmmrec: tests/test_pmmrec.py)
ALL_MODELS = sorted(name for name, cls in all_models().items() if cls.reads != "seq")
TRAINED = [m for m in ALL_MODELS if all_models()[m].trainable]  # pop and itemknn rank without training
# Parameters that get no gradient by construction: FREEDOM's projection biases cancel in the BPR
# difference; REARM's "knowledge compression" layers are detached in the official code.
NO_GRADIENT = {"freedom": {"project.image.bias", "project.text.bias"},
               "rearm": {"user_meta.compress.weight", "user_meta.compress.bias",
                         "item_meta.compress.weight", "item_meta.compress.bias"}}  # fmt: skip


def test_registry_lists_every_model():
    """Every file of models/ registers its model under its own name; the tests below run them all."""
    assert sorted(all_models()) == model_names() == sorted(MODELS)
    assert {"pop", "bpr", "lightgcn", "vbpr", "bm3", "itemknn", "lattice", "freedom", "micro", "rearm"} <= set(
        ALL_MODELS
    )
    assert set(TRAINED) == set(ALL_MODELS) - {"pop", "itemknn"}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_loss_scores_and_gradients_on_tiny_graph(name, params):
    torch.manual_seed(0)
    data = tiny_data()
    model = get_model(name)(data, hp_for(name, params, tiny=True))
    model.on_epoch_start(1, np.random.default_rng(0))
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), torch.tensor([3, 4, 5])
    scores = model.scorer()(torch.tensor([0, 1]))
    assert scores.shape == (2, data.n_items) and torch.isfinite(scores).all()
    if not model.trainable:
        assert list(model.parameters()) == []
        return
    loss = model.loss(users, pos, neg)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    exempt = NO_GRADIENT.get(name, set())
    grads = {n: p.grad for n, p in model.named_parameters() if n not in exempt}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert [n for n, g in grads.items() if g.abs().sum() == 0] == [], "every parameter gets a gradient"
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if n in exempt)


def with_cold_features(data: TrainData, seed: int) -> TrainData:
    """The same data with the cold item's feature rows redrawn, and the graphs recomputed from them."""
    rng = np.random.default_rng(seed)
    features = {m: f.clone() for m, f in data.features.items()}
    for f in features.values():
        f[-1] = torch.from_numpy(rng.normal(size=f.shape[1]).astype(np.float32))
    return dataclasses.replace(
        data,
        features=features,
        knn={m: graphs.knn_graph(f.numpy(), TINY_K, True) for m, f in features.items()},
        user_knn={
            m: graphs.knn_graph(graphs.user_interests(data.train, f.numpy()), TINY_K, True) for m, f in features.items()
        },
    )


COLD_SCORERS = [m for m in ALL_MODELS if all_models()[m].scores_cold_items]  # pmmrec: tests/test_pmmrec.py


@pytest.mark.parametrize("name", COLD_SCORERS)
def test_cold_items_are_scored_from_their_content(name, params):
    """A cold item's scores move when its features change (all else equal, the same initial weights); its
    untrained ID row is either not used at all (VBPR: changing it moves no score) or trained through the
    item graph (graph models: a batch of warm items only gives it a gradient). Mutations caught: a model
    scoring cold items by their ID rows alone (the content path dropped), VBPR without its seen-mask."""
    every = {n: get_model(n) for n in all_models()}
    assert sorted(n for n, c in every.items() if c.scores_cold_items and c.reads != "seq") == COLD_SCORERS
    data = tiny_data()
    cold = data.n_items - 1
    cls = get_model(name)
    scores = []
    for variant in (data, with_cold_features(data, 1)):
        torch.manual_seed(0)
        model = cls(variant, hp_for(name, params, tiny=True)).eval()
        scores.append(model.scorer()(torch.arange(data.n_users)))
    assert not torch.allclose(scores[0][:, cold], scores[1][:, cold]), f"{name}: cold scores ignore the features"
    if not cls.trainable:
        return
    torch.manual_seed(0)
    model = cls(data, hp_for(name, params, tiny=True))
    if name == "vbpr":
        with torch.no_grad():
            model.item_emb[cold] += 10.0
        torch.testing.assert_close(model.scorer()(torch.arange(data.n_users)), scores[0], rtol=0, atol=0)
        return
    model.on_epoch_start(1, np.random.default_rng(0))
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), torch.tensor([3, 4, 5])
    model.loss(users, pos, neg).backward()
    assert model.item_emb.grad[cold].abs().sum() > 0, f"{name}: the cold ID row is used but never trained"


def test_pop_ranks_by_training_popularity_and_cannot_score_cold_items():
    data = tiny_data()
    pop = get_model("pop")(data, hp_for("pop", {"train": {"pop": {}}}))
    scores = pop.scorer()(torch.tensor([0, 3]))
    counts = torch.from_numpy(np.asarray(data.train.sum(axis=0), dtype=np.float32).ravel())
    assert torch.equal(scores[0], counts) and torch.equal(scores[1], counts)
    assert scores[0, -1] == 0 and not pop.scores_cold_items and list(pop.parameters()) == []


def test_negative_sampler_avoids_positives_and_cold_items():
    data = tiny_data()
    sampler = NegativeSampler(data.train)
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(data.n_users), 200)
    neg = sampler.sample(rng, users)
    assert not sampler.is_positive(users, neg).any()
    assert data.n_items - 1 not in set(neg.tolist())  # never a cold item


@pytest.fixture(scope="module")
def demo_ready(tmp_path_factory, demo_project):
    """The tiny demo with features, coldstart and graphs, for training tests."""
    from tests.conftest import tiny_params

    root = tmp_path_factory.mktemp("ready") / "processed"
    shutil.copytree(demo_project / "processed", root)
    params = tiny_params()
    for modality in ("text", "image"):
        features.run("demo", "default", modality, params, root)
    coldstart.run("demo", params, root)
    graphs.run("demo", "default", params, root)
    return root


def dataset_loss(model, data: TrainData, seed: int = 5) -> float:
    """Mean loss over every training pair with fixed negatives (eval mode: no dropout, no pruning)."""
    coo = data.train.tocoo()
    neg = NegativeSampler(data.train).sample(np.random.default_rng(seed), coo.row)
    model.eval()
    with torch.no_grad():
        return float(model.loss(torch.from_numpy(coo.row).long(), torch.from_numpy(coo.col).long(),
                                torch.from_numpy(neg).long()))  # fmt: skip


@pytest.mark.parametrize("name", TRAINED)
def test_one_epoch_lowers_the_loss_on_demo_data(name, params, demo_ready):
    cls = get_model(name)
    data, split = load_train_data(demo_ready / "demo", "warm", cls.reads, ("text", "image"), "default")
    torch.manual_seed(0)
    model = cls(data, hp_for(name, params))
    before = dataset_loss(model, data)
    # MMRec's lr: at 0.01, VBPR overshoots on the unnormalised 1280-d CNN image features in one epoch
    cfg = TrainConfig(epochs=1, patience=5, batch_size=128, lr=0.001)
    result = fit(model, data, split.valid, cfg, log, progress=False)
    model.load_state_dict(result.best_state)
    assert dataset_loss(model, data) < before
    assert result.history[0]["epoch"] == 1 and "valid_recall@20" in result.history[0]


def test_early_stopping_keeps_best_epoch(params, demo_ready):
    cls = get_model("bpr")
    data, split = load_train_data(demo_ready / "demo", "warm", "id")
    model = cls(data, hp_for("bpr", params))
    cfg = TrainConfig(epochs=60, patience=3, batch_size=128, lr=0.05)
    result = fit(model, data, split.valid, cfg, log, progress=False)
    values = [r["valid_recall@20"] for r in result.history]
    assert len(values) < 60  # stopped early
    assert values[result.best_epoch - 1] == max(values) == pytest.approx(result.best_valid["recall@20"], abs=1e-6)
    # MMRec's rule (cur_step > stopping_step): 3 evaluations without improvement are tolerated, the 4th stops
    assert all(v <= max(values) for v in values[result.best_epoch :]) and len(values) - result.best_epoch == 3 + 1


def test_evaluate_refuses_weights_that_are_not_the_best_epochs(params, demo_ready, tmp_path, monkeypatch):
    """The evaluate stage re-scores the checkpoint on the validation split: the best epoch's weights
    reproduce train.json's best; the last epoch's (a trainer that forgot to keep the best) are refused."""
    params["train"]["common"].update(epochs=60, patience=3, lr=0.05)
    summary = train.run("demo", "bpr", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path / "good")
    assert summary["best_epoch"] < summary["epochs_run"]  # the last epoch is not the best one
    result = evaluate.run("demo", "bpr", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path / "good")
    assert result["valid"] == summary["best_valid"]

    real_fit = train.fit

    def keeps_the_last_epoch(model, *args, **kwargs):
        result = real_fit(model, *args, **kwargs)
        return dataclasses.replace(result, best_state=state_on_cpu(model))

    monkeypatch.setattr(train, "fit", keeps_the_last_epoch)
    train.run("demo", "bpr", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path / "bad")
    with pytest.raises(RuntimeError, match=r"model.pt: the saved weights do not reproduce the best validation"):
        evaluate.run("demo", "bpr", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path / "bad")
    assert not (tmp_path / "bad/demo/bpr/warm/seed-2026/evaluation.json").exists()


def test_training_is_reproducible_across_processes(params, demo_ready, tmp_path):
    """Two separate processes (fresh thread pools) give bit-identical weights and byte-identical checkpoints."""
    script = (
        "import sys, yaml; from pathlib import Path; from stages import train; "
        "p = yaml.safe_load(open(sys.argv[1])); "
        "train.run('demo', 'lightgcn', 'warm', 'id', 2026, p, processed=Path(sys.argv[2]), runs=Path(sys.argv[3]))"
    )
    params["train"]["common"].update(epochs=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for run in ("a", "b"):
        args = [sys.executable, "-c", script, str(tmp_path / "params.yaml"), str(demo_ready), str(tmp_path / run)]
        subprocess.run(args, check=True, capture_output=True, cwd=ROOT)
    sa = torch.load(tmp_path / "a/demo/lightgcn/warm/seed-2026/model.pt")["state_dict"]
    sb = torch.load(tmp_path / "b/demo/lightgcn/warm/seed-2026/model.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    a, b = (tmp_path / run / "demo/lightgcn/warm/seed-2026/model.pt" for run in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()  # nothing run-specific (file name, timings) inside


def test_cut_offs_above_the_catalogue_are_refused_before_training_and_scoring(params, demo_ready, tmp_path):
    """A cut-off above the number of items (66 in the tiny demo after its k-core) names its key before any
    epoch runs, and in evaluate before anything is scored (it used to give Recall@K = Recall@66 under
    another name)."""
    params["train"]["common"]["valid_ks"] = [10, 100]
    with pytest.raises(ValueError, match=r"train.common.valid_ks \(with valid_metric\) has cut-off\(s\) \[100\] above"):
        train.run("demo", "pop", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path)
    assert not (tmp_path / "demo/pop/warm/seed-2026").exists()
    params["train"]["common"]["valid_ks"] = [10, 20]
    train.run("demo", "pop", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path)
    params["evaluate"]["topk"] = [5, 67]
    with pytest.raises(ValueError, match=r"evaluate.topk has cut-off\(s\) \[67\] above the catalogue's 66 items"):
        evaluate.run("demo", "pop", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path)


def test_model_in_the_wrong_group_is_rejected(params, demo_ready, tmp_path):
    with pytest.raises(ValueError, match=r"model 'vbpr' reads 'feat' inputs.*pipeline.feature_models"):
        train.run("demo", "vbpr", "warm", "id", 2026, params, processed=demo_ready, runs=tmp_path)
    with pytest.raises(ValueError, match="cannot score cold items"):
        train.run("demo", "bpr", "cold", "id", 2026, params, processed=demo_ready, runs=tmp_path)
    with pytest.raises(ValueError, match=r"unknown key 'epochz' \(known: seed, epochs, patience"):
        TrainConfig.from_params({"epochz": 3})


def test_layer_mean_gradient_through_the_kept_transpose_equals_autograds():
    """The propagation's backward multiplies by the transpose the model keeps: for a row-normalised
    (not symmetric) graph its gradient must be what torch's own product gives."""
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((np.ones(40, np.float32), (rng.integers(0, 9, 40), rng.integers(0, 7, 40))), shape=(9, 7))
    adj = self_loop_row_normalize(bipartite_adjacency(train))
    assert abs(adj - adj.T).max() > 0
    x = torch.randn(16, 4, requires_grad=True)
    weights = torch.randn(16, 4)
    (layer_mean(sparse_tensor(adj), x, 3, sparse_tensor(adj.T)) * weights).sum().backward()
    kept = x.grad.clone()
    x.grad = None
    dense = torch.from_numpy(adj.toarray())
    reference = torch.stack([x, dense @ x, dense @ dense @ x, dense @ dense @ dense @ x]).mean(0)
    (reference * weights).sum().backward()
    torch.testing.assert_close(kept, x.grad)
    assert not torch.allclose(kept, layer_mean_grad_with(sparse_tensor(adj), x, weights))


def layer_mean_grad_with(wrong_transpose: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The gradient when the matrix itself is passed as its transpose (wrong for this graph)."""
    x = x.detach().requires_grad_()
    (layer_mean(wrong_transpose, x, 3, wrong_transpose) * weights).sum().backward()
    return x.grad


def test_rearm_presets_reproduce_the_official_flags(params):
    params["train"]["rearm"].update(preset="sports", overrides={})
    hp, _ = model_config("rearm", params["train"]["rearm"])
    sports = {"num_layer": 5, "reg_weight": 0.05, "rank": 7, "s_drop": 1, "m_drop": 0.2, "u_mm_image_weight": 0,
              "i_mm_image_weight": 0.2, "uu_co_weight": 0.9, "ii_co_weight": 0.2, "user_knn_k": 25, "item_knn_k": 5,
              "n_ii_layers": 2, "n_uu_layers": 2, "cl_tmp": 1.5, "cl_loss_weight": 1e-3, "diff_loss_weight": 5e-4,
              "lr": 5e-5}  # fmt: skip
    assert {k: getattr(hp, k) for k in sports} == sports
    params["train"]["rearm"]["overrides"] = {"num_layer": 3}
    assert model_config("rearm", params["train"]["rearm"])[0].num_layer == 3
    params["train"]["rearm"]["preset"] = "books"
    with pytest.raises(ValueError, match="preset = 'books'"):
        model_config("rearm", params["train"]["rearm"])


def test_rearm_attention_dropout_of_one_zeroes_weights_in_training_only():
    from models.rearm import PositionAttention

    torch.manual_seed(0)
    attention = PositionAttention(dropout=1.0)
    x = torch.randn(4, 64)
    attention.train()
    assert torch.allclose(attention(x, x), attention.out.bias.expand(4, 64))  # only the output bias is left
    attention.eval()
    assert not torch.allclose(attention(x, x), attention.out.bias.expand(4, 64))


def test_user_interest_is_the_mean_of_training_item_features():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=np.float32))
    feats = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(graphs.user_interests(train, feats), [[2.0, 1.0], [0.0, 0.0], [4.0, 3.0]])


def test_early_stopping_is_mmrecs_rule():
    """MMRec's early_stopping: cur_step counts evaluations without improvement and training stops when
    cur_step > stopping_step; ties are not improvements; lower-is-better for losses."""
    from models.core.trainer import EarlyStopping

    stopping = EarlyStopping(patience=2)
    seen = []
    for epoch, value in enumerate([0.1, 0.3, 0.3, 0.2, 0.25, 0.4], start=1):
        seen.append((stopping.update(value, epoch), stopping.stop))
        if stopping.stop:
            break
    assert seen == [(True, False), (True, False), (False, False), (False, False), (False, True)]
    assert (stopping.best, stopping.best_epoch) == (0.3, 2)
    loss = EarlyStopping(patience=1, higher_is_better=False)
    assert [loss.update(v, e) for e, v in enumerate([2.0, 1.5, 1.7, 1.4])] == [True, True, False, True]


def test_a_models_cold_block_changes_the_cold_setting_only(params):
    """MICRO's official cold-start runs use another lr than its warm ones: train.micro.cold says so."""
    block = {**params["train"]["micro"], "cold": {"lr": 1e-5}}
    assert model_config("micro", block, "warm")[0].lr == 5e-4
    assert model_config("micro", block, "cold")[0].lr == 1e-5
    with pytest.raises(ValueError, match=r"train.micro \(with train.micro.cold\) has unknown key 'lrr'"):
        model_config("micro", {**block, "cold": {"lrr": 1e-5}}, "cold")


def test_a_params_value_wins_over_the_hparams_default_and_a_missing_key_takes_it():
    """One rule for the two homes of a hyperparameter value: params.yaml's train.<name> over HParams."""
    default = get_model("lightgcn").HParams.parse({}, "x").n_layers
    assert model_config("lightgcn", {"n_layers": default + 1})[0].n_layers == default + 1
    assert model_config("lightgcn", {})[0].n_layers == default
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, block in params["train"].items():
        if name not in all_models():  # num_threads, device, processes, common, datasets, e2e
            continue
        hp, _ = model_config(name, block)
        given = {k: v for k, v in block.items() if k not in ("preset", "overrides", "trainer", "cold")}
        for key, value in given.items():  # every value written in params.yaml is the one the run gets
            got = getattr(hp, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, (name, key, got, value)


def test_each_seed_is_its_own_run_folder_and_training(params, demo_ready, tmp_path):
    """The same model on two seeds: two folders, different weights, each seed named in train.json; a seed
    run again gives the same checkpoint bytes."""
    params["train"]["common"].update(epochs=2)
    for seed in (1, 2):
        train.run("demo", "bpr", "warm", "id", seed, params, processed=demo_ready, runs=tmp_path)
    one, two = (run_dir("demo", "bpr", "warm", s, runs=tmp_path) for s in (1, 2))
    assert one == tmp_path / "demo/bpr/warm/seed-1" and two.name == "seed-2"
    assert yaml.safe_load((one / "train.json").read_text())["seed"] == 1
    a, b = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (one, two))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    first = (one / "model.pt").read_bytes()
    train.run("demo", "bpr", "warm", "id", 1, params, processed=demo_ready, runs=tmp_path)
    assert (one / "model.pt").read_bytes() == first
