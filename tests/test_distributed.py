"""The distributed engines (marker `distributed`, `make test-distributed`): the features stage on a local
Ray with 2 encoder actors gives the local engine's bytes and cache semantics; the train stage under
torchrun with 2 processes (DDP, gloo) trains one model whose metrics match one process's."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from mmpipe.io import read_json
from stages import features
from tests.conftest import ROOT, run_stage_command

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
               "--group", "id"]  # fmt: skip
    run_stage_command(command, work, env)
    return read_json(work / f"runs/demo/{model}/warm/train.json")


def test_train_stage_under_torchrun_with_two_processes(params, demo_project, tmp_path):
    """train.processes: 2 relaunches the stage as 2 torchrun processes (DDP, gloo); the metrics stay
    within 0.03 Recall@20 of one process (the negatives differ: each process draws its own)."""
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
        assert (work / "runs/demo/lightgcn/warm/model.pt").is_file()
    one, two = (results[p]["best_valid"]["recall@20"] for p in (1, 2))
    assert abs(one - two) <= 0.03, (one, two)
