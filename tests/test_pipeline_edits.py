"""End to end through DVC, the slower part (`make test-dag`; CI runs it): the tiny demo's full DAG with
LMM4Rec's stages, then on that built copy a graph param re-runs the graphs and graph models only, a
stricter k-core re-encodes nothing (the LMDB caches persist), a push/pull round trip through a local
remote into a clone, `dvc exp run -S`, and the README's command blocks as written (a queued grid read
back by the sweep command among them).

These share one project, built once by the fixture, and run in order. `tests/test_pipeline_e2e.py` (in
`make test`) builds its own copy without LMM4Rec and checks the outputs, the no-op repro and a one-key edit.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time

import pytest
import yaml

from tests.conftest import ranking_floors, stages_run, tiny_params
from tests.readme import shell_blocks
from tests.test_pipeline_e2e import Project, all_stages, copy_project
from tests.test_readme import DAG

pytestmark = pytest.mark.dag


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """The full tiny demo project with every stage run once (the outputs outside LMM4Rec are checked on
    `tests/test_pipeline_e2e.py`'s own run; LMM4Rec's below)."""
    proj = copy_project(tmp_path_factory.mktemp("edits") / "proj", tiny_params())
    assert proj.repro() == all_stages(proj)
    return proj


def test_lmm4rec_stages_run_in_the_dag(project):
    """LMM4Rec's paradigms through DVC: a model on the fine-tuned encoder's features, one end to end."""
    p = project.path
    assert (p / "processed/demo/finetuned/encoder/model.safetensors").is_file()
    assert (p / "processed/demo/features/clip_ft/image.parquet").is_file()
    shown = next(iter(project.json("dvc", "metrics", "show", "--json").values()))["data"]
    floors = ranking_floors(p / "processed/demo")
    for run in ("bm3/clip_ft/warm/seed-2026", "vbpr/e2e/warm/seed-2026"):
        recall = shown[f"runs/demo/{run}/metrics.json"]["data"]["test"]["recall@20"]
        assert recall > floors.learned, (run, recall, floors)
    report = (p / "reports/results.md").read_text()
    assert "## demo: LMM4Rec" in report and "| vbpr | end to end |" in report and "| bm3 | fine-tuned |" in report


def test_item_knn_k_reruns_graphs_and_graph_models_only(project):
    k = yaml.safe_load((project.path / "params.yaml").read_text())["graphs"]["item_knn_k"]
    project.set_param("graphs.item_knn_k", k + 1)
    ran = project.repro()
    graph_models = {s for s in all_stages(project) if re.match(r"(train|evaluate)_(graph(_cold)?|lmm)@", s)}
    assert graph_models, "the demo config enables a graph model"
    assert ran == {"graphs@demo-default", "graphs@demo-clip_ft", "report"} | graph_models


def test_kcore_change_reuses_the_persisted_feature_caches(project):
    """DVC keeps the LMDB caches (persist: true): after a stricter k-core every item is a cache hit.

    Only the feature stages (and what they depend on) are reproduced; going back to the old k-core then
    re-runs them again, all hits, with the original outputs, so nothing downstream re-runs.
    """
    features = ("features@demo-default-text", "features@demo-default-image")
    project.set_param("kcore.item_min", 6)
    ran = project.repro(*features)
    assert {"ingest@demo", *features} <= ran
    assert "download@demo" not in ran and "demo_encoder@demo-clip" not in ran
    for modality in ("text", "image"):
        stats = json.loads((project.path / f"processed/demo/feature_stats/default-{modality}.json").read_text())
        assert stats["encoded"] == 0 and stats["cache_hits"] == stats["with_input"] > 0, modality
    project.set_param("kcore.item_min", 5)
    # finetune_encoder is upstream of every features stage (the clip_ft set reads its output): it re-runs
    # on the restored items and writes its original bytes, so nothing past the features re-runs either
    assert project.repro() == {"ingest@demo", "images@demo", "finetune_encoder@demo", *features}
    assert project.repro() == set()


def test_push_pull_round_trip_into_a_fresh_clone(project, tmp_path):
    remote = tmp_path / "remote"
    project.sh("dvc", "remote", "add", "-d", "local", str(remote))
    project.commit("results")
    project.sh("dvc", "push")
    clone = tmp_path / "clone"
    project.sh("git", "clone", "-q", str(project.path), str(clone))
    project.sh("dvc", "pull", cwd=clone)
    assert "up to date" in project.sh("dvc", "status", cwd=clone)
    out = project.sh("dvc", "repro", cwd=clone)
    assert "Running stage" not in out
    for rel in (
        "processed/demo/feature_cache/default-text.lmdb",
        "runs/demo/vbpr/default/cold/seed-2026/model.pt",
        "raw/demo/images",
    ):
        assert (clone / rel).exists(), rel


def test_exp_run_with_set_param_and_show(project):
    out = project.sh("dvc", "exp", "run", "-S", "train.lightgcn.n_layers=2")
    assert stages_run(out) == {
        "check", "train_id@demo-lightgcn-2026", "evaluate_id@demo-lightgcn-2026", "report"
    }  # fmt: skip
    rows = project.json("dvc", "exp", "show", "--json")
    metric = "runs/demo/lightgcn/warm/seed-2026/metrics.json"
    runs = {}
    for row in rows:
        for exp in [row, *(e for group in row.get("experiments") or [] for e in group.get("revs", []))]:
            data = exp.get("data") or {}
            layers = data.get("params", {}).get("params.yaml", {}).get("data", {})["train"]["lightgcn"]["n_layers"]
            recall = data.get("metrics", {}).get(metric, {}).get("data", {}).get("test", {}).get("recall@20")
            runs[exp.get("name") or exp.get("rev")] = (layers, recall)
    assert any(layers == 2 and recall is not None for layers, recall in runs.values()), runs
    assert any(layers == 3 and recall is not None for layers, recall in runs.values()), runs  # the baseline
    # the same records through the sweep command: the baseline (3 layers) and the experiment (2) as a grid
    out = project.sh(sys.executable, "-m", "mmpipe.sweep", "--run", "runs/demo/lightgcn/warm")
    test = dict(runs.values())  # test recall@20 per n_layers, from DVC's own JSON
    assert "2 grid points over train.lightgcn.n_layers" in out, out
    assert re.search(r"\| 2 \| 1 \| \d\.\d{4} \| " + f"{test[2]:.4f}", out), out


def wait_for_queue(project: Project, timeout_s: float = 900) -> str:
    """Wait until `dvc queue status` lists no queued or running experiment; its last output."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = project.sh("dvc", "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout_s} s:\n{status}"
        time.sleep(3)


def test_readme_blocks_run_as_written(project):
    """Every README block tagged `run by: make test-dag`, each line as a user pastes it (after the README's
    `. .venv/bin/activate`: this interpreter's bin first on PATH)."""
    outputs = {}
    for block in shell_blocks(DAG):
        for command in block.commands:
            outputs[command] = project.sh("bash", "-c", command)
            if command.startswith("dvc queue start"):
                status = wait_for_queue(project)
                assert "Failed" not in status, status
    assert any(c.startswith("dvc dag --md") and "graphs@demo-default" in out for c, out in outputs.items())
    assert (project.path / "dvc_plots/index.html").is_file()
    sweep_line = next(c for c in outputs if c.startswith("python -m mmpipe.sweep"))
    assert "chosen" in outputs[sweep_line], outputs[sweep_line]
    grid = list(csv.DictReader((project.path / "grid.csv").open()))
    seeded = [r for r in grid if r["seed"] != "2026"]  # 2026: the tour's seed, the commits' pipeline.seeds
    assert {(r["train.freedom.reg_weight"], r["seed"]) for r in seeded} == {
        ("0", "1"), ("0", "2"), ("0.001", "1"), ("0.001", "2")
    }, grid  # fmt: skip
    assert all(float(r["test"]) > 0 for r in seeded), grid
    # an experiment at reg 0 ran seeds 1 and 2 only: the seed-2026 metrics left in its workspace (trained at
    # the baseline's reg_weight) are not its own
    assert not [r for r in grid if r["seed"] == "2026" and r["train.freedom.reg_weight"] == "0"], grid
