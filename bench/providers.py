"""What the benchmarks time: the same layer through each provider.

* fastconv backends (``triton``, ``cuda``, ``cpu``, ``reference``, ``auto``):
  ``fastconv.conv2d(x, w, b, ..., activation, pool)`` (+ ``fastconv.max_pool2d``
  for a post pool), run under ``use_backend(name, strict=True)`` so that a call
  the backend cannot take raises instead of silently falling back. ``auto`` is
  a policy: strict too (a call no fastconv kernel can take raises), but where it
  chooses ``reference`` (the measured table, or its own timing on the first call,
  fastconv/backends/measure.py) that is its answer and is timed; the backends it
  used are recorded (:func:`record_backends`) in the row.
* ``eager``: ``F.conv2d -> F.relu -> F.max_pool2d`` (cuDNN on a GPU, with
  ``cudnn.benchmark`` on; aten's CPU path on a CPU).
* ``compile``: ``torch.compile`` of the eager function (fullgraph, static
  shapes), by default ``mode="max-autotune-no-cudagraphs"``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import fastconv
from fastconv import backends

from .model import Layer

FASTCONV = ("auto", "triton", "cuda", "vendor", "cpu", "reference")
BASELINES = ("eager", "compile")
ALL = FASTCONV + BASELINES
COMPILE_MODE = "max-autotune-no-cudagraphs"


def default_providers(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["triton", "cuda", "vendor", "auto", "eager", "compile"]
    return ["cpu", "reference", "eager"]


def check_names(names: list[str]) -> list[str]:
    bad = [n for n in names if n not in ALL]
    if bad:
        raise ValueError(f"unknown provider(s) {', '.join(bad)}; providers are {', '.join(ALL)}")
    return names


class Unavailable(Exception):
    """This provider cannot run this layer here; the message says why."""


def eager_fn(layer: Layer) -> Callable:
    """The unfused PyTorch layer: conv2d -> relu -> max_pool2d (-> post max_pool2d)."""
    stride, padding, dilation, groups = layer.stride, layer.padding, layer.dilation, layer.groups
    relu, pool, post = layer.relu, layer.pool, layer.post_pool

    def layer_eager(x, w, b):
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        if relu:
            y = F.relu(y)
        if pool > 1:
            y = F.max_pool2d(y, pool)
        if post is not None:
            y = F.max_pool2d(y, post[0], post[1], post[2])
        return y

    return layer_eager


def fastconv_fn(layer: Layer) -> Callable:
    """The fastconv layer: one fused conv(+bias)(+relu)(+pool) op (+ a general max-pool)."""
    stride, padding, dilation, groups = layer.stride, layer.padding, layer.dilation, layer.groups
    act = "relu" if layer.relu else None
    pool = layer.pool if layer.pool > 1 else None
    post = layer.post_pool

    def layer_fastconv(x, w, b):
        y = fastconv.conv2d(x, w, b, stride, padding, dilation, groups, activation=act, pool=pool)
        if post is not None:
            y = fastconv.max_pool2d(y, post[0], post[1], post[2])
        return y

    return layer_fastconv


def compile_fn(layer: Layer, mode: str) -> Callable:
    """torch.compile of the eager layer; a fresh dynamo state per layer so that no
    recompile limit ever sends a layer back to eager."""
    import torch._dynamo

    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    torch._dynamo.reset()
    return torch.compile(eager_fn(layer), mode=mode, dynamic=False, fullgraph=True)


def build(provider: str, layer: Layer, x, w, b, compile_mode: str = COMPILE_MODE) -> Callable:
    """fn(x, w, b) -> y for ``provider``, or :class:`Unavailable` with the reason."""
    if provider == "eager":
        return eager_fn(layer)
    if provider == "compile":
        return compile_fn(layer, compile_mode)
    if provider != "auto":
        # the post pool is checked by the strict probe call (its input is the conv output)
        reason = backends.unsupported_reason(provider, "conv2d_fwd", x, w, b, layer.conv_params())
        if reason is not None:
            raise Unavailable(reason)
    return fastconv_fn(layer)


def scope(provider: str):
    """The backend choice a provider runs under (nothing for the baselines)."""
    if provider in BASELINES:
        return contextlib.nullcontext()
    return fastconv.use_backend(provider, strict=True)


@contextlib.contextmanager
def record_backends():
    """{op: {backend names}} of every fastconv op dispatched inside the block
    (including backward ops, which autograd runs in its own thread)."""
    used: dict[str, set] = {}
    select = backends.select

    def recording_select(op, *args):
        be = select(op, *args)
        used.setdefault(op, set()).add(be.NAME)
        return be

    backends.select = recording_select
    try:
        yield used
    finally:
        backends.select = select


def fallback_reason(provider: str, used: dict[str, set]) -> Optional[str]:
    """Why timing ``provider`` would time something else, from what a probe call used."""
    if provider in BASELINES:
        return None
    if provider == "auto":  # strict: a fallback raised already; reference here is auto's choice
        return None if used else "no fastconv op was dispatched"
    other = sorted(f"{op}->{'/'.join(sorted(n))}" for op, n in used.items() if n != {provider})
    if other:
        return f"ran on another backend: {', '.join(other)}"
    if not used:
        return "no fastconv op was dispatched"
    return None
