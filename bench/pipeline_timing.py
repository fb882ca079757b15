"""Wall time of every stage of `dvc repro` on the default demo, from a fresh copy of the project.

    python -m bench.pipeline_timing [--params other.yaml]

Copies the project's tracked files into a temporary git repo (no DVC cache, no outputs), runs one
`dvc repro` while timestamping each "Running stage" line as DVC prints it, then a second, no-op
`dvc repro`. Prints one row per stage and the totals.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "mmpipe", "stages", "models", "dvc.yaml", "params.yaml", "reports/published.yaml", "raw/encoders/README.md",
    "pyproject.toml", ".dvcignore", ".gitignore",
]  # fmt: skip


def make_copy(dest: Path, params: Path | None) -> dict[str, str]:
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if params is not None:
        shutil.copy2(params, dest / "params.yaml")
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "MMPIPE_PROGRESS": "0",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return env


def timed_repro(cwd: Path, env: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """Run `dvc repro`; return (stage, seconds) in run order and the total wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = re.search(r"Running stage '([^']+)'", line)
        if match:
            marks.append((match.group(1), time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(tail))
    end = time.perf_counter()
    stamps = [t for _, t in marks] + [end]
    return [(name, stamps[i + 1] - t) for i, (name, t) in enumerate(marks)], end - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, help="params file to use instead of the project's")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mmpipe-bench-"))
    try:
        env = make_copy(tmp, args.params)
        stages, total = timed_repro(tmp, env)
        _, noop = timed_repro(tmp, env)
        print(f"{'stage':40s} {'seconds':>8s}")
        for name, seconds in stages:
            print(f"{name:40s} {seconds:8.1f}")
        print(f"{'total dvc repro (' + str(len(stages)) + ' stages)':40s} {total:8.1f}")
        print(f"{'no-op dvc repro':40s} {noop:8.1f}")
        print(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}")
        if args.keep:
            print(f"project kept at {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
