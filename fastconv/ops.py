"""The public fastconv ops, registered with ``torch.library``.

Each op is a custom op in the ``fastconv`` namespace with a fake kernel (shape,
dtype and memory format only) and, for the forward ops, an autograd formula
whose backward is a custom op too. The real kernels pick a backend per call
(:func:`fastconv.backends.select`), so the same graph runs on any backend and
``torch.compile(fullgraph=True)`` sees one opaque op per layer.

Fused conv (DESIGN section 3)::

    y = pool_k(act(conv2d(x, w, stride, padding, dilation, groups) + b))

The forward returns (y, idx) where idx is the uint8 window index of each pooled
max; backward saves exactly x, w, y (when act is relu) and idx (when pooling)
and never a full-resolution activation.

The public functions (``conv2d``, ``relu``, ``max_pool2d``) validate their
arguments, then call the custom op, or, in plain eager mode, its body through
the direct eager path of fastconv/_eager.py, which saves the custom-op
dispatcher's host overhead. The op bodies are the ``*_impl`` functions here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _args, _eager, backends
from ._layout import empty, memory_format_of
from ._params import ConvParams, PoolParams

_NO_IDX_DTYPE = torch.uint8


def _conv_params(stride, padding, dilation, groups, relu, pool) -> ConvParams:
    return ConvParams(tuple(stride), tuple(padding), tuple(dilation), int(groups), bool(relu), int(pool))


def _pool_params(kernel, stride, padding, dilation, ceil_mode) -> PoolParams:
    return PoolParams(tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), bool(ceil_mode))


def _nothing(like: Tensor, dtype=None) -> Tensor:
    return torch.empty(0, dtype=dtype or like.dtype, device=like.device)


# --------------------------------------------------------------------------- conv2d


@torch.library.custom_op("fastconv::conv2d_fwd", mutates_args=())
def conv2d_fwd(x: Tensor, w: Tensor, b: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], groups: int, relu: bool, pool: int) -> tuple[Tensor, Tensor]:
    return conv2d_fwd_impl(x, w, b, _conv_params(stride, padding, dilation, groups, relu, pool))


def conv2d_fwd_impl(x: Tensor, w: Tensor, b: Optional[Tensor], p: ConvParams) -> tuple[Tensor, Tensor]:
    """The body of conv2d_fwd (also run directly by the eager path, fastconv/_eager.py)."""
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    b = b.contiguous() if b is not None else None
    if x.shape[0] == 0:
        return _conv2d_fwd_fake(x, w, b, p.stride, p.padding, p.dilation, p.groups, p.relu, p.pool)
    return backends.select("conv2d_fwd", x, w, b, p).conv2d_fwd(x, w, b, p)


@conv2d_fwd.register_fake
def _conv2d_fwd_fake(x, w, b, stride, padding, dilation, groups, relu, pool):
    p = _conv_params(stride, padding, dilation, groups, relu, pool)
    fmt = memory_format_of(x)
    PO, QO = p.out_hw(x.shape[2], x.shape[3], w.shape[2], w.shape[3])
    shape = (x.shape[0], w.shape[0], PO, QO)
    y = empty(shape, x, fmt)
    idx = empty(shape, x, fmt, torch.uint8) if p.pool > 1 else _nothing(x, torch.uint8)
    return y, idx


@torch.library.custom_op("fastconv::conv2d_bwd", mutates_args=())
def conv2d_bwd(dy: Tensor, x: Tensor, w: Tensor, y: Optional[Tensor], idx: Optional[Tensor],
               stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
               relu: bool, pool: int, output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    p = _conv_params(stride, padding, dilation, groups, relu, pool)
    return conv2d_bwd_impl(dy, x, w, y, idx, p, tuple(bool(m) for m in output_mask))


def conv2d_bwd_impl(dy: Tensor, x: Tensor, w: Tensor, y: Optional[Tensor], idx: Optional[Tensor],
                    p: ConvParams, mask: tuple[bool, bool, bool]) -> tuple[Tensor, Tensor, Tensor]:
    """The body of conv2d_bwd: (dx, dw, db), an empty tensor where mask is False."""
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    dy = dy.contiguous(memory_format=fmt)
    if x.shape[0] == 0:
        dx = empty(x.shape, x, fmt).zero_()
        dw = torch.zeros(w.shape, dtype=w.dtype, device=w.device)
        db = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    else:
        dx, dw, db = backends.select("conv2d_bwd", dy, x, w, y, idx, p, mask).conv2d_bwd(
            dy, x, w, y, idx, p, mask)
    return (dx if mask[0] else _nothing(x), dw if mask[1] else _nothing(w), db if mask[2] else _nothing(w))


@conv2d_bwd.register_fake
def _(dy, x, w, y, idx, stride, padding, dilation, groups, relu, pool, output_mask):
    fmt = memory_format_of(x)
    dx = empty(x.shape, x, fmt) if output_mask[0] else _nothing(x)
    dw = torch.empty(w.shape, dtype=w.dtype, device=w.device) if output_mask[1] else _nothing(w)
    db = w.new_empty((w.shape[0],)) if output_mask[2] else _nothing(w)
    return dx, dw, db


def _conv2d_setup(ctx, inputs, output):
    x, w, b, stride, padding, dilation, groups, relu, pool = inputs
    y, idx = output
    ctx.conv_args = (stride, padding, dilation, groups, relu, pool)
    ctx.has_bias = b is not None
    ctx.save_for_backward(x, w, y if relu else None, idx if pool > 1 else None)
    ctx.mark_non_differentiable(idx)


def _conv2d_backward(ctx, dy, _didx):
    x, w, y, idx = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2])]
    dx, dw, db = conv2d_bwd(dy, x, w, y, idx, *ctx.conv_args, mask)
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None,
            None, None, None, None, None, None)


conv2d_fwd.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


def _autocast(*ts):
    """Cast like F.conv2d under autocast: floating inputs (not float64) to the autocast dtype."""
    ref = ts[0]
    if not isinstance(ref, Tensor):
        return ts
    dev = ref.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return ts
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in ts)


def conv2d(x: Tensor, w: Tensor, b: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups=1,
           activation: Optional[str] = None, pool: Optional[int] = None) -> Tensor:
    """Fused ``max_pool2d(act(conv2d(x, w, b, ...)), pool)``.

    Arguments follow ``torch.nn.functional.conv2d`` (padding: int, pair, 'same'
    or 'valid'); ``activation`` is None or 'relu'; ``pool`` is None or k for a
    non-overlapping k x k max-pool with stride k (floor mode). x may be
    [N, C, H, W] or unbatched [C, H, W]; the output keeps x's memory format.
    """
    x, w, b = _autocast(x, w, b)
    _args.tensor("x", x, (3, 4))
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    p = _args.conv(x, w, b, stride, padding, dilation, groups, activation, pool)
    if _eager.usable(x, w, b):
        y, _ = _eager.FastconvConv2d.apply(x, w, b, p)
    else:
        y, _ = conv2d_fwd(x, w, b, p.stride, p.padding, p.dilation, p.groups, p.relu, p.pool)
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------- relu


def _fmt_any(x: Tensor):
    return memory_format_of(x) if x.dim() == 4 else torch.contiguous_format


@torch.library.custom_op("fastconv::relu_fwd", mutates_args=())
def relu_fwd(x: Tensor) -> Tensor:
    return relu_fwd_impl(x)


def relu_fwd_impl(x: Tensor) -> Tensor:
    x = x.contiguous(memory_format=_fmt_any(x))
    if x.numel() == 0:
        return torch.empty_like(x)
    return backends.select("relu_fwd", x).relu_fwd(x)


@relu_fwd.register_fake
def _(x):
    return empty(x.shape, x, _fmt_any(x))


@torch.library.custom_op("fastconv::relu_bwd", mutates_args=())
def relu_bwd(dy: Tensor, y: Tensor) -> Tensor:
    return relu_bwd_impl(dy, y)


def relu_bwd_impl(dy: Tensor, y: Tensor) -> Tensor:
    fmt = _fmt_any(y)
    dy = dy.contiguous(memory_format=fmt)
    y = y.contiguous(memory_format=fmt)
    if y.numel() == 0:
        return torch.empty_like(y)
    return backends.select("relu_bwd", dy, y).relu_bwd(dy, y)


@relu_bwd.register_fake
def _(dy, y):
    return empty(y.shape, y, _fmt_any(y))


def _relu_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_backward(ctx, dy):
    (y,) = ctx.saved_tensors
    return relu_bwd(dy, y)


relu_fwd.register_autograd(_relu_backward, setup_context=_relu_setup)


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)`` elementwise (NaN stays NaN), any shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"x must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}")
    return _eager.FastconvReLU.apply(x) if _eager.usable(x) else relu_fwd(x)


# --------------------------------------------------------------------------- max_pool2d


@torch.library.custom_op("fastconv::max_pool2d_fwd", mutates_args=())
def max_pool2d_fwd(x: Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], ceil_mode: bool) -> tuple[Tensor, Tensor]:
    return max_pool2d_fwd_impl(x, _pool_params(kernel, stride, padding, dilation, ceil_mode))


def max_pool2d_fwd_impl(x: Tensor, p: PoolParams) -> tuple[Tensor, Tensor]:
    x = x.contiguous(memory_format=memory_format_of(x))
    if x.numel() == 0:
        return _max_pool2d_fwd_fake(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
    return backends.select("max_pool2d_fwd", x, p).max_pool2d_fwd(x, p)


@max_pool2d_fwd.register_fake
def _max_pool2d_fwd_fake(x, kernel, stride, padding, dilation, ceil_mode):
    p = _pool_params(kernel, stride, padding, dilation, ceil_mode)
    fmt = memory_format_of(x)
    OH, OW = p.out_hw(x.shape[2], x.shape[3])
    shape = (x.shape[0], x.shape[1], OH, OW)
    return empty(shape, x, fmt), empty(shape, x, fmt, torch.int32)


@torch.library.custom_op("fastconv::max_pool2d_bwd", mutates_args=())
def max_pool2d_bwd(dy: Tensor, idx: Tensor, input_hw: Sequence[int], kernel: Sequence[int],
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   ceil_mode: bool) -> Tensor:
    p = _pool_params(kernel, stride, padding, dilation, ceil_mode)
    return max_pool2d_bwd_impl(dy, idx, (int(input_hw[0]), int(input_hw[1])), p)


def max_pool2d_bwd_impl(dy: Tensor, idx: Tensor, hw: tuple[int, int], p: PoolParams) -> Tensor:
    fmt = memory_format_of(idx)
    dy = dy.contiguous(memory_format=fmt)
    idx = idx.contiguous(memory_format=fmt)
    if dy.numel() == 0:
        return empty((dy.shape[0], dy.shape[1]) + hw, dy, fmt).zero_()
    return backends.select("max_pool2d_bwd", dy, idx, hw, p).max_pool2d_bwd(dy, idx, hw, p)


@max_pool2d_bwd.register_fake
def _(dy, idx, input_hw, kernel, stride, padding, dilation, ceil_mode):
    return empty((dy.shape[0], dy.shape[1], input_hw[0], input_hw[1]), dy, memory_format_of(idx))


def _pool_setup(ctx, inputs, output):
    x, kernel, stride, padding, dilation, ceil_mode = inputs
    ctx.pool_args = ((x.shape[2], x.shape[3]), kernel, stride, padding, dilation, ceil_mode)
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _pool_backward(ctx, dy, _didx):
    (idx,) = ctx.saved_tensors
    return max_pool2d_bwd(dy, idx, *ctx.pool_args), None, None, None, None, None


max_pool2d_fwd.register_autograd(_pool_backward, setup_context=_pool_setup)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max-pool like ``torch.nn.functional.max_pool2d`` (general kernel/stride/padding/
    dilation/ceil_mode, overlapping windows allowed). x is [N, C, H, W] or [C, H, W]."""
    _args.tensor("x", x, (3, 4))
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    p = _args.max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
    if _eager.usable(x):
        y, _ = _eager.FastconvMaxPool2d.apply(x, p)
    else:
        y, _ = max_pool2d_fwd(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
    return y.squeeze(0) if unbatched else y
