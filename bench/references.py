"""The reference implementations' own code, run on the same data beside the project's, timed per epoch.

The project ships none of their code: the user gives a local checkout (`--mmrec PATH`), which is copied
into a temporary folder (so the checkout stays untouched) with the data and one model config written
beside it, and its own entry point is run with the thread count set through OMP_NUM_THREADS. The s/epoch
is read from its log ("epoch N training [time: X s").

Two things a current Python environment needs for MMRec (2023 code, written for torch 1.11, scipy 1.7,
numpy 1.21): numpy < 1.24 and scipy < 1.12 (it calls `np.float` and `dok_matrix._update`), so run it with
an interpreter of its own (`--reference-python`, e.g. a venv with numpy==1.23.5, scipy==1.11.4,
pandas==2.0.3, pyyaml, pillow, lmdb, matplotlib and torch); and torchvision, which its data module
imports for raw-image models only: where torchvision cannot be installed (the CPU torch wheel here), an
empty stand-in package is put on its PYTHONPATH, which the ID models never touch.

Without a checkout the last measured figures below are printed, with their date and machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Measured with the code of this repository's bench (MMRec at its GitHub HEAD of 2026-12), on the 2-core
# CPU machine of the benchmarks page: MMRec's own s/epoch on its Baby split, 64-d, batch 2048.
LAST_MEASURED = {
    ("mmrec", "lightgcn"): "7.95 / 6.64 s/epoch on 1 / 2 threads (3 layers), this project 2.05 / 1.87; 2026-12-07",
    ("mmrec", "bpr"): "1.21 / 0.73 s/epoch on 1 / 2 threads beside this project's 0.49 / 0.35; same call",
    ("official", "micro"): "24-25 s/epoch (this project then 19-20 s), full-size demo export, 1 thread, loaded machine",
    ("official", "rearm"): "138-153 s/epoch (this project then 113-119 s), same conditions; both an earlier round",
}
MMREC_MODELS = {"bpr": "BPR", "lightgcn": "LightGCN"}
EPOCH_LINE = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")


@dataclass
class ReferenceRun:
    name: str
    threads: int
    epoch_seconds: list[float]

    @property
    def median(self) -> float:
        values = sorted(self.epoch_seconds)
        return values[len(values) // 2]


def _torchvision_stand_in(folder: Path) -> Path:
    """An empty `torchvision.transforms(.functional)` package: MMRec's data module imports it at the top
    for its raw-image models; the ID models never call it."""
    package = folder / "torchvision" / "transforms"
    package.mkdir(parents=True)
    (folder / "torchvision" / "__init__.py").write_text('"""Stand-in: torchvision is not installed."""\n')
    (package / "__init__.py").write_text("")
    (package / "functional.py").write_text(
        "def _missing(*args, **kwargs):\n    raise RuntimeError('torchvision is not installed')\n\n"
        "pad = resize = _missing\n"
    )
    return folder


def mmrec_yaml(model: str, hp: dict) -> str:
    """MMRec's model config with the project's hyperparameters as its one grid point."""
    lines = ["embedding_size: 64", "is_multimodal_model: False", f"reg_weight: [{hp['reg_weight']}]"]
    grid = ['"reg_weight"']
    if model == "lightgcn":
        lines.append(f"n_layers: [{hp['n_layers']}]")
        grid.insert(0, '"n_layers"')
    lines.append(f"hyper_parameters: [{', '.join(grid)}]")
    return "\n".join(lines) + "\n"


def run_mmrec(
    checkout: Path, inter: Path, model: str, hp: dict, threads: int, epochs: int, python: str, timeout_s: float = 900
) -> ReferenceRun:
    """MMRec's `main.py -m <Model> -d <inter's name>` on `inter`, stopped after `epochs` training epochs."""
    if not (checkout / "src" / "main.py").is_file():
        raise FileNotFoundError(f"{checkout}: not an MMRec checkout (no src/main.py); give --mmrec its root folder")
    with tempfile.TemporaryDirectory(prefix="mmpipe-mmrec-") as tmp:
        work = Path(tmp)
        shutil.copytree(checkout / "src", work / "src")
        dataset = inter.stem
        (work / "data" / dataset).mkdir(parents=True)
        shutil.copy(inter, work / "data" / dataset / inter.name)
        dataset_yaml = work / "src/configs/dataset" / f"{dataset}.yaml"
        if not dataset_yaml.exists():
            shutil.copy(work / "src/configs/dataset/baby.yaml", dataset_yaml)
        (work / "src/configs/model" / f"{MMREC_MODELS[model]}.yaml").write_text(mmrec_yaml(model, hp))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = str(_torchvision_stand_in(work / "stand-in"))
        cmd = [python, "main.py", "-m", MMREC_MODELS[model], "-d", dataset]
        seconds = _read_epochs(cmd, work / "src", env, epochs, timeout_s)
    return ReferenceRun(f"MMRec {MMREC_MODELS[model]}", threads, seconds)


def _read_epochs(cmd: list[str], cwd: Path, env: dict, epochs: int, timeout_s: float) -> list[float]:
    """Run `cmd`, collect the s/epoch of its first `epochs` training epochs from its log, then stop it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds: list[float] = []
    tail: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-15:]
            match = EPOCH_LINE.search(line)
            if match:
                seconds.append(float(match.group(2)))
            if len(seconds) >= epochs or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait()
    if not seconds:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) printed no epoch time; its last lines:\n" + "\n".join(tail))
    return seconds
