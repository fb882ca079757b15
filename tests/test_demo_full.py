"""Slow: the full default demo through `dvc repro`, twice from scratch (`make test-slow`).

Checks the sizes the issue asks of the demo, that the models learn its planted structure, and that two
independent runs produce byte-identical data, feature-independent graphs and splits.
"""

from __future__ import annotations

import json

import pytest

from tests.test_pipeline_e2e import copy_project

pytestmark = pytest.mark.slow

DETERMINISTIC = [
    "raw/demo/MANIFEST.json",
    "processed/demo/interactions.parquet",
    "processed/demo/items.parquet",
    "processed/demo/users.parquet",
    "processed/demo/images.lmdb",
    "processed/demo/coldstart.parquet",
    "processed/demo/graphs/default/warm/user_co.npz",
    "processed/demo/graphs/default/warm/item_co.npz",
    "processed/demo/graphs/default/cold/user_co.npz",
    "processed/demo/graphs/default/knn/image.npz",
    "processed/demo/graphs/default/knn/text.npz",
    "processed/demo/features/default/text.parquet",
    "processed/demo/features/default/image.parquet",
    *(f"runs/demo/{run}/model.pt" for run in ("bpr/warm", "lightgcn/warm", "vbpr/default/warm", "rearm/default/warm")),
]


def test_full_default_demo_twice(tmp_path):
    a, b = copy_project(tmp_path / "a"), copy_project(tmp_path / "b")
    assert a.repro() and b.repro()
    stats = json.loads((a.path / "processed/demo/ingest_stats.json").read_text())
    assert 2500 <= stats["users"] <= 3500 and 1300 <= stats["items"] <= 1700
    assert 35_000 <= stats["interactions"] <= 50_000
    for rel in DETERMINISTIC:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    lightgcn = json.loads((a.path / "runs/demo/lightgcn/warm/metrics.json").read_text())
    assert lightgcn["test"]["recall@20"] > 0.2  # random ranking would give about 20 / 1500
    vbpr_cold = json.loads((a.path / "runs/demo/vbpr/default/cold/metrics.json").read_text())
    assert vbpr_cold["test"]["recall@20"] > 3 * 20 / 1500  # content carries signal to unseen items
    assert a.repro() == set()
