"""The committed dvc.lock matches the committed code: a fresh clone's `dvc status` shows missing outputs only.

A changed dependency or param there means the lock (and so reports/results.md and the README's numbers)
came from other code than what is committed: re-run `dvc repro` and commit dvc.lock with the change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What DVC may report for a fresh clone: outputs (and the deps that are other stages' outputs) not there yet.
MISSING = {"deleted", "not in cache"}


def status_problems(status: dict) -> list[str]:
    """Entries of `dvc status --json` that are not 'missing output': changed code, data or params.

    A dependency that is another stage's missing output is fine, and so is a folder holding one (the
    feature stages depend on `raw/encoders/`, which holds the demo CLIP that `demo_encoder` makes).
    """
    missing_outs = {
        path
        for entries in status.values()
        for entry in entries
        if isinstance(entry, dict)
        for path, what in entry.get("changed outs", {}).items()
        if isinstance(what, str) and what in MISSING
    }

    def missing(path: str, what: object) -> bool:
        if not isinstance(what, str):  # params: {key: change}
            return False
        if what in MISSING:
            return True
        return what == "modified" and any(out.startswith(path.rstrip("/") + "/") for out in missing_outs)

    problems = []
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):  # "changed command", "always changed", ...
                problems.append(f"{stage}: {entry}")
                continue
            for kind, changes in entry.items():
                bad = {path: what for path, what in changes.items() if not missing(path, what)}
                if bad:
                    problems.append(f"{stage}: {kind} {bad}")
    return problems


def test_status_problems_flags_changed_code_and_params():
    status = {
        "ingest@demo": [{"changed deps": {"raw/demo": "deleted"}}, {"changed outs": {"x.parquet": "deleted"}}],
        "demo_encoder@demo-clip": [{"changed outs": {"raw/encoders/demo-clip": "deleted"}}],
        "features@d": [{"changed deps": {"raw/encoders": "modified", "stages/features.py": "modified"}}],
        "graphs@demo-default": [{"changed deps": {"stages/graphs.py": "modified", "processed/y": "deleted"}}],
        "train": [{"changed deps": {"params.yaml": {"train.common": "modified"}}}],
    }
    assert status_problems(status) == [
        "features@d: changed deps {'stages/features.py': 'modified'}",
        "graphs@demo-default: changed deps {'stages/graphs.py': 'modified'}",
        "train: changed deps {'params.yaml': {'train.common': 'modified'}}",
    ]


def test_fresh_clone_of_the_committed_code_shows_missing_outputs_only(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(["dvc", "status", "--json"], cwd=clone, env=env, capture_output=True, text=True, check=True)
    problems = status_problems(json.loads(proc.stdout or "{}"))
    assert problems == [], "dvc.lock is stale for the committed code; re-run `dvc repro` and commit dvc.lock"


def test_cached_outputs_are_git_ignored_without_dvcs_own_gitignore_files(tmp_path):
    """The root .gitignore alone keeps every cached output out of git and every uncached one in it.

    DVC writes a .gitignore entry per output when it records the stage; a stage stopped after writing
    its outputs but before that (Ctrl-C in `dvc exp run`) would otherwise leave e.g. a model.pt that the
    next experiment commit adds to git.
    """
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outs = [(str(out.fs_path), out.use_cache, out.isdir()) for stage in repo.index.stages for out in stage.outs]
    repo_dir = tmp_path / "bare"
    repo_dir.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo_dir, check=True)
    (repo_dir / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    cached, uncached = [], []
    for path, use_cache, is_dir in outs:
        rel = Path(path).relative_to(ROOT)
        probe = rel / "part.bin" if is_dir or use_cache and not rel.suffix else rel
        (cached if use_cache else uncached).append(str(probe))
    assert len(cached) > 20 and len(uncached) > 20

    def ignored(paths: list[str]) -> set[str]:
        proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=repo_dir, input="\n".join(paths),
                              capture_output=True, text=True)  # fmt: skip
        return set(proc.stdout.split())

    assert sorted(set(cached) - ignored(cached)) == []
    assert sorted(ignored(uncached)) == []
