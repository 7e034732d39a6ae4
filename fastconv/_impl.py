"""The bodies of the fastconv ops, and what each op saves for backward (docs/design.md §4).

Both ways into an op run these functions: the registered custom ops (``ops.py``) and the
eager autograd Functions (``_eager.py``). Here, once per op:

* the body: operands made contiguous in x's memory format, the empty-batch shortcut, the backend
  call (``backends.select``); ``*_empty`` gives the outputs' shapes, dtypes and strides without
  computing them (the fake kernels and empty inputs);
* ``*_save`` / ``*_backward``: the saved tensors (the fused conv keeps x, w, the pooled y when
  relu is on and the uint8 idx when pooling; never a full-resolution activation) and the
  gradient mask. ``ctx`` is a custom op's or an autograd Function's context (both have
  ``save_for_backward``, ``mark_non_differentiable``, ``needs_input_grad``); ``bwd`` is the
  backward body to call, this module's or its custom op.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import backends
from ._layout import empty, memory_format_of
from ._params import ConvParams, PoolParams


def conv_params(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                relu: bool, pool: int) -> ConvParams:
    """ConvParams from the custom op's schema arguments."""
    return ConvParams(tuple(stride), tuple(padding), tuple(dilation), int(groups), bool(relu), int(pool))


def pool_params(kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                ceil_mode: bool) -> PoolParams:
    """PoolParams from the custom op's schema arguments."""
    return PoolParams(tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), bool(ceil_mode))


def _nothing(like: Tensor, dtype=None) -> Tensor:
    """The empty tensor that stands for an output the call does not produce."""
    return torch.empty(0, dtype=dtype or like.dtype, device=like.device)


# --------------------------------------------------------------------------- conv2d


def conv2d_fwd(x: Tensor, w: Tensor, b: Optional[Tensor], p: ConvParams, be=None) -> tuple[Tensor, Tensor]:
    """(y, idx) of the fused conv (docs/design.md §2.1); idx is empty without pooling. ``be``:
    the backend module the caller already selected for this call, else selected here."""
    x = x.contiguous(memory_format=memory_format_of(x))
    b = b.contiguous() if b is not None else None
    if x.shape[0] == 0:
        return conv2d_fwd_empty(x, w, p)
    return (be or backends.select("conv2d_fwd", x, w, b, p)).conv2d_fwd(x, w, b, p)


def conv2d_fwd_empty(x: Tensor, w: Tensor, p: ConvParams) -> tuple[Tensor, Tensor]:
    fmt = memory_format_of(x)
    PO, QO = p.out_hw(x.shape[2], x.shape[3], w.shape[2], w.shape[3])
    shape = (x.shape[0], w.shape[0], PO, QO)
    idx = empty(shape, x, fmt, torch.uint8) if p.pool > 1 else _nothing(x, torch.uint8)
    return empty(shape, x, fmt), idx


def conv2d_bwd(dy: Tensor, x: Tensor, w: Tensor, y: Optional[Tensor], idx: Optional[Tensor], p: ConvParams,
               mask: tuple[bool, bool, bool]) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db) of the fused conv (docs/design.md §2.2), an empty tensor where mask is False."""
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    dy = dy.contiguous(memory_format=fmt)
    if x.shape[0] == 0:
        dx = empty(x.shape, x, fmt).zero_()
        dw = torch.zeros(w.shape, dtype=w.dtype, device=w.device)
        db = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    else:
        dx, dw, db = backends.select("conv2d_bwd", dy, x, w, y, idx, p, mask).conv2d_bwd(dy, x, w, y, idx, p, mask)
    return (dx if mask[0] else _nothing(x), dw if mask[1] else _nothing(w), db if mask[2] else _nothing(w))


def conv2d_bwd_empty(x: Tensor, w: Tensor, mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    dx = empty(x.shape, x, memory_format_of(x)) if mask[0] else _nothing(x)
    dw = torch.empty(w.shape, dtype=w.dtype, device=w.device) if mask[1] else _nothing(w)
    db = w.new_empty((w.shape[0],)) if mask[2] else _nothing(w)
    return dx, dw, db


def conv2d_save(ctx, x: Tensor, w: Tensor, b: Optional[Tensor], p: ConvParams, y: Tensor, idx: Tensor) -> None:
    ctx.p = p
    ctx.has_bias = b is not None
    ctx.save_for_backward(x, w, y if p.relu else None, idx if p.pool > 1 else None)
    ctx.mark_non_differentiable(idx)


ConvBwd = Callable[..., tuple[Tensor, Tensor, Tensor]]


def conv2d_backward(ctx, dy: Tensor, bwd: ConvBwd) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(dx, dw, db) for autograd: None where no gradient is wanted (or there is no bias)."""
    x, w, y, idx = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = (bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2]))
    dx, dw, db = bwd(dy, x, w, y, idx, ctx.p, mask)
    return dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None


# --------------------------------------------------------------------------- relu


def any_format(x: Tensor) -> torch.memory_format:
    return memory_format_of(x) if x.dim() == 4 else torch.contiguous_format


def relu_fwd(x: Tensor, be=None) -> Tensor:
    x = x.contiguous(memory_format=any_format(x))
    if x.numel() == 0:
        return torch.empty_like(x)
    return (be or backends.select("relu_fwd", x)).relu_fwd(x)


def relu_bwd(dy: Tensor, y: Tensor) -> Tensor:
    """dx = y <= 0 ? 0 : dy: NaN passes the gradient, like torch (docs/design.md §2.3)."""
    fmt = any_format(y)
    dy = dy.contiguous(memory_format=fmt)
    y = y.contiguous(memory_format=fmt)
    if y.numel() == 0:
        return torch.empty_like(y)
    return backends.select("relu_bwd", dy, y).relu_bwd(dy, y)


def relu_empty(x: Tensor) -> Tensor:
    return empty(x.shape, x, any_format(x))


def relu_save(ctx, y: Tensor) -> None:
    ctx.save_for_backward(y)


def relu_backward(ctx, dy: Tensor, bwd: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    (y,) = ctx.saved_tensors
    return bwd(dy, y)


# --------------------------------------------------------------------------- max_pool2d


def max_pool2d_fwd(x: Tensor, p: PoolParams, be=None) -> tuple[Tensor, Tensor]:
    """(y, idx) of max_pool2d, idx the int32 plane index h*W + w of each max (``be``: as in
    conv2d_fwd)."""
    x = x.contiguous(memory_format=memory_format_of(x))
    if x.numel() == 0:
        return max_pool2d_fwd_empty(x, p)
    return (be or backends.select("max_pool2d_fwd", x, p)).max_pool2d_fwd(x, p)


def max_pool2d_fwd_empty(x: Tensor, p: PoolParams) -> tuple[Tensor, Tensor]:
    fmt = memory_format_of(x)
    OH, OW = p.out_hw(x.shape[2], x.shape[3])
    shape = (x.shape[0], x.shape[1], OH, OW)
    return empty(shape, x, fmt), empty(shape, x, fmt, torch.int32)


def max_pool2d_bwd(dy: Tensor, idx: Tensor, input_hw: tuple[int, int], p: PoolParams) -> Tensor:
    fmt = memory_format_of(idx)
    dy = dy.contiguous(memory_format=fmt)
    idx = idx.contiguous(memory_format=fmt)
    if dy.numel() == 0:
        return max_pool2d_bwd_empty(dy, idx, input_hw).zero_()
    return backends.select("max_pool2d_bwd", dy, idx, input_hw, p).max_pool2d_bwd(dy, idx, input_hw, p)


def max_pool2d_bwd_empty(dy: Tensor, idx: Tensor, input_hw: Sequence[int]) -> Tensor:
    return empty((dy.shape[0], dy.shape[1], input_hw[0], input_hw[1]), dy, memory_format_of(idx))


def max_pool2d_save(ctx, x: Tensor, p: PoolParams, idx: Tensor) -> None:
    ctx.p = p
    ctx.input_hw = (x.shape[2], x.shape[3])
    ctx.save_for_backward(idx)
    ctx.mark_non_differentiable(idx)


def max_pool2d_backward(ctx, dy: Tensor, bwd: Callable[..., Tensor]) -> Tensor:
    (idx,) = ctx.saved_tensors
    return bwd(dy, idx, ctx.input_hw, ctx.p)
