"""How ``auto`` ranks backends for one call.

On CPU tensors: ``cpu`` (the C++ kernels), else ``reference``; ``reference`` (ATen) for a
standalone relu. On CUDA
tensors: the fastest backend measured for this layer shape on this card, read
from the table that ``bench/bench_layers.py --write-autotable`` writes
(``fastconv/backends/autotable.json`` or ``$FASTCONV_AUTOTABLE``), else a
heuristic: the direct CUDA kernel for depthwise convs, Triton for the rest.
The table may name ``reference`` (cuDNN, then relu and pool) where the fused
kernels were measured slower.

That order is the static rule. Where ``measured`` says so (every CPU call; a CUDA
conv the table does not know), ``auto`` times the candidates and ``reference``
on the first call of a shape and keeps the fastest (fastconv/backends/measure.py;
``FASTCONV_AUTO_MEASURE=0`` leaves the static rule).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .. import _env

TABLE_PATH = Path(__file__).with_name("autotable.json")


def conv_key(x, w_shape, p) -> str:
    """Table key of a conv layer: shape class, not batch or spatial size."""
    C = x.shape[1]
    K, CG, R, S = w_shape
    return (f"conv2d:C{C}:K{K}:R{R}S{S}:s{p.stride[0]}x{p.stride[1]}:g{p.groups}"
            f":relu{int(p.relu)}:pool{p.pool}:{str(x.dtype).replace('torch.', '')}")


@functools.lru_cache(maxsize=None)
def _table() -> dict:
    path = Path(os.environ.get("FASTCONV_AUTOTABLE") or TABLE_PATH)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# every fastconv backend ``auto`` may give a CUDA conv; a table entry names the ones that existed
# when it was measured (``entry``), and one that predates a backend here is timed again instead
CUDA_BACKENDS = ("triton", "cuda", "vendor")
LEGACY_BACKENDS = ("triton", "cuda")  # an entry written as a bare backend name (before "vendor")


def entry(name: str) -> dict:
    """A table entry: ``name`` measured by this version, against the CUDA backends it has."""
    return {"backend": name, "backends": list(CUDA_BACKENDS)}


def table_choice(x, w_shape, p) -> str | None:
    """The table's backend for this conv on this card; None where the table has no entry, or
    only one measured before a backend of this version existed (a stale choice: the 2026-12-04
    H200 run found the pre-vendor table sending VGG backwards to kernels at x0.5 of cuDNN)."""
    e = _table().get(_device_name(x), {}).get(conv_key(x, w_shape, p))
    if e is None:
        return None
    name, among = (e, LEGACY_BACKENDS) if isinstance(e, str) else (e.get("backend"), e.get("backends", ()))
    return name if all(b in among for b in CUDA_BACKENDS) else None


@functools.lru_cache(maxsize=None)
def _device_name_of(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


def _device_name(x) -> str:
    import torch

    return _device_name_of(x.device.index if x.device.index is not None else torch.cuda.current_device())


def measured(op: str, args) -> bool:
    """Whether ``auto`` times the candidates of this call (fastconv/backends/measure.py) instead
    of taking the static rule's first: on CPU tensors always (no table there); on CUDA tensors for a
    max-pool, and for a conv the measured table has no current entry for on this card (the table is
    the prior)."""
    x = args[0] if op != "conv2d_bwd" else args[1]
    if x.device.type == "cpu":
        return True
    if x.device.type != "cuda":
        return False
    if op.startswith("max_pool2d"):  # no table for pools: timed, so a pool convert() swaps never loses
        return True
    if not op.startswith("conv2d"):
        return False
    w, p = (args[1], args[3]) if op == "conv2d_fwd" else (args[2], args[5])
    return table_choice(x, tuple(w.shape), p) is None


def fixed(op: str, device_type: str) -> str | None:
    """The one backend ``auto`` gives ``op`` on this device type whatever the call, else None
    (the eager path asks this before anything costlier: fastconv/_eager.py)."""
    if device_type == "cpu" and op.startswith("relu"):
        # a relu alone is one pass over memory that ATen's vectorized kernel already makes at the
        # machine's bandwidth; fastconv's can only tie it and costs a Python autograd Function
        # more per call (fastconv/_eager.py runs ATen's relu with its C++ autograd instead)
        return "reference"
    return None


def variants(name: str, op: str) -> list[str]:
    """What ``auto`` times for backend ``name`` on ``op``: the cpu backend's two conv cores
    separately (``cpu:smallc``, ``cpu:aten``: the static rule's threshold is one machine's
    crossover, not every machine's) unless FASTCONV_CPU_CONV forces one; else the backend."""
    if name == "cpu" and op.startswith("conv2d") and _env.get("FASTCONV_CPU_CONV", "auto") in ("", "auto"):
        return ["cpu:smallc", "cpu:aten"]
    return [name]


def candidates(op: str, args) -> list[str]:
    """Backends to try in order for ``op(*args)``; the first that can take it runs."""
    x = args[0]
    name = fixed(op, x.device.type)
    if name is not None:
        return [name]
    if x.device.type == "cpu":
        return ["cpu"]
    if x.device.type != "cuda":
        return []
    if op.startswith("conv2d"):
        # conv2d_fwd(x, w, b, p) / conv2d_bwd(dy, x, w, y, idx, p, mask)
        w, p = (args[1], args[3]) if op == "conv2d_fwd" else (args[2], args[5])
        x = args[0] if op == "conv2d_fwd" else args[1]
        w_shape = tuple(w.shape)
        best = table_choice(x, w_shape, p)
        if best:
            return list(dict.fromkeys([best, "triton", "cuda", "vendor"]))
        C = x.shape[1]
        _, CG, R, S = w_shape
        if p.groups == C and CG == 1:  # depthwise: the direct CUDA kernel's home ground
            return ["cuda", "triton", "vendor"]
        # measured on an H200 (bench/results/nvidia-h200): the Triton kernels beat the
        # direct CUDA kernel on every small-C layer too (e.g. 3->32 @32: 0.098 vs 0.143 ms)
        return ["triton", "cuda", "vendor"]  # vendor: cuDNN's GEMM + the fused passes (measured)
    return ["cuda", "triton"]
