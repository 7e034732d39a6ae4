"""The ``cuda`` backend (csrc/cuda) against the float64 oracle.

Without a GPU only the build is checked: the CUDA sources compile and link and
every fastconv_C op has a CUDA kernel. Everything else carries
``@pytest.mark.gpu`` and runs in bench/gpu_check.sh, in strict mode (a silent
fallback to ``reference`` fails the test).

Tests marked ``slow`` as well (the strided layout, float64, the extra
geometry) are left out of the quick GPU run (``-m "gpu and not slow"``).

The ``sanitize`` tests run each kernel once on tiny shapes, for
compute-sanitizer::

    compute-sanitizer --tool memcheck  python -m pytest -q -m gpu -k sanitize tests/test_cuda.py
    compute-sanitizer --tool racecheck python -m pytest -q -m gpu -k sanitize tests/test_cuda.py
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import _build, _ext
from oracle import (CONV_CASES, POOL_CASES, ConvCase, PoolCase, assert_close, check_conv, check_current_stream,
                    check_pool, check_relu)

gpu = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# the strided layout only adds a copy before the kernels: the full run covers it
LAYOUTS = ["contiguous", "channels_last", pytest.param("strided", marks=pytest.mark.slow)]

# Layers of the size the kernels are meant for. Integer inputs keep every sum
# exact, so no near-tie inside a pooling window can route a gradient
# differently from the oracle (with random normal inputs and ~10^5 windows one
# such flip per run is likely at bf16 / fp32 accumulation precision).
REALISTIC = [
    ConvCase(8, 3, 32, 32, 32, 3, 3, dict(padding=1, activation="relu", pool=2)),              # first layer
    ConvCase(8, 32, 16, 16, 32, 3, 3, dict(padding=1, groups=32, activation="relu", pool=2)),  # depthwise
    ConvCase(4, 64, 16, 16, 64, 3, 3, dict(padding=1, activation="relu", pool=2)),             # 64 -> 64
]

# Geometry the shared CONV_CASES do not reach: pools above 4 (sub-passes), more
# channels than one block holds, a channel multiplier, grouped channels that do
# not fill a thread's 8, large dilation, 1-row outputs.
EXTRA_CONV_CASES = [
    ConvCase(2, 3, 23, 21, 5, 3, 3, dict(padding=1, activation="relu", pool=5)),
    ConvCase(1, 4, 20, 19, 6, 3, 3, dict(padding=2, stride=(1, 2), activation="relu", pool=6)),
    ConvCase(1, 2, 34, 34, 3, 3, 3, dict(padding=1, pool=16)),
    ConvCase(2, 4, 10, 10, 96, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 8, 9, 9, 16, 3, 3, dict(padding=1, groups=8, activation="relu", pool=2)),       # multiplier 2
    ConvCase(2, 6, 9, 8, 9, 3, 3, dict(padding=1, groups=3, activation="relu", pool=2)),
    ConvCase(1, 5, 30, 30, 4, 3, 3, dict(padding=7, dilation=7, activation="relu", pool=2)),
    ConvCase(2, 16, 12, 12, 16, 5, 5, dict(padding=2, stride=2, groups=16, pool=3)),
    ConvCase(3, 7, 1, 17, 5, 1, 3, dict(padding=(0, 1), activation="relu")),
    ConvCase(1, 40, 9, 9, 40, 3, 3, dict(padding=1, groups=40, activation="relu", pool=4)),
]


def _C():
    """torch.ops.fastconv_C, with the extension loaded."""
    assert _ext.load(), _ext.status()["error"]
    return torch.ops.fastconv_C


def _want_cuda_build():
    want, why = _build.want_cuda()
    if not want:
        pytest.skip(f"CUDA kernels are not built here: {why}")


# --------------------------------------------------------------------------- build (no GPU needed)


def test_cuda_kernels_build_and_register_when_asked(monkeypatch):
    """FASTCONV_BUILD_CUDA=1 builds (once) and loads fastconv._C_cuda, a device or not: CI proves
    here that the CUDA sources compile and link."""
    _want_cuda_build()
    monkeypatch.setenv("FASTCONV_BUILD_CUDA", "1")
    assert _ext.load_cuda(), _ext.status()["cuda"]["why"]
    ext = fastconv.info()["extension"]
    assert ext["built"], ext["error"]
    assert ext["cuda_kernels"] is True and ext["cuda"]["built"] and Path(ext["cuda"]["path"]).is_file()


def test_every_op_has_a_cuda_kernel(monkeypatch):
    _want_cuda_build()
    monkeypatch.setenv("FASTCONV_BUILD_CUDA", "1")
    assert _ext.load_cuda(), _ext.status()["cuda"]["why"]
    cpu_controls = ("fastconv_C::cpu_isa", "fastconv_C::cpu_conv_core")  # the CPU kernels' settings, no tensors
    ops = [n for n in torch._C._dispatch_get_all_op_names()
           if n.startswith("fastconv_C::") and n not in cpu_controls]
    assert sorted(ops) == sorted(f"fastconv_C::{op}" for op in (
        "conv2d_fwd", "conv2d_bwd", "relu_fwd", "relu_bwd", "max_pool2d_fwd", "max_pool2d_bwd"))
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
    assert not missing, f"no CUDA kernel for {missing}"


# --------------------------------------------------------------------------- conv2d


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_oracle(case, dtype, layout):
    check_conv("cuda", case, dtype, "cuda", layout)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_ties_match_oracle(case, dtype):
    """Small-integer inputs: many exact ties inside the pooling windows."""
    check_conv("cuda", case, dtype, "cuda", "channels_last", integer=True)


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("case", CONV_CASES[:8], ids=str)
def test_conv_float64(case):
    check_conv("cuda", case, torch.float64, "cuda")


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", EXTRA_CONV_CASES, ids=str)
def test_conv_extra_geometry(case, dtype, layout):
    check_conv("cuda", case, dtype, "cuda", layout, integer=dtype != torch.float32)


@gpu
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", REALISTIC, ids=str)
def test_conv_realistic_shapes(case, dtype, layout):
    check_conv("cuda", case, dtype, "cuda", layout, integer=True)


@gpu
def test_conv_asymmetric_padding_through_the_op():
    """(top, left, bottom, right) padding that no public argument produces."""
    x = torch.randn(2, 3, 11, 9, device="cuda", dtype=torch.float64)
    w = torch.randn(5, 3, 3, 2, device="cuda", dtype=torch.float64)
    b = torch.randn(5, device="cuda", dtype=torch.float64)
    y, idx = _C().conv2d_fwd(x, w, b, [2, 1], [0, 3, 2, 1], [1, 2], 1, True, 2)
    xp = F.pad(x, (3, 1, 0, 2))
    ref, ind = F.max_pool2d(F.relu(F.conv2d(xp, w, b, (2, 1), 0, (1, 2))), 2, return_indices=True)
    torch.testing.assert_close(y, ref)
    dy = torch.randn_like(y)
    dx, dw, db = _C().conv2d_bwd(dy, x, w, y, idx, [2, 1], [0, 3, 2, 1], [1, 2], 1, True, 2, [True, True, True])
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.max_pool2d(F.relu(F.conv2d(F.pad(x2, (3, 1, 0, 2)), w2, b2, (2, 1), 0, (1, 2))), 2).backward(dy)
    torch.testing.assert_close(dx, x2.grad)
    torch.testing.assert_close(dw, w2.grad)
    torch.testing.assert_close(db, b2.grad)


@gpu
def test_conv_empty_batch():
    x = torch.randn(0, 3, 8, 8, device="cuda", requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device="cuda", requires_grad=True)
    b = torch.randn(4, device="cuda", requires_grad=True)
    with fastconv.use_backend("cuda", strict=True):
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
        y.sum().backward()
    assert y.shape == (0, 4, 4, 4) and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    y, idx = _C().conv2d_fwd(x.detach(), w.detach(), None, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 2)
    assert y.shape == idx.shape == (0, 4, 4, 4) and idx.dtype == torch.uint8


@gpu
@pytest.mark.parametrize("relu", [False, True])
def test_conv_nan_propagates_like_the_oracle(relu):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    x[0, 1, 3, 4] = float("nan")
    x[1, 0, 8, 8] = float("nan")  # next to the ragged edge that floor-mode pooling drops
    x[1, 2, 0, 0] = float("inf")
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    kw = dict(padding=1, activation="relu" if relu else None, pool=2)
    dy = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    got, want = [], []
    for backend, dev, out in (("cuda", "cuda", got), ("reference", "cpu", want)):
        xs, ws, bs = (t.to(dev).requires_grad_() for t in (x, w, b))
        with fastconv.use_backend(backend, strict=True):
            y = fastconv.conv2d(xs, ws, bs, **kw)
            y.backward(dy.to(dev))
        out += [y, xs.grad, ws.grad, bs.grad]
    for name, a, e in zip(("y", "dx", "dw", "db"), got, want):
        assert_close(name, a, e, torch.float64, 27 * 16, "cuda")


@gpu
def test_conv_runs_on_the_current_stream():
    check_current_stream("cuda")


# --------------------------------------------------------------------------- max_pool2d


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_matches_oracle(case, dtype, layout):
    check_pool("cuda", case, dtype, "cuda", layout)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_ties_match_oracle(case, dtype):
    check_pool("cuda", case, dtype, "cuda", "channels_last", integer=True)


@gpu
def test_pool_index_is_int32_plane_index_and_nan_wins():
    x = torch.randn(2, 3, 9, 10, device="cuda")
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 4, 4] = float("nan")
    x[1, 2, 4, 5] = float("nan")  # two NaN in one window: the last one, like torch
    y, idx = _C().max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    ref, ind = F.max_pool2d(x.cpu(), 3, 2, 1, 1, True, return_indices=True)
    assert idx.dtype == torch.int32
    assert torch.equal(idx.cpu().long(), ind)
    assert torch.equal(y.cpu().isnan(), ref.isnan())
    torch.testing.assert_close(y.cpu()[~ref.isnan()], ref[~ref.isnan()])


@gpu
def test_pool_empty_batch():
    x = torch.randn(0, 3, 6, 6, device="cuda", requires_grad=True)
    with fastconv.use_backend("cuda", strict=True):
        y = fastconv.max_pool2d(x, 2)
        y.sum().backward()
    assert y.shape == (0, 3, 3, 3) and x.grad.shape == x.shape


# --------------------------------------------------------------------------- relu


@gpu
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 7), (3, 1000), (4, 8, 16, 16)], ids=str)
def test_relu_matches_oracle(shape, dtype, layout):
    check_relu("cuda", shape, dtype, "cuda", layout)


@gpu
def test_relu_nan_and_channels_last():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 2.0], device="cuda")
    y = _C().relu_fwd(x)
    assert y[0].isnan() and y[1:].tolist() == [float("inf"), 0.0, 0.0, 0.0, 2.0]
    dx = _C().relu_bwd(torch.ones_like(x), y)
    assert dx.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    z = torch.randn(2, 5, 3, 3, device="cuda").contiguous(memory_format=torch.channels_last)
    with fastconv.use_backend("cuda", strict=True):
        assert fastconv.relu(z).is_contiguous(memory_format=torch.channels_last)
        assert fastconv.relu(torch.empty(0, 3, device="cuda")).shape == (0, 3)


# --------------------------------------------------------------------------- compute-sanitizer group

# Each conv kernel variant once: dense (REG) and depthwise (DW) tile conv with
# thread patches 2 (pool 2 and pool 1), 3 and 1 (pool 5, sub-passes), the
# 16-byte load paths (bf16 channels_last, C % 8 == 0), dgrad, wgrad + reduce.
SANITIZE_CONV = [
    (ConvCase(1, 3, 8, 8, 4, 3, 3, dict(padding=1, activation="relu", pool=2)), torch.float32, "contiguous"),
    (ConvCase(1, 8, 6, 6, 8, 3, 3, dict(padding=1, activation="relu", pool=3)), torch.bfloat16, "channels_last"),
    (ConvCase(1, 8, 6, 6, 8, 3, 3, dict(padding=1, groups=8, activation="relu", pool=2)), torch.bfloat16,
     "channels_last"),
    (ConvCase(1, 4, 7, 7, 4, 3, 3, dict(padding=1, stride=2, groups=4)), torch.float16, "contiguous"),
    (ConvCase(1, 2, 11, 11, 3, 3, 3, dict(padding=1, pool=5), bias=False), torch.float32, "channels_last"),
]


@gpu
@pytest.mark.parametrize("case,dtype,layout", SANITIZE_CONV, ids=lambda v: str(v))
def test_sanitize_conv_kernels(case, dtype, layout):
    check_conv("cuda", case, dtype, "cuda", layout, integer=dtype != torch.float32)


@gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sanitize_pool_kernels(layout):
    check_pool("cuda", PoolCase(1, 3, 7, 8, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
               torch.float32, "cuda", layout)


@gpu
def test_sanitize_relu_kernels():
    check_relu("cuda", (2, 3, 5, 7), torch.bfloat16, "cuda")
    check_relu("cuda", (1, 4096), torch.float32, "cuda", "strided")


def test_sizes_past_int32_are_declined_not_crashed():
    """The kernels' size fields are 32-bit: such a call must fall back (checked on meta tensors)."""
    from fastconv.backends import cuda
    from fastconv._params import PoolParams

    big = torch.empty(1, 1, 2**16, 2**16, device="meta")
    p = PoolParams((2, 2), (2, 2), (0, 0), (1, 1), False)
    assert "32-bit" in cuda._too_large("max_pool2d_fwd", (big, p))
    assert "32-bit" in cuda._too_large("max_pool2d_bwd", (big[:, :, :2, :2], big, (2**16, 2**16), p))
    assert cuda._too_large("max_pool2d_fwd", (big[:, :, :2**10, :2**10], p)) is None
