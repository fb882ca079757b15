"""Devices: `auto | cpu | cuda | cuda:N` for features, training and evaluation.

On the CPU the results are those of the code before devices existed (the demo's checkpoints are
byte-identical, see dvc.lock). The GPU tests run where torch sees a CUDA device and are skipped with a
reason elsewhere; they compare GPU and CPU results on the tiny demo.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmpipe.config import ParamsError
from mmpipe.devices import autocast, resolve_device, to_device
from models.core.data import load_train_data
from models.core.evaluator import evaluate
from models.core.registry import get_model, model_config
from models.core.trainer import TrainConfig, fit
from stages import coldstart, features, graphs

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible to torch on this machine")
log = logging.getLogger("test")


def test_device_values_and_their_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ParamsError, match=r"train.device = 'gpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", "train.device")
    if not CUDA:
        with pytest.raises(ParamsError, match=r"features.device = 'cuda', but no CUDA GPU is visible"):
            resolve_device("cuda", "features.device")
    with autocast(torch.device("cpu"), "bfloat16"):  # the CPU keeps float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_move_to_moves_plain_tensor_attributes_too():
    """Graphs kept as attributes (sparse, in lists and dicts) travel with the parameters."""
    moved = to_device({"a": [torch.ones(2)], "b": (torch.zeros(1),), "c": 3}, torch.device("cpu"))
    assert moved["c"] == 3 and isinstance(moved["b"], tuple)
    from tests.test_models import hp_for, tiny_data

    params = {"train": {"lattice": {"knn_k": 3}}}
    model = get_model("lattice")(tiny_data(), hp_for("lattice", params)).move_to(torch.device("cpu"))
    assert model.device == torch.device("cpu") and all(g.device.type == "cpu" for g in model.original)


@pytest.fixture(scope="module")
def ready(tmp_path_factory, demo_project):
    from tests.conftest import tiny_params

    root = tmp_path_factory.mktemp("devices") / "processed"
    shutil.copytree(demo_project / "processed", root)
    params = tiny_params()
    params["features"]["default"]["image"]["model"] = str(demo_project / "raw/encoders/demo-clip")
    for modality in ("text", "image"):
        features.run("demo", "default", modality, params, root)
    coldstart.run("demo", params, root)
    graphs.run("demo", "default", params, root)
    return root, params


def train_and_score(name: str, params: dict, root, device: str, precision: str = "float32") -> tuple[dict, float]:
    cls = get_model(name)
    hp, trainer = model_config(name, params["train"][name])
    cfg = TrainConfig.from_params(params["train"]["common"], trainer, {"epochs": 3, "precision": precision})
    data, split = load_train_data(root / "demo", "warm", cls.reads, ("text", "image"), "default")
    torch.manual_seed(cfg.seed)
    model = cls(data, hp).move_to(torch.device(device))
    result = fit(model, data, split.valid, cfg, log, progress=False)
    model.load_state_dict(result.best_state)
    model.eval()
    metrics, _ = evaluate(model.scorer(), split.train, split.test, [20], 512, model.device)
    return metrics, result.history[-1]["loss"]


@needs_cuda
@pytest.mark.parametrize("name", ["bpr", "lightgcn", "vbpr", "itemknn", "lattice", "freedom", "micro", "rearm"])
def test_training_and_evaluation_on_the_gpu_match_the_cpu(name, ready):
    root, params = ready
    cpu, cpu_loss = train_and_score(name, params, root, "cpu")
    gpu, gpu_loss = train_and_score(name, params, root, "cuda")
    assert abs(gpu["recall@20"] - cpu["recall@20"]) <= 0.02 + 0.05 * cpu["recall@20"], (cpu, gpu)
    assert np.isfinite(gpu_loss) and abs(gpu_loss - cpu_loss) <= 0.05 * abs(cpu_loss) + 1e-3


@needs_cuda
def test_bfloat16_training_on_the_gpu_keeps_the_metric(ready):
    root, params = ready
    full, _ = train_and_score("lightgcn", params, root, "cuda")
    mixed, loss = train_and_score("lightgcn", params, root, "cuda", "bfloat16")
    assert np.isfinite(loss) and abs(mixed["recall@20"] - full["recall@20"]) <= 0.03


@needs_cuda
def test_features_on_the_gpu_match_the_cpu(ready, tmp_path):
    root, params = ready
    out = {}
    for device in ("cpu", "cuda"):
        processed = tmp_path / device
        shutil.copytree(root, processed, ignore=shutil.ignore_patterns("feature_cache"))
        params["features"]["device"] = device
        features.run("demo", "default", "text", params, processed)
        from mmpipe.schemas import read_features

        out[device], _ = read_features(processed / "demo/features/default/text.parquet")
    np.testing.assert_allclose(out["cuda"], out["cpu"], atol=1e-4)


@needs_cuda
def test_the_evaluator_ranks_on_the_gpu_as_on_the_cpu():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.random((50, 300)).astype(np.float32))
    scores[:, 10:20] = 0.5  # ties across the cut
    train = sp.random(50, 300, density=0.05, format="csr", random_state=1)
    truth = sp.random(50, 300, density=0.03, format="csr", random_state=2)
    cpu, rank_cpu = evaluate(lambda u: scores[u.cpu()], train, truth, [5, 20], 16, "cpu")
    gpu, rank_gpu = evaluate(lambda u: scores.cuda()[u], train, truth, [5, 20], 16, "cuda")
    assert cpu == gpu and np.array_equal(rank_cpu.topk, rank_gpu.topk)
