"""Where `dvc repro` spends its time, for the tour (params.yaml) and the full DAG (profiles/full.yaml).

    python -m bench.pipeline_timing [--only tour|full] [--repeat 5] [--keep]

For each size, from a fresh copy of the project (its tracked files in a new git repo: no DVC cache, no
outputs): one timed `dvc repro`, each stage's wall time taken from DVC's "Running stage" lines and split
into the stage's own work, its start-up (Python and the stage's imports, as the stage itself records them
through MMPIPE_STAGE_TIMES) and the rest (DVC: hashing, the lock file, params). Then the no-op
`dvc repro` and `dvc status` (median of --repeat), the size of every dvc.lock, and the one-key-edit loop:
`train.lightgcn.n_layers` changed, wall time of `dvc repro` until the report is rewritten, beside the
time LightGCN's training itself took. The full size takes about half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmpipe.paths import PUBLISHED
from profiles.apply import edit_params

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "mmpipe", "stages", "models", "dvc.yaml", "pipelines", "params.yaml", "profiles", str(PUBLISHED),
    "raw/encoders/README.md", "pyproject.toml", ".dvcignore", ".gitignore",
]  # fmt: skip
RUNNING = re.compile(r"Running stage '(?:[^':]*dvc\.yaml:)?([^']+)'")
EDIT_KEY, EDIT_STAGE = "train.lightgcn.n_layers", "train_id@demo-lightgcn"


@dataclass
class StageTime:
    name: str
    wall_s: float
    startup_s: float = 0.0
    work_s: float = 0.0

    @property
    def dvc_s(self) -> float:
        return self.wall_s - self.startup_s - self.work_s


def make_copy(dest: Path, profile: str | None, times_file: Path) -> dict[str, str]:
    """The project's files in a new git repo (DVC initialised, committed), with `profile` applied."""
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "MMPIPE_PROGRESS": "0",
        "MMPIPE_STAGE_TIMES": str(times_file),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    commands = [["git", "init", "-q"], ["dvc", "init", "-q"]]
    if profile:
        commands.append([sys.executable, "-m", "profiles.apply", profile])
    commands += [["git", "add", "-A"], ["git", "commit", "-qm", "bench"]]
    for cmd in commands:
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return env


def timed_repro(cwd: Path, env: dict[str, str]) -> tuple[list[StageTime], float]:
    """Run `dvc repro`; return each stage's wall time in run order and the total."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = RUNNING.search(line)
        if match:
            marks.append((match.group(1), time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(tail))
    end = time.perf_counter()
    stamps = [t for _, t in marks] + [end]
    return [StageTime(name, stamps[i + 1] - t) for i, (name, t) in enumerate(marks)], end - start


def attach_stage_times(stages: list[StageTime], times_file: Path) -> None:
    """Fill each stage's start-up and work from the rows the stages appended, in the same order."""
    rows = [json.loads(line) for line in times_file.read_text().splitlines()] if times_file.exists() else []
    times_file.unlink(missing_ok=True)
    if len(rows) != len(stages):
        raise SystemExit(f"{len(stages)} stages ran but {len(rows)} recorded their times")
    for stage, row in zip(stages, rows, strict=True):
        stage.startup_s, stage.work_s = row["startup_s"], row["work_s"]


def median_wall(cmd: list[str], cwd: Path, env: dict[str, str], repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def bench_size(profile: str | None, repeat: int, keep: bool) -> None:
    label = profile or "tour"
    tmp = Path(tempfile.mkdtemp(prefix=f"mmpipe-bench-{label}-"))
    times_file = tmp.parent / f"{tmp.name}.times.jsonl"
    try:
        env = make_copy(tmp, profile, times_file)
        stages, total = timed_repro(tmp, env)
        attach_stage_times(stages, times_file)
        noop = median_wall(["dvc", "repro"], tmp, env, repeat)
        status = median_wall(["dvc", "status"], tmp, env, repeat)
        locks = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("dvc.lock"))}
        layers = yaml.safe_load((tmp / "params.yaml").read_text())["train"]["lightgcn"]["n_layers"]
        edit_params(tmp / "params.yaml", {"train": {"lightgcn": {"n_layers": layers + 1}}})  # EDIT_KEY
        edit, edit_wall = timed_repro(tmp, env)
        attach_stage_times(edit, times_file)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n== {label} ({len(stages)} stages) ==")
    print(f"{'stage':44s} {'wall s':>7s} {'work s':>7s} {'start s':>7s} {'dvc s':>7s}")
    for s in stages:
        print(f"{s.name:44s} {s.wall_s:7.1f} {s.work_s:7.1f} {s.startup_s:7.1f} {s.dvc_s:7.1f}")
    work, startup = sum(s.work_s for s in stages), sum(s.startup_s for s in stages)
    print(f"dvc repro from scratch: {total:.1f} s wall, {len(stages)} stages; work {work:.1f} s, start-up "
          f"(Python + imports) {startup:.1f} s, DVC {total - work - startup:.1f} s")  # fmt: skip
    print(f"no-op dvc repro: {noop:.2f} s, dvc status: {status:.2f} s (median of {repeat})")
    print("locks: " + ", ".join(f"{name} {size / 1024:.1f} KB" for name, size in locks.items()))
    trained = next((s.work_s for s in edit if s.name == EDIT_STAGE), float("nan"))
    print(f"one-key edit ({EDIT_KEY} {layers} -> {layers + 1}): {edit_wall:.1f} s for {sorted(s.name for s in edit)}; "
          f"training {trained:.1f} s, so training + {edit_wall - trained:.1f} s")  # fmt: skip
    if keep:
        print(f"project kept at {tmp}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tour", "full"], help="time one size only")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the no-op repro and status (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    for size in ("tour", "full"):
        if args.only in (None, size):
            bench_size(None if size == "tour" else size, args.repeat, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
