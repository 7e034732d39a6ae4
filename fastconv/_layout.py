"""Memory formats: outputs keep the input's (like PyTorch)."""
from __future__ import annotations

import torch


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last when t is laid out channels-fastest, else contiguous."""
    if t.dim() != 4 or t.is_contiguous():
        return torch.contiguous_format
    if t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    # a strided view (a slice, a permute): follow its stride order like aten does
    return torch.channels_last if t.stride(1) < t.stride(3) else torch.contiguous_format


def empty(shape, like: torch.Tensor, fmt: torch.memory_format, dtype=None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)
