"""bench/references.py runs a reference code's own entry point on the same data and reads its s/epoch:
checked with a stand-in checkout that records what it was given (MMRec itself is not shipped)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from bench.references import mmrec_yaml, run_mmrec

# A stand-in for MMRec's src/main.py: it checks what the runner must set up (the data where MMRec reads
# it, the model config, the thread count, an importable torchvision), then logs epochs as MMRec does.
STAND_IN_MAIN = textwrap.dedent(
    """
    import os, sys, time
    import torchvision.transforms.functional  # MMRec's data module imports it at the top
    model, dataset = sys.argv[sys.argv.index("-m") + 1], sys.argv[sys.argv.index("-d") + 1]
    assert os.path.isfile(f"../data/{dataset}/{dataset}.inter"), os.listdir("..")
    assert os.path.isfile(f"configs/dataset/{dataset}.yaml")
    print("config:", open(f"configs/model/{model}.yaml").read().replace(chr(10), " | "), flush=True)
    print("threads", os.environ["OMP_NUM_THREADS"], flush=True)
    for epoch in range(100):
        print(f"07 Dec 23:23    INFO epoch {epoch} training [time: {1.5 + epoch:.2f}s, train loss: 1.0]", flush=True)
        print(f"07 Dec 23:23    INFO epoch {epoch} evaluating [time: 0.50s, valid_score: 0.1]", flush=True)
        time.sleep(0.01)
    """
)


def stand_in_checkout(root: Path) -> Path:
    (root / "src/configs/dataset").mkdir(parents=True)
    (root / "src/configs/model").mkdir(parents=True)
    (root / "src/configs/dataset/baby.yaml").write_text("inter_file_name: 'baby.inter'\n")
    (root / "src/main.py").write_text(STAND_IN_MAIN)
    return root


def test_mmrec_config_is_the_projects_hyperparameters_as_one_grid_point():
    text = mmrec_yaml("lightgcn", {"n_layers": 3, "reg_weight": 1e-4, "embedding_size": 64})
    assert "n_layers: [3]" in text and "reg_weight: [0.0001]" in text
    assert 'hyper_parameters: ["n_layers", "reg_weight"]' in text
    assert "n_layers" not in mmrec_yaml("bpr", {"reg_weight": 1e-4})


def test_runner_sets_up_the_copy_reads_the_epochs_and_stops_the_run(tmp_path):
    checkout = stand_in_checkout(tmp_path / "mmrec")
    inter = tmp_path / "data/baby.inter"
    inter.parent.mkdir()
    inter.write_text("userID\titemID\tx_label\n0\t0\t0\n")
    run = run_mmrec(checkout, inter, "lightgcn", {"n_layers": 2, "reg_weight": 1e-3}, 2, 3, sys.executable)
    assert run.name == "MMRec LightGCN" and run.threads == 2
    assert run.epoch_seconds == [1.5, 2.5, 3.5] and run.median == 2.5  # the first three epochs, then stopped
    assert sorted(p.name for p in (checkout / "src/configs/model").iterdir()) == []  # the checkout is untouched


def test_a_run_that_prints_no_epoch_is_an_error_with_its_last_lines(tmp_path):
    checkout = stand_in_checkout(tmp_path / "mmrec")
    (checkout / "src/main.py").write_text("print('ModuleNotFoundError: no module named yaml')\n")
    inter = tmp_path / "baby.inter"
    inter.write_text("")
    with pytest.raises(RuntimeError, match=r"printed no epoch time(.|\n)*no module named yaml"):
        run_mmrec(checkout, inter, "bpr", {"reg_weight": 1e-4}, 1, 2, sys.executable)
    with pytest.raises(FileNotFoundError, match="not an MMRec checkout"):
        run_mmrec(tmp_path, inter, "bpr", {"reg_weight": 1e-4}, 1, 2, sys.executable)
