"""The one FLOP / byte model of the benchmarks, and the roofline floor.

A benchmarked layer is ``y = post_pool(pool_k(act(conv2d(x, w) + b)))`` with
x [N, C, H, W], w [K, C/groups, R, S], the conv output [N, K, P, Q], the fused
non-overlapping k x k pool (k = ``pool``, 1 = none) and an optional general
max-pool after it (``post_pool``, e.g. the 3x3/s2 pool of a ResNet stem).
Every size comes from fastconv's ConvParams / PoolParams, like the ops.

FLOPs (multiply and add counted as 2; bias, relu and pooling ignored):

    fwd    F = 2 * N * K * P * Q * (C / groups) * R * S
    bwd    F * (1 + needs_dx)        (dw is one conv of that size, dx another)
    fwdbwd fwd + bwd

Minimum bytes moved through device memory, each tensor read or written once
(e = bytes per element of the dtype, y = the final pooled output, idx = one
uint8 window index per element of y when any pooling is on, else nothing):

    fwd    (inference)   e * (x + w + b + y)
    fwd    (training)    e * (x + w + b + y) + idx          (what backward needs)
    bwd                  e * (dy + x + w + [y if relu] + [dx if needs_dx] + dw + db) + idx
    fwdbwd fwd (training) + bwd

This is a floor, not a model of any one kernel: the full-resolution conv
output of an unfused implementation is deliberately absent, so the floor is
what a perfectly fused layer could reach. The roofline floor of a pass is

    floor_s = max(flops / peak_flops, min_bytes / peak_bandwidth)

with both peaks measured in the same run (bench/timing.py), and a measured
time t is reported as ``100 * floor_s / t`` percent of the roofline.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from fastconv._params import ConvParams, PoolParams

PASSES = ("fwd", "bwd", "fwdbwd")


@dataclass(frozen=True)
class Layer:
    """One benchmarked layer: shapes and the fused epilogue (see the module docstring)."""

    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int = 3
    S: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    relu: bool = True
    pool: int = 2
    post_pool: Optional[tuple[int, int, int]] = None  # (kernel, stride, padding) of a general max-pool
    needs_dx: bool = True  # False for a first layer: nothing upstream needs the input gradient

    def __post_init__(self):
        for f in ("N", "C", "H", "W", "K", "R", "S", "stride", "dilation", "groups", "pool"):
            if getattr(self, f) < 1:
                raise ValueError(f"layer {self.name!r}: {f} must be positive, got {getattr(self, f)}")
        if self.padding < 0:
            raise ValueError(f"layer {self.name!r}: padding must be >= 0, got {self.padding}")
        if self.C % self.groups or self.K % self.groups:
            raise ValueError(f"layer {self.name!r}: groups={self.groups} must divide C={self.C} and K={self.K}")
        P, Q = self.conv_hw()
        if P < self.pool or Q < self.pool:
            raise ValueError(f"layer {self.name!r}: the conv output {P}x{Q} is smaller than pool={self.pool}")

    # ------------------------------------------------------------------ shapes

    def conv_params(self) -> ConvParams:
        p = self.padding
        return ConvParams((self.stride,) * 2, (p, p, p, p), (self.dilation,) * 2, self.groups, self.relu,
                          self.pool)

    def post_pool_params(self) -> Optional[PoolParams]:
        if self.post_pool is None:
            return None
        k, s, p = self.post_pool
        return PoolParams((k, k), (s, s), (p, p), (1, 1), False)

    def conv_hw(self) -> tuple[int, int]:
        """(P, Q): the conv output before any pooling."""
        return self.conv_params().conv_hw(self.H, self.W, self.R, self.S)

    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, self.R, self.S)

    def out_shape(self) -> tuple[int, int, int, int]:
        """Shape of the final output y (after the fused pool and the post pool)."""
        PO, QO = self.conv_params().out_hw(self.H, self.W, self.R, self.S)
        pp = self.post_pool_params()
        if pp is not None:
            PO, QO = pp.out_hw(PO, QO)
        return (self.N, self.K, PO, QO)

    @property
    def pooled(self) -> bool:
        return self.pool > 1 or self.post_pool is not None

    # ------------------------------------------------------------------ model

    def flops(self, pass_: str) -> int:
        P, Q = self.conv_hw()
        f = 2 * self.N * self.K * P * Q * (self.C // self.groups) * self.R * self.S
        return {"fwd": f, "bwd": f * (1 + self.needs_dx), "fwdbwd": f * (2 + self.needs_dx)}[_check(pass_)]

    def min_bytes(self, pass_: str, elem_size: int, training: bool = False) -> int:
        """Compulsory traffic of ``pass_`` (``training`` only matters for 'fwd': it adds idx)."""
        _check(pass_)
        x = _numel(self.x_shape())
        w = _numel(self.w_shape())
        b = self.K if self.bias else 0
        y = _numel(self.out_shape())
        idx = y if self.pooled else 0
        fwd_infer = elem_size * (x + w + b + y)
        fwd_train = fwd_infer + idx
        bwd = elem_size * (y + x + w + (y if self.relu else 0) + (x if self.needs_dx else 0) + w + b) + idx
        if pass_ == "fwd":
            return fwd_train if training else fwd_infer
        if pass_ == "bwd":
            return bwd
        return fwd_train + bwd

    def describe(self) -> str:
        """Short human form: ``256x3x32x32 -> 32, 3x3 s1 p1, relu, pool2``."""
        parts = [f"{self.N}x{self.C}x{self.H}x{self.W} -> {self.K}",
                 f"{self.R}x{self.S} s{self.stride} p{self.padding}"]
        if self.dilation > 1:
            parts.append(f"d{self.dilation}")
        if self.groups > 1:
            parts.append(f"g{self.groups}")
        if not self.bias:
            parts.append("no bias")
        if self.relu:
            parts.append("relu")
        if self.pool > 1:
            parts.append(f"pool{self.pool}")
        if self.post_pool is not None:
            k, s, p = self.post_pool
            parts.append(f"maxpool {k}x{k}/s{s} p{p}")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


def roofline_floor_s(flops: float, nbytes: float, peak_flops: float, peak_bytes_per_s: float) -> float:
    """max(flops / peak, bytes / bandwidth): no implementation runs faster than this."""
    return max(flops / peak_flops, nbytes / peak_bytes_per_s)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check(pass_: str) -> str:
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_!r}")
    return pass_
