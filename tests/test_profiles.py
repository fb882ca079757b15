"""The two sizes of the DAG: params.yaml (the tour) and profiles/full.yaml (the full comparison)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from mmpipe.config import ParamsError
from profiles.apply import PROFILES, apply_profile
from stages import check
from tests.conftest import ROOT

PARAMS_TEXT = """\
# top comment
pipeline:
  id_models: [pop, lightgcn]   # the tour's
  empty: []
train:
  datasets:
    demo: {epochs: 60, patience: 5}
  lightgcn:
    n_layers: 3
    reg_weight: 1.0e-4
  address: null
"""


def test_a_profile_merges_mappings_replaces_the_rest_and_keeps_comments(tmp_path):
    params, profile = tmp_path / "params.yaml", tmp_path / "big.yaml"
    params.write_text(PARAMS_TEXT)
    profile.write_text(
        "pipeline: {id_models: [pop, bpr, lightgcn], empty: [vbpr]}\ntrain: {datasets: {demo: {epochs: 120}}}\n"
    )
    changed = apply_profile(profile, params)
    assert changed == ["pipeline.id_models", "pipeline.empty", "train.datasets.demo.epochs"]
    text = params.read_text()
    assert "# top comment" in text and "# the tour's" in text and "address: null" in text
    assert "id_models: [pop, bpr, lightgcn]" in text  # a flow list stays a flow list
    data = yaml.safe_load(text)
    assert data["train"]["datasets"]["demo"] == {"epochs": 120, "patience": 5}  # patience kept: merged
    assert data["train"]["lightgcn"] == {"n_layers": 3, "reg_weight": 1.0e-4}
    assert data["pipeline"]["empty"] == ["vbpr"]
    assert apply_profile(profile, params) == []  # applying twice changes nothing more


def test_a_profile_key_that_params_lacks_is_an_error_and_nothing_is_written(tmp_path):
    params, profile = tmp_path / "params.yaml", tmp_path / "typo.yaml"
    params.write_text(PARAMS_TEXT)
    profile.write_text("train: {lightgcn: {n_layer: 2}}\n")
    with pytest.raises(ParamsError, match=r"'train.lightgcn.n_layer' is not in params.yaml"):
        apply_profile(profile, params)
    assert params.read_text() == PARAMS_TEXT


def test_the_full_profile_passes_check_and_runs_everything_the_tour_runs(tmp_path):
    """The full size is a superset of the tour: every list of the tour's `pipeline:` is in the full one."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_profile(PROFILES / "full.yaml", params)
    tour, full = yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(params.read_text())
    for key, value in tour["pipeline"].items():
        assert set(value) <= set(full["pipeline"][key]), key
    assert full["pipeline"]["graph_models"] == ["itemknn", "lattice", "freedom", "micro", "rearm"]
    assert full["datasets"]["demo"]["n_users"] > tour["datasets"]["demo"]["n_users"]
    check.run(full, out=tmp_path / "params.checked")


def test_the_command_names_the_profiles_it_knows(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "profiles.apply", "ful"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 2 and "profiles: full" in proc.stderr


def test_a_stage_records_its_start_up_and_work_when_asked(tmp_path):
    """MMPIPE_STAGE_TIMES: what bench.pipeline_timing splits a stage's wall time with."""
    times = tmp_path / "times.jsonl"
    env = {**os.environ, "MMPIPE_STAGE_TIMES": str(times)}
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "stages.check"], cwd=ROOT, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in times.read_text().splitlines()]
    assert len(rows) == 2 and all(row["argv"][0].endswith("stages/check.py") for row in rows)
    # Python and torch's import take a good part of a second; the check itself a few hundredths
    assert all(0.2 < row["startup_s"] < 30 and 0 < row["work_s"] < row["startup_s"] for row in rows)
