"""relu forward and backward, elementwise over the flat storage.

    y = relu(x) = x < 0 ? 0 : x        (NaN stays NaN, like torch.relu)
    dx = y <= 0 ? 0 : dy                (torch.threshold_backward(dy, y, 0))

x, dy and y arrive contiguous in one memory format, so element i of the
storage is the same logical element in all of them; offsets are 64-bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tune
from ._common import cdiv, device_guard
from .configs import relu_configs


@triton.jit
def _relu_fwd_kernel(
    x_ptr,    # [numel] storage of x
    y_ptr,    # [numel] storage of y, same layout
    numel,
    BLOCK_M: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, tl.where(x < 0, 0.0, x).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _relu_bwd_kernel(
    dy_ptr,   # [numel] storage of dy
    y_ptr,    # [numel] storage of y, same layout
    dx_ptr,   # [numel] storage of dx, same layout
    numel,
    BLOCK_M: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = offs < numel
    g = tl.load(dy_ptr + offs, mask=mask, other=0.0)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    tl.store(dx_ptr + offs, tl.where(y <= 0, 0.0, g).to(dx_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, tensors, numel, device):
    cfg = _tune.choose("relu", (), relu_configs(), lambda c: None, device)
    with device_guard(tensors[0]):
        kernel[(cdiv(numel, cfg["BLOCK_M"]),)](*tensors, numel, **cfg)


def relu_fwd(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    _launch(_relu_fwd_kernel, (x, y), x.numel(), x.device)
    return y


def relu_bwd(dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dx = torch.empty_like(y)
    _launch(_relu_bwd_kernel, (dy, y, dx), y.numel(), y.device)
    return dx
