"""The ``triton`` backend (fastconv/backends/triton) against the float64 oracle
(tests/oracle.py), in strict mode: the fused conv in every variant, max_pool2d,
relu, the backend contract, and on a GPU (``gpu`` marks, bench/gpu_check.sh)
every CONV_CASES / POOL_CASES entry in every dtype and a few realistic layers.
Set-up and shared cases: tests/triton_cases.py.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from triton_cases import (ALL_DTYPES, DEV, EXTRA_CASES, FAST_DTYPES, GPU_REALISTIC, LAYOUT_CASES, TIE_CASES,
                          TRITON_TESTS, triton_backend)

import fastconv  # noqa: E402
from fastconv import _impl, ops  # noqa: E402
from fastconv.backends import reference  # noqa: E402
from fastconv.backends.triton._common import vec_args, vec_elems  # noqa: E402
from oracle import (CONV_CASES, POOL_CASES, ConvCase, PoolCase, assert_close, check_conv,  # noqa: E402
                    check_current_stream, check_pool, check_relu)

pytestmark = TRITON_TESTS


# --------------------------------------------------------------------------- fused conv


@pytest.mark.parametrize("dtype", FAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES + EXTRA_CASES, ids=str)
def test_conv_matches_oracle(case, dtype):
    check_conv("triton", case, dtype, DEV)


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[8], EXTRA_CASES[1], EXTRA_CASES[3]], ids=str)
def test_conv_bfloat16(case):
    check_conv("triton", case, torch.bfloat16, DEV)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_conv_layouts(case, layout):
    check_conv("triton", case, torch.float32, DEV, layout=layout)


@pytest.mark.parametrize("dtype", FAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", TIE_CASES, ids=str)
def test_conv_pool_ties_go_to_the_first_maximum(case, dtype):
    """Small-integer data: exact conv outputs with many equal maxima in a window."""
    check_conv("triton", case, dtype, DEV, integer=True, seed=3)


def test_conv_window_index_matches_reference():
    """idx is the uint8 row-major window position of the first maximum of the conv output."""
    x = torch.randint(-2, 3, (2, 3, 11, 9)).float().to(DEV)
    w = torch.randint(-1, 2, (5, 3, 3, 3)).float().to(DEV)
    for k in (2, 3):
        args = (x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, False, k)
        with fastconv.use_backend("triton", strict=True):
            y, idx = ops.conv2d_fwd(*args)
        y_ref, idx_ref = reference.conv2d_fwd(x.cpu().double(), w.cpu().double(), None,
                                              _impl.conv_params(*args[3:]))
        assert idx.dtype == torch.uint8 and torch.equal(idx.cpu(), idx_ref)
        assert torch.equal(y.cpu().double(), y_ref)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy matmul
def test_conv_nan_and_inf_propagate_like_reference():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 5, 6] = float("inf")
    w = torch.rand(4, 3, 3, 3, dtype=torch.float64) + 0.1  # positive: +inf stays +inf
    b = torch.randn(4, dtype=torch.float64)
    dy = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    for relu in (None, "relu"):
        out = {}
        for name in ("triton", "reference"):
            xx, ww, bb = (t.float().to(DEV).requires_grad_() for t in (x, w, b))
            with fastconv.use_backend(name, strict=True):
                y = fastconv.conv2d(xx, ww, bb, padding=1, activation=relu, pool=2)
                y.backward(dy.float().to(DEV))
            out[name] = (y, xx.grad, ww.grad, bb.grad)
        for what, a, e in zip(("y", "dx", "dw", "db"), out["triton"], out["reference"]):
            assert_close(f"{what} relu={relu}", a, e, torch.float32, 128, DEV)


def test_conv_empty_batch_strict():
    x = torch.randn(0, 3, 8, 8, device=DEV, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)
    b = torch.randn(4, device=DEV, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
        y.sum().backward()
    assert y.shape == (0, 4, 4, 4)
    assert x.grad.shape == x.shape and not w.grad.any() and not b.grad.any()


def test_conv_gradient_subsets():
    """Only the requested gradients are computed; the others stay None."""
    case = CONV_CASES[0]
    x = torch.randn(2, 3, 8, 8, device=DEV)
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)
    b = torch.randn(4, device=DEV)
    with fastconv.use_backend("triton", strict=True):
        fastconv.conv2d(x, w, b, **case.kw).sum().backward()
    w2 = w.detach().double().cpu().requires_grad_()
    with fastconv.use_backend("reference"):
        fastconv.conv2d(x.double().cpu(), w2, b.double().cpu(), **case.kw).sum().backward()
    assert_close("dw", w.grad, w2.grad, torch.float32, 128, DEV)


# --------------------------------------------------------------------------- max_pool2d, relu


@pytest.mark.parametrize("dtype", FAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_matches_oracle(case, dtype):
    check_pool("triton", case, dtype, DEV)
    check_pool("triton", case, dtype, DEV, integer=True, seed=1)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("case", POOL_CASES[1:4], ids=str)
def test_pool_layouts(case, layout):
    check_pool("triton", case, torch.float32, DEV, layout=layout, integer=True)


def test_pool_bfloat16():
    check_pool("triton", POOL_CASES[2], torch.bfloat16, DEV, integer=True)


def test_pool_nan_inf_and_indices_match_torch():
    """NaN wins (the last NaN, like torch), an all -inf window keeps its first in-bounds index."""
    x = torch.randn(1, 2, 7, 7)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = float("nan")
    x[0, 1, :3, :3] = float("-inf")
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=1, dilation=2)):
        with fastconv.use_backend("triton", strict=True):
            y, idx = ops.max_pool2d_fwd(x.to(DEV), *_pool_args(**kw))
        y_ref, idx_ref = F.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(idx.cpu().long(), idx_ref), kw
        assert torch.equal(y.cpu().isnan(), y_ref.isnan())
        assert torch.equal(y.cpu().nan_to_num(), y_ref.nan_to_num())


def _pool_args(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    p = fastconv._args.max_pool(torch.empty(1, 1, 9, 9), kernel_size, stride, padding, dilation, ceil_mode)
    return p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode


@settings(max_examples=12, deadline=None)
@given(H=st.integers(3, 10), W=st.integers(3, 10), k=st.integers(1, 4), s=st.integers(1, 3),
       d=st.integers(1, 2), ceil=st.booleans(), data=st.data())
def test_pool_fuzz(H, W, k, s, d, ceil, data):
    p = data.draw(st.integers(0, k // 2))
    assume(d * (k - 1) + 1 <= min(H, W) + 2 * p)
    check_pool("triton", PoolCase(1, 3, H, W, dict(kernel_size=k, stride=s, padding=p, dilation=d,
                                                   ceil_mode=ceil)), torch.float32, DEV, integer=True)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,layout", [((7,), "contiguous"), ((3, 50), "strided"),
                                          ((2, 3, 5, 4), "channels_last"), ((2, 3, 5, 4), "contiguous")])
def test_relu_matches_oracle(shape, layout, dtype):
    check_relu("triton", shape, dtype, DEV, layout=layout)


def test_relu_nan_and_zero():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 2.0], device=DEV, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        y = fastconv.relu(x)
        y.sum().backward()
    assert y[0].isnan() and y[1:].tolist() == [float("inf"), 0.0, 0.0, 0.0, 2.0]
    assert x.grad.tolist()[1:] == [1.0, 0.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------- backend contract


def test_unsupported_reasons_are_clear(monkeypatch):
    x64 = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=DEV)
    assert "float64 is not supported" in triton_backend.unsupported("relu_fwd", x64)
    with fastconv.use_backend("triton", strict=True):
        with pytest.raises(fastconv.BackendUnsupportedError, match="float64 is not supported"):
            fastconv.relu(x64)
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    reason = triton_backend.unsupported("relu_fwd", torch.randn(3))
    assert "TRITON_INTERPRET=1" in reason
    assert "64-bit offsets" in triton_backend._image_too_big((1, 2**16, 2**8, 2**8))


def test_opcheck_with_triton_kernels():
    """The op contract (fake kernels vs real outputs, autograd registration) holds for this backend."""
    x = torch.randn(2, 3, 9, 9, device=DEV).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)
    b = torch.randn(4, device=DEV, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        torch.library.opcheck(ops.conv2d_fwd, (x, w, b, [2, 1], [0, 1, 1, 0], [1, 1], 1, True, 3))
        torch.library.opcheck(ops.max_pool2d_fwd, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))


def test_compile_fullgraph_runs_triton_kernels():
    torch._dynamo.reset()
    x = torch.randn(2, 3, 8, 8, device=DEV, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)

    def f(x, w):
        y = fastconv.conv2d(x, w, None, padding=1, activation="relu", pool=2)
        return fastconv.max_pool2d(fastconv.relu(y), 2)

    with fastconv.use_backend("triton", strict=True):
        out = torch.compile(f, fullgraph=True)(x, w)
        out.sum().backward()
    x2, w2 = (t.detach().cpu().double().requires_grad_() for t in (x, w))
    with fastconv.use_backend("reference"):
        ref = f(x2, w2)
        ref.sum().backward()
    assert_close("y", out, ref, torch.float32, 27, DEV)
    assert_close("dx", x.grad, x2.grad, torch.float32, 36, DEV)
    assert_close("dw", w.grad, w2.grad, torch.float32, 128, DEV)


def test_vec_elems_is_the_proven_channel_alignment():
    nhwc = torch.channels_last
    assert vec_elems(torch.empty(2, 24, 5, 7, dtype=torch.bfloat16, memory_format=nhwc), 24) == 8
    assert vec_elems(torch.empty(2, 24, 5, 7, memory_format=nhwc), 24) == 4  # 16 bytes of fp32
    assert vec_elems(torch.empty(2, 24, 5, 7, dtype=torch.float16, memory_format=nhwc), 12) == 4  # a group
    assert vec_elems(torch.empty(2, 24, 5, 7, dtype=torch.float16), 24) == 1  # NCHW: channels strided
    assert vec_elems(torch.empty(2, 3, 5, 7, dtype=torch.float16, memory_format=nhwc), 3) == 1
    sliced = torch.empty(2, 36, 5, 7, dtype=torch.float16, memory_format=nhwc)[:, :24]
    assert vec_elems(sliced, 24) == 4  # strides of 36 channels


def test_aligned_channel_vectors_match_oracle(monkeypatch):
    """VEC > 1 (channels_last, 24 channels) reaches all three GEMM kernels and stays exact."""
    import importlib

    conv2d_fwd, conv2d_dgrad, conv2d_wgrad = (importlib.import_module(f"fastconv.backends.triton.{m}")
                                         for m in ("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad"))

    seen = []

    def spy(t, c):
        out = vec_args(t, c)
        seen.append(out[0])
        return out

    for mod in (conv2d_fwd, conv2d_dgrad, conv2d_wgrad):
        monkeypatch.setattr(mod, "vec_args", spy)
    check_conv("triton", EXTRA_CASES[0], torch.float16, DEV, layout="channels_last")
    assert seen == [8, 8, 8]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_gpu_conv_cases(case, dtype):
    check_conv("triton", case, dtype, "cuda", layout="channels_last")


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[8]], ids=str)
def test_gpu_conv_nchw_input(case):
    check_conv("triton", case, torch.bfloat16, "cuda", layout="contiguous")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,case", [(torch.bfloat16, c) for c in GPU_REALISTIC]
                         + [(torch.float32, GPU_REALISTIC[0]), (torch.float32, GPU_REALISTIC[4])], ids=str)
def test_gpu_realistic_layers(case, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # fp32 runs the TF32 path
    check_conv("triton", case, dtype, "cuda", layout="channels_last", integer=True)


@pytest.mark.gpu
@pytest.mark.parametrize("split", [1, 3], ids=["one-chunk", "split-k-3"])
@pytest.mark.parametrize("dtype,case", [(torch.bfloat16, c) for c in GPU_REALISTIC[:3] + GPU_REALISTIC[6:9]]
                         + [(torch.float16, GPU_REALISTIC[0]), (torch.float32, GPU_REALISTIC[4])], ids=str)
def test_gpu_realistic_layers_random_data(case, dtype, split, monkeypatch):
    """Random (not integer) data at realistic sizes, so rounding shows: sums are inexact and a
    bf16 accumulator, a lost split-K chunk or a dropped tap fail the fp32-accumulation bound
    (tests/test_oracle.py). The few cells whose route a correct fp32 accumulator may choose
    differently carry no gradient (guard_routes). split-K is forced on at these sizes too."""
    import importlib

    if split > 1:
        wgrad = importlib.import_module("fastconv.backends.triton.conv2d_wgrad")
        monkeypatch.setattr(wgrad, "split_count", lambda *a: split)
    check_conv("triton", case, dtype, "cuda", layout="channels_last", guard_routes=True)


@pytest.mark.gpu
def test_gpu_runs_on_the_current_stream():
    check_current_stream("triton")


@pytest.mark.gpu
def test_gpu_tf32_random_data_without_argmax(monkeypatch):
    """TF32 on random data where no window max or relu sign depends on the last bits."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    check_conv("triton", ConvCase(4, 64, 28, 28, 96, 3, 3, dict(padding=1)), torch.float32, "cuda",
               layout="channels_last")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES + [PoolCase(8, 64, 56, 56, dict(kernel_size=3, stride=2, padding=1))],
                         ids=str)
def test_gpu_pool_cases(case, dtype, layout):
    check_pool("triton", case, dtype, "cuda", layout=layout)
    check_pool("triton", case, dtype, "cuda", layout=layout, integer=True, seed=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_gpu_relu(dtype):
    check_relu("triton", (8, 64, 33, 17), dtype, "cuda", layout="channels_last")
    check_relu("triton", (3, 1000003), dtype, "cuda")


@pytest.mark.gpu
def test_gpu_no_host_sync_after_warmup():
    case = GPU_REALISTIC[0]
    x = torch.randn(4, 64, 56, 56, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        for sync_mode in ("default", "error"):
            torch.cuda.set_sync_debug_mode(sync_mode)
            try:
                y = fastconv.conv2d(x, w, b, **case.kw)
                z = fastconv.max_pool2d(fastconv.relu(y), 3, 2, 1)
                z.backward(torch.ones_like(z))
            finally:
                torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_sees_new_inputs_and_weights():
    torch.manual_seed(0)

    def ints(*shape, lo=-2, hi=3):  # exact data: the comparison cannot flake on near-ties
        return torch.randint(lo, hi, shape, device="cuda").float()

    x = ints(2, 16, 20, 20).requires_grad_()
    w = ints(32, 16, 3, 3, lo=-1, hi=2).requires_grad_()  # NCHW weight: its packing is captured too
    b = ints(32).requires_grad_()

    def step():
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
        y.backward(torch.ones_like(y))
        return y

    with fastconv.use_backend("triton", strict=True):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                x.grad = w.grad = b.grad = None
                step()
        torch.cuda.current_stream().wait_stream(s)
        x.grad = w.grad = b.grad = None
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = step()
        with torch.no_grad():
            x.copy_(ints(2, 16, 20, 20))
            w.mul_(-1.0)
        g.replay()
        torch.cuda.synchronize()
    xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
    with fastconv.use_backend("reference"):
        yr = fastconv.conv2d(xr, wr, br, padding=1, activation="relu", pool=2)
        yr.backward(torch.ones_like(yr))
    assert_close("y", y, yr, torch.float32, 144, "cuda")
    assert_close("dx", x.grad, xr.grad, torch.float32, 288, "cuda")
    assert_close("dw", w.grad, wr.grad, torch.float32, 800, "cuda")


@pytest.mark.gpu
def test_gpu_compile_fullgraph_matches_eager_bf16_channels_last():
    """Compiled (one opaque op per layer) and eager runs launch the same kernels."""
    torch._dynamo.reset()
    x = torch.randn(8, 32, 32, 32, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(64, 32, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def f(x, w):
        return fastconv.max_pool2d(fastconv.conv2d(x, w, None, padding=1, activation="relu"), 3, 2, 1)

    with fastconv.use_backend("triton", strict=True):
        out = torch.compile(f, fullgraph=True)(x, w)
        out.float().sum().backward()
        x2, w2 = (t.detach().clone().requires_grad_() for t in (x, w))
        ref = f(x2, w2)
        ref.float().sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(x.grad, x2.grad)  # dgrad has no atomics: bit-identical
    assert_close("dw", w.grad, w2.grad, torch.bfloat16, 8192, "cuda")  # split-K atomics: order differs
