"""How many threads torch may use: the `*.num_threads` param, or a fair share of this machine's cores.

Torch's OpenMP threads spin while they wait. Two stages that each take every core (`dvc exp run
--run-all -j 2`, `dvc queue start -j 2`, or a second `dvc repro` in another clone) then make each other
crawl: measured on 2 cores, LightGCN went from 0.20 to 1.33 s/epoch with a second training beside it,
and back to 0.29 with one thread each. So with `num_threads: 0` a stage takes cores / (stages of any
mmpipe project running on this machine now), recounted at every training epoch, so a long training
gives threads back when another stage starts and takes them again when it ends. (Making the threads
sleep instead, OMP_WAIT_POLICY=passive, also avoids the crawl but costs 2.2x when a stage runs alone.)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

STAGE_MODULE_PREFIX = b"stages."


def machine_threads() -> int:
    """Cores this process may use (cgroup/affinity aware), for torch's intra-op thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def running_stages(proc: Path = Path("/proc")) -> int:
    """Processes running `python -m stages.<name>` on this machine now (this one included), at least 1."""
    count = 0
    try:
        entries = list(proc.iterdir())
    except OSError:  # no /proc (not Linux): assume alone
        return 1
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        for i, arg in enumerate(args[:-1]):
            if arg == b"-m" and args[i + 1].startswith(STAGE_MODULE_PREFIX):
                count += 1
                break
    return max(1, count)


def fair_share(cores: int | None = None, stages: int | None = None) -> int:
    """cores / running stages, at least one thread."""
    cores = machine_threads() if cores is None else cores
    stages = running_stages() if stages is None else stages
    return max(1, cores // max(1, stages))


def use_threads(configured: int | None) -> int:
    """Set torch's thread count to `configured`, or, when it is 0 or None, to this stage's fair share."""
    threads = int(configured or 0) or fair_share()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
