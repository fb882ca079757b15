"""The distributed engines (marker `distributed`, `make test-distributed`): the features stage on a local
Ray with 2 encoder actors gives the local engine's bytes and cache semantics; the train stage under
torchrun with 2 processes (DDP, gloo) trains one model whose metrics match one process's, and one DDP step's
gradients are those of one process on the whole batch."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmpipe.io import read_json
from models.core.base import Recommender
from models.core.registry import get_model
from models.core.trainer import NegativeSampler
from stages import features
from tests.conftest import ROOT, ranking_floors, run_stage_command, tiny_params

pytestmark = pytest.mark.distributed


@pytest.fixture
def processed(tmp_path, demo_project) -> Path:
    root = tmp_path / "processed"
    shutil.copytree(demo_project / "processed", root)
    return root


def image_params(params: dict, demo_project: Path, engine: str) -> dict:
    """A feature set with the demo CLIP's image encoder, run by `engine`."""
    block = {"kind": "clip_image", "model": str(demo_project / "raw/encoders/demo-clip"), "batch_size": 4}
    params["features"]["ray_test"] = {"image": block}
    params["features"].update(engine=engine, ray={"workers": 2, "cpus_per_worker": 1})
    return params


def test_ray_engine_gives_the_local_bytes_and_encodes_only_new_items(params, demo_project, processed, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    monkeypatch.setattr(features, "COMMIT_ITEMS", 16)  # chunks of 16 items: 5 work units for 2 actors
    local = features.run("demo", "ray_test", "image", image_params(params, demo_project, "local"), processed)
    local_bytes = (processed / "demo/features/ray_test/image.parquet").read_bytes()
    cache = processed / "demo/feature_cache/ray_test-image.lmdb"
    cache.unlink()  # encode everything again, this time on Ray
    on_ray = features.run("demo", "ray_test", "image", image_params(params, demo_project, "ray"), processed)
    assert on_ray["encoded"] == local["encoded"] > 16
    assert (processed / "demo/features/ray_test/image.parquet").read_bytes() == local_bytes
    again = features.run("demo", "ray_test", "image", image_params(params, demo_project, "ray"), processed)
    assert again["encoded"] == 0 and again["cache_hits"] == local["encoded"]  # Ray is not even started
    stats = read_json(processed / "demo/feature_stats/ray_test-image.json")
    assert stats["cache_entries"] == local["distinct_inputs_encoded"]


def run_train_stage(work: Path, params: dict, model: str) -> dict:
    """`python -m stages.train` in `work` (the demo project's data), as dvc repro runs it; its train.json."""
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMPIPE_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "stages.train", "--dataset", "demo", "--model", model, "--setting", "warm",
               "--group", "id", "--seed", "2026"]  # fmt: skip
    run_stage_command(command, work, env)
    return read_json(work / f"runs/demo/{model}/warm/seed-2026/train.json")


def test_train_stage_under_torchrun_with_two_processes(params, demo_project, tmp_path):
    """train.processes: 2 relaunches the stage as 2 torchrun processes (DDP, gloo) that write one checkpoint;
    both runs learn (valid Recall@20 above chance + 3 sd on the same split; the negatives differ, each
    process draws its own, so the two need not agree to the digit). That the gradients are averaged
    exactly is test_ddp_gradients_are_the_whole_batch_gradient_of_one_process's."""
    params["train"].update(num_threads=1, device="cpu")
    params["train"]["common"].update(epochs=4, patience=4)
    results = {}
    for processes in (1, 2):
        work = tmp_path / f"p{processes}"
        work.mkdir()
        (work / "processed").symlink_to(demo_project / "processed")
        params["train"]["processes"] = processes
        results[processes] = run_train_stage(work, params, "lightgcn")
        assert results[processes]["processes"] == processes
        assert (work / "runs/demo/lightgcn/warm/seed-2026/model.pt").is_file()
    floors = ranking_floors(demo_project / "processed/demo", split=1)
    for processes, result in results.items():
        assert result["best_valid"]["recall@20"] > floors.learned, (processes, result["best_valid"], floors)


# One DDP step against one process: LightGCN (graph propagation: both halves of the batch feed the
# gradients of the same embedding rows, in and out of the batch) and FREEDOM (another loss: BPR on the
# pruned graph plus BPR against projected, trainable item features).
GRADIENT_MODELS = ("lightgcn", "freedom")
GRADIENT_BATCH = 16  # even: DDP averages the two half-batch means, which is the whole batch's mean only
# when the halves are equal
GRADIENT_HP = {
    # MMRec's EmbLoss (L2 norms, not squared, over the batch size) is not a mean of per-pair terms: the
    # mean of the halves' EmbLoss is not the whole batch's, so its DDP gradient legitimately differs.
    "lightgcn": {"reg_weight": 0.0},
    # FREEDOM's loss is a sum of per-pair means at any reg_weight; 1.0 (instead of 1e-3) gives the
    # projections and features gradients well above the tolerance.
    "freedom": {"reg_weight": 1.0, "dropout": 0.5},
}


def gradient_case(name: str) -> tuple[Recommender, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The same model and (users, pos, neg) batch in every process: fixed seeds, fixed negatives."""
    from tests.test_models import hp_for, tiny_data

    torch.manual_seed(0)
    data = tiny_data(n_users=10, n_items=12)
    hp = dataclasses.replace(hp_for(name, tiny_params(), tiny=True), **GRADIENT_HP[name])
    model = get_model(name)(data, hp)
    model.on_epoch_start(1, np.random.default_rng(0))  # FREEDOM: the same pruned graph everywhere
    model.train()
    coo = data.train.tocoo()
    rng = np.random.default_rng(1)
    pick = rng.choice(len(coo.row), GRADIENT_BATCH, replace=False)
    users, pos = coo.row[pick].astype(np.int64), coo.col[pick].astype(np.int64)
    neg = NegativeSampler(data.train).sample(rng, users)
    return model, (torch.from_numpy(users), torch.from_numpy(pos), torch.from_numpy(neg))


def ddp_gradient_worker(names: list[str], out: Path) -> None:
    """Under torchrun: each process takes its share [rank::world] of the batch, as `fit` does, through the
    trainer's own DDP wrapper; after backward every rank saves its gradients to out/<model>-rank<r>.pt."""
    from mmpipe.distributed import finish_distributed, init_distributed
    from models.core.trainer import _ddp_loss

    rank, world = init_distributed(torch.device("cpu"))
    assert world == 2, world
    for name in names:
        model, batch = gradient_case(name)
        step_loss = _ddp_loss(model)  # kept, as in `fit`: DDP's backward hooks need the module alive
        step_loss(*(t[rank::world] for t in batch)).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save(grads, out / f"{name}-rank{rank}.pt")
    finish_distributed()


@pytest.fixture(scope="module")
def ddp_gradients(tmp_path_factory) -> Path:
    """One torchrun with 2 processes (gloo, CPU) for every model of GRADIENT_MODELS; its output folder."""
    out = tmp_path_factory.mktemp("ddp_gradients")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.test_distributed", str(out), *GRADIENT_MODELS]  # fmt: skip
    run_stage_command(command, ROOT, env, timeout=300)
    return out


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_ddp_gradients_are_the_whole_batch_gradient_of_one_process(name, ddp_gradients):
    """With 2 processes each holding half the batch, every rank's gradient after backward equals one
    process's gradient of model.loss on the whole batch: DDP averages the gradients of the halves."""
    model, batch = gradient_case(name)
    model.loss(*batch).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.loss(*(t[0::2] for t in batch)).backward()
    half = {n: p.grad for n, p in model.named_parameters()}
    # the test can fail: one half's own gradient (what a process keeps without averaging) is not the whole's
    assert any(not torch.allclose(half[n], whole[n], rtol=1e-3, atol=1e-6) for n in whole)
    for rank in (0, 1):
        ddp = torch.load(ddp_gradients / f"{name}-rank{rank}.pt")
        assert sorted(ddp) == sorted(whole) and all(g is not None for g in ddp.values()), rank
        torch.testing.assert_close(ddp, whole, rtol=1e-5, atol=1e-7, msg=lambda m, r=rank: f"rank {r}: {m}")


if __name__ == "__main__":  # the worker that the ddp_gradients fixture starts under torchrun
    ddp_gradient_worker(sys.argv[2:], Path(sys.argv[1]))
