"""Weight and bias gradients of the fused conv.

wgrad, an implicit GEMM with split-K over the conv output pixels::

    dw[g*Kg + k, c, r, s] = sum over (n, oh, ow) of
                            dC[n, g*Kg + k, oh, ow] * x[n, g*Cg + c, oh*sh - pt + r*dh, ow*sw - pl + s*dw]

              R*S*Cg columns (r, s, c) (BLOCK_N)
             +------------------+
    Kg rows  | acc = A @ B      |   A[k, npq] = dC[n, g*Kg + k, oh, ow]     (unpool prologue)
    (BLOCK_M)|                  |   B[npq, (r, s, c)] = x[n, g*Cg + c, ih, iw] (0 in the padding)
             +------------------+
      reduction over npq = (n, oh, ow) (BLOCK_K), split in SPLIT chunks (grid axis 1)

The columns use the flattened index (r*S + s)*Cg + c of the packed weight, so
small-C filters fill whole tiles. Only the conv outputs inside pooling windows
(oh < PO*POOL, ow < QO*POOL) are visited; the ragged edge has dC = 0. dC is rebuilt
from (dy, y, idx) per tile, never stored. The tile is stored straight into dw
[K, Cg, R, S] (element (k, c, r, s) at k*Cg*R*S + c*R*S + r*S + s): in dw's
dtype with one chunk, or, split in SPLIT chunks, added in fp32 with atomics
into a zeroed fp32 dw that the launcher casts.

Bias gradient, the row sums of A: db[k] = sum over npq of dC[n, k, oh, ow].
When one column tile spans all R*S*Cg columns (first layers: C*R*S <= BLOCK_N)
every program holds whole rows of dC, so with HAS_DB it sums them from the A
tiles it loads anyway and stores (or atomically adds) db like dw: no separate
pass over dy, which is as large as the layer's whole input gradient traffic
there. Otherwise (several column tiles would sum the same rows, and a per-tile
branch costs registers) it is one reduction over the pooled gradient
(``_conv2d_bias_grad_kernel``): exactly one element of each window receives dy, so
sum_window dC = dy * (not RELU or not y <= 0) and

    db[k] = sum over (n, po, qo) of dy[n, k, po, qo] * (not RELU or not y[n, k, po, qo] <= 0)

Pointers: dy, y, idx [N, K, PO, QO] sharing strides (sdn, sdk, sdh, sdw);
x [N, C, H, W] with strides (sxn, sxc, sxh, sxw); dw [K, Cg, R, S] and db [K]
contiguous (fp32 when ATOMIC). Cg, sxn, sxh and sxw arrive divided by VEC
(``_common.vec_elems``), so that x loads of channel counts such as 24 use
16-byte vectors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._params import ConvParams
from . import _tune
from ._common import (INTERPRET, cdiv, device_guard, dot_precision, grad_operands, load_dc, mma, nhwc_on_gpu,
                      strides4, upcast_dot, unvec, vec_args)
from ._geom import conv_geom
from .configs import conv2d_bias_grad_configs, conv2d_wgrad_configs, dc_bytes


@triton.jit(do_not_specialize=["H", "W", "PO", "QO", "PP", "QQ", "NPQ", "CHUNK", "pad_h", "pad_w"])
def _conv2d_wgrad_kernel(
    # Pointers
    dy_ptr,   # [N, K, PO, QO], strides (sdn, sdk, sdh, sdw)
    y_ptr,    # [N, K, PO, QO] pooled output (read only when RELU)
    idx_ptr,  # [N, K, PO, QO] uint8 window index (read only when POOL > 1)
    x_ptr,    # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    dw_ptr,   # [K, Cg, R, S] contiguous: x's dtype, or zeroed fp32 when ATOMIC
    db_ptr,   # [K] like dw (written only when HAS_DB)
    # Dimensions (Cg_v, sxn_v, sxh_v, sxw_v in units of VEC elements)
    H, W, PO, QO, PP, QQ, NPQ, CHUNK, Cg_v, Kg, R, S,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdh, sdw, sxn_v, sxc, sxh_v, sxw_v,
    # Meta-parameters
    POOL: tl.constexpr, RELU: tl.constexpr, ATOMIC: tl.constexpr, ONE_TAP: tl.constexpr,
    HAS_DB: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg, sxn, sxh, sxw = unvec(Cg_v, sxn_v, sxh_v, sxw_v, VEC)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.program_id(2)
    RSC = R * S * Cg
    num_n = tl.cdiv(RSC, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    # rows of dw: output channels of group g
    k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k_ok = k < Kg
    # columns of dw: flattened (r*S + s)*Cg + c; with ONE_TAP (Cg % BLOCK_N == 0) the tile is
    # one tap (r, s) and BLOCK_N channels, so the padding mask depends on the row only
    col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = col < RSC
    if ONE_TAP:
        rs = (pid_n * BLOCK_N) // Cg
        # not (pid_n * BLOCK_N) % Cg: Triton's alignment analysis loses the divisibility
        # through %, and the x tile then loads one element at a time, unpipelined
        c = (pid_n * BLOCK_N - rs * Cg) + tl.arange(0, BLOCK_N)
    else:
        c = col % Cg
        rs = col // Cg
    r_dil = (rs // S) * dil_h
    s_dil = (rs % S) * dil_w
    x_cols = (g * Cg + c) * sxc + r_dil * sxh + s_dil * sxw

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, NPQ)
    for t0 in range(lo, hi, BLOCK_K):
        npq = t0 + tl.arange(0, BLOCK_K)
        r_ok = npq < hi
        n = npq // (PP * QQ)
        oh = (npq // QQ) % PP
        ow = npq % QQ
        a = load_dc(dy_ptr, y_ptr, idx_ptr, n, oh, ow, g * Kg + k, r_ok, k_ok,
                    PO, QO, sdn, sdk, sdh, sdw, POOL, RELU)  # [BLOCK_K, BLOCK_M]
        ih0 = oh * str_h - pad_h
        iw0 = ow * str_w - pad_w
        if ONE_TAP:
            ih = ih0 + r_dil
            iw = iw0 + s_dil
            b_ok = (r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & col_ok[None, :]
        else:
            ih = ih0[:, None] + r_dil[None, :]
            iw = iw0[:, None] + s_dil[None, :]
            b_ok = r_ok[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_rows = n.to(tl.int64) * sxn + ih0 * sxh + iw0 * sxw
        b = tl.load(x_ptr + x_rows[:, None] + x_cols[None, :], mask=b_ok, other=0.0)
        acc = mma(tl.trans(a), b, acc, PRECISION, UPCAST)
        if HAS_DB:  # one column tile: pid_n == 0
            db_acc += tl.sum(a.to(tl.float32), axis=0)

    # dw[k, c, r, s]: the column (r*S + s)*Cg + c lands at c*R*S + (r*S + s)
    out = dw_ptr + (g * Kg + k).to(tl.int64)[:, None] * RSC + (c * (R * S) + rs)[None, :]
    mask = k_ok[:, None] & col_ok[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=mask)
    if HAS_DB:
        if ATOMIC:
            tl.atomic_add(db_ptr + g * Kg + k, db_acc, mask=k_ok)
        else:
            tl.store(db_ptr + g * Kg + k, db_acc.to(db_ptr.dtype.element_ty), mask=k_ok)


@triton.jit(do_not_specialize=["NOUT", "PO", "QO", "CHUNK"])
def _conv2d_bias_grad_kernel(
    # Pointers
    dy_ptr,   # [N, K, PO, QO], strides (sdn, sdk, sdh, sdw)
    y_ptr,    # [N, K, PO, QO] pooled output (read only when RELU)
    db_ptr,   # [K] fp32 accumulator, zeroed
    # Dimensions
    NOUT, PO, QO, K, CHUNK, sdn, sdk, sdh, sdw,
    # Meta-parameters
    RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    ch = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ch_ok = ch < K
    lo = tl.program_id(1) * CHUNK
    hi = tl.minimum(lo + CHUNK, NOUT)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t0 in range(lo, hi, BLOCK_M):
        pix = t0 + tl.arange(0, BLOCK_M)
        n = pix // (PO * QO)
        off = (n.to(tl.int64) * sdn + ((pix // QO) % PO) * sdh + (pix % QO) * sdw)[:, None] + ch[None, :] * sdk
        mask = (pix < hi)[:, None] & ch_ok[None, :]
        v = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            v = tl.where(tl.load(y_ptr + off, mask=mask, other=0.0) <= 0, 0.0, v)
        acc += v
    tl.atomic_add(db_ptr + ch, tl.sum(acc, axis=0), mask=ch_ok)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_count(tiles: int, reduction: int, block: int, device: torch.device) -> int:
    """Chunks of a split-K reduction: enough programs for two waves on the GPU, at least
    8 reduction steps per chunk; 1 in the interpreter."""
    if INTERPRET or device.type != "cuda":
        return 1
    want = max(1, 2 * _num_sms(device) // max(tiles, 1))
    return max(1, min(want, reduction // (8 * block)))


def conv2d_wgrad(dy, x, w_shape, y, idx, p: ConvParams, with_bias: bool = False):
    """(dw [K, Cg, R, S] contiguous, db [K] or None) in x's dtype; db only ``with_bias``."""
    g = conv_geom(x.shape, w_shape, p)
    RSC = g.R * g.S * g.Cg
    PP, QQ = g.PO * g.pool, g.QO * g.pool
    NPQ = g.N * PP * QQ
    xk = nhwc_on_gpu(x)
    dyk, yk, idxk = grad_operands(dy, y, idx)
    vec, cg_v, x_strides = vec_args(xk, g.Cg)
    cfgs = conv2d_wgrad_configs(g.Kg, RSC, NPQ, x.element_size(), g.R == g.S == 1, g.Cg,
                                dc_bytes(x.element_size(), g.relu, g.pool))
    args = dict(POOL=g.pool, RELU=g.relu, PRECISION=dot_precision(x.dtype, x.device), UPCAST=upcast_dot(x.dtype))

    def run(cfg):
        fuse_db = with_bias and RSC <= cfg["BLOCK_N"]
        tiles = cdiv(g.Kg, cfg["BLOCK_M"]) * cdiv(RSC, cfg["BLOCK_N"])
        split = split_count(tiles * g.G, NPQ, cfg["BLOCK_K"], x.device)
        chunk = cdiv(cdiv(NPQ, split), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
        split = cdiv(NPQ, chunk)
        # one chunk stores the final dw / db; several add into zeroed fp32 ones
        acc_dtype = torch.float32 if split > 1 else x.dtype
        make = torch.zeros if split > 1 else torch.empty
        dw = make(w_shape, dtype=acc_dtype, device=x.device)
        db = make(g.K, dtype=acc_dtype, device=x.device) if fuse_db else dw
        _conv2d_wgrad_kernel[(tiles, split, g.G)](
            dyk, yk, idxk, xk, dw, db,
            g.H, g.W, g.PO, g.QO, PP, QQ, NPQ, chunk, cg_v, g.Kg, g.R, g.S, *g.conv,
            *strides4(dyk), *x_strides, ATOMIC=split > 1,
            ONE_TAP=g.Cg % cfg["BLOCK_N"] == 0, HAS_DB=fuse_db, VEC=vec, **args, **cfg)
        if fuse_db:
            return dw.to(x.dtype), db.to(x.dtype)
        return dw.to(x.dtype), (conv2d_bias_grad(dy, y, p) if with_bias else None)

    with device_guard(x):
        return run(_tune.choose("conv2d_wgrad", g.key(x.dtype, xk.stride()), cfgs, run, x.device))


def conv2d_bias_grad(dy, y, p: ConvParams) -> torch.Tensor:
    """db [K] in dy's dtype."""
    N, K, PO, QO = dy.shape
    dyk, yk, _ = grad_operands(dy, y, None)
    NOUT = N * PO * QO
    db = torch.zeros(K, dtype=torch.float32, device=dy.device)
    cfg = _tune.choose("conv2d_bias_grad", (K,), conv2d_bias_grad_configs(K), lambda c: None, dy.device)
    col_tiles = cdiv(K, cfg["BLOCK_N"])
    split = split_count(col_tiles, NOUT, cfg["BLOCK_M"], dy.device)
    chunk = cdiv(cdiv(NOUT, split), cfg["BLOCK_M"]) * cfg["BLOCK_M"]
    with device_guard(dy):
        _conv2d_bias_grad_kernel[(col_tiles, cdiv(NOUT, chunk))](
            dyk, yk, db, NOUT, PO, QO, K, chunk, *strides4(dyk), RELU=p.relu, **cfg)
    return db.to(dy.dtype)
