"""Helpers shared by the Triton kernels and their launchers.

Device helpers (``@triton.jit``):

* ``mma``: one tile product ``acc += a @ b`` with fp32 accumulation.
* ``load_dc``: the *unpool prologue*. The conv-output gradient is never
  stored at full resolution; a tile of it is rebuilt from the pooled
  gradient ``dy``, the saved pooled output ``y`` and the uint8 window index
  ``idx`` (docs/design.md §2.2)::

      dC[n, k, oh, ow] = dy[n, k, po, qo] * (idx[n, k, po, qo] == di*POOL + dj)
                                          * (not RELU or not y[n, k, po, qo] <= 0)
      with po, di = divmod(oh, POOL), qo, dj = divmod(ow, POOL),

  and dC = 0 on the ragged edge (po >= PO or qo >= QO: conv rows/columns past
  the last full window).
* ``store_pooled``: the fused forward epilogue. The M rows of a tile are
  ordered window by window (KK consecutive rows per k x k window, KK = k*k
  rounded up to a power of two, the padding rows masked to -inf), so the
  window max is a register reduction over a reshaped ``[BW, KK, BLOCK_N]``
  tile; only the pooled tile and its window index are stored, then bias and
  relu are applied (pool(relu(c + b)) == relu(pool(c) + b)).

Index convention everywhere: the batch offset ``n * stride_n`` is 64-bit, the
offsets inside one image are 32-bit (the backend refuses images of 2^31
elements or more).

Specialization: the kernels list their pure problem sizes (H, W, output and
pixel counts, paddings) in ``do_not_specialize``, so one compiled kernel
serves every image size; Triton still specializes channel counts, filter
sizes, strides and tensor strides (== 1 and divisibility by 16), which decide
vectorized, aligned loads.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..._layout import memory_format_of

def interpreting(kernel) -> bool:
    """True when ``kernel`` (a @triton.jit function) runs in the Triton interpreter."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported triton has it
        return False
    return isinstance(kernel, InterpretedFunction)


@triton.jit
def _probe():
    pass


INTERPRET = interpreting(_probe)


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """``input_precision`` of tl.dot: TF32 for fp32 on a GPU exactly when cuDNN may use it."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's bf16 tl.dot is wrong (silently): there the tiles go to fp32 first,
    which is exact (bf16 products fit in fp32) and accumulates in fp32 like the GPU."""
    return INTERPRET and dtype == torch.bfloat16


def device_guard(t: torch.Tensor):
    """Make t's GPU the current one while launching (Triton launches on the current device)."""
    if t.device.type == "cuda" and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def nhwc_on_gpu(t: torch.Tensor | None) -> torch.Tensor | None:
    """On a GPU the GEMM kernels read channels-fastest tiles: an NCHW operand is copied to
    channels_last once (a no-op for channels_last inputs). The interpreter takes any strides."""
    if t is None or t.device.type != "cuda" or t.shape[1] == 1:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def grad_operands(dy: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor | None):
    """(dy, y, idx) as the backward kernels read them: dy channels_last on a GPU, the saved
    y and idx in dy's memory format (the kernels index all three with dy's strides), and dy
    standing in for an absent y / idx (a pointer the kernel never reads)."""
    dyk = nhwc_on_gpu(dy)
    fmt = memory_format_of(dyk)
    yk, idxk = (t.contiguous(memory_format=fmt) if t is not None else dyk for t in (y, idx))
    return dyk, yk, idxk


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1); plain Python, cheap on every launch."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(stride_n, stride_c, stride_h, stride_w) of a 4-D tensor."""
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def vec_elems(t: torch.Tensor, channels: int) -> int:
    """VEC: the elements of one 16-byte vector of t's dtype that the channel runs of t are
    aligned to, or less: the largest power of two <= 16 / element size dividing
    ``channels`` and every stride of t except the channel stride, which must be 1 (else 1).

    Kernels take such sizes and strides divided by VEC and multiply them back by the
    constexpr VEC, so that Triton can prove the alignment (it only specializes
    16-divisibility of integer arguments): channel counts like 24 or 40 then load with
    16-byte vectors and cp.async pipelining instead of one element at a time.
    """
    if t.stride(1) != 1 and t.shape[1] != 1:
        return 1
    vec = 16 // t.element_size()
    for v in (channels, t.stride(0), t.stride(2), t.stride(3)):
        while vec > 1 and v % vec:
            vec //= 2
    return vec


def vec_args(t: torch.Tensor, channels: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """(VEC, channels / VEC, t's strides (n, c, h, w) with n, h, w divided by VEC): what a
    kernel taking ``unvec`` arguments is launched with."""
    vec = vec_elems(t, channels)
    sn, sc, sh, sw = strides4(t)
    return vec, channels // vec, (sn // vec, sc, sh // vec, sw // vec)


@triton.jit
def unvec(c_v, sn_v, sh_v, sw_v, VEC: tl.constexpr):
    """The channel count and the n, h, w strides multiplied back by the constexpr VEC
    (``vec_elems``), so that the compiler knows they are multiples of it."""
    return c_v * VEC, sn_v * VEC, sh_v * VEC, sw_v * VEC


def window_rows(pool: int) -> int:
    """KK: rows per pooling window in a fused tile (k*k rounded up to a power of two)."""
    return 1 if pool == 1 else next_pow2(pool * pool)


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in fp32 (tensor cores for fp16/bf16, tf32 or ieee for fp32)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def load_dc(dy_ptr, y_ptr, idx_ptr, n, oh, ow, k, row_ok, k_ok, PO, QO,
            sdn, sdk, sdh, sdw, POOL: tl.constexpr, RELU: tl.constexpr):
    """Tile [len(rows), len(k)] of the conv-output gradient dC (dy's dtype).

    n, oh, ow: [rows] conv-output coordinates (oh, ow >= 0 wherever row_ok);
    k: [cols] global output channels. dy, y and idx are [N, K, PO, QO] with the
    same strides (sdn, sdk, sdh, sdw); y is read only with RELU, idx only with
    POOL > 1. Without pooling PO, QO are the conv output size P, Q.
    """
    if POOL > 1:
        po = oh // POOL
        qo = ow // POOL
        win = (oh - po * POOL) * POOL + (ow - qo * POOL)
    else:
        po = oh
        qo = ow
    ok = row_ok & (po < PO) & (qo < QO)
    off = n.to(tl.int64) * sdn + po * sdh + qo * sdw
    off = off[:, None] + k[None, :] * sdk
    mask = ok[:, None] & k_ok[None, :]
    v = tl.load(dy_ptr + off, mask=mask, other=0.0)
    if POOL > 1:
        hit = tl.load(idx_ptr + off, mask=mask, other=0).to(tl.int32)
        v = tl.where(hit == win[:, None], v, 0.0)
    if RELU:
        yv = tl.load(y_ptr + off, mask=mask, other=0.0)
        v = tl.where(yv <= 0, 0.0, v)
    return v


@triton.jit
def pixel_tile(NPIX, HH, WW, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tile of program_id(0): BLOCK_M pixels (n, h, w) of an [N, HH, WW] grid in
    row-major order (NPIX = N*HH*WW of them) x BLOCK_N of C channels, column tiles fastest.
    Returns (n, h, w, row_ok, c, c_ok)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(C, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = rows // (HH * WW)
    h = (rows // WW) % HH
    w = rows % WW
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return n, h, w, rows < NPIX, c, c < C


@triton.jit
def window_tile_rows(pid_m, NWIN, PO, QO, POOL: tl.constexpr, KK: tl.constexpr, BLOCK_M: tl.constexpr):
    """The conv output pixel (n, oh, ow) each row of a fused forward tile computes, window by
    window (the order ``store_pooled`` reduces), and whether the row is real: rows past the
    last window or on a window's padding rows (e >= POOL*POOL) are not."""
    BW: tl.constexpr = BLOCK_M // KK
    rows = tl.arange(0, BLOCK_M)
    win = pid_m * BW + rows // KK
    e = rows % KK
    n = win // (PO * QO)
    oh = ((win // QO) % PO) * POOL + e // POOL
    ow = (win % QO) * POOL + e % POOL
    return n, oh, ow, (win < NWIN) & (e < POOL * POOL)


@triton.jit
def store_pooled(acc, pid_m, k, k_ok, b_ptr, y_ptr, idx_ptr, NWIN, PO, QO,
                 syn, syk, syh, syw, POOL: tl.constexpr, KK: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Epilogue of a fused forward tile.

    acc: [BLOCK_M, BLOCK_N] fp32 conv outputs; row m of the tile is element
    e = m % KK (di, dj = divmod(e, POOL)) of window pid_m * BW + m // KK,
    BW = BLOCK_M // KK, a window being a stored output pixel (n, po, qo) in
    row-major order over [N, PO, QO] (NWIN of them). k: [BLOCK_N] global output
    channels. Stores y[n, k, po, qo] = relu(max_window(acc) + b[k]) and, when
    POOL > 1, idx = the uint8 window position of the max: the first maximum in
    row-major order, or the last NaN when the window holds one (like
    torch.max_pool2d, so NaN propagates).
    """
    BW: tl.constexpr = BLOCK_M // KK
    if POOL > 1:
        e = tl.arange(0, BLOCK_M) % KK
        acc = tl.where((e < POOL * POOL)[:, None], acc, float("-inf"))
        v = tl.reshape(acc, [BW, KK, BLOCK_N])
        isnan = v != v
        clean = tl.where(isnan, float("-inf"), v)
        best = tl.max(clean, axis=1)
        eid = tl.arange(0, KK)[None, :, None]
        first_max = tl.min(tl.where(clean == best[:, None, :], eid, KK), axis=1)
        last_nan = tl.max(tl.where(isnan, eid, -1), axis=1)
        has_nan = last_nan >= 0
        val = tl.where(has_nan, float("nan"), best)
        widx = tl.where(has_nan, last_nan, first_max)
    else:
        val = acc
    win = pid_m * BW + tl.arange(0, BW)
    n = win // (PO * QO)
    po = (win // QO) % PO
    qo = win % QO
    if HAS_BIAS:
        bias = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        val = val + bias[None, :]
    if RELU:
        val = tl.where(val < 0, 0.0, val)  # relu(NaN) stays NaN, like torch.relu
    off = (n.to(tl.int64) * syn + po * syh + qo * syw)[:, None] + k[None, :] * syk
    mask = (win < NWIN)[:, None] & k_ok[None, :]
    tl.store(y_ptr + off, val.to(y_ptr.dtype.element_ty), mask=mask)
    if POOL > 1:
        tl.store(idx_ptr + off, widx.to(tl.uint8), mask=mask)
