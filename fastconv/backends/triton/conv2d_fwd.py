"""Fused conv2d forward as an implicit GEMM: y = pool_POOL(relu(conv(x, w) + b)).

The GEMM, per group g (grid axis 1)::

              Kg output channels (BLOCK_N)
             +------------------+
    M rows   | acc = A @ B      |   A[m, (r, s, c)] = x[n, g*Cg + c, oh*sh - pt + r*dh, ow*sw - pl + s*dw]
    (BLOCK_M)|                  |                     (0 outside the input: the padding)
             +------------------+   B[(r, s, c), k] = w[g*Kg + k, c, r, s] = packed[k, r, s, c]
      reduction over R*S*Cg (BLOCK_K)

* M = N*PO*QO*KK rows: one row per conv output pixel (n, oh, ow) that some
  pooling window covers, ordered window by window: row m of tile pid_m is
  element e = m % KK of window pid_m*BW + m // KK, with (di, dj) = divmod(e, POOL)
  and (oh, ow) = (POOL*po + di, POOL*qo + dj); KK = POOL^2 rounded up to a power
  of two (rows e >= POOL^2 are padding, never loaded). Without pooling KK = 1 and the
  rows are the plain (n, oh, ow). Conv outputs on the ragged edge (past the last
  full window) are neither computed nor stored.
* The reduction walks the taps either as (r, s, channel block) -- each step one
  tap, BLOCK_K contiguous channels, a row mask per tap -- or, for small Cg
  (FLAT; e.g. RGB first layers, C*R*S < 32), as the flattened index
  (r*S + s)*Cg + c in steps of BLOCK_K, so a 3-channel 3x3 filter is one
  27-of-32 step instead of nine 3-of-16 steps on the tensor cores.
* Accumulation in fp32 (tensor cores for fp16/bf16; tf32 or ieee for fp32);
  the epilogue (``_common.store_pooled``) pools the accumulator, then adds the
  bias and applies relu, and stores y and the uint8 window index.

Pointers: x [N, C, H, W] with strides (sxn, sxc, sxh, sxw) (channels_last on a
GPU); packed w [K, R, S, Cg] contiguous; b [K]; y and idx [N, K, PO, QO] with
strides (syn, syk, syh, syw). Cg and the strides sxn, sxh, sxw arrive divided by
VEC (``_common.vec_elems``: the channel runs' alignment in elements, up to 16
bytes), so that channel counts such as 24 still load with 16-byte vectors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._params import ConvParams
from . import _tune
from ._common import (cdiv, device_guard, dot_precision, mma, nhwc_on_gpu, store_pooled, strides4, upcast_dot,
                      unvec, vec_args, window_rows, window_tile_rows)
from ._geom import conv_geom, conv_outputs
from .conv2d_depthwise import conv2d_depthwise_fwd
from ._pack import packed_weight
from .configs import conv2d_fwd_configs

# Below this many channels per group the reduction is flattened over (r, s, c).
FLAT_BELOW_CG = 16


@triton.jit(do_not_specialize=["H", "W", "PO", "QO", "NWIN", "pad_h", "pad_w"])
def _conv2d_fwd_kernel(
    # Pointers
    x_ptr,    # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    w_ptr,    # [K, R, S, Cg] packed, contiguous
    b_ptr,    # [K] (read only when HAS_BIAS)
    y_ptr,    # [N, K, PO, QO], strides (syn, syk, syh, syw)
    idx_ptr,  # [N, K, PO, QO] uint8, same strides as y (written only when POOL > 1)
    # Dimensions (Cg_v, sxn_v, sxh_v, sxw_v in units of VEC elements)
    H, W, PO, QO, NWIN, Cg_v, Kg, R, S,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    sxn_v, sxc, sxh_v, sxw_v, syn, syk, syh, syw,
    # Meta-parameters
    POOL: tl.constexpr, KK: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    FLAT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg, sxn, sxh, sxw = unvec(Cg_v, sxn_v, sxh_v, sxw_v, VEC)
    pid = tl.program_id(0)
    g = tl.program_id(1)
    num_n = tl.cdiv(Kg, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    # rows: conv output pixels, window by window
    n, oh, ow, m_ok = window_tile_rows(pid_m, NWIN, PO, QO, POOL, KK, BLOCK_M)
    ih0 = oh * str_h - pad_h
    iw0 = ow * str_w - pad_w
    x_rows = x_ptr + n.to(tl.int64) * sxn + (g * Cg) * sxc  # [BLOCK_M] pointers

    # columns: output channels of group g
    kn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = kn < Kg
    RSC = R * S * Cg
    w_cols = w_ptr + (g * Kg + kn).to(tl.int64) * RSC  # [BLOCK_N] pointers

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if FLAT:
        x_taps = x_rows + ih0 * sxh + iw0 * sxw  # [BLOCK_M] pointers to tap (0, 0), channel 0
        for k0 in range(0, RSC, BLOCK_K):
            kr = k0 + tl.arange(0, BLOCK_K)  # flattened (r*S + s)*Cg + c
            k_ok = kr < RSC
            c = kr % Cg
            rs = kr // Cg
            dr = (rs // S) * dil_h
            ds = (rs % S) * dil_w
            ih = ih0[:, None] + dr[None, :]
            iw = iw0[:, None] + ds[None, :]
            a_ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_taps[:, None] + (c * sxc + dr * sxh + ds * sxw)[None, :], mask=a_ok, other=0.0)
            b = tl.load(w_cols[None, :] + kr[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(a, b, acc, PRECISION, UPCAST)
    else:
        NCB = tl.cdiv(Cg, BLOCK_K)
        for t in range(0, R * S * NCB):
            rs = t // NCB
            c = (t % NCB) * BLOCK_K + tl.arange(0, BLOCK_K)
            c_ok = c < Cg
            ih = ih0 + (rs // S) * dil_h
            iw = iw0 + (rs % S) * dil_w
            r_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc,
                        mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_cols[None, :] + (rs * Cg + c)[:, None], mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(a, b, acc, PRECISION, UPCAST)

    store_pooled(acc, pid_m, g * Kg + kn, n_ok, b_ptr, y_ptr, idx_ptr, NWIN, PO, QO,
                 syn, syk, syh, syw, POOL, KK, BLOCK_M, BLOCK_N, HAS_BIAS, RELU)


def conv2d_fwd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: ConvParams):
    """(y, idx) of the fused op; y and idx keep x's memory format, idx is empty without pooling.
    Depthwise convs run the conv2d_depthwise kernel."""
    g = conv_geom(x.shape, w.shape, p)
    if g.depthwise:
        return conv2d_depthwise_fwd(x, w, b, p)
    y, idx = conv_outputs(x, g)
    if y.numel() == 0:
        return y, idx
    xk = nhwc_on_gpu(x)
    wp = packed_weight(w)
    vec, cg_v, x_strides = vec_args(xk, g.Cg)
    KK = window_rows(g.pool)
    NWIN = g.N * g.PO * g.QO
    flat = g.Cg < FLAT_BELOW_CG
    cfgs = conv2d_fwd_configs(NWIN * KK, g.Kg, g.R * g.S * g.Cg if flat else g.Cg, KK, x.element_size(),
                              g.R == g.S == 1, flat)
    args = dict(POOL=g.pool, KK=KK, HAS_BIAS=b is not None, RELU=g.relu, FLAT=flat,
                PRECISION=dot_precision(x.dtype, x.device), UPCAST=upcast_dot(x.dtype))

    def run(cfg):
        cfg = dict(cfg, BLOCK_M=max(cfg["BLOCK_M"], KK))
        grid = (cdiv(NWIN, cfg["BLOCK_M"] // KK) * cdiv(g.Kg, cfg["BLOCK_N"]), g.G)
        _conv2d_fwd_kernel[grid](
            xk, wp, b if b is not None else wp, y, idx if g.pool > 1 else y,
            g.H, g.W, g.PO, g.QO, NWIN, cg_v, g.Kg, g.R, g.S, *g.conv,
            *x_strides, *strides4(y), VEC=vec, **args, **cfg)

    with device_guard(x):
        run(_tune.choose("conv2d_fwd", g.key(x.dtype, xk.stride()), cfgs, run, x.device))
    return y, idx
