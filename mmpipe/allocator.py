"""Keep freed tensor memory inside the process while it trains.

Every training batch allocates and frees the same large tensors (a graph model's [nodes, 64] layers and
their gradients: 6.8 MB each on Baby). glibc hands blocks above its mmap threshold back to the system on
free and returns the top of its heap once more than the trim threshold is free there, so the next batch
takes each page again with a page fault: 120-250 thousand faults per LightGCN epoch on Baby, measured with
`resource.getrusage`, 10-15% of that epoch on one thread. Raising both thresholds keeps the freed blocks
in the heap for the next batch (faults per epoch: a handful). The values a tensor holds do not change.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit systems
TRIM_THRESHOLD = 2**30  # free heap memory kept at the top before it is returned to the system


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False (nothing done) outside glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
