"""The fastconv custom ops, registered with ``torch.library`` (docs/design.md §4).

Registration only: each op of the ``fastconv`` namespace is a custom op whose body, fake
kernel (shapes, dtypes and strides) and autograd formula are those of ``_impl``; the backward
of each forward op is a custom op too. This is what ``torch.compile``, ``torch.export``, fake
tensors and ``opcheck`` see: one opaque op per layer. The public functions are in
``functional.py``.

    conv2d_fwd(x, w, b, stride, padding, dilation, groups, relu, pool) -> (y, idx)
    conv2d_bwd(dy, x, w, y, idx, stride, padding, dilation, groups, relu, pool, output_mask)
        -> (dx, dw, db)
    relu_fwd(x) -> y;  relu_bwd(dy, y) -> dx
    max_pool2d_fwd(x, kernel, stride, padding, dilation, ceil_mode) -> (y, idx)
    max_pool2d_bwd(dy, idx, input_hw, kernel, stride, padding, dilation, ceil_mode) -> dx

The ``*_p`` helpers call an op with ConvParams / PoolParams instead of its schema arguments.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _impl
from ._impl import conv_params, pool_params
from ._params import ConvParams, PoolParams

# --------------------------------------------------------------------------- conv2d


@torch.library.custom_op("fastconv::conv2d_fwd", mutates_args=())
def conv2d_fwd(x: Tensor, w: Tensor, b: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], groups: int, relu: bool, pool: int) -> tuple[Tensor, Tensor]:
    return _impl.conv2d_fwd(x, w, b, conv_params(stride, padding, dilation, groups, relu, pool))


@conv2d_fwd.register_fake
def _(x, w, b, stride, padding, dilation, groups, relu, pool):
    return _impl.conv2d_fwd_empty(x, w, conv_params(stride, padding, dilation, groups, relu, pool))


@torch.library.custom_op("fastconv::conv2d_bwd", mutates_args=())
def conv2d_bwd(dy: Tensor, x: Tensor, w: Tensor, y: Optional[Tensor], idx: Optional[Tensor],
               stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
               relu: bool, pool: int, output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    p = conv_params(stride, padding, dilation, groups, relu, pool)
    return _impl.conv2d_bwd(dy, x, w, y, idx, p, tuple(bool(m) for m in output_mask))


@conv2d_bwd.register_fake
def _(dy, x, w, y, idx, stride, padding, dilation, groups, relu, pool, output_mask):
    return _impl.conv2d_bwd_empty(x, w, output_mask)


def conv2d_fwd_p(x: Tensor, w: Tensor, b: Optional[Tensor], p: ConvParams) -> tuple[Tensor, Tensor]:
    return conv2d_fwd(x, w, b, p.stride, p.padding, p.dilation, p.groups, p.relu, p.pool)


def conv2d_bwd_p(dy, x, w, y, idx, p: ConvParams, mask) -> tuple[Tensor, Tensor, Tensor]:
    return conv2d_bwd(dy, x, w, y, idx, p.stride, p.padding, p.dilation, p.groups, p.relu, p.pool, list(mask))


def _conv2d_setup(ctx, inputs, output):
    x, w, b, stride, padding, dilation, groups, relu, pool = inputs
    _impl.conv2d_save(ctx, x, w, b, conv_params(stride, padding, dilation, groups, relu, pool), *output)


def _conv2d_backward(ctx, dy, _didx):
    return _impl.conv2d_backward(ctx, dy, conv2d_bwd_p) + (None,) * 6


conv2d_fwd.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)

# --------------------------------------------------------------------------- relu


@torch.library.custom_op("fastconv::relu_fwd", mutates_args=())
def relu_fwd(x: Tensor) -> Tensor:
    return _impl.relu_fwd(x)


@relu_fwd.register_fake
def _(x):
    return _impl.relu_empty(x)


@torch.library.custom_op("fastconv::relu_bwd", mutates_args=())
def relu_bwd(dy: Tensor, y: Tensor) -> Tensor:
    return _impl.relu_bwd(dy, y)


@relu_bwd.register_fake
def _(dy, y):
    return _impl.relu_empty(y)


def _relu_setup(ctx, inputs, output):
    _impl.relu_save(ctx, output)


def _relu_backward(ctx, dy):
    return _impl.relu_backward(ctx, dy, relu_bwd)


relu_fwd.register_autograd(_relu_backward, setup_context=_relu_setup)

# --------------------------------------------------------------------------- max_pool2d


@torch.library.custom_op("fastconv::max_pool2d_fwd", mutates_args=())
def max_pool2d_fwd(x: Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], ceil_mode: bool) -> tuple[Tensor, Tensor]:
    return _impl.max_pool2d_fwd(x, pool_params(kernel, stride, padding, dilation, ceil_mode))


@max_pool2d_fwd.register_fake
def _(x, kernel, stride, padding, dilation, ceil_mode):
    return _impl.max_pool2d_fwd_empty(x, pool_params(kernel, stride, padding, dilation, ceil_mode))


@torch.library.custom_op("fastconv::max_pool2d_bwd", mutates_args=())
def max_pool2d_bwd(dy: Tensor, idx: Tensor, input_hw: Sequence[int], kernel: Sequence[int],
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   ceil_mode: bool) -> Tensor:
    p = pool_params(kernel, stride, padding, dilation, ceil_mode)
    return _impl.max_pool2d_bwd(dy, idx, (int(input_hw[0]), int(input_hw[1])), p)


@max_pool2d_bwd.register_fake
def _(dy, idx, input_hw, kernel, stride, padding, dilation, ceil_mode):
    return _impl.max_pool2d_bwd_empty(dy, idx, input_hw)


def max_pool2d_fwd_p(x: Tensor, p: PoolParams) -> tuple[Tensor, Tensor]:
    return max_pool2d_fwd(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)


def max_pool2d_bwd_p(dy: Tensor, idx: Tensor, input_hw, p: PoolParams) -> Tensor:
    return max_pool2d_bwd(dy, idx, input_hw, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)


def _pool_setup(ctx, inputs, output):
    x, kernel, stride, padding, dilation, ceil_mode = inputs
    _impl.max_pool2d_save(ctx, x, pool_params(kernel, stride, padding, dilation, ceil_mode), output[1])


def _pool_backward(ctx, dy, _didx):
    return (_impl.max_pool2d_backward(ctx, dy, max_pool2d_bwd_p),) + (None,) * 5


max_pool2d_fwd.register_autograd(_pool_backward, setup_context=_pool_setup)
