"""Slow: the default DAG (the tour) through `dvc repro`, twice from scratch (`make test-slow`, in CI).

Checks the tour's sizes, that its models learn the demo's planted structure (well above popularity and
chance), that two independent runs produce byte-identical data, graphs, splits and checkpoints, and that a
run from scratch gives the committed dvc.lock files (every dependency and output hash, timings aside) and
the committed reports/results.csv: the numbers the project publishes come from the committed code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, dvc_files
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
    *(
        f"runs/demo/{run}/model.pt"
        for run in ("lightgcn/warm/seed-2026", "vbpr/default/warm/seed-2026", "rearm/default/warm/seed-2026")
    ),
    "runs/pretrain/pmmrec/model.pt",
]


# Outputs that record how long something took (seconds per epoch, encode times): their bytes differ between
# runs, everything else must not. A folder holding one of them differs too.
TIMED_FILES = ("train_times.json", "evaluation.json", "history.csv", "ingest_stats.json", "finetune_stats.json",
               "results.md")  # fmt: skip
TIMED_FOLDERS = ("feature_stats",)
SEQUENTIAL_RUNS = ("pretrain", "pmmrec")  # their train.json (a dependency of nothing) keeps its seconds


def lock_hashes(root: Path) -> dict[tuple[str, str, str], str]:
    """(lock file, stage, path) -> md5 of every dependency and output of every dvc.lock under `root`."""
    hashes = {}
    for dvc_yaml in dvc_files(root):
        lock = dvc_yaml.with_name("dvc.lock")
        for stage, entry in yaml.safe_load(lock.read_text())["stages"].items():
            for item in entry.get("deps", []) + entry.get("outs", []):
                hashes[(str(lock.relative_to(root)), stage, item["path"])] = item["md5"]
    return hashes


def timed(root: Path, path: str) -> bool:
    target = root / path
    files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
    return any(
        f.name in TIMED_FILES
        or f.parent.name in TIMED_FOLDERS
        or (f.name == "train.json" and set(SEQUENTIAL_RUNS) & set(f.parts))
        for f in files
    )


def metric(root, run: str, key: str = "recall@20") -> float:
    return json.loads((root / f"runs/{run}/metrics.json").read_text())["test"][key]


def test_the_tour_twice(tmp_path):
    a, b = copy_project(tmp_path / "a"), copy_project(tmp_path / "b")
    assert a.repro() and b.repro()
    stats = json.loads((a.path / "processed/demo/ingest_stats.json").read_text())
    assert 900 <= stats["users"] <= 1200 and 450 <= stats["items"] <= 600
    for rel in DETERMINISTIC:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    per_run = sorted(p.relative_to(a.path) for n in ("model.pt", "metrics.json", "topk.parquet")
                     for p in (a.path / "runs").rglob(n))  # fmt: skip
    assert len(per_run) >= 45  # every train stage's checkpoint, every evaluate stage's metrics and lists
    for rel in per_run:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    root = a.path
    pop = metric(root, "demo/pop/warm/seed-2026")
    assert pop > 2 * 20 / stats["items"]  # the demo's popularity is heavy-tailed: Pop beats chance
    assert metric(root, "demo/lightgcn/warm/seed-2026") > 2 * pop
    for run in ("vbpr/default", "freedom/default", "micro/default", "rearm/default", "vbpr/clip_ft"):
        assert metric(root, f"demo/{run}/warm/seed-2026") > 1.3 * pop, run
    # cold items are ranked among all items (training items masked), so chance is about 20 / items
    assert metric(root, "demo/micro/default/cold/seed-2026") > 3 * 20 / stats["items"]
    target_items = json.loads((root / "runs/demo_b/pmmrec/full/seed-2026/evaluation.json").read_text())["items"]
    report = (root / "reports/results.md").read_text()
    assert "## demo_b: sequential (pmmrec, leave-one-out" in report
    for variant in ("sasrec", "scratch", "full"):  # PMMRec's stages under DVC, and their row in the report
        assert metric(root, f"demo_b/pmmrec/{variant}/seed-2026", "hr@10") > 1.5 * 10 / target_items, variant
        hr = json.loads((root / f"runs/demo_b/pmmrec/{variant}/seed-2026/evaluation.json").read_text())["test"]["hr@10"]
        assert any(line.startswith(f"| {variant} |") and f"| {hr:.4f} |" in line for line in report.splitlines())
    assert a.repro() == set()

    committed, fresh = lock_hashes(ROOT), lock_hashes(root)
    assert set(fresh) == set(committed), set(fresh) ^ set(committed)
    differ = sorted(key for key in committed if fresh[key] != committed[key])
    assert [key for key in differ if not timed(root, key[2])] == [], "a run from scratch differs from dvc.lock"
    assert (root / "reports/results.csv").read_bytes() == (ROOT / "reports/results.csv").read_bytes()
