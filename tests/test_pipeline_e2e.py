"""End to end through DVC: the project copied into a temp git repo, a tiny demo config, `dvc repro`.

Checks the outputs, the DVC metrics and plots, that a second repro does nothing and that editing one
params key re-runs exactly the dependent stages, on the tiny DAG without LMM4Rec's fine-tuned feature set
and end-to-end runs. Those, and the slower edits (graph params, k-core with the persisted caches, a
push/pull round trip, `dvc exp run -S`), are `tests/test_pipeline_edits.py` (`make test-dag`) on its
own copy of the full tiny DAG, so that `make test` stays within minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, address, ranking_floors, stages_run, tiny_params

PROJECT_FILES = [
    "mmpipe", "stages", "models", "dvc.yaml", "pipelines", "params.yaml", "reports/published.yaml",
    "raw/encoders/README.md", "raw/encoders/.gitignore", "pyproject.toml", ".dvcignore", ".gitignore",
]  # fmt: skip


class Project:
    """A copy of the project in its own git repo, with commands run there as a user would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "HF_HUB_OFFLINE": "1",
            "MMPIPE_PROGRESS": "0",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "DVC_NO_ANALYTICS": "1",
        }

    def sh(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(args, cwd=cwd or self.path, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{output}")
        return proc.stdout + proc.stderr

    def json(self, *args: str):
        """Run a command and parse its standard output as JSON."""
        proc = subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)

    def repro(self, *targets: str) -> set[str]:
        """Run `dvc repro [targets]`; return the names of the stages that ran."""
        return stages_run(self.sh("dvc", "repro", *(address(t, self.path) for t in targets)))

    def set_param(self, dotted: str, value) -> None:
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        node = params
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-q", "-m", message)


def copy_project(path: Path, params: dict | None = None) -> Project:
    """The project's files in a new git repo with DVC initialised and everything committed."""
    path.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, path / name)
    if params is not None:
        (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proj = Project(path)
    proj.sh("git", "init", "-q")
    proj.sh("dvc", "init", "-q")
    proj.commit("project")
    return proj


def without_lmm4rec(params: dict) -> dict:
    """The tiny config without LMM4Rec's feature set on the fine-tuned encoder and its end-to-end runs
    (their DAG runs in `tests/test_pipeline_edits.py`), so that this module fits `make test`'s minutes."""
    params["pipeline"].update(feature_sets=["default"], lmm4rec_feature_sets=[], lmm4rec_models=[], e2e_models=[])
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return copy_project(tmp_path_factory.mktemp("e2e") / "proj", without_lmm4rec(tiny_params()))


def all_stages(proj: Project) -> set[str]:
    out = proj.sh("dvc", "stage", "list", "--recursive", ".", "--name-only")
    return {name.rpartition("dvc.yaml:")[2] for name in out.split()}


def test_full_repro_builds_every_output(project):
    ran = project.repro()
    assert ran == all_stages(project)
    p = project.path
    for rel in ["raw/demo/MANIFEST.json", "processed/demo/interactions.parquet", "processed/demo/images.lmdb",
                "processed/demo/features/default/text.parquet", "processed/demo/feature_cache/default-image.lmdb",
                "processed/demo/graphs/default/knn/text.npz", "processed/demo/coldstart.parquet",
                "reports/results.md", "reports/results.csv"]:  # fmt: skip
        assert (p / rel).is_file(), rel
    runs = {"bpr/warm", "lightgcn/warm", "vbpr/default/warm", "vbpr/default/cold", "itemknn/default/warm",
            "itemknn/default/cold"}  # fmt: skip
    runs = {f"{run}/seed-2026" for run in runs}  # the tour's one seed (pipeline.seeds)
    for run in runs:
        evaluation = json.loads((p / f"runs/demo/{run}/evaluation.json").read_text())
        for name in ("recall", "ndcg", "precision", "map"):
            for k in (5, 10, 20, 50):
                assert 0.0 <= evaluation["test"][f"{name}@{k}"] <= 1.0
        assert evaluation["test"]["recall@50"] >= evaluation["test"]["recall@5"]
        assert evaluation["users_evaluated"] > 0
        assert evaluation["valid"]["recall@20"] > 0  # the best validation value beside test
        assert (p / f"runs/demo/{run}/history.csv").read_text().startswith("epoch,")
    bpr = json.loads((p / "runs/demo/bpr/warm/seed-2026/evaluation.json").read_text())
    assert "not supported" in bpr["cold_start"]
    floors = ranking_floors(p / "processed/demo")
    assert floors.popularity > floors.learned  # the demo has structure to learn
    for run in sorted(r for r in runs if "/warm/" in r):  # cold runs rank other items: tests/test_models.py
        recall = json.loads((p / f"runs/demo/{run}/evaluation.json").read_text())["test"]["recall@20"]
        assert recall > floors.learned, (run, recall, floors)
    report = (p / "reports/results.md").read_text()
    assert all(f"| {m} |" in report for m in ("bpr", "lightgcn", "vbpr (default)", "itemknn (default)"))
    assert list((p / "reports/plots").glob("*.png"))
    shown = next(iter(project.json("dvc", "metrics", "show", "--json").values()))["data"]  # the workspace
    # only the runs' headline metrics are DVC metrics: test and best-validation recall/ndcg@20
    assert set(shown) == {f"runs/demo/{run}/metrics.json" for run in runs} | {
        "runs/demo/freedom/default/warm/seed-2026/metrics.json"
    }
    assert (p / "processed/demo/finetuned/encoder/model.safetensors").is_file()  # every train dataset's
    for run in runs:
        metrics = shown[f"runs/demo/{run}/metrics.json"]["data"]
        assert set(metrics) == {"test", "valid"} and set(metrics["test"]) == {"recall@20", "ndcg@20"}
        assert set(metrics["valid"]) == {"recall@20", "ndcg@20"}
    html = project.sh("dvc", "plots", "show", "-o", "plots_html")
    page = (project.path / "plots_html/index.html").read_text()
    assert "history.csv" in page and "valid_recall@20" in page and "plots_html" in html


def test_plots_html_renders_without_network(project):
    """`make setup` builds a template with vega inlined; with it, the page loads nothing from outside."""
    template = ROOT / ".venv/share/dvc-plots-offline.html"
    if not template.is_file():
        pytest.fail(f"{template} is missing: `make setup` builds it (npm pack of vega, vega-lite, vega-embed)")
    project.sh("dvc", "plots", "show", "-o", "offline_html", "--html-template", str(template))
    page = (project.path / "offline_html/index.html").read_text()
    assert "vegaEmbed" in page and "valid_recall@20" in page
    assert not re.search(r"<script[^>]+src=", page), "no script is loaded from elsewhere"


def test_second_repro_does_nothing(project):
    assert project.repro() == set()
    assert "up to date" in project.sh("dvc", "status")


def test_retraining_to_the_same_weights_reruns_only_the_report(project):
    """A forced re-train gives the same model.pt and train.json (the seconds are in train_times.json, which
    only the report reads), so evaluate does not run again; the report does (it shows the new seconds)."""
    run = project.path / "runs/demo/lightgcn/warm/seed-2026"
    before = {name: (run / name).read_bytes() for name in ("model.pt", "train.json", "evaluation.json")}
    project.sh("dvc", "repro", "--force", "--single-item", address("train_id@demo-lightgcn-2026", project.path))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert project.repro() == {"report"}


def test_lightgcn_layers_rerun_only_lightgcn_and_report(project):
    project.set_param("train.lightgcn.n_layers", 1)
    # `check` validates every train block before anything else runs; its unchanged output re-runs nothing
    assert project.repro() == {"check", "train_id@demo-lightgcn-2026", "evaluate_id@demo-lightgcn-2026", "report"}
