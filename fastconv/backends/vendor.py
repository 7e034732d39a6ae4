"""The ``vendor`` backend: the vendor's convolution (cuDNN through ATen on a GPU) for the conv's
GEMM, with fastconv's fused epilogue (bias, relu, the k x k pool and its uint8 window index) and
unpool prologue (with the bias gradient) as one Triton kernel each
(fastconv/backends/triton/conv2d_vendor.py). ``relu`` and ``max_pool2d`` run the triton
backend's kernels.

It is the GPU twin of the cpu backend's ATen-core path, for the layers where the implicit-GEMM
Triton kernels lose to cuDNN; ``auto`` times it with the others (fastconv/backends/measure.py).
It runs where the triton backend runs: CUDA tensors, or CPU tensors in the Triton interpreter
(``TRITON_INTERPRET=1``, how the tests run it without a GPU).
"""
from __future__ import annotations

from . import triton as _triton
from .triton.conv2d_vendor import conv2d_vendor_bwd, conv2d_vendor_fwd

NAME = "vendor"
DTYPES = _triton.DTYPES


def available() -> str | None:
    return _triton.available()


def unsupported(op: str, *args) -> str | None:
    return _triton.unsupported(op, *args)


def conv2d_fwd(x, w, b, p):
    return conv2d_vendor_fwd(x, w, b, p)


def conv2d_bwd(dy, x, w, y, idx, p, mask):
    return conv2d_vendor_bwd(dy, x, w, y, idx, p, mask)


def relu_fwd(x):
    return _triton.relu_fwd(x)


def relu_bwd(dy, y):
    return _triton.relu_bwd(dy, y)


def max_pool2d_fwd(x, p):
    return _triton.max_pool2d_fwd(x, p)


def max_pool2d_bwd(dy, idx, input_hw, p):
    return _triton.max_pool2d_bwd(dy, idx, input_hw, p)
