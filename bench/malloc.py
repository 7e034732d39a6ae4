"""The C allocator's policy for a benchmark process: glibc's default, or ``steady``.

glibc's malloc returns freed memory to the OS (heap trimming above ``M_TRIM_THRESHOLD``,
and ``munmap`` of chunks above the dynamic ``M_MMAP_THRESHOLD``), so a later large tensor
faults its pages in again. On the 2-core AMD EPYC Zen 5 VM (family 26 model 2) a minor fault
cost about 1 us: one forward + backward of the VGG layer 16x64x56x56 -> 64 took 9376 faults
(~10 ms of a 30 ms backward) in eager PyTorch and 6272 in fastconv's, and how many of them a
provider pays depends on the heap the previous provider left (the same layer measured x0.90
in the CPU suite and x1.67 alone). ``steady`` fixes both thresholds (``mallopt``), so freed
memory stays in the heap and every provider's later calls reuse it: the kernels are timed,
not the page faults (the same layer then measured x1.16 in the suite and x1.20 alone).

Only glibc on Linux has ``mallopt``; elsewhere ``steady`` is refused with the reason.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

POLICIES = ("default", "steady")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = (1 << 31) - 1  # an int: never trim in practice


def apply(policy: str) -> str:
    """Set the allocator policy of this process; returns what was set (recorded in results)."""
    if policy not in POLICIES:
        raise ValueError(f"malloc policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "default":
        return "default"
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"--malloc steady needs glibc's mallopt (Linux); this is {sys.platform}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallopt"):
        raise RuntimeError("--malloc steady needs glibc's mallopt; this C library has none")
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        raise RuntimeError("mallopt refused M_MMAP_THRESHOLD / M_TRIM_THRESHOLD")
    return f"steady (M_MMAP_THRESHOLD {MMAP_THRESHOLD_MAX >> 20} MiB, no trimming)"
