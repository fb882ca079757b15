"""Several training processes (torchrun + DistributedDataParallel): joining the group, and launching it.

torchrun starts N copies of a stage (`torchrun --standalone --nproc_per_node N -m stages.<name> ...`, or
across machines with `--nnodes` and a rendezvous endpoint) and tells each its RANK and WORLD_SIZE; each
joins one process group, gloo on the CPU and NCCL on GPUs (each process on GPU LOCAL_RANK). A stage
asked for N > 1 processes by its params relaunches itself that way (`relaunch_under_torchrun`), so
`dvc repro` runs the same command either way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process: torchrun sets RANK and WORLD_SIZE; (0, 1) alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on the CPU, NCCL on GPUs); alone: (0, 1)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return distributed()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return distributed()


def local_device(device: torch.device) -> torch.device:
    """On GPUs each process takes GPU LOCAL_RANK; on the CPU the device is unchanged."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def finish_distributed() -> None:
    """Wait for every process, then leave the group (the last step of a distributed stage)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_under_torchrun(processes: int, module: str, argv: list[str]) -> int:
    """Run `python -m <module> <argv>` as `processes` torchrun workers on this machine; their exit code."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        raise FileNotFoundError("torchrun (installed with torch) is not on the PATH of this Python")
    command = [torchrun, "--standalone", "--nproc_per_node", str(processes), "-m", module, *argv]
    return subprocess.run(command, check=False).returncode
