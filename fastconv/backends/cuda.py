"""The ``cuda`` backend: CUDA C++ kernels in csrc/cuda (direct fused conv, pooling, relu)."""
from __future__ import annotations

from .. import _ext
from ._native import (  # noqa: F401  (the backend's ops)
    DTYPES, conv2d_bwd, conv2d_fwd, extension_missing, kernel_missing, max_pool2d_bwd, max_pool2d_fwd,
    relu_bwd, relu_fwd)

NAME = "cuda"


def available() -> str | None:
    missing = extension_missing()
    if missing:
        return missing
    if not _ext.status()["cuda_kernels"]:
        return "the extension was built without CUDA kernels (see `fastconv info`)"
    return None


def unsupported(op: str, *args) -> str | None:
    x = args[0]
    if x.device.type != "cuda":
        return f"it runs on CUDA tensors, got a tensor on {x.device}"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported"
    return kernel_missing(op, "cuda")
