"""The ``reference`` backend: a composition of aten ops.

It is the oracle of every test (run in float64) and, on a GPU, the baseline
that runs cuDNN ``conv2d -> relu -> max_pool2d``. Clarity over speed: the
backward rebuilds the full-resolution conv-output gradient explicitly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._layout import memory_format_of
from .._params import ConvParams, PoolParams

NAME = "reference"


def available() -> str | None:
    return None


def unsupported(op: str, *args) -> str | None:
    return None


def _padded(x: torch.Tensor, p: ConvParams):
    """(input, symmetric padding) for aten: asymmetric ('same') pads explicitly."""
    pt, pl, pb, pr = p.padding
    if p.symmetric_padding:
        return x, (pt, pl)
    return F.pad(x, (pl, pr, pt, pb)), (0, 0)


def window_index(ind: torch.Tensor, k: int, Wc: int) -> torch.Tensor:
    """Plane index h*Wc + w of a k x k / stride-k max-pool -> window index di*k + dj."""
    h, w = ind // Wc, ind % Wc
    return ((h % k) * k + (w % k)).to(torch.uint8)


def plane_index(idx: torch.Tensor, k: int, Q: int) -> torch.Tensor:
    """Window index d = di*k + dj of a k x k / stride-k max-pool -> int64 plane index h*Q + w of
    the [P, Q] plane it was taken from (the inverse of ``window_index``): each window's corner plus
    di*Q + dj = di*(Q - k) + d, in floating point, exact below 2**24 (float32) or 2**53 (float64);
    integer division and a table lookup through indexing took 2-7x as long on the CPU."""
    _, _, PO, QO = idx.shape
    ft = torch.float32 if (PO + 1) * k * Q < 2 ** 24 else torch.float64
    d = idx.to(ft)
    corner = (torch.arange(PO, device=idx.device, dtype=ft).view(PO, 1) * (k * Q)
              + torch.arange(QO, device=idx.device, dtype=ft).view(1, QO) * k)
    return torch.floor(d / k).mul_(Q - k).add_(d).add_(corner).long()


def unpool(dy: torch.Tensor, idx: torch.Tensor, k: int, P: int, Q: int) -> torch.Tensor:
    """dC[n,c,k*i+di,k*j+dj] = dy[n,c,i,j] * (idx[n,c,i,j] == di*k+dj), zero past the windows:
    ATen's own max-pool backward on the plane indices (one zero-fill and one scatter, as eager
    PyTorch's backward does; a one-hot product over k*k copies ran at 0.6x of eager's backward)."""
    N, K, _, _ = dy.shape
    shape = torch.empty((N, K, P, Q), dtype=dy.dtype, device=dy.device, memory_format=memory_format_of(dy))
    return torch.ops.aten.max_pool2d_with_indices_backward(dy, shape, [k, k], [k, k], [0, 0], [1, 1], False,
                                                          plane_index(idx, k, Q))


def conv2d_fwd(x, w, b, p: ConvParams):
    fmt = memory_format_of(x)
    xp, pad = _padded(x, p)
    c = F.conv2d(xp, w, b, p.stride, pad, p.dilation, p.groups)
    if p.relu:
        c = torch.relu_(c)  # c is this call's own buffer
    if p.pool > 1:
        y, ind = F.max_pool2d(c, p.pool, p.pool, return_indices=True)
        idx = window_index(ind, p.pool, c.shape[3])
    else:
        y, idx = c, torch.empty(0, dtype=torch.uint8, device=x.device)
    return y.contiguous(memory_format=fmt), idx.contiguous(memory_format=fmt) if p.pool > 1 else idx


def conv2d_aten(x, w, b, p: ConvParams):
    """``relu_(conv2d(x))`` of a conv with no pool, through ATen's ops and their autograd: the
    fused op's eager path when this backend runs it (fastconv/_eager.py). ATen's conv saves x and
    w, the in-place relu y: what the fused op saves (docs/design.md §4)."""
    xp, pad = _padded(x, p)
    c = F.conv2d(xp, w, b, p.stride, pad, p.dilation, p.groups)
    if p.relu:
        c = torch.relu_(c)
    return c.contiguous(memory_format=memory_format_of(x))


def conv2d_bwd(dy, x, w, y, idx, p: ConvParams, mask):
    fmt = memory_format_of(x)
    if p.relu:  # the relu mask of docs/design.md §2.2: NaN passes, like torch.relu's backward
        dy = torch.ops.aten.threshold_backward(dy, y, 0)
    P, Q = p.conv_hw(x.shape[2], x.shape[3], w.shape[2], w.shape[3])
    dc = unpool(dy, idx, p.pool, P, Q) if p.pool > 1 else dy
    xp, pad = _padded(x, p)
    dx, dw, db = torch.ops.aten.convolution_backward(
        dc, xp, w, [w.shape[0]] if mask[2] else None, list(p.stride), list(pad), list(p.dilation),
        False, [0, 0], p.groups, list(mask))
    if dx is not None:
        if not p.symmetric_padding:
            pt, pl = p.padding[0], p.padding[1]
            dx = dx[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]
        dx = dx.contiguous(memory_format=fmt)
    return dx, (dw.contiguous() if dw is not None else None), db


def relu_fwd(x):
    return torch.relu(x)


def relu_bwd(dy, y):
    return torch.ops.aten.threshold_backward(dy, y, 0)


def max_pool2d_fwd(x, p: PoolParams):
    fmt = memory_format_of(x)
    y, ind = F.max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode, return_indices=True)
    return y.contiguous(memory_format=fmt), ind.to(torch.int32).contiguous(memory_format=fmt)


def max_pool2d_bwd(dy, idx, input_hw, p: PoolParams):
    N, C, OH, OW = dy.shape
    H, W = input_hw
    dx = torch.zeros(N, C, H * W, dtype=dy.dtype, device=dy.device)
    dx.scatter_add_(2, idx.reshape(N, C, OH * OW).long(), dy.reshape(N, C, OH * OW))
    return dx.view(N, C, H, W).contiguous(memory_format=memory_format_of(dy))
