"""General max_pool2d (any kernel, stride, padding, dilation, ceil_mode), forward and backward.

Forward, one program per tile of [BLOCK_M output pixels (n, oh, ow), BLOCK_N channels]::

    y[n, c, oh, ow]   = max over taps (kh, kw) inside the input of x[n, c, ih, iw],
                        ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw
    idx[n, c, oh, ow] = ih*W + iw of that max (int32, in the input plane)

The taps are visited in row-major order with PyTorch's update rule
``v > best or isnan(v)``: ties keep the first maximum, a NaN wins (the last
NaN of the window), and the index starts at the first in-bounds tap, as in
``torch.nn.functional.max_pool2d(..., return_indices=True)``. Values are
compared in fp32, exact for every input dtype.

Backward, a gather (no atomics; overlapping windows such as 3x3/s2 sum up):
each input pixel (h, w) visits the NH x NW outputs whose windows can cover it,
oh = (h + ph) // sh - t for t < NH = ceil(((KH-1)*dh + 1) / sh) (same for w), and

    dx[n, c, h, w] = sum over those (oh, ow) inside [OH, OW] of dy[n, c, oh, ow] * (idx[n, c, oh, ow] == h*W + w)

accumulated in fp32. Pointers: x, dx [N, C, H, W] with strides (sxn, sxc, sxh,
sxw); y, idx, dy [N, C, OH, OW] sharing strides (syn, syc, syh, syw).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._layout import empty, memory_format_of
from ..._params import PoolParams
from . import _tune
from ._common import cdiv, device_guard, pixel_tile, strides4
from .configs import max_pool2d_configs


@triton.jit(do_not_specialize=["H", "W", "OH", "OW", "NOUT", "pad_h", "pad_w"])
def _max_pool2d_fwd_kernel(
    # Pointers
    x_ptr,    # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    y_ptr,    # [N, C, OH, OW], strides (syn, syc, syh, syw)
    idx_ptr,  # [N, C, OH, OW] int32, same strides as y
    # Dimensions
    C, H, W, OH, OW, NOUT, KH, KW, str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    # Meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n, oh, ow, m_ok, c, c_ok = pixel_tile(NOUT, OH, OW, C, BLOCK_M, BLOCK_N)
    hs = oh * str_h - pad_h
    ws = ow * str_w - pad_w
    # PyTorch's index seed: the first tap inside the input
    h0 = hs + dil_h * ((tl.maximum(-hs, 0) + dil_h - 1) // dil_h)
    w0 = ws + dil_w * ((tl.maximum(-ws, 0) + dil_w - 1) // dil_w)
    best = tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32)
    best_at = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32) + (h0 * W + w0)[:, None]
    x_rows = x_ptr + n.to(tl.int64) * sxn
    x_cols = c * sxc
    for kh in range(0, KH):
        ih = hs + kh * dil_h
        h_ok = m_ok & (ih >= 0) & (ih < H)
        for kw in range(0, KW):
            iw = ws + kw * dil_w
            ok = h_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + x_cols[None, :],
                        mask=ok[:, None] & c_ok[None, :], other=float("-inf")).to(tl.float32)
            take = (v > best) | (v != v)
            best = tl.where(take, v, best)
            best_at = tl.where(take, (ih * W + iw)[:, None], best_at)
    off = (n.to(tl.int64) * syn + oh * syh + ow * syw)[:, None] + c[None, :] * syc
    mask = m_ok[:, None] & c_ok[None, :]
    tl.store(y_ptr + off, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + off, best_at, mask=mask)


@triton.jit(do_not_specialize=["H", "W", "OH", "OW", "NPIX", "pad_h", "pad_w"])
def _max_pool2d_bwd_kernel(
    # Pointers
    dy_ptr,   # [N, C, OH, OW], strides (syn, syc, syh, syw)
    idx_ptr,  # [N, C, OH, OW] int32, same strides as dy
    dx_ptr,   # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    # Dimensions
    C, H, W, OH, OW, NPIX, NH, NW, str_h, str_w, pad_h, pad_w,
    syn, syc, syh, syw, sxn, sxc, sxh, sxw,
    # Meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n, h, w, m_ok, c, c_ok = pixel_tile(NPIX, H, W, C, BLOCK_M, BLOCK_N)
    me = (h * W + w)[:, None]
    oh_hi = (h + pad_h) // str_h
    ow_hi = (w + pad_w) // str_w
    y_rows = n.to(tl.int64) * syn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for th in range(0, NH):
        oh = oh_hi - th
        h_ok = m_ok & (oh >= 0) & (oh < OH)
        for tw in range(0, NW):
            ow = ow_hi - tw
            ok = h_ok & (ow >= 0) & (ow < OW)
            off = (y_rows + oh * syh + ow * syw)[:, None] + c[None, :] * syc
            mask = ok[:, None] & c_ok[None, :]
            hit = tl.load(idx_ptr + off, mask=mask, other=-1) == me
            # the load's mask must not depend on hit: a data-dependent mask is one element
            # per load instruction; the whole dy tile loads as 16-byte vectors
            g = tl.load(dy_ptr + off, mask=mask, other=0.0)
            acc += tl.where(hit, g.to(tl.float32), 0.0)
    off = (n.to(tl.int64) * sxn + h * sxh + w * sxw)[:, None] + c[None, :] * sxc
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


def max_pool2d_fwd(x: torch.Tensor, p: PoolParams):
    """(y, idx int32) in x's memory format."""
    fmt = memory_format_of(x)
    N, C, H, W = x.shape
    OH, OW = p.out_hw(H, W)
    y = empty((N, C, OH, OW), x, fmt)
    idx = empty((N, C, OH, OW), x, fmt, torch.int32)
    NOUT = N * OH * OW

    def run(cfg):
        grid = (cdiv(NOUT, cfg["BLOCK_M"]) * cdiv(C, cfg["BLOCK_N"]),)
        _max_pool2d_fwd_kernel[grid](
            x, y, idx, C, H, W, OH, OW, NOUT, *p.kernel, *p.stride, *p.padding, *p.dilation,
            *strides4(x), *strides4(y), **cfg)

    key = (tuple(x.shape), p, str(x.dtype), x.stride())
    with device_guard(x):
        run(_tune.choose("max_pool2d_fwd", key, max_pool2d_configs("max_pool2d_fwd", C), run, x.device))
    return y, idx


def max_pool2d_bwd(dy: torch.Tensor, idx: torch.Tensor, input_hw, p: PoolParams) -> torch.Tensor:
    """dx [N, C, H, W] in dy's memory format."""
    fmt = memory_format_of(dy)
    N, C, OH, OW = dy.shape
    H, W = input_hw
    idx = idx.contiguous(memory_format=fmt)
    dx = empty((N, C, H, W), dy, fmt)
    NPIX = N * H * W
    NH = -(-((p.kernel[0] - 1) * p.dilation[0] + 1) // p.stride[0])
    NW = -(-((p.kernel[1] - 1) * p.dilation[1] + 1) // p.stride[1])

    def run(cfg):
        grid = (cdiv(NPIX, cfg["BLOCK_M"]) * cdiv(C, cfg["BLOCK_N"]),)
        _max_pool2d_bwd_kernel[grid](
            dy, idx, dx, C, H, W, OH, OW, NPIX, NH, NW, *p.stride, *p.padding,
            *strides4(dy), *strides4(dx), **cfg)

    key = (tuple(dy.shape), tuple(input_hw), p, str(dy.dtype), dy.stride())
    with device_guard(dy):
        run(_tune.choose("max_pool2d_bwd", key, max_pool2d_configs("max_pool2d_bwd", C), run, dy.device))
    return dx
