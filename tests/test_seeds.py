"""Seeds in the DAG: `pipeline.seeds` is the one home of a run's seed; every model stage runs once per seed
into `runs/.../seed-<n>/`, and a seed anywhere else in the training blocks is refused before anything runs."""

from __future__ import annotations

import copy

import pytest
import yaml

from mmpipe.config import ParamsError
from stages import check, transfer
from stages.common.run import run_spec
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("where", "block"),
    [
        ("train.common", ("train", "common")),
        ("train.datasets.demo", ("train", "datasets", "demo")),
        ("train.lightgcn.trainer", ("train", "lightgcn", "trainer")),
        ("train.e2e.trainer", ("train", "e2e", "trainer")),
        ("seq.train", ("seq", "train")),
        ("seq.variants.full.train", ("seq", "variants", "full", "train")),
    ],
)
def test_a_seed_outside_pipeline_seeds_is_refused_by_check(where, block, params, tmp_path):
    params = copy.deepcopy(params)
    node = params
    for key in block:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node["seed"] = 7
    if block[0] == "seq":  # the sequential blocks are read when something is pre-trained and transferred
        params["pipeline"].update(
            pretrain_models=["pmmrec"], pretrain_sources=["demo"], transfer_targets=["demo"], transfer_variants=["full"]
        )
    with pytest.raises(ParamsError, match=rf"{where}\.seed: a run's seed is one of pipeline\.seeds"):
        check.run(params, out=tmp_path / "params.checked")
    assert not (tmp_path / "params.checked").exists()


def test_the_seed_list_is_checked_and_pretraining_keeps_its_own_seed(params, tmp_path):
    check.run(params, out=tmp_path / "params.checked")  # seq.pretrain.seed: pre-training's, allowed
    assert params["seq"]["pretrain"]["seed"] == 2026
    for bad, message in (([], "pipeline.seeds is empty"), ([1, 1], "lists 1 more than once"), ([-1], ">= 0")):
        with pytest.raises(ParamsError, match=message):
            check.run({**params, "pipeline": {**params["pipeline"], "seeds": bad}}, out=tmp_path / "x")
    with pytest.raises(ParamsError, match=r"--seed 'one': expected a non-negative integer \(one of pipeline.seeds\)"):
        run_spec("demo", "bpr", "warm", "id", "one", None, params)
    with pytest.raises(ParamsError, match=r"--seed '-2'"):
        transfer.run("demo_b", "pmmrec", "full", "-2", params)


def test_every_model_stage_has_a_seed_axis_and_writes_under_it():
    """Each stage that trains, evaluates or transfers expands over pipeline.seeds, passes the seed on its
    command line and writes only under runs/.../seed-${item.seed}/ (pre-training excepted: one model
    serves every seed's transfer)."""
    checked = 0
    for family in ("models", "lmm4rec", "pmmrec"):
        stages = yaml.safe_load((ROOT / f"pipelines/{family}/dvc.yaml").read_text())["stages"]
        for name, stage in stages.items():
            if not name.startswith(("train_", "evaluate_", "transfer")):
                continue
            assert stage["matrix"]["seed"] == "${pipeline.seeds}", name
            assert stage["cmd"].endswith("--seed ${item.seed}"), name
            outs = [next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots") for o in
                    stage.get(k, [])]  # fmt: skip
            assert outs and all("/seed-${item.seed}/" in o for o in outs), (name, outs)
            checked += 1
    assert checked == 15
