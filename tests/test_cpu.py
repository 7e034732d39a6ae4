"""The ``cpu`` backend (C++ kernels in csrc/cpu) against the float64 oracle.

Every check runs in strict mode, so a fallback to ``reference`` fails the
test. The fused conv has two cores (csrc/cpu/conv2d.h): the small-C
direct kernel and the ATen-core path; ``FASTCONV_CPU_CONV`` forces
one, so both are held to every case. ``FASTCONV_CPU_ISA`` lowers the
instruction set of the vector kernels, so each compiled copy runs too.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _ext, ops
from fastconv._params import PoolParams
from oracle import (CONV_CASES, POOL_CASES, ConvCase, PoolCase, check_conv, check_conv_like_torch, check_pool,
                    check_relu, unfused)

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "channels_last", "strided"]
PATHS = ["smallc", "aten"]
ISAS = ["base", "avx2", "avx512"]  # the copies of the vector kernels, narrowest first
# (dtype, layout) pairs for the conv cases: both formats the kernels handle in
# float64/float32, strided once (ops.py makes it contiguous before the backend),
# each reduced-precision dtype in one format.
CONV_MATRIX = [(torch.float64, "contiguous"), (torch.float64, "channels_last"), (torch.float32, "contiguous"),
               (torch.float32, "channels_last"), (torch.float32, "strided"), (torch.bfloat16, "channels_last"),
               (torch.float16, "contiguous")]


@pytest.fixture(autouse=True, scope="module")
def _extension_built():
    status = _ext.status()
    assert status["built"], f"the C++ extension did not build: {status['error']}"


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv("FASTCONV_CPU_CONV", request.param)
    return request.param


def _ids(v):
    return str(v).replace("torch.", "")


# --------------------------------------------------------------------------- conv2d


@pytest.mark.parametrize("dtype,layout", CONV_MATRIX, ids=_ids)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_oracle(case, dtype, layout, path):
    check_conv("cpu", case, dtype, layout=layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_ids)
@pytest.mark.parametrize("case", [c for c in CONV_CASES if c.kw.get("pool")], ids=str)
def test_conv_pool_ties_route_like_torch(case, dtype, layout, path):
    """Small integers make equal values in most windows: the first one must win."""
    check_conv("cpu", case, dtype, layout=layout, integer=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[8], CONV_CASES[10]], ids=str)
def test_conv_every_isa_copy(case, isa, path, monkeypatch):
    """Each copy of the vector kernels, the one that ran named by the extension itself;
    FASTCONV_CPU_ISA only lowers the ISA, so a copy this CPU cannot run is skipped."""
    from fastconv.info import cpu_isa, native_isa

    if ISAS.index(isa) > ISAS.index(native_isa()):
        pytest.skip(f"this CPU has no {isa} (its widest is {native_isa()})")
    monkeypatch.setenv("FASTCONV_CPU_ISA", isa)
    assert torch.ops.fastconv_C.cpu_isa() == isa == cpu_isa()  # the extension and fastconv.info agree
    check_conv("cpu", case, torch.float64)
    check_conv("cpu", case, torch.float32, layout="channels_last")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_ids)
def test_conv_wide_blocks_and_partial_channels(dtype, path):
    """More output channels than one register block (K/groups > 32), odd remainders, stride 2."""
    check_conv("cpu", ConvCase(2, 3, 9, 11, 37, 3, 3, dict(padding=1, stride=(2, 1), activation="relu", pool=2)),
               dtype)
    check_conv("cpu", ConvCase(1, 40, 6, 6, 40, 3, 3, dict(padding=1, groups=40, activation="relu", pool=2)),
               dtype, layout="channels_last")
    check_conv("cpu", ConvCase(1, 8, 7, 7, 16, 3, 3, dict(padding=1, groups=8, pool=2)), dtype)  # multiplier 2


def test_conv_weight_with_any_strides(path):
    """w may arrive as a view with any strides (docs/design.md §5: backends get w as is)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, generator=gen)
    w = torch.randn(3, 3, 3, 5, dtype=torch.float64, generator=gen).transpose(0, 3)  # [5, 3, 3, 3]
    w = w.requires_grad_()
    b = torch.randn(10, dtype=torch.float64, generator=gen)[::2]
    with fastconv.use_backend("cpu", strict=True):
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
        y.sum().backward()
    w2 = w.detach().contiguous().requires_grad_()
    ref = unfused(x, w2, b, padding=1, activation="relu", pool=2)
    ref.sum().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(w.grad, w2.grad)


GRADCHECK_CASES = [
    ConvCase(1, 3, 6, 6, 4, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 4, 7, 6, 4, 3, 3, dict(padding=(2, 1), stride=2, activation="relu", pool=2)),
    ConvCase(1, 4, 6, 6, 4, 3, 3, dict(padding=1, groups=4, activation="relu", pool=2)),
    ConvCase(1, 3, 7, 7, 2, 4, 4, dict(padding="same", dilation=(1, 2), pool=3)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_conv_gradcheck_float64(case, path):
    g = case.kw.get("groups", 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.N, case.C, case.H, case.W, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(case.K, case.C // g, case.R, case.S, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(case.K, dtype=torch.float64, generator=gen, requires_grad=True)
    with fastconv.use_backend("cpu", strict=True):
        # fast mode: random projections of the Jacobian (every gradient value is
        # also compared with the oracle in test_conv_matches_oracle)
        assert torch.autograd.gradcheck(lambda x, w, b: fastconv.conv2d(x, w, b, **case.kw), (x, w, b),
                                        fast_mode=True)


@pytest.mark.parametrize("relu,pool", [(False, 1), (True, 1), (False, 2), (True, 2), (True, 3)])
def test_conv_opcheck(relu, pool, path):
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    with fastconv.use_backend("cpu", strict=True):
        torch.library.opcheck(ops.conv2d_fwd, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, relu, pool))
        torch.library.opcheck(ops.conv2d_fwd, (x.contiguous(memory_format=torch.channels_last), w, None,
                                               [2, 1], [0, 1, 1, 0], [1, 1], 1, relu, pool))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_nan_and_inf_propagate_like_torch(layout, path):
    """Values and every gradient, NaN and inf elements included. 12 x 12: no ragged edge for
    pool 2 or 3, whose conv outputs the fused op never computes (docs/design.md §2.2)."""
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[1, 2, 6, 5] = float("inf")
    x[1, 0, 2, 6] = -float("inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(4, 3, 3, 3, dtype=torch.float64) + 0.1
    b = torch.randn(4, dtype=torch.float64)
    for kw in (dict(padding=1, activation="relu", pool=2), dict(padding=1), dict(padding=1, pool=3),
               dict(padding=1, activation="relu")):
        check_conv_like_torch("cpu", x, w, b, **kw)


def test_conv_fwd_returns_the_window_index(path):
    """The C++ op's idx is the row-major window position of the max, as docs/design.md §2.1 defines."""
    x = torch.randint(-2, 3, (2, 3, 9, 8)).double()
    w = torch.randint(-2, 3, (5, 3, 3, 3)).double()
    y, idx = torch.ops.fastconv_C.conv2d_fwd(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, False, 3)
    c = F.conv2d(x, w, padding=1)
    ref, ind = F.max_pool2d(c, 3, return_indices=True)
    assert idx.dtype == torch.uint8 and idx.shape == ref.shape
    torch.testing.assert_close(y, ref)
    h, v = ind // c.shape[3], ind % c.shape[3]
    assert torch.equal(idx.long(), (h % 3) * 3 + v % 3)


def test_conv_empty_batch_and_masked_grads():
    cpp = torch.ops.fastconv_C
    x = torch.randn(0, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    y, idx = cpp.conv2d_fwd(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 2)
    assert y.shape == idx.shape == (0, 4, 4, 4)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    y, idx = cpp.conv2d_fwd(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 2)
    dy = torch.randn_like(y)
    _, dw_only, _ = cpp.conv2d_bwd(dy, x, w, y, idx, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 2, [False, True, False])
    dx, dw, db = cpp.conv2d_bwd(dy, x, w, y, idx, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 2, [True, True, True])
    torch.testing.assert_close(dw_only, dw)
    torch.testing.assert_close(db, (dy * (y > 0)).sum((0, 2, 3)))


def test_conv_unknown_path_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FASTCONV_CPU_CONV", "fastest")
    with pytest.raises(RuntimeError, match="FASTCONV_CPU_CONV must be auto, smallc or aten, got 'fastest'"):
        torch.ops.fastconv_C.conv2d_fwd(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), None, [1, 1],
                                        [1, 1, 1, 1], [1, 1], 1, False, 1)
    monkeypatch.setenv("FASTCONV_CPU_CONV", "auto")
    monkeypatch.setenv("FASTCONV_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="FASTCONV_CPU_ISA must be base, avx2 or avx512, got 'sse9'"):
        torch.ops.fastconv_C.conv2d_fwd(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), None, [1, 1],
                                        [1, 1, 1, 1], [1, 1], 1, False, 1)


# --------------------------------------------------------------------------- max_pool2d and relu


@pytest.mark.parametrize("dtype,layout", CONV_MATRIX, ids=_ids)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_matches_oracle(case, dtype, layout):
    check_pool("cpu", case, dtype, layout=layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_ties_route_like_torch(case, layout):
    check_pool("cpu", case, torch.float32, layout=layout, integer=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool_nan_and_inf_like_torch(layout):
    x = torch.randn(2, 70, 7, 7, dtype=torch.float64)  # 70 channels: two channel blocks in NHWC
    x[0, 3, 2, 2] = float("nan")
    x[1, 65, 0, 0] = float("inf")
    x[1, 5] = -float("inf")  # an all -inf plane: the first position wins
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y, idx = torch.ops.fastconv_C.max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    ref, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(y.isnan(), ref.isnan())
    fin = ~ref.isnan()
    assert torch.equal(y[fin], ref[fin])
    assert torch.equal(idx[fin].long(), ind[fin])


# wide planes, so the NCHW kernel's vectorized interior runs (csrc/cpu/max_pool2d_kernel.h): stride
# 1 and 2 (its compile-time copies), 3 (the run-time one), padding, dilation, ceil_mode
WIDE_POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=1, padding=1),
              dict(kernel_size=(2, 3), stride=3, ceil_mode=True), dict(kernel_size=3, stride=2, dilation=(1, 2)),
              dict(kernel_size=(1, 4), stride=(1, 2), padding=(0, 2), ceil_mode=True)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=_ids)
@pytest.mark.parametrize("kw", WIDE_POOLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_pool_every_isa_copy(kw, dtype, isa, monkeypatch):
    """Each ISA copy of the NCHW forward row: values and indices exactly torch's, NaN, -inf and
    ties included (FASTCONV_CPU_ISA only lowers the ISA: a copy this CPU cannot run is skipped)."""
    from fastconv.info import native_isa
    if ISAS.index(isa) > ISAS.index(native_isa()):
        pytest.skip(f"this CPU has no {isa} (its widest is {native_isa()})")
    monkeypatch.setenv("FASTCONV_CPU_ISA", isa)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2, 3, 9, 77), generator=g).to(dtype)  # small integers: many ties
    x[0, 0, 4, 10:30] = float("nan")
    x[0, 1, 2, 5] = float("nan")
    x[1, 2] = -float("inf")  # an all -inf plane: each window's first position wins
    x[1, 0, :, 40:] = torch.randn(9, 37, generator=g).to(dtype)
    y, idx = torch.ops.fastconv_C.max_pool2d_fwd(x, *_pool_args(kw))
    ref, ind = F.max_pool2d(x.double(), return_indices=True, **kw)
    assert torch.equal(y.double().isnan(), ref.isnan())
    fin = ~ref.isnan()
    assert torch.equal(y.double()[fin], ref[fin])
    assert torch.equal(idx.long(), ind)  # a NaN's window points at its (last) NaN, like torch
    xr = x.clone().requires_grad_()
    with fastconv.use_backend("cpu", strict=True):
        fastconv.max_pool2d(xr, **kw).backward(torch.ones(ref.shape, dtype=dtype))
    xt = x.double().requires_grad_()
    F.max_pool2d(xt, **kw).backward(torch.ones(ref.shape, dtype=torch.float64))
    assert torch.equal(xr.grad.double(), xt.grad)


def _pool_args(kw):
    def pair(v):
        return [v, v] if isinstance(v, int) else list(v)
    k = pair(kw["kernel_size"])
    return (k, pair(kw.get("stride", k)), pair(kw.get("padding", 0)), pair(kw.get("dilation", 1)),
            kw.get("ceil_mode", False))


def test_pool_gradcheck_float64():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    with fastconv.use_backend("cpu", strict=True):
        assert torch.autograd.gradcheck(lambda x: fastconv.max_pool2d(x, 3, 2, 1), (x,))
        assert torch.autograd.gradcheck(lambda x: fastconv.max_pool2d(x, 2, 1, ceil_mode=True), (x,))


def test_pool_bwd_rejects_foreign_index():
    dy = torch.ones(1, 1, 2, 2)
    idx = torch.full((1, 1, 2, 2), 99, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="outside the 4x4 input plane"):
        torch.ops.fastconv_C.max_pool2d_bwd(dy, idx, [4, 4], [2, 2], [2, 2], [0, 0], [1, 1], False)


def test_pool_opcheck():
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    with fastconv.use_backend("cpu", strict=True):
        torch.library.opcheck(ops.max_pool2d_fwd, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))
        torch.library.opcheck(ops.max_pool2d_fwd, (x.contiguous(memory_format=torch.channels_last), [2, 2],
                                                   [2, 2], [0, 0], [1, 1], False))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_relu_matches_oracle(dtype, layout):
    check_relu("cpu", (2, 3, 5, 7), dtype, layout=layout)


@pytest.mark.parametrize("shape", [(17,), (3, 40000), (2, 1, 3, 3, 2)], ids=str)
def test_relu_any_shape(shape):
    check_relu("cpu", shape, torch.float32)


def test_relu_nan_gradcheck_and_opcheck():
    x = torch.tensor([float("nan"), -1.0, 2.0, -float("inf"), float("inf")], dtype=torch.float64)
    with fastconv.use_backend("cpu", strict=True):
        xc = x.clone().requires_grad_()
        y = fastconv.relu(xc)
        xr = x.clone().requires_grad_()
        ref = torch.relu(xr)
        torch.testing.assert_close(y, ref, equal_nan=True)
        dy = torch.arange(1.0, 6.0, dtype=torch.float64)
        y.backward(dy)
        ref.backward(dy)
        torch.testing.assert_close(xc.grad, xr.grad)  # NaN passes its gradient, like torch
        xg = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(fastconv.relu, (xg,))
        torch.library.opcheck(ops.relu_fwd, (torch.randn(2, 3, 4, 5, requires_grad=True),))


# --------------------------------------------------------------------------- compile


class _SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=gen) * 0.3)
        self.b1 = torch.nn.Parameter(torch.randn(8, generator=gen) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=gen) * 0.2)

    def forward(self, x):
        x = fastconv.conv2d(x, self.w1, self.b1, padding=1, activation="relu", pool=2)
        x = fastconv.conv2d(x, self.w2, None, padding=1, activation="relu")
        return fastconv.max_pool2d(x, 3, 2, 1).sum((2, 3))


def test_compile_fullgraph_equals_eager():
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with fastconv.use_backend("cpu", strict=True):
        model = _SmallNet()
        eager = model(x)
        eager.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        out = torch.compile(model, fullgraph=True)(x)
        out.sum().backward()
    torch.testing.assert_close(out, eager)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


# --------------------------------------------------------------------------- fuzz


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups == 1
    C = draw(st.integers(1, 4)) * groups
    K = draw(st.integers(1, 5)) * groups
    if depthwise:
        groups = C = K = draw(st.integers(2, 20))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.just("same") if stride == (1, 1) else st.just(0)))
    pool = draw(st.sampled_from([None, None, 2, 3]))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
              activation=draw(st.sampled_from([None, "relu"])), pool=pool)
    case = ConvCase(draw(st.integers(1, 3)), C, draw(st.integers(1, 12)), draw(st.integers(1, 12)), K, R, S, kw,
                    bias=draw(st.booleans()))
    return case


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases(), dtype=st.sampled_from([torch.float64, torch.float32]),
       layout=st.sampled_from(LAYOUTS), core=st.sampled_from(PATHS + ["auto"]), seed=st.integers(0, 2**16))
def test_fuzz_conv_against_oracle(case, dtype, layout, core, seed, monkeypatch):
    from fastconv import _args

    x = torch.empty(case.N, case.C, case.H, case.W)
    w = torch.empty(case.K, case.C // case.kw["groups"], case.R, case.S)
    try:
        _args.conv(x, w, None, **{k: case.kw[k] for k in ("stride", "padding", "dilation", "groups")},
                   act=case.kw["activation"], pool_k=case.kw["pool"])
    except ValueError:
        assume(False)
    monkeypatch.setenv("FASTCONV_CPU_CONV", core)
    check_conv("cpu", case, dtype, layout=layout, seed=seed)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 70), H=st.integers(1, 11), W=st.integers(1, 11),
       k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)), ceil_mode=st.booleans(),
       layout=st.sampled_from(LAYOUTS), integer=st.booleans(), data=st.data())
def test_fuzz_pool_against_torch(N, C, H, W, k, s, d, ceil_mode, layout, integer, data):
    pad = (data.draw(st.integers(0, k[0] // 2)), data.draw(st.integers(0, k[1] // 2)))
    assume(all(n + 2 * p - dd * (kk - 1) - 1 >= 0 for n, p, dd, kk in zip((H, W), pad, d, k)))
    kw = dict(kernel_size=k, stride=s, padding=pad, dilation=d, ceil_mode=ceil_mode)
    out = PoolParams(k, s, pad, d, ceil_mode).out_hw(H, W)
    # every window must hold an input element (PyTorch has no defined result otherwise)
    assume(all(any(0 <= o * ss - p + i * dd < n for i in range(kk))
               for n, kk, ss, p, dd, no in zip((H, W), k, s, pad, d, out) for o in range(no)))
    check_pool("cpu", PoolCase(N, C, H, W, kw), torch.float32, layout=layout, integer=integer)
