"""Depthwise conv (groups == C, one input channel per group), forward and backward.

Output channel k reads input channel k // MULT (MULT = K / C, the channel
multiplier), with a weight w[k, 0, r, s]:

    c[n, k, oh, ow]   = sum over (r, s) of x[n, k // MULT, oh*sh - pt + r*dh, ow*sw - pl + s*dw] * w[k, 0, r, s]
    dx[n, ci, h, w]   = sum over j < MULT and taps (r, s) with oh*sh = h + pt - r*dh, ow*sw = w + pl - s*dw
                        of dC[n, ci*MULT + j, oh, ow] * w[ci*MULT + j, 0, r, s]
    dw[k, 0, r, s]    = sum over (n, oh, ow) of dC[n, k, oh, ow] * x[n, k // MULT, ih, iw]

There is no reduction over channels, so a GEMM would leave the tensor cores
idle: these are direct kernels on [BLOCK_M pixels, BLOCK_N channels] tiles
with fp32 accumulation, channels on the fast axis (contiguous in
channels_last). The forward shares the window-ordered rows and the fused
bias/relu/pool epilogue of the implicit GEMM (``_common.store_pooled``); the
backward rebuilds dC from (dy, y, idx) (``_common.load_dc``). wgrad splits
the pixels in chunks (grid axis 1), keeps one fp32 row per tap
[RS_P2, BLOCK_N] and adds it into dw_acc [K, R*S] with atomics.

Pointers: x, dx [N, C, H, W] with strides (sxn, sxc, sxh, sxw); dy, y, idx
[N, K, PO, QO] sharing strides (sdn, sdk, sdh, sdw) (y, idx of the forward:
(syn, syk, syh, syw)); w as [K, R*S] contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._layout import empty, memory_format_of
from ..._params import ConvParams
from . import _tune
from ._common import (cdiv, device_guard, grad_operands, load_dc, next_pow2, nhwc_on_gpu, pixel_tile, store_pooled,
                      strides4, window_rows, window_tile_rows)
from ._geom import conv_geom, conv_outputs
from .configs import conv2d_depthwise_configs
from .conv2d_wgrad import split_count


@triton.jit(do_not_specialize=["H", "W", "PO", "QO", "NWIN", "pad_h", "pad_w"])
def _conv2d_depthwise_fwd_kernel(
    # Pointers
    x_ptr,    # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    w_ptr,    # [K, R*S] contiguous
    b_ptr,    # [K] (read only when HAS_BIAS)
    y_ptr,    # [N, K, PO, QO], strides (syn, syk, syh, syw)
    idx_ptr,  # [N, K, PO, QO] uint8, same strides as y (written only when POOL > 1)
    # Dimensions
    H, W, PO, QO, NWIN, K, MULT, R, S,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, syn, syk, syh, syw,
    # Meta-parameters
    POOL: tl.constexpr, KK: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(K, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    n, oh, ow, m_ok = window_tile_rows(pid_m, NWIN, PO, QO, POOL, KK, BLOCK_M)
    ih0 = oh * str_h - pad_h
    iw0 = ow * str_w - pad_w
    x_rows = x_ptr + n.to(tl.int64) * sxn

    k = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k < K
    x_cols = (k // MULT) * sxc
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for rs in range(0, R * S):
        ih = ih0 + (rs // S) * dil_h
        iw = iw0 + (rs % S) * dil_w
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + x_cols[None, :],
                    mask=ok[:, None] & k_ok[None, :], other=0.0)
        wv = tl.load(w_ptr + k * (R * S) + rs, mask=k_ok, other=0.0)
        acc += a.to(tl.float32) * wv.to(tl.float32)[None, :]
    store_pooled(acc, pid_m, k, k_ok, b_ptr, y_ptr, idx_ptr, NWIN, PO, QO,
                 syn, syk, syh, syw, POOL, KK, BLOCK_M, BLOCK_N, HAS_BIAS, RELU)


@triton.jit(do_not_specialize=["H", "W", "PO", "QO", "NPIX", "pad_h", "pad_w"])
def _conv2d_depthwise_dgrad_kernel(
    # Pointers
    dy_ptr,   # [N, K, PO, QO], strides (sdn, sdk, sdh, sdw)
    y_ptr,    # [N, K, PO, QO] pooled output (read only when RELU)
    idx_ptr,  # [N, K, PO, QO] uint8 window index (read only when POOL > 1)
    w_ptr,    # [K, R*S] contiguous
    dx_ptr,   # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    # Dimensions
    H, W, PO, QO, NPIX, C, MULT, R, S,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdh, sdw, sxn, sxc, sxh, sxw,
    # Meta-parameters
    POOL: tl.constexpr, RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n, h, w, m_ok, c, c_ok = pixel_tile(NPIX, H, W, C, BLOCK_M, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for rs in range(0, R * S):
        th = h + pad_h - (rs // S) * dil_h  # = oh * str_h when this tap hits an output
        tw = w + pad_w - (rs % S) * dil_w
        ok = m_ok & (th >= 0) & (tw >= 0) & (th % str_h == 0) & (tw % str_w == 0)
        oh = tl.where(ok, th, 0) // str_h
        ow = tl.where(ok, tw, 0) // str_w
        for j in range(0, MULT):
            k = c * MULT + j
            dc = load_dc(dy_ptr, y_ptr, idx_ptr, n, oh, ow, k, ok, c_ok, PO, QO, sdn, sdk, sdh, sdw, POOL, RELU)
            wv = tl.load(w_ptr + k * (R * S) + rs, mask=c_ok, other=0.0)
            acc += dc.to(tl.float32) * wv.to(tl.float32)[None, :]
    off = (n.to(tl.int64) * sxn + h * sxh + w * sxw)[:, None] + c[None, :] * sxc
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.jit(do_not_specialize=["H", "W", "PO", "QO", "PP", "QQ", "NPQ", "CHUNK", "pad_h", "pad_w"])
def _conv2d_depthwise_wgrad_kernel(
    # Pointers
    dy_ptr,   # [N, K, PO, QO], strides (sdn, sdk, sdh, sdw)
    y_ptr,    # [N, K, PO, QO] pooled output (read only when RELU)
    idx_ptr,  # [N, K, PO, QO] uint8 window index (read only when POOL > 1)
    x_ptr,    # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    dw_ptr,   # [K, R*S] fp32 accumulator, zeroed
    # Dimensions
    H, W, PO, QO, PP, QQ, NPQ, CHUNK, K, MULT, R, S,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdh, sdw, sxn, sxc, sxh, sxw,
    # Meta-parameters
    POOL: tl.constexpr, RELU: tl.constexpr, RS_P2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k < K
    x_cols = (k // MULT) * sxc
    taps = tl.arange(0, RS_P2)
    acc = tl.zeros([RS_P2, BLOCK_N], dtype=tl.float32)
    lo = tl.program_id(1) * CHUNK
    hi = tl.minimum(lo + CHUNK, NPQ)
    for t0 in range(lo, hi, BLOCK_M):
        npq = t0 + tl.arange(0, BLOCK_M)
        r_ok = npq < hi
        n = npq // (PP * QQ)
        oh = (npq // QQ) % PP
        ow = npq % QQ
        dc = load_dc(dy_ptr, y_ptr, idx_ptr, n, oh, ow, k, r_ok, k_ok,
                     PO, QO, sdn, sdk, sdh, sdw, POOL, RELU).to(tl.float32)
        ih0 = oh * str_h - pad_h
        iw0 = ow * str_w - pad_w
        x_rows = x_ptr + n.to(tl.int64) * sxn + ih0 * sxh + iw0 * sxw
        for rs in range(0, R * S):
            dr = (rs // S) * dil_h
            ds = (rs % S) * dil_w
            ok = r_ok & (ih0 + dr >= 0) & (ih0 + dr < H) & (iw0 + ds >= 0) & (iw0 + ds < W)
            xv = tl.load(x_rows[:, None] + (dr * sxh + ds * sxw) + x_cols[None, :],
                         mask=ok[:, None] & k_ok[None, :], other=0.0)
            part = tl.sum(dc * xv.to(tl.float32), axis=0)
            acc += tl.where(taps[:, None] == rs, part[None, :], 0.0)
    tl.atomic_add(dw_ptr + k[None, :] * (R * S) + taps[:, None], acc,
                  mask=(taps < R * S)[:, None] & k_ok[None, :])


def _flat_weight(w: torch.Tensor) -> torch.Tensor:
    """w [K, 1, R, S] -> [K, R*S] contiguous (a view for a contiguous w)."""
    return w.reshape(w.shape[0], w.shape[2] * w.shape[3]).contiguous()


def conv2d_depthwise_fwd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: ConvParams):
    g = conv_geom(x.shape, w.shape, p)
    y, idx = conv_outputs(x, g)
    if y.numel() == 0:
        return y, idx
    xk = nhwc_on_gpu(x)
    wf = _flat_weight(w)
    KK = window_rows(g.pool)
    NWIN = g.N * g.PO * g.QO
    args = dict(POOL=g.pool, KK=KK, HAS_BIAS=b is not None, RELU=g.relu)

    def run(cfg):
        cfg = dict(cfg, BLOCK_M=max(cfg["BLOCK_M"], KK))
        grid = (cdiv(NWIN, cfg["BLOCK_M"] // KK) * cdiv(g.K, cfg["BLOCK_N"]),)
        _conv2d_depthwise_fwd_kernel[grid](
            xk, wf, b if b is not None else wf, y, idx if g.pool > 1 else y,
            g.H, g.W, g.PO, g.QO, NWIN, g.K, g.Kg, g.R, g.S, *g.conv,
            *strides4(xk), *strides4(y), **args, **cfg)

    with device_guard(x):
        run(_tune.choose("conv2d_depthwise_fwd", g.key(x.dtype, xk.stride()),
                         conv2d_depthwise_configs("conv2d_depthwise_fwd", g.K, KK), run, x.device))
    return y, idx


def conv2d_depthwise_dgrad(dy, x, w, y, idx, p: ConvParams) -> torch.Tensor:
    g = conv_geom(x.shape, w.shape, p)
    dx = empty(x.shape, x, memory_format_of(x))
    dyk, yk, idxk = grad_operands(dy, y, idx)
    wf = _flat_weight(w)
    NPIX = g.N * g.H * g.W
    args = dict(POOL=g.pool, RELU=g.relu)

    def run(cfg):
        grid = (cdiv(NPIX, cfg["BLOCK_M"]) * cdiv(g.C, cfg["BLOCK_N"]),)
        _conv2d_depthwise_dgrad_kernel[grid](
            dyk, yk, idxk, wf, dx,
            g.H, g.W, g.PO, g.QO, NPIX, g.C, g.Kg, g.R, g.S, *g.conv,
            *strides4(dyk), *strides4(dx), **args, **cfg)

    with device_guard(x):
        run(_tune.choose("conv2d_depthwise_dgrad", g.key(x.dtype, dyk.stride()),
                         conv2d_depthwise_configs("conv2d_depthwise_dgrad", g.C), run, x.device))
    return dx


def conv2d_depthwise_wgrad(dy, x, w_shape, y, idx, p: ConvParams) -> torch.Tensor:
    g = conv_geom(x.shape, w_shape, p)
    PP, QQ = g.PO * g.pool, g.QO * g.pool
    NPQ = g.N * PP * QQ
    xk = nhwc_on_gpu(x)
    dyk, yk, idxk = grad_operands(dy, y, idx)
    dw_acc = torch.empty((g.K, g.R * g.S), dtype=torch.float32, device=x.device)
    args = dict(POOL=g.pool, RELU=g.relu, RS_P2=next_pow2(g.R * g.S))

    def run(cfg):
        tiles = cdiv(g.K, cfg["BLOCK_N"])
        split = split_count(tiles, NPQ, cfg["BLOCK_M"], x.device)
        chunk = cdiv(cdiv(NPQ, split), cfg["BLOCK_M"]) * cfg["BLOCK_M"]
        dw_acc.zero_()
        _conv2d_depthwise_wgrad_kernel[(tiles, cdiv(NPQ, chunk))](
            dyk, yk, idxk, xk, dw_acc,
            g.H, g.W, g.PO, g.QO, PP, QQ, NPQ, chunk, g.K, g.Kg, g.R, g.S, *g.conv,
            *strides4(dyk), *strides4(xk), **args, **cfg)

    with device_guard(x):
        run(_tune.choose("conv2d_depthwise_wgrad", g.key(x.dtype, xk.stride()),
                         conv2d_depthwise_configs("conv2d_depthwise_wgrad", g.K), run, x.device))
    return dw_acc.view(g.K, 1, g.R, g.S).to(x.dtype)
