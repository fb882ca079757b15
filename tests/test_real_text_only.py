"""Slow: the real Amazon 2018 Gift Cards and Magazine Subscriptions data through `dvc repro` as text-only
datasets (`make test-slow`; skipped where ../shared/data is absent). No hack: one modality in the params."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_params
from tests.test_pipeline_e2e import copy_project
from tests.test_real_data import DATA

pytestmark = pytest.mark.slow

SOURCES = {
    "gift": ("amazon2018-gift-cards", "Gift_Cards"),
    "magazine": ("amazon2018-magazine-subscriptions", "Magazine_Subscriptions"),
}


def test_real_2018_categories_run_end_to_end_as_text_only_datasets(tmp_path):
    missing = [folder for folder, _ in SOURCES.values() if not (DATA / folder).is_dir()]
    if missing:
        pytest.skip(f"real data not present: {missing} (see shared/data/*/SOURCE.md)")
    params = tiny_params()
    params["datasets"] = {
        name: {"source": "local", "format": "amazon2018", "category": cat, "path": str(DATA / folder)}
        for name, (folder, cat) in SOURCES.items()
    }
    params["images"]["fetch"] = False  # no network here; the image URLs are found (tests/test_real_data.py)
    # finetune_encoder runs for every train dataset, and its base encoder is the demo CLIP: it is built,
    # and on these text-only datasets the stage writes it back unchanged (no image/text pairs)
    params["pipeline"].update(
        datasets=list(SOURCES), train_datasets=list(SOURCES), demo_encoders=["demo-clip"], modalities=["text"],
        feature_sets=["default"], id_models=["pop", "bpr"], feature_models=["vbpr"],
        graph_models=["itemknn", "lattice"], cold_feature_models=["vbpr"], cold_graph_models=["itemknn"],
        lmm4rec_feature_sets=[], lmm4rec_models=[], e2e_models=[],
    )  # fmt: skip
    params["features"]["default"] = {"text": params["features"]["default"]["text"]}
    for model in ("vbpr", "itemknn", "lattice"):
        params["train"][model]["modalities"] = ["text"]
    params["train"]["datasets"] = {"gift": {"epochs": 20}, "magazine": {"epochs": 20}}
    project = copy_project(tmp_path / "p", params)
    ran = project.repro()
    assert {"features@gift-default-text", "graphs@magazine-default", "finetune_encoder@gift"} <= ran
    assert not any(stage.startswith("features@") and stage.endswith("-image") for stage in ran)
    for name, users in (("gift", 453), ("magazine", 294)):
        stats = json.loads((project.path / f"processed/{name}/ingest_stats.json").read_text())
        assert stats["users"] == users
        images = json.loads((project.path / f"processed/{name}/images_report.json").read_text())
        assert images["stored"] == 0 and images["fetch"] == {
            "skipped": stats["items"] - stats["items_missing"]["image_url"]
        }
        lattice = json.loads((project.path / f"runs/{name}/lattice/default/warm/seed-2026/evaluation.json").read_text())
        pop = json.loads((project.path / f"runs/{name}/pop/warm/seed-2026/evaluation.json").read_text())
        assert lattice["test"]["recall@20"] > 0 and pop["test"]["recall@20"] > 0
    assert "## magazine: warm" in (project.path / "reports/results.md").read_text()
