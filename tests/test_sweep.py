"""mmpipe.sweep: a grid's table from DVC's experiment records, the point chosen on validation only.

The unit tests feed rows shaped like `dvc.api.exp_show`'s; the marked test runs a real grid (a queue of
three experiments of a project with one stage per seed) and reads it back through the command."""

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


def row(name: str, reg: float, runs: dict[int, tuple[float | None, float | None]], **extra) -> dict:
    """One exp_show row: bookkeeping, each seed's metrics of RUN (another model's must be ignored), params
    (the seed list among them), a file and a folder dependency."""
    metrics = {}
    for seed, (valid, test) in runs.items():
        metrics[f"{RUN}/seed-{seed}/metrics.json:valid.recall@20"] = valid
        metrics[f"{RUN}/seed-{seed}/metrics.json:test.recall@20"] = test
    return {
        "Experiment": name, "rev": name[:7], "typ": "branch_commit", "Created": None, "parent": None,
        "State": "Success", "Executor": None, **metrics,
        "runs/demo/pop/warm/seed-1/metrics.json:valid.recall@20": 0.9,
        "train.lattice.reg_weight": reg, "pipeline.seeds": sorted(runs), "train.lattice.lr": 0.001,
        "stages/train.py": "0123456789abcdef0123456789abcdef" if len(runs) > 1 else "fedcba9876543210fedcba9876543210",
        "runs": f"{int(reg * 1e4):032x}.dir",  # a folder dependency: its hash differs between experiments
        **extra,
    }  # fmt: skip


def test_the_point_is_chosen_on_validation_and_reported_over_seeds():
    """reg 1e-3 is best on test (planted) but not on validation: the table marks reg 1e-4, the best mean
    validation over its three seeds, and gives mean +- sample sd; a queued experiment without metrics and
    the workspace row are left out; the seed list and the dependencies' hashes are not grid axes. A point
    may gather its seeds from several experiments (a seed added later); a seed run twice counts once; a
    metrics file of a seed the experiment's pipeline.seeds does not list (left from its parent) is ignored."""
    rows = [
        {**row("workspace", 0.0, {1: (0.1, 0.1)}), "rev": "workspace"},
        row("a", 0.0, {1: (0.30, 0.30), 2: (0.32, 0.31), 3: (0.34, 0.32)}),
        row("d", 1e-4, {1: (0.40, 0.35), 2: (0.42, 0.36)}), row("e", 1e-4, {2: (0.42, 0.36), 3: (0.38, 0.37)}),
        row("g", 1e-3, {1: (0.39, 0.50), 2: (0.39, 0.52), 3: (0.39, 0.54)}),
        {**row("h", 1e-3, {1: (0.99, 0.99), 3: (0.39, 0.54)}), "pipeline.seeds": [3.0]},  # seed 1: a leftover
        row("queued", 1e-2, {1: (None, None)}),
    ]  # fmt: skip
    markdown, rows_csv = sweep(rows, RUN)
    assert "5 experiments (11 runs over their seeds), 3 grid points over train.lattice.reg_weight" in markdown
    assert "(1 without metrics, left out)" in markdown
    assert "train.lattice.reg_weight = 0.0001, test recall@20 0.3600 ± 0.0100 over 3 seeds" in markdown
    assert "| 0.0001 | 3 | 0.4000 ± 0.0200 | 0.3600 ± 0.0100 | **yes** |" in markdown
    assert "| 0.001 | 3 | 0.3900 ± 0.0000 | 0.5200 ± 0.0200 |  |" in markdown
    table = list(csv.DictReader(io.StringIO(rows_csv)))
    assert [(r["experiment"], r["seed"]) for r in table if r["chosen_point"] == "True"] == [
        ("d", "1"), ("d", "2"), ("e", "2"), ("e", "3")
    ]  # fmt: skip
    assert {r["seed"] for r in table} == {"1", "2", "3"} and len(table) == 11


def test_axes_can_be_named_and_a_single_seed_has_no_spread():
    rows = [row("a", 0.0, {1: (0.30, 0.25)}, **{"train.lattice.lr": 0.01}), row("b", 1e-4, {1: (0.20, 0.40)})]
    markdown, _ = sweep(rows, RUN)
    assert "over train.lattice.reg_weight, train.lattice.lr" in markdown  # both differ: both are axes
    assert "| 0 | 0.01 | 1 | 0.3000 | 0.2500 | **yes** |" in markdown
    markdown, _ = sweep(rows, RUN + "/", axes=["train.lattice.lr"])
    assert "train.lattice.lr = 0.01, test recall@20 0.2500 over 1 seed." in markdown


def test_missing_runs_and_metrics_are_named():
    one = {1: (0.3, 0.3)}
    with pytest.raises(UserError, match=r"no metric 'valid.recall@20' of runs/x/seed-<n>/metrics.json.*runs/demo/lat"):
        sweep([row("a", 0.0, one)], "runs/x")
    with pytest.raises(UserError, match="none of DVC's 1 experiments has .* for any seed"):
        sweep([row("a", 0.0, {1: (None, None)})], RUN)
    with pytest.raises(UserError, match="recorded no experiment"):
        sweep([{**row("w", 0.0, one), "rev": "workspace"}], RUN)
    with pytest.raises(UserError, match="--axes train.nothing: not params"):
        sweep([row("a", 0.0, one)], RUN, axes=["train.nothing"])


TOY_STAGE = """\
import json, os, sys, yaml
reg, seed = yaml.safe_load(open("params.yaml"))["train"]["toy"]["reg_weight"], int(sys.argv[1])
valid = 0.5 - abs(reg - 0.01) + 0.01 * seed
test = valid + (0.3 if reg == 0.1 else 0.0)  # the test split prefers reg 0.1: it must not be chosen
os.makedirs(f"runs/toy/seed-{seed}", exist_ok=True)
json.dump({"valid": {"recall@20": valid}, "test": {"recall@20": test}}, open(f"runs/toy/seed-{seed}/metrics.json", "w"))
"""


@pytest.mark.dag
def test_a_queued_dvc_grid_becomes_a_table(tmp_path):
    """A real grid through DVC's queue (3 reg values, each experiment running the two seeds of its
    pipeline.seeds as one foreach stage per seed), read back by `python -m mmpipe.sweep`."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    (tmp_path / "params.yaml").write_text("pipeline:\n  seeds: [1]\ntrain:\n  toy: {reg_weight: 0.1}\n")
    (tmp_path / "train.py").write_text(TOY_STAGE)
    stage = {"cmd": "python train.py ${item}", "deps": ["train.py"], "params": ["train.toy"]}
    stage["metrics"] = [{"runs/toy/seed-${item}/metrics.json": {"cache": False}}]
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": {"train": {"foreach": "${pipeline.seeds}", "do": stage}}}))
    sh("git", "init", "-q")
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "baseline")
    sh("dvc", "exp", "run", "--queue", "-S", "train.toy.reg_weight=0,0.01,0.1", "-S", "pipeline.seeds=[1,2]")
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
    assert len(rows) == 7  # three experiments of two seeds each and the baseline commit (reg 0.1, seed 1)
    assert {(r["train.toy.reg_weight"], r["seed"]) for r in rows if r["chosen_point"] == "True"} == {
        ("0.01", "1"), ("0.01", "2")
    }  # fmt: skip
