"""Shared fixtures: the repo's params shrunk to a tiny demo, and a tiny demo dataset built once."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MMPIPE_PROGRESS", "0")

TINY_DEMO = {"source": "demo", "seed": 3, "n_users": 160, "n_items": 70, "mean_interactions": 10}


# The DAG's files: the root dvc.yaml (check, export, report) and one per family under pipelines/.
FAMILY_FILES = "pipelines/*/dvc.yaml"
RUNNING = re.compile(r"Running stage '(?:[^':]*dvc\.yaml:)?([^']+)'")


def dvc_files(root: Path = ROOT) -> list[Path]:
    """Every dvc.yaml of the DAG, the root one first."""
    return [root / "dvc.yaml", *sorted(root.glob(FAMILY_FILES))]


def dvc_stages(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """The stage definitions of every dvc.yaml, by stage name (names are unique across the files)."""
    stages: dict[str, dict[str, Any]] = {}
    for path in dvc_files(root):
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            assert name not in stages, f"stage {name} is defined twice ({path})"
            stages[name] = stage
    return stages


def stage_file(name: str, root: Path = ROOT) -> Path:
    """The dvc.yaml that defines a stage (`train_id@demo-bpr` or `train_id`)."""
    group = name.split("@")[0]
    for path in dvc_files(root):
        if group in yaml.safe_load(path.read_text())["stages"]:
            return path
    raise KeyError(name)


def address(name: str, root: Path = ROOT) -> str:
    """How DVC's commands name a stage: bare in the root dvc.yaml, `<file>:<name>` in a family's."""
    path = stage_file(name, root)
    return name if path == root / "dvc.yaml" else f"{path.relative_to(root)}:{name}"


def stages_run(output: str) -> set[str]:
    """The names (without their file) of the stages a `dvc repro` output says it ran."""
    return set(RUNNING.findall(output))


# Modules that take minutes, collected first: with `-n 2 --dist loadfile`, pytest-xdist then gives each
# to a worker at the start, and the other worker takes the short modules meanwhile (a long module picked up
# last would run alone at the end).
LONG_MODULES = ("test_pipeline_e2e.py", "test_pipeline_edits.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long modules first, each in its own order; the rest keep theirs (a stable sort)."""
    items.sort(key=lambda item: item.path.name not in LONG_MODULES)


def run_stage_command(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> None:
    """Run a stage's command line in its own session (so that a timeout, or an interrupted test run, takes
    torchrun's workers down too); fail with the end of its stderr unless it exits 0."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]


def tiny_params() -> dict[str, Any]:
    """The project's params.yaml with a tiny demo and short training, for fast tests."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["datasets"] = {"demo": dict(TINY_DEMO)}
    # PMMRec has its own tests (tests/test_pmmrec.py); the DAG tests run the other models
    params["pipeline"].update(
        datasets=["demo"],
        train_datasets=["demo"],
        pretrain_models=[],
        pretrain_sources=[],
        transfer_targets=[],
        transfer_variants=[],
        demo_encoders=["demo-clip"],
    )
    params["images"]["size"] = 48
    params["demo_encoders"]["demo-clip"].update(
        hidden_size=32, image_size=32, patch_size=8, projection_dim=16, vocab_size=400
    )
    # Every model is unit-tested; the DAG tests need one model of each group (and each cold group).
    params["pipeline"].update(
        id_models=["bpr", "lightgcn"],
        graph_models=["itemknn", "freedom"],
        cold_feature_models=["vbpr"],
        cold_graph_models=["itemknn"],
    )
    # LMM4Rec's groups, one model each: the fine-tuned encoder's features (bm3) and end to end (vbpr).
    params["pipeline"].update(
        feature_sets=["default", "clip_ft"], lmm4rec_feature_sets=["clip_ft"], lmm4rec_models=["bm3"],
        e2e_models=["vbpr"],
    )  # fmt: skip
    params["finetune"].update(epochs=2, batch_size=16)
    params["train"]["e2e"].update(encoder_batch_size=64, trainer={"epochs": 2, "patience": 2})
    params["train"]["common"].update(epochs=3, patience=2, batch_size=256)
    params["train"]["datasets"] = {"demo": {}}  # train.common above, not the demo's budget
    # the fair share: two test workers each running a stage get one thread each
    params["train"]["num_threads"] = 0
    params["finetune"]["num_threads"] = 0
    return params


@pytest.fixture
def params() -> dict[str, Any]:
    return tiny_params()


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> Path:
    """A tiny demo dataset run through download, ingest, images and the demo CLIP, in a temp dir.

    Read-only for the tests that use it: copy it before changing anything.
    """
    from stages import demo_encoder, download, images, ingest

    root = tmp_path_factory.mktemp("demo_project")
    params = tiny_params()
    for feature_set in params["features"].values():
        for block in feature_set.values() if isinstance(feature_set, dict) else ():
            if isinstance(block, dict) and block.get("model") == "raw/encoders/demo-clip":
                block["model"] = str(root / "raw/encoders/demo-clip")
    download.run("demo", params, root / "raw")
    ingest.run("demo", params, root / "raw", root / "processed")
    images.run("demo", params, root / "raw", root / "processed")
    demo_encoder.run("demo-clip", params, root / "raw/encoders/demo-clip")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root
