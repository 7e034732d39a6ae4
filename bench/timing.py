"""Timers, cache-rotation sizing and the measured peaks of the roofline.

A timed pass is ``run(i, pre(i))`` for iteration i: ``pre`` is untimed work
(the forward of a backward-only pass), ``run`` the timed work, and i cycles
over ``n_sets`` input sets whose total size exceeds the last-level cache, so
that every iteration reads its inputs from memory, not from cache.

On CUDA each iteration is bracketed by its own pair of events. Before each
batch of iterations a ``torch.cuda._sleep`` kernel gives the host a head
start, so the queue stays full and the events measure GPU time only, not the
Python dispatch of the call (the training-step benchmark measures that).
On CPU each iteration is timed with ``time.perf_counter``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from fastconv.info import device_name  # noqa: F401  (the name every result carries)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_of(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int
    min_ms: float


def summarize(samples_ms: list[float]) -> Timing:
    s = sorted(samples_ms)
    return Timing(_quantile(s, 0.5), _quantile(s, 0.2), _quantile(s, 0.8), len(s), s[0])


def _quantile(sorted_samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(sorted_samples) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


# --------------------------------------------------------------------------- device facts


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(device: torch.device) -> int:
    """Size of the last-level cache the inputs must not fit in."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)
    size = _read("/sys/devices/system/cpu/cpu0/cache/index3/size").strip()
    if size.endswith("K") and size[:-1].isdigit():
        return min(int(size[:-1]) * 2**10, 64 * 2**20)  # a shared host's whole LLC is not ours
    return 32 * 2**20


def rotation_sets(set_bytes: int, device: torch.device, max_sets: int = 64) -> int:
    """How many input sets make the rotated inputs span 2.5x the last-level cache."""
    return max(1, min(max_sets, math.ceil(2.5 * cache_bytes(device) / max(set_bytes, 1))))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------- timers


class Timer:
    """Median / p20 / p80 of ``run(i, pre(i))`` over rotated input sets.

    target_ms: measured time to aim for (iterations = target / estimate,
    clamped to [min_iters, max_iters]); warmup_ms: untimed warm-up (at least 3
    iterations, so that autotuning and compilation are done before timing).
    """

    def __init__(self, device: torch.device, target_ms: float = 100.0, warmup_ms: float = 25.0,
                 min_iters: int = 10, max_iters: int = 500, max_lead_ms: float = 50.0):
        self.device = device
        self.target_ms = target_ms
        self.warmup_ms = warmup_ms
        self.min_iters = min_iters
        self.max_iters = max_iters
        self.max_lead_ms = max_lead_ms
        self._cycles_per_ms: Optional[float] = None

    def measure(self, run: Callable, pre: Optional[Callable] = None, n_sets: int = 1) -> Timing:
        self._warm_up(run, pre, n_sets)
        if self.device.type == "cuda":
            return self._measure_cuda(run, pre, n_sets)
        return self._measure_cpu(run, pre, n_sets)

    def peak_memory(self, run: Callable, pre: Optional[Callable] = None) -> Optional[int]:
        """Bytes allocated at the peak of one iteration beyond what was allocated before it
        (CUDA only: the caching allocator keeps the statistics)."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        run(0, pre(0) if pre else None)
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base

    def _warm_up(self, run, pre, n_sets):
        t0 = time.perf_counter()
        k = 0
        while k < 3 or ((time.perf_counter() - t0) * 1e3 < self.warmup_ms and k < 1000):
            i = k % n_sets
            run(i, pre(i) if pre else None)
            k += 1
        sync(self.device)

    def _iterations(self, estimate_ms: float) -> int:
        n = math.ceil(self.target_ms / max(estimate_ms, 1e-4))
        return max(self.min_iters, min(self.max_iters, n))

    def _measure_cpu(self, run, pre, n_sets) -> Timing:
        samples = []
        n = None
        k = 0
        while n is None or len(samples) < n:
            i = k % n_sets
            state = pre(i) if pre else None
            t0 = time.perf_counter()
            run(i, state)
            samples.append((time.perf_counter() - t0) * 1e3)
            k += 1
            if n is None and len(samples) == 3:
                n = max(3, self._iterations(sorted(samples)[1]))
        return summarize(samples)

    def _cycles(self) -> Optional[float]:
        """GPU clock cycles per millisecond of torch.cuda._sleep, measured once."""
        if self._cycles_per_ms is None and hasattr(torch.cuda, "_sleep"):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(100_000)
            s.record()
            torch.cuda._sleep(1_000_000)
            e.record()
            e.synchronize()
            self._cycles_per_ms = 1_000_000 / max(s.elapsed_time(e), 1e-3)
        return self._cycles_per_ms

    def _timed_batch(self, run, pre, n_sets, start_k: int, count: int, lead_ms: float):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(count)]
        cycles = self._cycles()
        if lead_ms > 0 and cycles:
            torch.cuda._sleep(int(lead_ms * cycles))
        t0 = time.perf_counter()
        for j, (s, e) in enumerate(events):
            i = (start_k + j) % n_sets
            state = pre(i) if pre else None
            s.record()
            run(i, state)
            e.record()
        host_ms = (time.perf_counter() - t0) * 1e3 / count
        events[-1][1].synchronize()
        return [s.elapsed_time(e) for s, e in events], host_ms

    def _measure_cuda(self, run, pre, n_sets) -> Timing:
        est, host_ms = self._timed_batch(run, pre, n_sets, 0, 5, 0.0)
        n = self._iterations(sorted(est)[2])
        batch = max(1, min(n, int(self.max_lead_ms / max(host_ms * 1.25, 1e-3))))
        samples: list[float] = []
        k = 5
        while len(samples) < n:
            count = min(batch, n - len(samples))
            got, host_ms = self._timed_batch(run, pre, n_sets, k, count,
                                             min(self.max_lead_ms, 1.25 * count * host_ms))
            samples += got
            k += count
        return summarize(samples)


# --------------------------------------------------------------------------- peaks


def measure_peaks(device: torch.device, dtype: torch.dtype) -> dict:
    """Matmul FLOP/s in ``dtype`` (fp32 as TF32 on CUDA when allowed) and bf16, and
    device-copy bandwidth (bytes read + written), measured now on this device. A peak
    is a ceiling: each comes from the fastest of its repeats, not the median."""
    timer = Timer(device, target_ms=50.0, warmup_ms=10.0, min_iters=5, max_iters=50)
    gen = torch.Generator(device=device).manual_seed(0)
    n = 8192 if device.type == "cuda" else 1024

    def matmul_flops(dt):
        a = torch.randn(n, n, device=device, dtype=dt, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dt, generator=gen)
        t = timer.measure(lambda i, s: torch.mm(a, b))
        return 2 * n**3 / (t.min_ms * 1e-3)

    copy_elems = (2**28 if device.type == "cuda" else 2**24)  # 1 GiB / 64 MiB of float32
    src = torch.randn(copy_elems, device=device, generator=gen)
    dst = torch.empty_like(src)
    tc = timer.measure(lambda i, s: dst.copy_(src))
    out = {
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "matmul_tflops": matmul_flops(dtype) / 1e12,
        "copy_gbps": 2 * src.numel() * src.element_size() / (tc.min_ms * 1e-3) / 1e9,
        "matmul_n": n,
        "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
    }
    if device.type == "cuda":
        out["bf16_matmul_tflops"] = (out["matmul_tflops"] if dtype == torch.bfloat16
                                     else matmul_flops(torch.bfloat16) / 1e12)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out["threads"] = torch.get_num_threads() if device.type == "cpu" else None
    out["cpu_count"] = os.cpu_count()
    return out
