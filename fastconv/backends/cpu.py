"""The ``cpu`` backend: C++ kernels in csrc/cpu (at::parallel_for, fused epilogues)."""
from __future__ import annotations

from ._native import (  # noqa: F401  (the backend's ops)
    DTYPES, conv2d_bwd, conv2d_fwd, extension_missing, kernel_missing, max_pool2d_bwd, max_pool2d_fwd,
    relu_bwd, relu_fwd)

NAME = "cpu"


def available() -> str | None:
    return extension_missing()


def unsupported(op: str, *args) -> str | None:
    x = args[0]
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got a tensor on {x.device}"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported"
    return kernel_missing(op, "cpu")
