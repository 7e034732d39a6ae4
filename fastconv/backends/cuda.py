"""The ``cuda`` backend: CUDA C++ kernels in csrc/cuda.

* ``conv2d_fwd`` (csrc/cuda/conv2d.cu): the tile convolution with the bias /
  relu / max-pool epilogue fused in registers (conv2d_tile.cuh, planned by
  conv2d_tile_plan.h); built for few input channels and depthwise convs,
  correct for every shape.
* ``conv2d_bwd``: dgrad through the same kernel on the unpooled, zero-inserted
  gradient (conv2d_dgrad.cu); wgrad and the bias gradient by a deterministic
  two-pass reduction (conv2d_wgrad.cu).
* ``max_pool2d`` (max_pool2d.cu: int32 plane index, gather backward) and
  ``relu`` (relu.cu).

Every kernel takes float32, float16, bfloat16 (fp32 accumulation) and float64,
NCHW or channels_last. Sizes are 32-bit inside the kernels (offsets are
64-bit): a call with a dimension past that is declined, so the dispatcher
falls back (or raises in strict mode).
"""
from __future__ import annotations

import torch

from .. import _ext
from .._params import INT32_MAX
from ._native import (  # noqa: F401  (the backend's ops)
    DTYPES, conv2d_bwd, conv2d_fwd, extension_missing, max_pool2d_bwd, max_pool2d_fwd, relu_bwd, relu_fwd, unsupported_on)

NAME = "cuda"

def available() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    missing = extension_missing()
    if missing:
        return missing
    if not _ext.load_cuda():  # built on this first use with a device (fastconv/_ext.py)
        return f"the CUDA kernels are not built: {_ext.status()['cuda']['why']} (see `fastconv info`)"
    return None


def _too_large(op: str, args) -> str | None:
    if op.startswith("conv2d"):
        x, w = (args[0], args[1]) if op == "conv2d_fwd" else (args[1], args[2])
        sizes = tuple(x.shape[1:]) + tuple(w.shape)
    elif op == "max_pool2d_fwd":
        sizes = tuple(args[0].shape[1:]) + (args[0].shape[2] * args[0].shape[3],)
    elif op == "max_pool2d_bwd":
        H, W = args[2]
        sizes = (args[0].shape[1], H, W, H * W)
    else:
        return None
    if max(sizes) > INT32_MAX:
        return f"a size of {max(sizes)} exceeds the kernels' 32-bit size fields"
    return None


def unsupported(op: str, *args) -> str | None:
    x = args[0]
    if x.device.type == "cuda" and not _ext.load_cuda():
        return f"the CUDA kernels are not built: {_ext.status()['cuda']['why']}"
    return unsupported_on("cuda", op, x) or _too_large(op, args)
