"""The sizes of one conv launch, computed once for the Triton launchers.

``conv_geom(x_shape, w_shape, p)`` reads x [N, C, H, W], w [K, Cg, R, S] and
the op's ConvParams into the letters the kernels use: G groups of Kg output
channels, the conv output P x Q and its pooled part PO x QO (pool = the fused
k, 1 = none). ``conv`` is the six stride / padding / dilation ints that every
conv kernel takes, in its argument order (sh, sw, pt, pl, dh, dw);
``key(dtype, layout)`` is the autotuning key of a launch (``_tune.choose``):
everything that decides the best config, the tensor strides of the operand
the kernel walks included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._layout import empty, memory_format_of
from ..._params import ConvParams


@dataclass(frozen=True)
class ConvGeom:
    N: int
    C: int
    H: int
    W: int
    K: int
    Cg: int
    R: int
    S: int
    G: int
    Kg: int
    P: int
    Q: int
    PO: int
    QO: int
    pool: int
    relu: bool
    p: ConvParams

    @property
    def depthwise(self) -> bool:
        """groups == C with one input channel per group: the conv2d_depthwise kernels."""
        return self.Cg == 1 and self.G > 1

    @property
    def conv(self) -> tuple[int, int, int, int, int, int]:
        (sh, sw), (pt, pl), (dh, dw) = self.p.stride, self.p.padding[:2], self.p.dilation
        return sh, sw, pt, pl, dh, dw

    def key(self, dtype: torch.dtype, layout) -> tuple:
        return (self.N, self.C, self.H, self.W, self.K, self.Cg, self.R, self.S, self.p.stride, self.p.padding,
                self.p.dilation, self.G, self.relu, self.pool, str(dtype), tuple(layout))


def conv_geom(x_shape, w_shape, p: ConvParams) -> ConvGeom:
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    P, Q = p.conv_hw(H, W, R, S)
    return ConvGeom(N, C, H, W, K, Cg, R, S, p.groups, K // p.groups, P, Q, P // p.pool, Q // p.pool,
                    p.pool, p.relu, p)


def conv_outputs(x: torch.Tensor, g: ConvGeom) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused forward's (y, idx) [N, K, PO, QO] in x's memory format; idx is
    uint8, and an empty tensor when there is no pooling."""
    fmt = memory_format_of(x)
    shape = (g.N, g.K, g.PO, g.QO)
    y = empty(shape, x, fmt)
    if g.pool == 1:
        return y, torch.empty(0, dtype=torch.uint8, device=x.device)
    return y, empty(shape, x, fmt, torch.uint8)
