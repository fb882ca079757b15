"""Devices: `auto | cpu | cuda | cuda:N` for features, training and evaluation.

On the CPU the results are those of the code before devices existed (the demo's checkpoints are
byte-identical, see dvc.lock). The GPU tests run where torch sees a CUDA device and are skipped with a
reason elsewhere; they compare GPU and CPU results on the tiny demo.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmpipe.config import ParamsError
from mmpipe.devices import autocast, resolve_device, to_device
from models.core.data import load_train_data
from models.core.evaluator import evaluate
from models.core.graph import sparse_tensor
from models.core.registry import get_model, model_config
from models.core.trainer import TrainConfig, fit
from stages import coldstart, features, graphs
from tests.test_models import ALL_MODELS, hp_for, tiny_data

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


META = torch.device("meta")  # no data, but a device of its own: a tensor left behind still says "cpu"


def tensors_in(value: object, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in an attribute's value, itself or inside lists, tuples and dicts, with its path."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from tensors_in(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tensors_in(v, f"{path}[{k!r}]")


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, buffers and the tensors of every public attribute of every submodule, by path."""
    found = dict(model.named_parameters())
    found.update(model.named_buffers())
    for prefix, module in model.named_modules():
        for name, value in vars(module).items():
            if not name.startswith("_"):
                found.update(tensors_in(value, f"{prefix}.{name}" if prefix else name))
    return found


def test_to_device_moves_tensors_in_lists_tuples_and_dicts():
    sparse = sparse_tensor(sp.eye(3))  # a graph as the models keep it: sparse CSR
    moved = to_device({"a": [torch.ones(2)], "b": (torch.zeros(1), sparse), "c": 3}, META)
    assert moved["c"] == 3 and isinstance(moved["b"], tuple) and isinstance(moved["a"], list)
    assert [t.device for t in (moved["a"][0], *moved["b"])] == [META] * 3
    assert moved["b"][1].layout == torch.sparse_csr


# The tensors some models keep as plain attributes, which `nn.Module.to` alone would leave behind.
PLAIN_TENSORS = {
    "lightgcn": {"adj"},
    "vbpr": {"features['image']", "features['text']"},
    "lattice": {"original[0]", "original[1]", "ui_adj", "ui_adj_t"},
    "freedom": {"mm_adj", "full_adj", "train_adj"},
    "micro": {"original['image']", "original['text']", "ui_adj", "ui_adj_t"},
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_move_to_moves_every_tensor_of_the_model(name, params):
    """Parameters, buffers (VBPR's `seen`) and the graphs kept as plain attributes (sparse, alone or in lists
    and dicts) all travel with `move_to`, in every submodule: after a move to the meta device none is left
    on the CPU."""
    model = get_model(name)(tiny_data(), hp_for(name, params, tiny=True))
    before = model_tensors(model)
    assert PLAIN_TENSORS.get(name, set()) <= set(before)
    assert model.move_to(META) is model and model.device == META
    after = model_tensors(model)
    assert set(after) == set(before)
    assert {path: t.device for path, t in after.items() if t.device != META} == {}
    assert all(after[path].layout == t.layout and after[path].shape == t.shape for path, t in before.items())


@pytest.fixture(scope="module")
def ready(tmp_path_factory, demo_project):
    from tests.conftest import tiny_params

    root = tmp_path_factory.mktemp("devices") / "processed"
    shutil.copytree(demo_project / "processed", root)
    params = tiny_params()
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
@pytest.mark.parametrize("name", ["bpr", "lightgcn", "vbpr", "itemknn", "lattice", "freedom", "micro", "rearm", "bm3"])
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


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_threads", -1, r"train.num_threads = -1: must be >= 0"),
        ("num_threads", True, r"train.num_threads = True: expected an integer"),
        ("processes", 0, r"train.processes = 0: must be >= 1"),
        ("device", 3, r"train.device = 3: expected a string"),
    ],
)
def test_the_check_stage_refuses_a_bad_training_runtime(key, value, message, params, tmp_path):
    """train.num_threads / processes / device are read in one place (stages/common/run.TrainRuntime), and
    the check stage applies it before any data stage runs."""
    from stages import check

    params["train"][key] = value
    with pytest.raises(ParamsError, match=message):
        check.run(params, out=tmp_path / "params.checked")
