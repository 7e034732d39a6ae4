"""The direct eager path: the public ops without the custom-op dispatcher.

Calling a ``torch.library.custom_op`` costs tens of microseconds of Python on
the host before any kernel runs (the dispatcher, the generated autograd
function, the redispatch to the device implementation), about twice that with
autograd: more than a whole small layer takes on a GPU
(``bench/bench_overhead.py`` measures it). Plain eager execution needs none of
that machinery, so the public functions (``fastconv.conv2d``, ``relu``,
``max_pool2d``) run the custom ops' own bodies (``ops.*_impl``) through a
``torch.autograd.Function`` instead. Same backends, same saved tensors
(x, w, the pooled y and the uint8 index), same gradients.

Whenever anything could trace, transform or intercept the call, it goes
through the custom op, which those systems understand: ``torch.compile`` and
``torch.export`` (dynamo), TorchDispatchModes (FakeTensorMode, ``make_fx``,
functionalization), TorchFunctionModes, ``torch.func`` transforms, jit
tracing, tensor subclasses, devices other than cpu and cuda. The environment
variable ``FASTCONV_EAGER_DIRECT=0`` (read per call) sends every call through
the custom op.

A backward with ``create_graph=True`` calls the backward custom op, so a
double backward fails the same clear way on both paths (the backward ops have
no autograd formula).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from . import ops
from ._params import ConvParams, PoolParams

ENV = "FASTCONV_EAGER_DIRECT"
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_DEVICES = ("cpu", "cuda")


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
    if not _ALL_PROBES or os.environ.get(ENV, "1") == "0":
        return False
    if torch.compiler.is_compiling() or _dispatch_modes() or _function_modes() or _jit_tracing():
        return False
    if _transforms() is not None:
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or t.device.type not in _DEVICES):
            return False
    return True


class FastconvConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, p: ConvParams):
        y, idx = ops.conv2d_fwd_impl(x, w, b, p)
        ctx.p = p
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w, y if p.relu else None, idx if p.pool > 1 else None)
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, dy, _didx):
        x, w, y, idx = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = (bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2]))
        p = ctx.p
        if torch.is_grad_enabled():  # create_graph: the op autograd knows
            dx, dw, db = ops.conv2d_bwd(dy, x, w, y, idx, p.stride, p.padding, p.dilation, p.groups, p.relu,
                                        p.pool, list(mask))
        else:
            dx, dw, db = ops.conv2d_bwd_impl(dy, x, w, y, idx, p, mask)
        return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None, None)


class FastconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor):
        y = ops.relu_fwd_impl(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return (ops.relu_bwd if torch.is_grad_enabled() else ops.relu_bwd_impl)(dy, y)


class FastconvMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: PoolParams):
        y, idx = ops.max_pool2d_fwd_impl(x, p)
        ctx.p = p
        ctx.input_hw = (x.shape[2], x.shape[3])
        ctx.save_for_backward(idx)
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, dy, _didx):
        (idx,) = ctx.saved_tensors
        p = ctx.p
        if torch.is_grad_enabled():
            return ops.max_pool2d_bwd(dy, idx, ctx.input_hw, p.kernel, p.stride, p.padding, p.dilation,
                                      p.ceil_mode), None
        return ops.max_pool2d_bwd_impl(dy, idx, ctx.input_hw, p), None
