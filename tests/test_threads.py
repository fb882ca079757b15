"""Threads: a fixed `num_threads` whatever else runs (the bytes of thread-sensitive models depend on it),
and the fair share among running stages when it is 0."""

from __future__ import annotations

from pathlib import Path

import torch

from mmpipe import threads


def fake_proc(root: Path, cmdlines: list[list[str]]) -> Path:
    for pid, args in enumerate(cmdlines, start=100):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    (root / "self").mkdir()  # not a pid: ignored
    return root


def test_running_stages_counts_python_m_stages_processes_only(tmp_path):
    proc = fake_proc(tmp_path, [
        ["python", "-m", "stages.train", "--dataset", "demo"],
        ["/venv/bin/python", "-m", "stages.features"],
        ["python", "-m", "pytest", "stages/x.py"],
        ["dvc", "repro"],
    ])  # fmt: skip
    assert threads.running_stages(proc) == 2
    assert threads.running_stages(tmp_path / "absent") == 1
    assert threads.fair_share(cores=2, stages=3) == 1 and threads.fair_share(cores=16, stages=3) == 5


def test_a_fixed_count_ignores_the_load_and_zero_takes_the_fair_share(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "running_stages", lambda proc=None: 4)
        monkeypatch.setattr(threads, "machine_threads", lambda: 8)
        assert threads.use_threads(2) == 2 and torch.get_num_threads() == 2  # 4 stages beside: still 2
        assert threads.use_threads(0) == 2 and threads.use_threads(None) == 2  # 8 cores / 4 stages
        monkeypatch.setattr(threads, "running_stages", lambda proc=None: 1)
        assert threads.use_threads(0) == 8 and threads.use_threads(3) == 3
    finally:
        torch.set_num_threads(before)


def test_features_and_graphs_bytes_do_not_depend_on_the_machines_load(params, demo_project, tmp_path, monkeypatch):
    """features.num_threads and graphs.num_threads fix the thread count (SBERT's vectors differ in the last
    bits between 1 and 2 threads on this machine): the Parquet features and NPZ graphs written while four
    other stages run (a fair share of 1 thread) are byte-identical to those written alone (a share of 2)."""
    import shutil

    from stages import coldstart, features, graphs

    assert params["features"]["num_threads"] == params["graphs"]["num_threads"] == 2
    written = {}
    for share in (2, 1):
        root = tmp_path / f"share{share}"
        shutil.copytree(demo_project / "processed", root)
        monkeypatch.setattr(threads, "fair_share", lambda cores=None, stages=None, n=share: n)
        for modality in ("text", "image"):
            features.run("demo", "default", modality, params, root)
        coldstart.run("demo", params, root)
        graphs.run("demo", "default", params, root)
        assert torch.get_num_threads() == 2
        outputs = [p for p in sorted((root / "demo").rglob("*")) if p.suffix in (".parquet", ".npz")]
        written[share] = {str(p.relative_to(root)): p.read_bytes() for p in outputs if "features" in p.parts
                          or "graphs" in p.parts}  # fmt: skip
    assert len(written[1]) >= 8
    assert [k for k in written[1] if written[1][k] != written[2][k]] == []
