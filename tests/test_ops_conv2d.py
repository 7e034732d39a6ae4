"""fastconv.conv2d on the reference backend vs the float64 oracle, plus the op
contract: gradcheck, opcheck, saved tensors, memory formats, empty batch, NaN."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import ops
from oracle import CONV_CASES, check_conv, check_conv_like_torch, unfused


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_reference_matches_oracle(case):
    check_conv("reference", case, torch.float32)


@pytest.mark.parametrize("case", CONV_CASES[:8], ids=str)
def test_reference_equals_unfused_torch(case):
    g = case.kw.get("groups", 1)
    x = torch.randn(case.N, case.C, case.H, case.W, dtype=torch.float64)
    w = torch.randn(case.K, case.C // g, case.R, case.S, dtype=torch.float64)
    b = torch.randn(case.K, dtype=torch.float64)
    with fastconv.use_backend("reference"):
        y = fastconv.conv2d(x, w, b, **case.kw)
    torch.testing.assert_close(y, unfused(x, w, b, **case.kw))


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[5], CONV_CASES[7], CONV_CASES[10]], ids=str)
def test_gradcheck_float64(case):
    g = case.kw.get("groups", 1)
    x = torch.randn(case.N, case.C, case.H, case.W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(case.K, case.C // g, case.R, case.S, dtype=torch.float64, requires_grad=True)
    b = torch.randn(case.K, dtype=torch.float64, requires_grad=True)
    with fastconv.use_backend("reference"):
        assert torch.autograd.gradcheck(lambda x, w, b: fastconv.conv2d(x, w, b, **case.kw), (x, w, b))


@pytest.mark.parametrize("relu,pool", [(False, 1), (True, 1), (False, 2), (True, 2), (True, 3)])
def test_opcheck(relu, pool):
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    torch.library.opcheck(ops.conv2d_fwd, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, relu, pool))
    torch.library.opcheck(ops.conv2d_fwd, (x.contiguous(memory_format=torch.channels_last), w, None,
                                           [2, 1], [0, 1, 1, 0], [1, 1], 1, relu, pool))


def test_saved_tensors_are_x_w_pooled_y_and_uint8_index():
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
    assert y.shape == (2, 8, 8, 8)
    assert sorted(saved, key=str) == sorted([
        ((2, 3, 16, 16), torch.float32), ((8, 3, 3, 3), torch.float32),
        ((2, 8, 8, 8), torch.float32), ((2, 8, 8, 8), torch.uint8)], key=str)
    assert not any(s == (2, 8, 16, 16) for s, _ in saved), "a full-resolution activation was saved"


def test_no_relu_no_pool_saves_only_x_and_w():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        fastconv.conv2d(x, w)
    assert sorted(saved) == sorted([(1, 2, 5, 5), (3, 2, 3, 3)])


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(layout):
    check_conv("reference", CONV_CASES[0], torch.float32, layout=layout)


def test_empty_batch():
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
    assert y.shape == (0, 4, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros(4))


def test_unbatched_input():
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y = fastconv.conv2d(x, w, padding=1, activation="relu", pool=2)
    torch.testing.assert_close(y, unfused(x[None], w, None, padding=1, activation="relu", pool=2)[0])


def test_nan_and_inf_propagate_like_torch():
    """Every element of y, dx, dw and db, NaN positions included (docs/design.md §2.2's relu mask)."""
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 6, 6] = float("inf")
    w = torch.rand(3, 2, 3, 3, dtype=torch.float64) + 0.1  # positive weights keep +inf an +inf
    b = torch.randn(3, dtype=torch.float64)
    for backend in ["reference"] + (["cpu"] if fastconv.backends.unsupported_reason("cpu", "relu_fwd", x) is None
                                    else []):
        check_conv_like_torch(backend, x, w, b, padding=1, activation="relu", pool=2)


def test_pool_ties_route_gradients_like_torch():
    """All-equal windows (zero input, zero bias): the first element gets the gradient."""
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    y = fastconv.conv2d(x, w, pool=2)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    unfused(x2, w.detach(), None, pool=2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert x.grad[0, 0, 0, 0] == 1 and x.grad[0, 0, 0, 1] == 0


def test_autocast_runs_in_autocast_dtype():
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastconv.conv2d(x, w, padding=1, activation="relu", pool=2)
        ref = F.conv2d(x, w, padding=1)
    assert y.dtype == ref.dtype == torch.bfloat16


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 2), G=st.integers(1, 3), cpg=st.integers(1, 3), kpg=st.integers(1, 3),
       H=st.integers(4, 12), W=st.integers(4, 12), R=st.integers(1, 4), S=st.integers(1, 4),
       stride=st.integers(1, 3), dilation=st.integers(1, 2), pad=st.sampled_from([0, 1, 2, "same", "valid"]),
       relu=st.booleans(), pool=st.sampled_from([None, 2, 3]), bias=st.booleans())
def test_fuzz_public_op_against_unfused_torch(N, G, cpg, kpg, H, W, R, S, stride, dilation, pad, relu, pool, bias):
    """The ops layer (argument normalization, output sizes, autograd) against torch, float64."""
    if pad == "same":
        stride = 1
    kw = dict(stride=stride, padding=pad, dilation=dilation, groups=G, activation="relu" if relu else None,
              pool=pool)
    x = torch.randn(N, G * cpg, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G * kpg, cpg, R, S, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G * kpg, dtype=torch.float64, requires_grad=True) if bias else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on 'same' with even kernels
            ref = unfused(x, w, b, **kw)
    except RuntimeError:  # torch rejects the shape: fastconv must reject it too, with a ValueError
        with pytest.raises(ValueError):
            fastconv.conv2d(x, w, b, **kw)
        return
    with fastconv.use_backend("reference", strict=True):
        y = fastconv.conv2d(x, w, b, **kw)
    torch.testing.assert_close(y, ref)
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)
    want = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], dy)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
