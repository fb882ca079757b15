"""Datasets with one modality (text without images, or images without text) run every stage, no hack.

`pipeline.modalities` is a list that dvc.yaml, the graphs, export and model stages follow; a model that
needs a missing modality stops with an error naming it; the demo CLIP is built only when an encoder uses
it. Each stage is run in-process on the tiny demo, and DVC parses the DAG for the same params.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from mmpipe.io import read_json
from stages import check, coldstart, evaluate, export, features, graphs, report, train
from stages.common.pipeline import MODEL_LISTS
from tests.conftest import dvc_stages, ranking_floors
from tests.test_pipeline_e2e import all_stages, copy_project

MODELS = {  # list -> models, every one of them able to run on a single modality
    "id_models": ["pop", "bpr"],
    "feature_models": ["vbpr"],
    "graph_models": ["itemknn", "lattice", "freedom", "micro"],
    "cold_feature_models": ["vbpr"],
    "cold_graph_models": ["itemknn"],
}


def one_modality_params(params: dict, modality: str) -> dict:
    params["pipeline"].update(
        modalities=[modality], feature_sets=["default"], lmm4rec_feature_sets=[], lmm4rec_models=[], e2e_models=[],
        **MODELS,
    )  # fmt: skip
    params["features"]["default"] = {modality: params["features"]["default"][modality]}
    # finetune_encoder runs for every train dataset (on a text-only one it writes the base weights): give it
    # a CLIP that is not the demo's, so that no stage of a text-only dataset reads the demo CLIP
    if modality == "text":
        params["finetune"]["model"] = "openai/clip-vit-base-patch32"
    # no encoder reads the demo CLIP on a text-only dataset: check wants it out of the list
    params["pipeline"]["demo_encoders"] = ["demo-clip"] if modality == "image" else []
    for model in ("vbpr", "itemknn", "lattice", "freedom", "micro"):
        params["train"][model]["modalities"] = [modality]
    for model in ("lattice", "micro"):  # their own lr (1e-3, 5e-4) is for hundreds of epochs; the tests run 3
        params["train"][model]["lr"] = 0.01
    return params


@pytest.mark.parametrize("modality", ["text", "image"])
def test_a_dataset_with_one_modality_runs_every_stage(modality, tmp_path, params, demo_project):
    params = one_modality_params(params, modality)
    check.run(params, out=tmp_path / "params.checked")
    processed = tmp_path / "processed"
    shutil.copytree(demo_project / "processed", processed)
    features.run("demo", "default", modality, params, processed)
    coldstart.run("demo", params, processed)
    stats = graphs.run("demo", "default", params, processed)
    assert list(stats["knn"]) == [modality]
    assert sorted(p.name for p in (processed / "demo/graphs/default/knn").iterdir()) == [f"{modality}.npz"]
    exported = export.run("demo", "default", params, processed)
    assert list(exported["features"]) == [modality]
    runs = tmp_path / "runs"
    for list_name, models in MODELS.items():
        group, setting = MODEL_LISTS[list_name]
        feature_set = None if group == "id" else "default"
        for model in models:
            train.run("demo", model, setting, group, 2026, params, feature_set, processed, runs)
            result = evaluate.run("demo", model, setting, group, 2026, params, feature_set, processed, runs)
            assert 0.0 <= result["test"]["recall@20"] <= 1.0
    text = report.run(params, runs, tmp_path / "reports")
    assert "| lattice (default) |" in text and "| micro (default) |" in text
    floors = ranking_floors(processed / "demo")
    for model in ("bpr", "lattice", "freedom", "micro"):  # trained on one modality (bpr: none), warm
        folder = "bpr/warm/seed-2026" if model == "bpr" else f"{model}/default/warm/seed-2026"
        recall = read_json(runs / f"demo/{folder}/evaluation.json")["test"]["recall@20"]
        assert recall > floors.learned, (model, recall, floors)


def test_a_model_that_needs_a_missing_modality_says_which(tmp_path, params, demo_project):
    params = one_modality_params(params, "text")
    params["pipeline"]["graph_models"] = ["rearm"]
    check.run(params, out=tmp_path / "params.checked")  # REARM takes both modalities whatever its params say
    processed = tmp_path / "processed"
    shutil.copytree(demo_project / "processed", processed)
    features.run("demo", "default", "text", params, processed)
    coldstart.run("demo", params, processed)
    graphs.run("demo", "default", params, processed)
    with pytest.raises(
        ValueError, match=r"model 'rearm' needs image and text features; the dataset has no \['image'\]"
    ):
        train.run("demo", "rearm", "warm", "graph", 2026, params, "default", processed, tmp_path / "runs")
    params["train"]["vbpr"]["modalities"] = ["text", "image"]
    with pytest.raises(ValueError, match=r"train.vbpr.modalities asks for image, which pipeline.modalities \(text\)"):
        check.run(params, out=tmp_path / "params.checked")


def test_the_demo_clip_is_built_only_when_an_encoder_uses_it(tmp_path, params):
    text_only = one_modality_params(params, "text")
    text_only["pipeline"]["demo_encoders"] = ["demo-clip"]
    with pytest.raises(ValueError, match=r"demo_encoders lists demo-clip, which no enabled encoder or model uses"):
        check.run(text_only, out=tmp_path / "params.checked")
    params["pipeline"]["demo_encoders"] = []
    params["pipeline"]["modalities"] = ["text", "image"]
    params["features"]["default"]["image"] = {"kind": "clip_image", "model": "raw/encoders/demo-clip"}
    with pytest.raises(ValueError, match=r"uses raw/encoders/demo-clip; add demo-clip to pipeline.demo_encoders"):
        check.run(params, out=tmp_path / "params.checked")


@pytest.mark.parametrize("modality", ["text", "image"])
def test_dvc_parses_the_dag_of_a_one_modality_dataset(modality, tmp_path, params):
    project = copy_project(tmp_path / "p", one_modality_params(params, modality))
    stages = all_stages(project)
    assert f"features@demo-default-{modality}" in stages and "graphs@demo-default" in stages
    other = "image" if modality == "text" else "text"
    assert f"features@demo-default-{other}" not in stages
    assert ("demo_encoder@demo-clip" in stages) == (modality == "image")
    graph_deps = dvc_stages(project.path)["graphs"]["deps"]
    assert "processed/${item.ds}/features/${item.set}" in graph_deps  # the set's folder, whatever it holds
    proc = subprocess.run(
        ["dvc", "status", "--json"], cwd=project.path, env=project.env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), dict)


def test_one_modality_features_have_no_silent_zero(tmp_path, params, demo_project):
    params = one_modality_params(params, "image")
    processed = tmp_path / "processed"
    shutil.copytree(demo_project / "processed", processed)
    stats = features.run("demo", "default", "image", params, processed)
    from mmpipe.schemas import read_features

    matrix, has_input = read_features(processed / "demo/features/default/image.parquet")
    assert stats["without_input"] == int((~has_input).sum()) > 0  # the demo plants items without images
    assert np.abs(matrix[~has_input]).sum() > 0  # filled with the mean, flagged, never silently zero
