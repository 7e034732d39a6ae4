"""Weights in the GEMM kernels' layout: ``[K, R, S, Cg]`` contiguous, cached.

Element (k, c, r, s) of ``w [K, Cg, R, S]`` sits at ``k*R*S*Cg + (r*S + s)*Cg + c``
of the packed tensor, so a reduction step over channels reads contiguous
memory for one filter tap, and the flattened reduction index
``(r*S + s)*Cg + c`` of the implicit GEMM is the packed column.

A channels_last weight already is that layout (a free view). Any other weight
is copied once and the copy is cached per weight tensor, valid while the
weight's storage pointer, shape, strides and ``_version`` (bumped by every
in-place update, e.g. an optimizer step) are unchanged; entries go away with
their weight. No cache while a CUDA graph is being captured (the capture must
contain the packing, or a replay after an optimizer step would read stale
weights) nor for inference tensors (which have no version counter).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

_lock = threading.Lock()


@dataclass
class _Entry:
    ref: weakref.ref
    stamp: tuple
    packed: torch.Tensor


_cache: dict[int, _Entry] = {}


def _stamp(w: torch.Tensor) -> tuple:
    return (w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, w.device, w._version)


def _drop(key: int, ref: weakref.ref) -> None:
    with _lock:
        e = _cache.get(key)
        if e is not None and e.ref is ref:
            del _cache[key]


def packed_weight(w: torch.Tensor) -> torch.Tensor:
    """w [K, Cg, R, S] (any strides) -> [K, R, S, Cg] contiguous, same dtype and device."""
    view = w.permute(0, 2, 3, 1)
    if view.is_contiguous():
        return view
    if w.is_inference() or (w.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return view.contiguous()
    key, stamp = id(w), _stamp(w)
    with _lock:
        e = _cache.get(key)
        if e is not None and e.ref() is w and e.stamp == stamp:
            return e.packed
    packed = view.contiguous()
    ref = weakref.ref(w, lambda r, k=key: _drop(k, r))
    with _lock:
        _cache[key] = _Entry(ref, stamp, packed)
    return packed

