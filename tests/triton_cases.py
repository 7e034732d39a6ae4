"""Shared set-up of the triton backend's tests (tests/test_triton*.py).

Without a GPU the kernels run in the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1): tiny shapes, one large tile per launch, fp32 with
``input_precision="ieee"`` and fp16. bf16 also runs here because the backend
feeds the interpreter's tl.dot fp32 tiles for bf16 (its bf16 dot is wrong);
the real bf16 tensor-core path runs in the tests marked ``gpu``
(bench/gpu_check.sh). Every test module sets ``pytestmark = TRITON_TESTS``:
skipped with the reason where the backend is unavailable, and run with the
heuristic default launch configs (``triton_default_configs`` in conftest.py).
"""
import pytest
import torch

pytest.importorskip("triton", reason="the triton backend needs the triton package")

from fastconv import backends  # noqa: E402
from oracle import CONV_CASES, ConvCase  # noqa: E402

triton_backend = backends.get("triton")
CPU_REASON = triton_backend.available()
TRITON_TESTS = [pytest.mark.skipif(CPU_REASON is not None, reason=f"triton backend unavailable: {CPU_REASON}"),
                pytest.mark.usefixtures("triton_default_configs")]

DEV = "cuda" if torch.cuda.is_available() else "cpu"

FAST_DTYPES = [torch.float32, torch.float16]

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Paths and edges beyond CONV_CASES: channel-blocked reduction with a partial block, several
# column/row tiles, stride phases without any tap, pool windows of 4x4 (KK = 16, no padding rows)
# and 3x3 (KK = 16, 7 masked rows), depthwise with a channel multiplier, grayscale input.

EXTRA_CASES = [
    ConvCase(1, 24, 7, 6, 20, 3, 3, dict(stride=2, dilation=2, padding=2, activation="relu", pool=2)),
    ConvCase(2, 32, 5, 5, 16, 3, 3, dict(padding=1, groups=2, activation="relu")),
    ConvCase(1, 3, 12, 12, 72, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(1, 1, 9, 10, 16, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 6, 7, 8, 5, 1, 1, dict(stride=2)),
    ConvCase(1, 4, 9, 9, 6, 3, 3, dict(stride=3, padding=1, pool=2), bias=False),
    ConvCase(1, 3, 13, 11, 4, 2, 2, dict(stride=(2, 1), dilation=(1, 2), activation="relu", pool=4)),
    ConvCase(1, 4, 10, 11, 8, 3, 3, dict(stride=2, padding=1, groups=4, activation="relu", pool=3)),
    ConvCase(2, 3, 6, 7, 3, 5, 5, dict(padding=2, groups=3, dilation=1, activation="relu")),
    ConvCase(2, 3, 14, 14, 8, 3, 3, dict(padding=1, activation="relu", pool=2)),
]

LAYOUT_CASES = [CONV_CASES[0], CONV_CASES[5], CONV_CASES[7], CONV_CASES[8], CONV_CASES[9], EXTRA_CASES[0]]

TIE_CASES = [CONV_CASES[0], CONV_CASES[3], CONV_CASES[6], CONV_CASES[8], EXTRA_CASES[6]]

# --------------------------------------------------------------------------- GPU only
# Random data at realistic sizes would make the comparison flaky: among ~10^5 pooling windows
# some hold two values closer than the fp32 accumulation error (or a conv output that close to
# 0 under relu), and the oracle then routes the gradient elsewhere. Realistic layers therefore
# use small-integer data (exact in every dtype, TF32 included: ties are exact and resolved the
# same way); random data runs on the small cases, with fp32 in ieee (see triton_default_configs).

GPU_REALISTIC = [
    ConvCase(4, 64, 56, 56, 64, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 3, 64, 64, 64, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(4, 1, 28, 28, 32, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 3, 112, 112, 64, 7, 7, dict(stride=2, padding=3, activation="relu")),
    ConvCase(4, 256, 14, 14, 128, 1, 1, dict(activation="relu")),
    ConvCase(4, 128, 28, 28, 256, 3, 3, dict(stride=2, padding=1, activation="relu")),
    ConvCase(4, 128, 28, 28, 128, 3, 3, dict(padding=1, groups=8, activation="relu", pool=2)),
    ConvCase(4, 96, 28, 28, 96, 3, 3, dict(padding=1, groups=96, activation="relu")),
    ConvCase(4, 64, 29, 31, 128, 3, 3, dict(padding=2, dilation=2, pool=3), bias=False),
    ConvCase(16, 256, 8, 8, 256, 3, 3, dict(padding=1, pool=2), bias=False),
    ConvCase(8, 24, 32, 32, 64, 3, 3, dict(padding=1, pool=2), bias=False),  # C=24: 8-element vectors
]


# The GPU matrix is sized for the compile time of a cold Triton cache (~170 kernel variants):
# every CONV_CASES entry in every dtype (channels_last, the fast path), NCHW inputs on two,
# the realistic layers in bf16 and two of them through TF32.
