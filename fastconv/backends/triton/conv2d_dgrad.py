"""Input gradient of the fused conv as an implicit GEMM (dgrad), no zero insertion.

    dx[n, g*Cg + c, h, w] = sum over taps (r, s) and k < Kg of
                            dC[n, g*Kg + k, oh, ow] * w[g*Kg + k, c, r, s]
    where oh*sh = h + pt - r*dh and ow*sw = w + pl - s*dw (exactly; else no term)

dC is the conv-output gradient, rebuilt tile by tile from (dy, y, idx) by
the unpool prologue (``_common.load_dc``), never stored.

Stride phases: the input pixels are split by (h mod sh, w mod sw) (grid axis
1). Within phase (ph, pw) the taps that hit an output are exactly
r = r0, r0 + RSTEP, ... with RSTEP = sh / gcd(sh, dh) (same for s), and along
them oh = i + dq_h - jr * (RSTEP*dh/sh) for the pixel h = ph + i*sh: the
stride/dilation mask becomes a scalar per program and the reduction loop walks
only the taps that contribute. The GEMM per (phase, group g = grid axis 2)::

              Cg input channels (BLOCK_N)
             +------------------+
    M rows   | acc = A @ B      |   A[m, (tap, k)] = dC[n, g*Kg + k, oh(m, tap), ow(m, tap)]
    (BLOCK_M)|                  |   B[(tap, k), c] = packed[g*Kg + k, r, s, c]
             +------------------+
      reduction over valid taps x Kg (BLOCK_K channels per step)

M = N * ceil(H/sh) * ceil(W/sw) pixels (n, i, j) of the phase (h >= H masked).

Pointers: dy, y, idx [N, K, PO, QO] sharing strides (sdn, sdk, sdh, sdw);
packed w [K, R, S, Cg]; dx [N, C, H, W] with strides (sxn, sxc, sxh, sxw).
Cg, sxn, sxh and sxw arrive divided by VEC (``_common.vec_elems``), so that the
weight loads and dx stores of channel counts such as 24 use 16-byte vectors.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..._layout import empty, memory_format_of
from ..._params import ConvParams
from . import _tune
from ._common import (cdiv, device_guard, dot_precision, grad_operands, load_dc, mma, next_pow2, strides4,
                      pixel_tile, upcast_dot, unvec, vec_args)
from ._geom import conv_geom
from ._pack import packed_weight
from .configs import conv2d_dgrad_configs, dc_bytes


@triton.jit
def _first_tap(ph, pad, dil, stride, R, STEP, OFF, STEP_P2: tl.constexpr):
    """Smallest r in [0, STEP) with (ph + pad - r*dil) divisible by stride (R if none or >= R),
    and dq = (ph + pad - r*dil) / stride for it. OFF is a multiple of stride that keeps
    the numerators non-negative."""
    rr = tl.arange(0, STEP_P2)
    hit = (rr < STEP) & (rr < R) & ((ph + pad + OFF - rr * dil) % stride == 0)
    r0 = tl.min(tl.where(hit, rr, R), axis=0)
    dq = (ph + pad + OFF - r0 * dil) // stride - OFF // stride
    count = tl.where(r0 < R, (R - 1 - r0) // STEP + 1, 0)
    return r0, dq, count


@triton.jit(do_not_specialize=["H", "W", "PO", "QO", "HB", "WB", "NPIX", "pad_h", "pad_w", "OFF_H", "OFF_W"])
def _conv2d_dgrad_kernel(
    # Pointers
    dy_ptr,   # [N, K, PO, QO], strides (sdn, sdk, sdh, sdw)
    y_ptr,    # [N, K, PO, QO] pooled output (read only when RELU)
    idx_ptr,  # [N, K, PO, QO] uint8 window index (read only when POOL > 1)
    w_ptr,    # [K, R, S, Cg] packed, contiguous
    dx_ptr,   # [N, C, H, W], strides (sxn, sxc, sxh, sxw)
    # Dimensions (Cg_v, sxn_v, sxh_v, sxw_v in units of VEC elements)
    H, W, PO, QO, HB, WB, NPIX, Cg_v, Kg, R, S,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    RSTEP, SSTEP, QSTEP_H, QSTEP_W, OFF_H, OFF_W,
    sdn, sdk, sdh, sdw, sxn_v, sxc, sxh_v, sxw_v,
    # Meta-parameters
    POOL: tl.constexpr, RELU: tl.constexpr, STEP_P2: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg, sxn, sxh, sxw = unvec(Cg_v, sxn_v, sxh_v, sxw_v, VEC)
    phase = tl.program_id(1)
    g = tl.program_id(2)
    ph = phase // str_w
    pw = phase % str_w

    # rows: input pixels (n, h, w) of this phase, (i, j) on its grid; columns: input channels of group g
    n, i, j, m_ok, c, c_ok = pixel_tile(NPIX, HB, WB, Cg, BLOCK_M, BLOCK_N)
    h = ph + i * str_h
    w = pw + j * str_w
    m_ok = m_ok & (h < H) & (w < W)

    r0, dq_h, nr = _first_tap(ph, pad_h, dil_h, str_h, R, RSTEP, OFF_H, STEP_P2)
    s0, dq_w, ns = _first_tap(pw, pad_w, dil_w, str_w, S, SSTEP, OFF_W, STEP_P2)
    NKB = tl.cdiv(Kg, BLOCK_K)
    RSC = R * S * Cg
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(0, nr * ns * NKB):
        jr = t // (ns * NKB)
        js = (t // NKB) % ns
        k = (t % NKB) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < Kg
        oh = i + dq_h - jr * QSTEP_H
        ow = j + dq_w - js * QSTEP_W
        a = load_dc(dy_ptr, y_ptr, idx_ptr, n, oh, ow, g * Kg + k, m_ok & (oh >= 0) & (ow >= 0), k_ok,
                    PO, QO, sdn, sdk, sdh, sdw, POOL, RELU)
        tap = (r0 + jr * RSTEP) * S + s0 + js * SSTEP
        b = tl.load(w_ptr + (g * Kg + k).to(tl.int64)[:, None] * RSC + tap * Cg + c[None, :],
                    mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        acc = mma(a, b, acc, PRECISION, UPCAST)

    off = (n.to(tl.int64) * sxn + h * sxh + w * sxw)[:, None] + (g * Cg + c)[None, :] * sxc
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


def phase_steps(stride: int, dil: int, R: int) -> tuple[int, int, int]:
    """(STEP, QSTEP, OFF) of one axis: taps of a phase are STEP apart, their output rows
    QSTEP apart; OFF (a multiple of stride) keeps the kernel's numerators non-negative."""
    step = stride // math.gcd(stride, dil)
    off = stride * (-(-(step + R) * dil // stride) + 1)
    return step, step * dil // stride, off


def conv2d_dgrad(dy, x, w, y, idx, p: ConvParams) -> torch.Tensor:
    """dx [N, C, H, W] in x's memory format."""
    g = conv_geom(x.shape, w.shape, p)
    dx = empty(x.shape, x, memory_format_of(x))
    dyk, yk, idxk = grad_operands(dy, y, idx)
    wp = packed_weight(w)
    vec, cg_v, x_strides = vec_args(dx, g.Cg)
    sh, sw, _, _, dh, dw = g.conv
    HB, WB = -(-g.H // sh), -(-g.W // sw)
    NPIX = g.N * HB * WB
    rstep, qstep_h, off_h = phase_steps(sh, dh, g.R)
    sstep, qstep_w, off_w = phase_steps(sw, dw, g.S)
    cfgs = conv2d_dgrad_configs(NPIX, g.Cg, g.Kg, x.element_size(), g.R == g.S == 1,
                                dc_bytes(x.element_size(), g.relu, g.pool))
    args = dict(POOL=g.pool, RELU=g.relu, STEP_P2=next_pow2(max(rstep, sstep)),
                PRECISION=dot_precision(x.dtype, x.device), UPCAST=upcast_dot(x.dtype))

    def run(cfg):
        grid = (cdiv(NPIX, cfg["BLOCK_M"]) * cdiv(g.Cg, cfg["BLOCK_N"]), sh * sw, g.G)
        _conv2d_dgrad_kernel[grid](
            dyk, yk, idxk, wp, dx,
            g.H, g.W, g.PO, g.QO, HB, WB, NPIX, cg_v, g.Kg, g.R, g.S, *g.conv,
            rstep, sstep, qstep_h, qstep_w, off_h, off_w,
            *strides4(dyk), *x_strides, VEC=vec, **args, **cfg)

    with device_guard(x):
        run(_tune.choose("conv2d_dgrad", g.key(x.dtype, dyk.stride()), cfgs, run, x.device))
    return dx
