"""The ``triton`` backend: hand-written Triton kernels for every fastconv op.

Kernel files (each starts with its math and layout):

* ``conv2d_fwd.py``       fused conv + bias + relu + k x k max-pool, implicit GEMM (NHWC, packed [K, R, S, Cg])
* ``conv2d_dgrad.py``     input gradient, implicit GEMM over stride phases, unpool prologue
* ``conv2d_wgrad.py``     weight gradient, implicit GEMM with split-K, bias gradient fused (or one reduction)
* ``conv2d_depthwise.py`` the depthwise variant (groups == C): forward, dgrad, wgrad on pixel x channel tiles
* ``max_pool2d.py``       general max_pool2d forward / backward
* ``relu.py``             relu forward / backward
* ``configs.py`` launch configs per kernel, ``_tune.py`` choosing and caching them
  (``FASTCONV_TRITON_CONFIG`` pins, ``FASTCONV_TRITON_TUNE=0`` skips tuning),
  ``_pack.py`` packed weights, ``_geom.py`` the sizes of a conv launch,
  ``_common.py`` shared device helpers,
  ``_compile_check.py`` compiles every kernel for sm_90 without a GPU
  (``python -m fastconv.backends.triton._compile_check``).

Runs on CUDA tensors, and on CPU tensors in the Triton interpreter when
``TRITON_INTERPRET=1`` was set before this package was imported (that is how
the tests run without a GPU). Everything launches on the current stream with
no host synchronization (except the one-time autotuning of a new shape, see
``_tune.py``) and is CUDA-graph capturable after a warm-up call.
"""
from __future__ import annotations

import math

import torch

from ..._params import INT32_MAX, ConvParams
from ._common import INTERPRET, nhwc_on_gpu
from ._geom import conv_geom
from .conv2d_depthwise import conv2d_depthwise_dgrad, conv2d_depthwise_wgrad
from .conv2d_dgrad import conv2d_dgrad
from .conv2d_fwd import conv2d_fwd  # noqa: F401  (the backend's op: the GEMM or the depthwise kernel)
from .conv2d_wgrad import conv2d_bias_grad, conv2d_wgrad
from .max_pool2d import max_pool2d_bwd, max_pool2d_fwd  # noqa: F401  (the backend's ops)
from .relu import relu_bwd, relu_fwd  # noqa: F401  (the backend's ops)

NAME = "triton"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def available() -> str | None:
    if INTERPRET or torch.cuda.is_available():
        return None
    return "no CUDA GPU, and TRITON_INTERPRET=1 was not set before the Triton kernels were imported"


def _device_reason(t: torch.Tensor) -> str | None:
    if t.device.type == "cuda":
        return None
    if t.device.type == "cpu":
        if INTERPRET:
            return None
        return ("CPU tensors run only in the Triton interpreter: set TRITON_INTERPRET=1 before "
                "fastconv's Triton backend is imported")
    return f"it runs on CUDA tensors (or CPU tensors in the Triton interpreter), got a tensor on {t.device}"


def _image_too_big(*shapes) -> str | None:
    """Offsets inside one image are 32-bit (the batch offset is 64-bit)."""
    for shape in shapes:
        size = math.prod(shape[1:])
        if size > INT32_MAX:
            return f"an image of {size} elements (shape {tuple(shape)}) needs 64-bit offsets inside the image"
    return None


def unsupported(op: str, *args) -> str | None:
    x = args[0]
    reason = _device_reason(x)
    if reason:
        return reason
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported (float32, float16 and bfloat16 are)"
    if op in ("relu_fwd", "relu_bwd"):
        return None
    if op == "conv2d_fwd":
        return _image_too_big(x.shape)
    if op == "conv2d_bwd":
        return _image_too_big(args[0].shape, args[1].shape)
    if op == "max_pool2d_fwd":
        if x.shape[2] * x.shape[3] > INT32_MAX:
            return "the int32 pooling index cannot address an input plane of 2^31 elements or more"
        return _image_too_big(x.shape)
    if op == "max_pool2d_bwd":
        return _image_too_big(x.shape, (x.shape[0], x.shape[1], *args[2]))
    return f"unknown op {op!r}"


def conv2d_bwd(dy, x, w, y, idx, p: ConvParams, mask):
    depthwise = conv_geom(x.shape, w.shape, p).depthwise
    # one channels_last copy of dy, y and idx (if they are not already) for all the kernels below
    dy, y, idx = (nhwc_on_gpu(t) for t in (dy, y, idx))
    dx = dw = db = None
    if mask[0]:
        dx = (conv2d_depthwise_dgrad if depthwise else conv2d_dgrad)(dy, x, w, y, idx, p)
    if mask[1] and not depthwise:  # the bias gradient too (fused into the GEMM where it pays)
        dw, db = conv2d_wgrad(dy, x, w.shape, y, idx, p, with_bias=mask[2])
    elif mask[1]:
        dw = conv2d_depthwise_wgrad(dy, x, w.shape, y, idx, p)
    if mask[2] and db is None:
        db = conv2d_bias_grad(dy, y, p)
    return dx, dw, db
