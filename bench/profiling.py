"""Where the time goes: the top ops and kernels of a few profiled calls (torch.profiler).

``top_ops(fn, device, calls)`` runs ``fn(i)`` for i in range(calls) under the
profiler and returns, per call, the ops and kernels with the most self time on
the device and on the host. The training-step benchmark profiles a whole step;
the layer benchmark profiles one forward + backward of each fastconv provider
(``--kernel-times``), which splits a slow backward into dgrad, wgrad and the
small kernels around them.
"""
from __future__ import annotations

from typing import Callable

import torch

from .timing import sync


def _us(evt, *names) -> float:
    for n in names:  # the field names changed across torch versions
        v = getattr(evt, n, None)
        if v is not None:
            return float(v)
    return 0.0


def top_ops(fn: Callable[[int], object], device: torch.device, calls: int = 3, top: int = 12) -> dict:
    """{"calls", "device_total_us", "top_device": [...], "top_cpu": [...]}, times per call."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        for i in range(calls):
            fn(i)
        sync(device)
    rows = [{"name": e.key[:120], "calls": e.count / calls,
             "self_device_us": _us(e, "self_device_time_total", "self_cuda_time_total") / calls,
             "self_cpu_us": _us(e, "self_cpu_time_total") / calls}
            for e in prof.key_averages()]
    by_dev = sorted(rows, key=lambda r: -r["self_device_us"])[:top]
    by_cpu = sorted(rows, key=lambda r: -r["self_cpu_us"])[:top]
    return {"calls": calls, "device_total_us": sum(r["self_device_us"] for r in rows),
            "top_device": [r for r in by_dev if r["self_device_us"] > 0], "top_cpu": by_cpu}


def lines(prof: dict, limit: int = 8, indent: str = "    ") -> list[str]:
    """The top device entries as printable lines (the host's when nothing ran on a device)."""
    key, where = ("self_device_us", "device") if prof["top_device"] else ("self_cpu_us", "host")
    rows = prof["top_device"] or prof["top_cpu"]
    return [f"{indent}{r[key]:9.1f} us on the {where}  {r['calls']:5.1f} calls  {r['name'][:70]}"
            for r in rows[:limit]]
