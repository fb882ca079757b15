"""The GPU check (marker `gpu`, `make test-gpu`): the tiny DAG, PMMRec included, through `dvc repro` with
every device key on the GPU: features, fine-tuning, training, evaluation, pre-training and transfer.

No GPU has been available to this project so far, so this is the first thing to run on a machine that has
one (`make test-gpu` also runs the GPU-versus-CPU tests of tests/test_devices.py and tests/test_lmm4rec.py
and fails, instead of skipping, where torch sees no GPU). `MMPIPE_CHECK_DEVICE=cpu` runs the same DAG on
the CPU (that is how its configuration is checked on a machine without a GPU).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import ranking_floors, tiny_params
from tests.test_pipeline_e2e import copy_project

DEVICE = os.environ.get("MMPIPE_CHECK_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]


def gpu_params() -> dict:
    """The tiny DAG's params with every stage that can use a GPU on DEVICE, and a tiny PMMRec transfer."""
    params = tiny_params()
    params["train"]["device"] = params["features"]["device"] = params["finetune"]["device"] = DEVICE
    params["train"]["common"]["precision"] = "bfloat16" if DEVICE == "cuda" else "float32"
    params["pipeline"].update(
        pretrain_models=["pmmrec"], pretrain_sources=["demo"], transfer_targets=["demo"],
        transfer_variants=["sasrec", "full"], demo_encoders=["demo-clip", "demo-xlmr"],
    )  # fmt: skip
    params["demo_encoders"]["demo-xlmr"].update(hidden_size=32, vocab_size=400)
    params["train"]["pmmrec"].update(embedding_size=32)
    precision = params["train"]["common"]["precision"]
    params["seq"]["train"].update(epochs=2, batch_size=16, max_seq_len=6, precision=precision)
    params["seq"]["pretrain"] = {"epochs": 2}
    return params


def test_the_tiny_dag_runs_on_the_device(tmp_path):
    project = copy_project(tmp_path / "proj", gpu_params())
    assert project.repro()
    root = project.path
    floors = ranking_floors(root / "processed/demo")
    for run in ("bpr/warm", "lightgcn/warm", "vbpr/default/warm", "itemknn/default/warm", "freedom/default/warm",
                "bm3/clip_ft/warm", "vbpr/e2e/warm"):  # fmt: skip
        folder = root / "runs/demo" / run / "seed-2026"
        assert json.loads((folder / "train.json").read_text())["device"].startswith(DEVICE), run
        recall = json.loads((folder / "evaluation.json").read_text())["test"]["recall@20"]
        assert recall > floors.learned, (run, recall, floors)
    for variant in ("sasrec", "full"):
        summary = json.loads((root / f"runs/demo/pmmrec/{variant}/seed-2026/train.json").read_text())
        assert summary["device"].startswith(DEVICE)
        evaluation = json.loads((root / f"runs/demo/pmmrec/{variant}/seed-2026/evaluation.json").read_text())
        assert evaluation["test"]["hr@50"] > 0
    stats = json.loads((root / "processed/demo/finetune_stats.json").read_text())
    assert stats["device"].startswith(DEVICE)
    assert project.repro() == set()
