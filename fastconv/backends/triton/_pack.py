"""Weights in the GEMM kernels' layout: ``[K, R, S, Cg]`` contiguous.

Element (k, c, r, s) of ``w [K, Cg, R, S]`` sits at ``k*R*S*Cg + (r*S + s)*Cg + c``
of the packed tensor, so a reduction step over channels reads contiguous
memory for one filter tap, and the flattened reduction index
``(r*S + s)*Cg + c`` of the implicit GEMM is the packed column.

A channels_last weight already is that layout (a free view). Any other weight
is copied on every call (one small elementwise kernel, captured with the call
in a CUDA graph). The copy is not cached across calls: no stamp of a tensor sees
every update of its data (``w.data.mul_()``, an EMA update through ``.data``,
does not bump ``w._version``), and a stale copy would be silently wrong.
"""
from __future__ import annotations

import torch


def packed_weight(w: torch.Tensor) -> torch.Tensor:
    """w [K, Cg, R, S] (any strides) -> [K, R, S, Cg] contiguous, same dtype and device."""
    view = w.permute(0, 2, 3, 1)
    return view if view.is_contiguous() else view.contiguous()
