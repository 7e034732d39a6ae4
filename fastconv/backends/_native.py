"""Calls into the C++ operator library ``fastconv_C`` (csrc/), shared by the
``cpu`` and ``cuda`` backends: the same ops, dispatched by device inside torch."""
from __future__ import annotations

import functools

import torch

from .. import _ext
from .._params import ConvParams, PoolParams

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def extension_missing() -> str | None:
    if not _ext.load():
        return f"the C++ extension is not built: {_ext.status()['error']}"
    return None


@functools.lru_cache(maxsize=None)
def kernel_missing(op: str, dispatch_key: str) -> str | None:
    """Asked only once the extension is loaded, whose registrations never change after."""
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastconv_C::{op}", dispatch_key):
        return f"the extension has no {dispatch_key} kernel for {op}"
    return None


_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}


def unsupported_on(device_type: str, op: str, x: torch.Tensor) -> str | None:
    """The reasons shared by both native backends to decline a call of ``op`` whose first
    tensor is ``x``: another device, a dtype without kernels, an op the build lacks."""
    if x.device.type != device_type:
        return f"it runs on {device_type.upper()} tensors, got a tensor on {x.device}"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported"
    return kernel_missing(op, _DISPATCH_KEY[device_type])


def _ops():
    return torch.ops.fastconv_C


def conv2d_fwd(x, w, b, p: ConvParams):
    return _ops().conv2d_fwd(x, w, b, list(p.stride), list(p.padding), list(p.dilation), p.groups,
                             p.relu, p.pool)


def conv2d_bwd(dy, x, w, y, idx, p: ConvParams, mask):
    # the schema takes Tensor y / idx: an empty tensor stands for "relu / pool is off"
    y = y if y is not None else dy.new_empty(0)
    idx = idx if idx is not None else dy.new_empty(0, dtype=torch.uint8)
    dx, dw, db = _ops().conv2d_bwd(dy, x, w, y, idx, list(p.stride), list(p.padding), list(p.dilation),
                                   p.groups, p.relu, p.pool, list(mask))
    return (dx if mask[0] else None), (dw if mask[1] else None), (db if mask[2] else None)


def relu_fwd(x):
    return _ops().relu_fwd(x)


def relu_bwd(dy, y):
    return _ops().relu_bwd(dy, y)


def max_pool2d_fwd(x, p: PoolParams):
    return _ops().max_pool2d_fwd(x, list(p.kernel), list(p.stride), list(p.padding), list(p.dilation),
                                 p.ceil_mode)


def max_pool2d_bwd(dy, idx, input_hw, p: PoolParams):
    return _ops().max_pool2d_bwd(dy, idx, list(input_hw), list(p.kernel), list(p.stride), list(p.padding),
                                 list(p.dilation), p.ceil_mode)
