"""Validated, normalized arguments of the fastconv ops.

Backends receive these frozen records instead of raw user arguments, and
compute every output size through them so that all layers agree.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_POOL = 16  # the fused window index is a uint8 (k*k <= 256)
INT32_MAX = 2**31 - 1  # kernels with 32-bit offsets or size fields decline calls past it


@dataclass(frozen=True)
class ConvParams:
    """conv2d(+bias)(+relu)(+k x k max-pool, stride k) of one call.

    padding is (top, left, bottom, right): 'same' with an even effective
    kernel pads one more row/column at the bottom/right, like PyTorch.
    pool == 1 means no pooling.
    """

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    relu: bool
    pool: int

    def conv_hw(self, H, W, R, S):
        """Conv output (P, Q) for an H x W input and an R x S kernel."""
        pt, pl, pb, pr = self.padding
        P = (H + pt + pb - self.dilation[0] * (R - 1) - 1) // self.stride[0] + 1
        Q = (W + pl + pr - self.dilation[1] * (S - 1) - 1) // self.stride[1] + 1
        return P, Q

    def out_hw(self, H, W, R, S):
        """Stored output (PO, QO): the conv output pooled in floor mode."""
        P, Q = self.conv_hw(H, W, R, S)
        return P // self.pool, Q // self.pool

    @property
    def symmetric_padding(self) -> bool:
        pt, pl, pb, pr = self.padding
        return pt == pb and pl == pr


@dataclass(frozen=True)
class PoolParams:
    """General max_pool2d (like torch.nn.functional.max_pool2d)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    def out_hw(self, H, W):
        return (
            _pool_out(H, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode),
            _pool_out(W, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode),
        )


def _pool_out(n, k, s, p, d, ceil_mode):
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # last window must start inside input or left pad
        out = out - 1
    return out
