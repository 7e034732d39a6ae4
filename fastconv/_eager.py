"""The eager path: the fastconv ops as autograd Functions, without the custom-op dispatcher.

Calling a ``torch.library.custom_op`` costs tens of microseconds of Python on the host before
any kernel runs (the dispatcher, the generated autograd function, the redispatch to the device
implementation), about twice that with autograd: more than a whole small layer takes on a GPU
(``bench/bench_overhead.py`` measures it). Plain eager execution needs none of that machinery,
so the public functions (``functional.py``) run the op bodies of ``_impl`` through the
``torch.autograd.Function``s here instead: same backends, same saved tensors, same gradients
(docs/design.md §4).

``usable`` says when a call may take this path. Whenever anything could trace, transform or
intercept the call, it goes through the custom op (``ops.py``), which those systems
understand: ``torch.compile`` and ``torch.export`` (dynamo), TorchDispatchModes (FakeTensorMode,
``make_fx``, functionalization), TorchFunctionModes, ``torch.func`` transforms, jit tracing,
tensor subclasses, devices other than cpu and cuda. ``FASTCONV_EAGER_PATH=0`` (read per call)
sends every call through the custom op.

Where the backend that runs a call is ``reference`` and the fused op would compute and save
what ATen's own ops do -- a relu; a conv with no pool (ATen's conv saves x and w, an in-place
relu y: the fused op's saved tensors); a standalone max-pool (ATen's saves its index as int64,
fastconv's as int32: PyTorch's memory, not more) -- the eager path calls those ATen ops with
their C++ autograd instead of a Python Function around them: on the CPU, where ``auto`` gives a relu
to ATen and measures ATen fastest for many convs, that host time is the difference between
matching PyTorch and losing to it on small tensors.

A backward with ``create_graph=True`` calls the backward custom op, so a double backward fails
the same clear way on both paths (the backward ops have no autograd formula); through ATen's own
ops (above) it works, as in PyTorch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _env, _impl, backends, ops
from .backends import autoselect
from ._layout import memory_format_of
from ._params import ConvParams, PoolParams

ENV = "FASTCONV_EAGER_PATH"
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _probe(name: str, owner=torch._C):
    fn = getattr(owner, name, None)
    return fn if callable(fn) else None


_dispatch_modes = _probe("_len_torch_dispatch_stack")
_function_modes = _probe("_is_torch_function_mode_enabled")
_jit_tracing = _probe("_is_tracing")
_functorch = getattr(torch._C, "_functorch", None)
_transforms = _probe("peek_interpreter_stack", _functorch) if _functorch is not None else None
_ALL_PROBES = None not in (_dispatch_modes, _function_modes, _jit_tracing, _transforms)


def usable(*tensors) -> bool:
    """True when this call may skip the custom op (plain eager tensors, nothing tracing)."""
    if torch.compiler.is_compiling() or not _ALL_PROBES or _env.get(ENV, "1") == "0":
        return False
    if _dispatch_modes() or _function_modes() or _jit_tracing():
        return False
    if _transforms() is not None:
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or not (t.is_cpu or t.is_cuda)):
            return False
    return True


def _pick(body, op):
    """The backward body, or its custom op when the backward itself is being differentiated."""
    return op if torch.is_grad_enabled() else body


def _records_grad(*tensors) -> bool:
    """Whether autograd would record this call: grad mode on and an input that requires grad.
    Where it would not (inference, no_grad), the eager path calls the kernel without the
    autograd Function, whose apply costs ~14 us a call on a 2-core CPU (a 55 us stem conv)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class FastconvConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, p: ConvParams, be=None):
        y, idx = _impl.conv2d_fwd(x, w, b, p, be)
        _impl.conv2d_save(ctx, x, w, b, p, y, idx)
        return y, idx

    @staticmethod
    def backward(ctx, dy, _didx):
        return _impl.conv2d_backward(ctx, dy, _pick(_impl.conv2d_bwd, ops.conv2d_bwd_p)) + (None, None)


class FastconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, be=None):
        y = _impl.relu_fwd(x, be)
        _impl.relu_save(ctx, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        return _impl.relu_backward(ctx, dy, _pick(_impl.relu_bwd, ops.relu_bwd)), None


class FastconvMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: PoolParams, be=None):
        y, idx = _impl.max_pool2d_fwd(x, p, be)
        _impl.max_pool2d_save(ctx, x, p, idx)
        return y, idx

    @staticmethod
    def backward(ctx, dy, _didx):
        return _impl.max_pool2d_backward(ctx, dy, _pick(_impl.max_pool2d_bwd, ops.max_pool2d_bwd_p)), None, None


def conv2d(x: Tensor, w: Tensor, b: Tensor | None, p: ConvParams) -> Tensor:
    """The fused conv's y on the eager path (ATen's own ops where they are the same thing); the
    backend is selected once, here."""
    if x.shape[0] == 0:
        return FastconvConv2d.apply(x, w, b, p)[0]
    x = x.contiguous(memory_format=memory_format_of(x))
    be = backends.select("conv2d_fwd", x, w, b.contiguous() if b is not None else None, p)
    if p.pool == 1 and be.NAME == "reference":
        return be.conv2d_aten(x, w, b, p)
    if not _records_grad(x, w, b):  # nothing to differentiate: the kernel alone, no Function around it
        return _impl.conv2d_fwd(x, w, b, p, be)[0]
    return FastconvConv2d.apply(x, w, b, p, be)[0]


_CPU_RELU_IS_ATEN = autoselect.fixed("relu_fwd", "cpu") == "reference"  # a constant: read once


def relu(x: Tensor) -> Tensor:
    """relu on the eager path (ATen's own where the reference backend runs it)."""
    if x.is_cpu and _CPU_RELU_IS_ATEN and backends.current() == "auto":
        backends.last_selected["relu_fwd"] = "reference"  # what select would say, without its cost
        return torch.relu(x)
    if x.numel() == 0:
        return FastconvReLU.apply(x)
    x = x.contiguous(memory_format=_impl.any_format(x))
    be = backends.select("relu_fwd", x)
    if be.NAME == "reference":
        return torch.relu(x)
    return FastconvReLU.apply(x, be) if _records_grad(x) else _impl.relu_fwd(x, be)


def max_pool2d(x: Tensor, p: PoolParams) -> Tensor:
    """max_pool2d's y on the eager path (ATen's own where the reference backend runs it: it saves
    ATen's int64 index, what PyTorch's pool keeps, where fastconv's keeps an int32 one)."""
    if x.numel() == 0:
        return FastconvMaxPool2d.apply(x, p)[0]
    x = x.contiguous(memory_format=memory_format_of(x))
    be = backends.select("max_pool2d_fwd", x, p)
    if be.NAME == "reference":
        y = torch.nn.functional.max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
        return y.contiguous(memory_format=memory_format_of(x))
    if not _records_grad(x):
        return _impl.max_pool2d_fwd(x, p, be)[0]
    return FastconvMaxPool2d.apply(x, p, be)[0]
