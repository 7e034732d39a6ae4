"""The ``cpu`` backend: C++ kernels in csrc/cpu (at::parallel_for, fused epilogues).

Every op runs in C++ for float32, float64, float16 and bfloat16 (half and
bfloat16 compute in float32):

* ``conv2d``: two cores behind one fused op. Short reductions
  (C/groups * R * S <= 32, e.g. a first layer on RGB or a depthwise 3x3) run a
  direct kernel that computes only the conv pixels inside the pool windows and
  pools, adds the bias and applies relu in registers; its backward rebuilds the
  conv-output gradient from (dy, y, idx) in the same kernel that accumulates
  dx and dw. Longer reductions use ATen's convolution (oneDNN, channels_last)
  for the GEMM core with one fused pass around it each way.
* ``max_pool2d`` (general) and ``relu``: direct kernels.

How the vector code is written, and why: one source per row kernel
(csrc/cpu/*_kernel.h, GCC vector extensions) compiled three times with target
attributes -- AVX-512, AVX2+FMA and the portable x86-64 / compiler-vectorized
baseline (csrc/cpu/isa_each.h) -- and picked per call for the CPU (cpu_isa()).
Each copy computes in the ISA's native vector (zmm, ymm, xmm) with a register
tile sized for its register file (32 zmm vs 16 ymm / xmm: csrc/cpu/
conv2d_smallc_kernel.h), so no AVX2 or AVX-512 inner loop spills
(``python -m fastconv.backends._cpu_codegen_check``, run by CI); a 64-byte
generic vector on AVX2 spilled through the stack and ran 4-6x slower there.
ATen's ``at::vec::Vectorized`` is compiled per CPU capability inside ATen's own
build and not exported per capability to extensions, so an extension that wants
all three copies in one library compiles its own; the GEMM-heavy convs go to
ATen's convolution (oneDNN) instead of hand-written code. ``auto`` times this
backend against PyTorch on the first call of each shape and keeps the faster
(fastconv/backends/measure.py).

Which core a conv runs: ``auto`` times both cores and PyTorch on the first call
of a shape and keeps the fastest (``cpu:smallc`` and ``cpu:aten``, ``core()``
below; fastconv/backends/autoselect.py); the ``cpu`` backend chosen by name
runs the static rule above.

Environment knobs (read on every call): ``FASTCONV_CPU_CONV=auto|smallc|aten``
forces a conv core (over auto's choice too); ``FASTCONV_CPU_ISA=base|avx2|avx512``
lowers the instruction set of the vector kernels (never above what the CPU has).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from ._native import (  # noqa: F401  (the backend's ops)
    DTYPES, conv2d_bwd, conv2d_fwd, extension_missing, max_pool2d_bwd, max_pool2d_fwd, relu_bwd, relu_fwd, unsupported_on)

NAME = "cpu"
CORES = {"smallc": 1, "aten": 2}  # csrc/cpu/conv2d.h set_conv_core


def available() -> str | None:
    return extension_missing()


def unsupported(op: str, *args) -> str | None:
    return unsupported_on("cpu", op, args[0])


def _on_core(fn, code: int):
    def call(*args):
        set_core = torch.ops.fastconv_C.cpu_conv_core
        was = set_core(code)
        try:
            return fn(*args)
        finally:
            set_core(was)
    return call


@functools.lru_cache(maxsize=None)
def core(name: str) -> SimpleNamespace:
    """This backend with its convs on one core (``smallc`` or ``aten``): what ``auto``'s
    candidates ``cpu:smallc`` and ``cpu:aten`` run (NAME stays ``cpu``)."""
    if name not in CORES:
        raise ValueError(f"unknown cpu conv core {name!r}; expected one of {', '.join(CORES)}")
    return SimpleNamespace(NAME=NAME, CORE=name, DTYPES=DTYPES, available=available, unsupported=unsupported,
                           conv2d_fwd=_on_core(conv2d_fwd, CORES[name]), conv2d_bwd=_on_core(conv2d_bwd, CORES[name]),
                           relu_fwd=relu_fwd, relu_bwd=relu_bwd, max_pool2d_fwd=max_pool2d_fwd,
                           max_pool2d_bwd=max_pool2d_bwd)
