"""How many threads torch may use: the `*.num_threads` param, or every core this process may run on."""

from __future__ import annotations

import os

import torch


def machine_threads() -> int:
    """Cores this process may use (cgroup/affinity aware), for torch's intra-op thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_threads(configured: int | None) -> int:
    """Set torch's thread count to `configured`, or to the machine's when it is 0 or None."""
    threads = int(configured or 0) or machine_threads()
    torch.set_num_threads(threads)
    return threads
