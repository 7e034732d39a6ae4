"""Launch configurations of the Triton kernels: one function per kernel.

Each ``*_configs`` function returns the candidate configs for one problem
(dicts of meta-parameters plus ``num_warps`` / ``num_stages``), pruned to what
fits the problem and the GPU; the first is the heuristic default, used when no
tuning happens (a pinned config, CUDA graph capture, ``FASTCONV_TRITON_TUNE=0``).
Results are memoized per problem (a launch only looks them up): the returned
tuple and its dicts are shared and never modified.
Under the Triton interpreter every function returns one large-tile config:
program instances run one by one there, so fewer, larger tiles are faster.

Rules kept by every list:

* tl.dot tiles are powers of two and at least 16 in each dimension.
* Kernels whose reduction loop walks the flattened (r, s, channel-block) taps
  of a non-1x1 filter use ``num_warps=4`` only: such loops are known to
  miscompile at ``num_warps=8`` on some Triton versions, so 8 is offered for
  1x1 filters only until a GPU run shows otherwise
  (``test_gpu_every_candidate_config_is_correct`` checks every candidate).
* Shared memory of the software pipeline, ``num_stages * (A tile + B tile)``,
  stays under ``SMEM_BUDGET`` bytes (H100/H200 have 227 KiB per block).
"""
from __future__ import annotations

import functools

from ._common import INTERPRET, next_pow2

SMEM_BUDGET = 192 * 1024
GATHER_TILE = 64 * 32

# The tunable keys of each kernel (FASTCONV_TRITON_CONFIG may set these).
KEYS = {
    "conv2d_fwd": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"),
    "conv2d_dgrad": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"),
    "conv2d_wgrad": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"),
    "conv2d_depthwise_fwd": ("BLOCK_M", "BLOCK_N", "num_warps"),
    "conv2d_depthwise_dgrad": ("BLOCK_M", "BLOCK_N", "num_warps"),
    "conv2d_depthwise_wgrad": ("BLOCK_M", "BLOCK_N", "num_warps"),
    "conv2d_bias_grad": ("BLOCK_M", "BLOCK_N", "num_warps"),
    "max_pool2d_fwd": ("BLOCK_M", "BLOCK_N", "num_warps"),
    "max_pool2d_bwd": ("BLOCK_M", "BLOCK_N", "num_warps"),
    "relu": ("BLOCK_M", "num_warps"),
}
# Block sizes that feed tl.dot (>= 16); every other BLOCK_* only needs to be a power of two.
DOT_KEYS = {"conv2d_fwd": ("BLOCK_M", "BLOCK_N", "BLOCK_K"), "conv2d_dgrad": ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
            "conv2d_wgrad": ("BLOCK_M", "BLOCK_N", "BLOCK_K")}


def _p2(n: int, lo: int = 16, hi: int = 1 << 30) -> int:
    """next power of two of n, clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(n)))


def _cfg(bm, bn, bk=None, warps=4, stages=None) -> dict:
    c = {"BLOCK_M": bm, "BLOCK_N": bn}
    if bk is not None:
        c["BLOCK_K"] = bk
    c["num_warps"] = warps
    if stages is not None:
        c["num_stages"] = stages
    return c


def _gemm_prune(cands, m_max, n_max, k_max, esize, one_by_one, m_min=16, gather=None, a_size=None):
    """Clamp each (BM, BN, BK, warps, stages) to the problem, drop what does not fit, dedupe.

    esize: bytes per element of the operands; a_size: bytes the A tile loads per element
    when that is more (the unpool prologue reads dy, y and idx).

    gather: 'A' or 'B' when that operand is an element-wise gather (a 64-bit pointer per
    element, no cp.async pipelining): its tile is kept at GATHER_TILE elements so that the
    kernel does not spill registers at num_warps=4 (checked with _compile_check on sm_90).
    """
    out, seen = [], set()
    for bm, bn, bk, warps, stages in cands:
        bm = max(m_min, min(bm, _p2(m_max, m_min)))
        bn, bk = min(bn, _p2(n_max)), min(bk, _p2(k_max))
        if warps > 4 and not one_by_one:
            continue
        if gather == "A":
            bk = max(16, min(bk, GATHER_TILE // bm))
            bm = max(m_min, min(bm, GATHER_TILE // bk))
        elif gather == "B":
            bk = max(16, min(bk, GATHER_TILE // bn))
        if stages * (bm * bk * (a_size or esize) + bk * bn * esize) > SMEM_BUDGET:
            continue
        c = _cfg(bm, bn, bk, warps, stages)
        key = tuple(c.values())
        if key not in seen:
            seen.add(key)
            out.append(c)
    return tuple(out)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), most likely best first.
_GEMM_CANDIDATES = [
    (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 3),
    (128, 128, 64, 4, 3),
    (64, 128, 64, 4, 3),
    (128, 64, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (128, 32, 64, 4, 3),
]


# The backward GEMMs read their A operand through the unpool prologue: two or three streams
# (dy, the uint8 index, y under relu) that go through registers before the tensor cores. At
# three stages their buffers take ~100-130 KB of shared memory, one program per SM (4 warps);
# two-stage candidates let two programs share an SM to hide that latency.
_BWD_CANDIDATES = _GEMM_CANDIDATES + [
    (128, 64, 64, 4, 2),
    (64, 128, 64, 4, 2),
]


@functools.lru_cache(maxsize=None)
def conv2d_fwd_configs(M: int, Kg: int, red_k: int, kk: int, esize: int, one_by_one: bool,
                     flat: bool = False) -> tuple[dict, ...]:
    """Implicit-GEMM forward: M rows (window-ordered output pixels), Kg columns,
    reduction blocks over red_k (Cg for channel blocks, R*S*Cg when flat, a gather);
    BLOCK_M is at least the window rows kk."""
    if INTERPRET:
        return (_cfg(max(128, kk), _p2(Kg, hi=64), _p2(red_k, hi=128), 4, 1),)
    return _gemm_prune(_GEMM_CANDIDATES, M, Kg, red_k, esize, one_by_one, m_min=max(16, kk),
                       gather="A" if flat else None)


def dc_bytes(esize: int, relu: bool, pool: int) -> int:
    """Bytes the unpool prologue reads per conv-output-gradient element: dy, y (relu), idx (pool)."""
    return esize * (2 if relu else 1) + (1 if pool > 1 else 0)


@functools.lru_cache(maxsize=None)
def conv2d_dgrad_configs(M: int, Cg: int, Kg: int, esize: int, one_by_one: bool, a_size: int = 0) -> tuple[dict, ...]:
    """Implicit-GEMM dgrad: M input pixels of one stride phase, Cg columns, reduction over Kg per tap;
    a_size = dc_bytes(...) of the A operand."""
    if INTERPRET:
        return (_cfg(128, _p2(Cg, hi=64), _p2(Kg, hi=64), 4, 1),)
    return _gemm_prune(_BWD_CANDIDATES, M, Cg, Kg, esize, one_by_one, a_size=a_size)


@functools.lru_cache(maxsize=None)
def conv2d_wgrad_configs(Kg: int, RSC: int, NPQ: int, esize: int, one_by_one: bool, Cg: int = 1,
                       a_size: int = 0) -> tuple[dict, ...]:
    """Implicit-GEMM wgrad: Kg rows, R*S*Cg columns, reduction (split-K) over N*P*Q.

    When Cg is a multiple of 16, BLOCK_N divides Cg, so each column tile is one filter tap
    (the kernel's ONE_TAP path: contiguous channel loads, row masks); else the x operand
    is a gather and its tile is kept small."""
    if INTERPRET:
        return (_cfg(_p2(Kg, hi=64), _p2(RSC, hi=128), 128, 4, 1),)
    tap_cols = Cg & -Cg  # the largest power of two dividing Cg
    if tap_cols >= 16:
        return _gemm_prune(_BWD_CANDIDATES, Kg, min(RSC, tap_cols), NPQ, esize, one_by_one, a_size=a_size)
    return _gemm_prune(_BWD_CANDIDATES, Kg, RSC, NPQ, esize, one_by_one, gather="B", a_size=a_size)


@functools.lru_cache(maxsize=None)
def conv2d_depthwise_configs(kernel: str, C: int, kk: int = 1) -> tuple[dict, ...]:
    """Direct depthwise kernels: BLOCK_M pixels (>= kk window rows) x BLOCK_N channels."""
    if INTERPRET:
        return (_cfg(max(256, kk), _p2(C, lo=1, hi=64), warps=4),)
    cands = [(64, 64, 4), (128, 32, 4), (32, 128, 4), (128, 64, 8)]
    out = []
    for bm, bn, warps in cands:
        c = _cfg(max(bm, kk), min(bn, _p2(C, lo=8)), warps=warps)
        if c not in out:
            out.append(c)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def conv2d_bias_grad_configs(K: int) -> tuple[dict, ...]:
    """Bias-gradient reduction: BLOCK_M pooled pixels x BLOCK_N channels per step."""
    if INTERPRET:
        return (_cfg(256, _p2(K, lo=1, hi=64), warps=4),)
    return (_cfg(64, _p2(K, lo=8, hi=64), warps=4),)


@functools.lru_cache(maxsize=None)
def max_pool2d_configs(kernel: str, C: int) -> tuple[dict, ...]:
    """General max-pool forward/backward: BLOCK_M pixels x BLOCK_N channels."""
    if INTERPRET:
        return (_cfg(256, _p2(C, lo=1, hi=64), warps=4),)
    out = []
    for bm, bn in [(64, 64), (128, 32), (32, 128), (256, 16)]:
        c = _cfg(bm, min(bn, _p2(C, lo=4)), warps=4)
        if c not in out:
            out.append(c)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def relu_configs() -> tuple[dict, ...]:
    """Elementwise relu: BLOCK_M elements per program (memory bound, untuned)."""
    if INTERPRET:
        return ({"BLOCK_M": 1 << 16, "num_warps": 4},)
    return ({"BLOCK_M": 4096, "num_warps": 8},)
