"""Shared fixtures: the repo's params shrunk to a tiny demo, and a tiny demo dataset built once."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.common import interactions

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-skips",
        action="store_true",
        help="fail the run if any test was skipped (the marked suites: a missing package or service must fail)",
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which no test passed fails (a marked suite whose tests were all skipped or deselected would
    otherwise pass with nothing run); with --no-skips, so does a run with any skipped test. Checked where
    the results are counted: the main process (under pytest-xdist, not in its workers)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(session.config, "workerinput") or exitstatus not in (0, 5):
        return
    passed, skipped = len(reporter.stats.get("passed", [])), len(reporter.stats.get("skipped", []))
    problem = None
    if passed == 0:
        problem = "no test passed: the selected suite ran nothing"
    elif skipped and session.config.getoption("--no-skips"):
        problem = f"{skipped} test(s) skipped under --no-skips: every test of this suite must run"
    if problem:
        reporter.write_line(f"\nERROR: {problem}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    params["train"]["e2e"].update(encoder_batch_size=64, trainer={"epochs": 20, "patience": 5, "lr": 0.03})
    # Three epochs of a few steps each: lr 0.01 (MMRec's 1e-3 is for up to 1000 epochs) so that the models
    # learn enough to clear a random ranking by a margin (tests' `ranking_floors`); BPR-MF, which starts
    # from nothing but random IDs, gets the 20 epochs it needs (1.3 s).
    params["train"]["common"].update(epochs=3, patience=2, batch_size=256, lr=0.01)
    params["train"]["bpr"]["trainer"] = {"epochs": 20, "patience": 5}
    params["train"]["datasets"] = {"demo": {}}  # train.common above, not the demo's budget
    # the fair share: two test workers each running a stage get one thread each
    params["train"]["num_threads"] = 0
    params["finetune"]["num_threads"] = 0
    return params


@dataclass(frozen=True)
class Floors:
    """What a model that learned nothing scores on a split: the expected Recall@k of a random ranking, its
    standard deviation over the evaluated users, and the popularity ranking's Recall@k."""

    chance: float
    chance_sd: float
    popularity: float

    @property
    def learned(self) -> float:
        """Chance + 3 standard deviations: a random ranking clears it about once in 700 runs."""
        return self.chance + 3 * self.chance_sd


def ranking_floors(dataset: Path, k: int = 20, split: int = 2) -> Floors:
    """The floors of the warm test split (`split` 1: validation) of a processed dataset folder, computed
    here from its Parquet files with pandas (not with the project's evaluator).

    A random ranking of a user's N = n_items - |train_u| candidates puts h of the r relevant items in its
    top k with h hypergeometric: E[h] = k r / N and Var[h] = k (r/N) (1 - r/N) (N - k) / (N - 1), and
    Recall@k = h / r. Popularity ranks the candidates by training count, ties by smaller item index (as the
    evaluator)."""
    table = pd.read_parquet(dataset / "interactions.parquet", columns=["user_idx", "item_idx", "split"])
    n_items = len(pd.read_parquet(dataset / "items.parquet", columns=["item_idx"]))
    train, test = table[table["split"] == 0], table[table["split"] == split]
    seen = train.groupby("user_idx")["item_idx"].apply(set)
    order = np.argsort(-np.bincount(train["item_idx"], minlength=n_items), kind="stable")
    mean, variance, popular = [], [], []
    for user, items in test.groupby("user_idx")["item_idx"]:
        if user not in seen.index:
            continue  # not evaluated: no training history
        relevant, n = set(items), n_items - len(seen[user])
        r, draws = len(relevant), min(k, n)
        mean.append(draws / n)
        variance.append(draws * (r / n) * (1 - r / n) * (n - draws) / max(n - 1, 1) / r**2)
        top = [i for i in order if i not in seen[user]][:k]
        popular.append(len(relevant & set(top)) / r)
    return Floors(float(np.mean(mean)), float(np.sqrt(np.sum(variance)) / len(mean)), float(np.mean(popular)))


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


def k_core_frame(frame: pd.DataFrame, user_min: int, item_min: int) -> tuple[pd.DataFrame, list[dict[str, int]]]:
    """The ingest's k-core on a frame of string ids (its steps work on integer codes)."""
    user = pd.factorize(frame["user_id"])[0].astype(np.int64)
    item = pd.factorize(frame["item_id"])[0].astype(np.int64)
    idx, rounds = interactions.k_core_codes(user, item, user_min, item_min)
    return frame.iloc[idx].reset_index(drop=True), rounds


def deduplicate_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """The ingest's duplicate rules on a frame of string ids: (kept rows, exact duplicates, repeated pairs)."""
    keep, exact, repeated = interactions.dedup_codes(
        pd.factorize(frame["user_id"])[0], pd.factorize(frame["item_id"])[0],
        frame["rating"].to_numpy(), frame["timestamp"].to_numpy(),
    )  # fmt: skip
    return frame.iloc[keep].reset_index(drop=True), exact, repeated
