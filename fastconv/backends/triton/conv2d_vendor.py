"""The vendor-core variant of the fused conv: the vendor's convolution (cuDNN through ATen on a GPU)
for the GEMM, and ONE Triton pass around it each way (docs/design.md §2.1, §2.2):

    forward   c = conv2d(x, w) + b                  ATen (cuDNN), full resolution, the bias in its
                                                     fp32 epilogue (one rounding, like eager)
              y, idx = pool(relu(c))                 _conv2d_vendor_epilogue_kernel (store_pooled):
                                                     reads c once, writes only y and the uint8 idx
    backward  dC = unpool(dy, y, idx) * relu mask    _conv2d_vendor_prologue_kernel (load_dc), with
              db = sum over (n, p, q) of dC          the bias gradient reduced in the same pass
              dx, dw = convolution_backward(dC, x, w)  ATen (cuDNN)

It saves what every fused backend saves (x, w, y, idx): c and dC are temporaries of one call, so
the memory saving holds on every layer; it is the GPU twin of the cpu backend's ATen-core path.
Where the implicit-GEMM kernels lose to cuDNN (24-256 input channels on Hopper), this keeps the
vendor's GEMM and still fuses what cuDNN cannot (the pool and its index).

Tiles: the epilogue walks [windows x channels] tiles whose rows are ordered window by window
(``_common.window_tile_rows``, KK rows per window); the prologue walks [conv pixels x channels]
tiles of the full conv output [N, K, P, Q] (``_common.pixel_tile``), so every dC element is
written once, 0 on the ragged edge. c, y, idx and dC keep x's memory format.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._layout import empty, memory_format_of
from ..._params import ConvParams
from ._common import (cdiv, device_guard, grad_operands, load_dc, next_pow2, pixel_tile, store_pooled, strides4,
                      window_rows, window_tile_rows, INTERPRET)
from ._geom import conv_geom, conv_outputs


@triton.jit(do_not_specialize=["PO", "QO", "NWIN"])
def _conv2d_vendor_epilogue_kernel(
    c_ptr,    # [N, K, P, Q] conv output, strides (scn, sck, sch, scw)
    b_ptr,    # [K] (read only when HAS_BIAS)
    y_ptr,    # [N, K, PO, QO], strides (syn, syk, syh, syw)
    idx_ptr,  # [N, K, PO, QO] uint8, y's strides (written only when POOL > 1)
    PO, QO, NWIN, K,
    scn, sck, sch, scw, syn, syk, syh, syw,
    POOL: tl.constexpr, KK: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(K, BLOCK_N)
    pid_m = pid // num_n
    k = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k < K
    n, oh, ow, row_ok = window_tile_rows(pid_m, NWIN, PO, QO, POOL, KK, BLOCK_M)
    off = (n.to(tl.int64) * scn + oh * sch + ow * scw)[:, None] + k[None, :] * sck
    acc = tl.load(c_ptr + off, mask=row_ok[:, None] & k_ok[None, :], other=float("-inf")).to(tl.float32)
    store_pooled(acc, pid_m, k, k_ok, b_ptr, y_ptr, idx_ptr, NWIN, PO, QO,
                 syn, syk, syh, syw, POOL, KK, BLOCK_M, BLOCK_N, HAS_BIAS, RELU)


@triton.jit(do_not_specialize=["P", "Q", "PO", "QO", "NPIX"])
def _conv2d_vendor_prologue_kernel(
    dy_ptr,   # [N, K, PO, QO], strides (sdn, sdk, sdh, sdw)
    y_ptr,    # [N, K, PO, QO] pooled output (read only when RELU)
    idx_ptr,  # [N, K, PO, QO] uint8 window index (read only when POOL > 1)
    dc_ptr,   # [N, K, P, Q] conv-output gradient, strides (scn, sck, sch, scw)
    db_ptr,   # [K] fp32, zeroed (added to only when HAS_DB)
    P, Q, PO, QO, NPIX, K,
    sdn, sdk, sdh, sdw, scn, sck, sch, scw,
    POOL: tl.constexpr, RELU: tl.constexpr, HAS_DB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n, oh, ow, row_ok, k, k_ok = pixel_tile(NPIX, P, Q, K, BLOCK_M, BLOCK_N)
    v = load_dc(dy_ptr, y_ptr, idx_ptr, n, oh, ow, k, row_ok, k_ok, PO, QO, sdn, sdk, sdh, sdw, POOL, RELU)
    off = (n.to(tl.int64) * scn + oh * sch + ow * scw)[:, None] + k[None, :] * sck
    tl.store(dc_ptr + off, v.to(dc_ptr.dtype.element_ty), mask=row_ok[:, None] & k_ok[None, :])
    if HAS_DB:
        tl.atomic_add(db_ptr + k, tl.sum(v.to(tl.float32), axis=0), mask=k_ok)


def _tiles(rows: int, K: int, KK: int = 1) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): one large tile per launch in the interpreter, else 64 x 64."""
    if INTERPRET:
        return max(KK, min(1024, next_pow2(rows))), min(64, next_pow2(K)), 4
    return max(64, KK), min(64, max(16, next_pow2(K))), 4


def _core_operands(x: torch.Tensor, p: ConvParams):
    """(x for ATen, its symmetric padding): asymmetric padding ('same' with an even kernel) pads
    x explicitly, like the cpu backend's ATen-core path."""
    pt, pl, pb, pr = p.padding
    if pt == pb and pl == pr:
        return x, (pt, pl)
    return torch.nn.functional.pad(x, (pl, pr, pt, pb)).contiguous(memory_format=memory_format_of(x)), (0, 0)


def conv2d_vendor_fwd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: ConvParams):
    """(y, idx) of the fused op through the vendor's convolution and one epilogue kernel."""
    g = conv_geom(x.shape, w.shape, p)
    y, idx = conv_outputs(x, g)
    if y.numel() == 0:
        return y, idx
    xin, pad = _core_operands(x, p)
    # the bias goes into the vendor's conv: added to its fp32 accumulator before the one rounding
    # to the storage dtype, like eager's cuDNN call (added after, a half-precision c would round twice)
    c = torch.nn.functional.conv2d(xin, w, b, p.stride, pad, p.dilation, p.groups)
    KK = window_rows(g.pool)
    NWIN = g.N * g.PO * g.QO
    bm, bn, warps = _tiles(NWIN * KK, g.K, KK)
    grid = (cdiv(NWIN, bm // KK) * cdiv(g.K, bn),)
    with device_guard(x):
        _conv2d_vendor_epilogue_kernel[grid](
            c, b if b is not None else c, y, idx if g.pool > 1 else y, g.PO, g.QO, NWIN, g.K,
            *strides4(c), *strides4(y), POOL=g.pool, KK=KK, HAS_BIAS=False, RELU=g.relu,
            BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
    return y, idx


def conv2d_vendor_bwd(dy, x, w, y, idx, p: ConvParams, mask):
    """(dx, dw, db) through one prologue kernel and the vendor's convolution backward."""
    g = conv_geom(x.shape, w.shape, p)
    dyk, yk, idxk = grad_operands(dy, y, idx)
    dc = empty((g.N, g.K, g.P, g.Q), x, memory_format_of(x), dy.dtype)
    db = torch.zeros(g.K, dtype=torch.float32, device=dy.device) if mask[2] else dc
    NPIX = g.N * g.P * g.Q
    bm, bn, warps = _tiles(NPIX, g.K)
    with device_guard(x):
        _conv2d_vendor_prologue_kernel[(cdiv(NPIX, bm) * cdiv(g.K, bn),)](
            dyk, yk, idxk, dc, db, g.P, g.Q, g.PO, g.QO, NPIX, g.K, *strides4(dyk), *strides4(dc),
            POOL=g.pool, RELU=g.relu, HAS_DB=bool(mask[2]), BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
    dx = dw = None
    if mask[0] or mask[1]:
        xin, pad = _core_operands(x, p)
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dc, xin, w, None, list(p.stride), list(pad), list(p.dilation), False, [0, 0], p.groups,
            [bool(mask[0]), bool(mask[1]), False])
        if mask[0] and xin is not x:  # crop the explicit padding back off
            pt, pl, _, _ = p.padding
            dx = dx[:, :, pt:pt + g.H, pl:pl + g.W].contiguous(memory_format=memory_format_of(x))
        if mask[1]:
            dw = dw.contiguous()
    return dx, dw, (db.to(dy.dtype) if mask[2] else None)
