"""mmpipe.sweep: a grid's table from DVC's experiment records, the point chosen on validation only.

The unit tests feed rows shaped like `dvc.api.exp_show`'s; the marked test runs a real grid (a queue of
six experiments of a one-stage DVC project, two params x seeds) and reads it back through the command."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmpipe.config import UserError
from mmpipe.sweep import main, sweep

RUN = "runs/demo/lattice/default/warm"
METRICS = f"{RUN}/metrics.json"


def row(name: str, reg: float, seed: int, valid: float | None, test: float | None, **extra) -> dict:
    """One exp_show row: bookkeeping, two runs' metrics (the other run's must be ignored), params, a dep."""
    return {
        "Experiment": name, "rev": name[:7], "typ": "branch_commit", "Created": None, "parent": None,
        "State": "Success", "Executor": None,
        f"{METRICS}:test.recall@20": test, f"{METRICS}:valid.recall@20": valid,
        "runs/demo/pop/warm/metrics.json:valid.recall@20": 0.9,
        "train.lattice.reg_weight": reg, "train.common.seed": float(seed), "train.lattice.lr": 0.001,
        "stages/train.py": "0123456789abcdef0123456789abcdef" if seed else "fedcba9876543210fedcba9876543210",
        "runs": f"{seed:032x}.dir",  # a folder dependency: its hash differs between experiments
        **extra,
    }  # fmt: skip


def test_the_point_is_chosen_on_validation_and_reported_over_seeds():
    """reg 1e-3 is best on test (planted) but not on validation: the table marks reg 1e-4, the best mean
    validation over its three seeds, and gives mean +- sample sd; a queued experiment without metrics and
    the workspace row are left out; the file and folder dependencies' hashes are not taken for grid axes."""
    rows = [
        {**row("workspace", 0.0, 0, 0.1, 0.1), "rev": "workspace"},
        row("a", 0.0, 1, 0.30, 0.30), row("b", 0.0, 2, 0.32, 0.31), row("c", 0.0, 3, 0.34, 0.32),
        row("d", 1e-4, 1, 0.40, 0.35), row("e", 1e-4, 2, 0.42, 0.36), row("f", 1e-4, 3, 0.38, 0.37),
        row("g", 1e-3, 1, 0.39, 0.50), row("h", 1e-3, 2, 0.39, 0.52), row("i", 1e-3, 3, 0.39, 0.54),
        row("queued", 1e-2, 1, None, None),
    ]  # fmt: skip
    markdown, rows_csv = sweep(rows, RUN)
    assert "9 experiments, 3 grid points over train.lattice.reg_weight (1 without metrics, left out)" in markdown
    assert "train.lattice.reg_weight = 0.0001, test recall@20 0.3600 ± 0.0100 over 3 seeds" in markdown
    assert "| 0.0001 | 3 | 0.4000 ± 0.0200 | 0.3600 ± 0.0100 | **yes** |" in markdown
    assert "| 0.001 | 3 | 0.3900 ± 0.0000 | 0.5200 ± 0.0200 |  |" in markdown
    table = list(csv.DictReader(io.StringIO(rows_csv)))
    assert [r["experiment"] for r in table if r["chosen_point"] == "True"] == ["d", "e", "f"]
    assert {r["seed"] for r in table} == {"1", "2", "3"} and len(table) == 9


def test_axes_can_be_named_and_a_single_seed_has_no_spread():
    rows = [row("a", 0.0, 1, 0.30, 0.25, **{"train.lattice.lr": 0.01}), row("b", 1e-4, 1, 0.20, 0.40)]
    markdown, _ = sweep(rows, RUN)
    assert "over train.lattice.reg_weight, train.lattice.lr" in markdown  # both differ: both are axes
    assert "| 0 | 0.01 | 1 | 0.3000 | 0.2500 | **yes** |" in markdown
    markdown, _ = sweep(rows, RUN, axes=["train.lattice.lr"])
    assert "train.lattice.lr = 0.01, test recall@20 0.2500 over 1 seed" in markdown


def test_missing_runs_and_metrics_are_named():
    with pytest.raises(UserError, match="no metric 'valid.recall@20' of runs/x/metrics.json.*runs/demo/lattice"):
        sweep([row("a", 0.0, 1, 0.3, 0.3)], "runs/x")
    with pytest.raises(UserError, match="none of DVC's 1 experiments has"):
        sweep([row("a", 0.0, 1, None, None)], RUN)
    with pytest.raises(UserError, match="recorded no experiment"):
        sweep([{**row("w", 0.0, 1, 0.3, 0.3), "rev": "workspace"}], RUN)
    with pytest.raises(UserError, match="--axes train.nothing: not params"):
        sweep([row("a", 0.0, 1, 0.3, 0.3)], RUN, axes=["train.nothing"])


TOY_STAGE = """\
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))["train"]
reg, seed = p["toy"]["reg_weight"], p["common"]["seed"]
valid = 0.5 - abs(reg - 0.01) + 0.01 * seed
test = valid + (0.3 if reg == 0.1 else 0.0)  # the test split prefers reg 0.1: it must not be chosen
os.makedirs("runs/toy", exist_ok=True)
json.dump({"valid": {"recall@20": valid}, "test": {"recall@20": test}}, open("runs/toy/metrics.json", "w"))
"""


@pytest.mark.dag
def test_a_queued_dvc_grid_becomes_a_table(tmp_path):
    """A real grid through DVC's queue (3 reg values x 2 seeds), read back by `python -m mmpipe.sweep`."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    (tmp_path / "params.yaml").write_text("train:\n  common: {seed: 0}\n  toy: {reg_weight: 0.1}\n")
    (tmp_path / "train.py").write_text(TOY_STAGE)
    stage = {"cmd": "python train.py", "deps": ["train.py"], "params": ["train.toy", "train.common"]}
    stage["metrics"] = [{"runs/toy/metrics.json": {"cache": False}}]
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": {"train": stage}}))
    sh("git", "init", "-q")
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "baseline")
    sh("dvc", "exp", "run", "--queue", "-S", "train.toy.reg_weight=0,0.01,0.1", "-S", "train.common.seed=1,2")
    sh("dvc", "exp", "run", "--run-all")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(["--run", "runs/toy", "--csv", "grid.csv", "--md", "grid.md"]) == 0
    finally:
        os.chdir(cwd)
    markdown = (tmp_path / "grid.md").read_text()
    assert "train.toy.reg_weight = 0.01, test recall@20 0.5150 ± 0.0071 over 2 seeds" in markdown, markdown
    rows = list(csv.DictReader((tmp_path / "grid.csv").open()))
    assert len(rows) == 7  # six experiments and the baseline commit (reg 0.1, seed 0)
    assert {(r["train.toy.reg_weight"], r["seed"]) for r in rows if r["chosen_point"] == "True"} == {
        ("0.01", "1"), ("0.01", "2")
    }  # fmt: skip
