"""The triton kernels compile for sm_90 without a GPU
(fastconv/backends/triton/_compile_check.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_cases import TRITON_TESTS

pytestmark = TRITON_TESTS


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the kernels themselves (the gpu tests)")
def test_kernels_compile_for_hopper():
    """Every kernel variant the launchers pick for the bench layer kinds (bf16, default configs)
    compiles for sm_90 with this Triton and its ptxas: what the interpreter cannot check."""
    from fastconv.backends.triton import _compile_check

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "fastconv.backends.triton._compile_check", "--dtype", "bf16"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                         timeout=900)
    if out.returncode == _compile_check.EXIT_UNSUPPORTED:
        pytest.skip(out.stderr.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " 0 failed (sm_90)" in out.stdout
    # Every operand tile loads 16-byte vectors through the cp.async pipeline: the three GEMM
    # kernels of 24 channels (8-element aligned, not 16: before the VEC hint the forward loaded
    # one element at a time) and the backward of a 64-channel 3x3 layer (before, wgrad's
    # `% Cg` hid the x tile's alignment: scalar, unpipelined loads at 255 registers).
    lines = out.stdout.splitlines()
    gemm = ("_conv2d_fwd_kernel", "_conv2d_dgrad_kernel", "_conv2d_wgrad_kernel")
    want = [ln for ln in lines if any(k in ln for k in gemm) and ("(C=24" in ln or (
        "(3x3 relu pool2" in ln and ("_conv2d_dgrad" in ln or "_conv2d_wgrad" in ln)))]
    assert len(want) == 5, out.stdout[-4000:]
    for ln in want:
        assert "vector loads 100%" in ln and "pipelined 1" in ln and "stack    0" in ln, ln

