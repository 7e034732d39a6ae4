"""Choosing one launch config per (kernel, problem), with a cache on disk.

``choose(kernel, key, configs, run)`` returns, in order of precedence:

1. the config pinned by ``FASTCONV_TRITON_CONFIG`` (applied on top of the
   heuristic default ``configs[0]``);
2. ``configs[0]`` when there is nothing to choose from (one candidate: always
   so under the Triton interpreter);
3. the config remembered for ``key`` in this process, or on disk in
   ``$FASTCONV_TRITON_TUNE_CACHE`` (default ``<fastconv cache dir>/triton-tune.json``,
   keyed by GPU name and Triton version), if it is still a candidate;
4. when tuning is allowed (a GPU, not capturing a CUDA graph,
   ``FASTCONV_TRITON_TUNE`` not 0): the fastest candidate by
   ``triton.testing.do_bench`` of ``run(config)``, then remembered in
   memory and on disk. Like ``cudnn.benchmark``, this first call for a new
   shape synchronizes; later calls and later processes do not;
5. otherwise ``configs[0]``.

``FASTCONV_TRITON_CONFIG`` syntax: ``KEY=V,KEY=V`` applies to every kernel whose
tunable keys (``configs.KEYS``) include all the keys named, e.g.
``BLOCK_M=128,BLOCK_N=64,BLOCK_K=32,num_warps=4,num_stages=3`` pins the three
implicit-GEMM kernels; ``kernel:KEY=V,...`` pins one kernel; several specs are
separated by ``;``.

``run(config)`` must leave the kernel's outputs complete (it re-zeroes what a
split-K launch accumulates into), so the benchmark runs on the real buffers.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import torch
import triton

from ... import _ext, _jsoncache
from . import configs as _configs

ENV_PIN = "FASTCONV_TRITON_CONFIG"
ENV_TUNE = "FASTCONV_TRITON_TUNE"
ENV_CACHE = "FASTCONV_TRITON_TUNE_CACHE"

_lock = threading.Lock()
_memory: dict[tuple, dict] = {}
_disk: dict | None = None
_pin_cache: tuple[str, dict] | None = None


def cache_path() -> Path:
    return Path(os.environ.get(ENV_CACHE) or _ext.cache_dir() / "triton-tune.json")


def parse_pin(spec: str) -> dict[str, dict[str, int]]:
    """FASTCONV_TRITON_CONFIG -> {kernel name or '*': {key: value}}; ValueError names what is wrong."""
    out: dict[str, dict[str, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kernel = "*"
        if ":" in part:
            kernel, part = (s.strip() for s in part.split(":", 1))
            if kernel not in _configs.KEYS:
                raise ValueError(f"{ENV_PIN}: unknown kernel {kernel!r}; expected one of {', '.join(_configs.KEYS)}")
        vals: dict[str, int] = {}
        for item in filter(None, (i.strip() for i in part.split(","))):
            name, eq, val = item.partition("=")
            name = name.strip()
            try:
                v = int(val)
            except ValueError:
                v = 0
            if not eq or v < 1:
                raise ValueError(f"{ENV_PIN}: expected KEY=positive int, got {item!r} in {spec!r}")
            if name.startswith("BLOCK_") or name == "num_warps":
                if v & (v - 1):
                    raise ValueError(f"{ENV_PIN}: {name} must be a power of two, got {v}")
            vals[name] = v
        known = _configs.KEYS[kernel] if kernel != "*" else {k for ks in _configs.KEYS.values() for k in ks}
        unknown = sorted(set(vals) - set(known))
        if unknown:
            where = f"kernel {kernel!r}" if kernel != "*" else "any kernel"
            raise ValueError(f"{ENV_PIN}: {', '.join(unknown)} is not a tunable key of {where}")
        out.setdefault(kernel, {}).update(vals)
    return out


def pinned(kernel: str) -> dict[str, int] | None:
    """The overrides FASTCONV_TRITON_CONFIG sets for this kernel, or None."""
    global _pin_cache
    spec = os.environ.get(ENV_PIN, "")
    if not spec.strip():
        return None
    if _pin_cache is None or _pin_cache[0] != spec:
        _pin_cache = (spec, parse_pin(spec))
    table = _pin_cache[1]
    over = {}
    generic = table.get("*", {})
    if generic and set(generic) <= set(_configs.KEYS[kernel]):
        over.update(generic)
    over.update(table.get(kernel, {}))
    for k in _configs.DOT_KEYS.get(kernel, ()):
        if over.get(k, 16) < 16:
            raise ValueError(f"{ENV_PIN}: {k} of {kernel} feeds tl.dot and must be >= 16, got {over[k]}")
    return over or None


def _tuning_allowed(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get(ENV_TUNE, "1") in ("0", "false", "False"):
        return False
    return not torch.cuda.is_current_stream_capturing()


def _disk_table() -> dict:
    global _disk
    if _disk is None:
        _disk = _jsoncache.read(cache_path())
    return _disk


def _save(full_key: str, cfg: dict) -> None:
    """Keep a tuned config on disk (a read-only cache folder only costs re-tuning next process)."""
    table = _jsoncache.add(cache_path(), full_key, cfg)
    _disk_table().update(table or {full_key: cfg})


def _full_key(kernel: str, key, device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{kernel}|{gpu}|triton-{triton.__version__}|{key}"


def choose(kernel: str, key, configs: list[dict], run: Callable[[dict], None],
           device: torch.device) -> dict:
    """The config to launch ``kernel`` with for the problem ``key`` (see the module docstring)."""
    if not configs:
        raise RuntimeError(f"no launch config fits {kernel} for {key}")
    over = pinned(kernel)
    if over:
        return {**configs[0], **over}
    if len(configs) == 1:
        return configs[0]
    mem_key = (kernel, key, device)
    hit = _memory.get(mem_key)
    if hit is not None and hit in configs:
        return hit
    full = _full_key(kernel, key, device)
    with _lock:
        hit = _disk_table().get(full)
    if hit in configs:
        _memory[mem_key] = hit
        return hit
    if not _tuning_allowed(device):
        return configs[0]
    best, best_ms, first_error = None, float("inf"), None
    for cfg in configs:
        try:
            ms = triton.testing.do_bench(lambda: run(cfg), warmup=5, rep=20)
        except Exception as e:  # a config that does not compile or launch here is skipped
            first_error = first_error or e
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise first_error
    with _lock:
        _memory[mem_key] = best
        _save(full, best)
    return best
