"""The oracle's own check (tests/oracle.py): its tolerance passes a correct kernel and rejects the
bugs a wrong half-precision or GPU kernel would have.

Everything here is computed on the CPU. A "correct kernel" is emulated by what every fastconv
backend does: inputs in the storage dtype, products and sums in float32 (torch's float32 conv on
the CPU), the result rounded once to the storage dtype. Each planted bug changes one thing in that
computation; ``assert_close`` must reject every one, at the sizes of the realistic GPU layers.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from oracle import EPS, acc_eps, assert_close, tolerance, unambiguous_dy

# A realistic layer, small enough for the CPU: 64 -> 64 channels, 3x3, relu, pool 2.
N, C, H, K = 4, 64, 16, 64
KW = dict(padding=1)
L_Y, L_DX, L_DW = C * 9, K * 9, N * H * H


def _fused(x, w, b):
    return F.max_pool2d(torch.relu(F.conv2d(x, w, b, **KW)), 2)


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float16, torch.float32], ids=str)
def layer(request):
    """(dtype, x, w, b, dy, the float64 oracle's y, dx, dw, db), dy 0 where a route is ambiguous."""
    dtype = request.param
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).double()
               for s in ((N, C, H, H), (K, C, 3, 3), (K,)))
    c = F.conv2d(x, w, b, **KW)
    dy = torch.randn(N, K, H // 2, H // 2, generator=gen, dtype=torch.float64).to(dtype).double()
    margin = 8 * acc_eps(dtype) * math.sqrt(L_Y) * c.pow(2).mean().sqrt().item()
    dy, n_amb = unambiguous_dy(dy, c, 2, True, margin)
    assert n_amb < dy.numel() // 100  # a guard that drops a few cells, not the test
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = _fused(*leaves)
    y.backward(dy)
    return dtype, x, w, b, dy, y.detach(), *(t.grad for t in leaves)


def _kernel(x, w, b, dy, dtype, conv=None):
    """A correct kernel's (y, dx, dw, db): float32 arithmetic on the dtype's inputs, one rounding
    to dtype at the end. ``conv`` replaces F.conv2d (a planted bug in the forward)."""
    leaves = [t.float().requires_grad_() for t in (x, w, b)]
    conv = conv or F.conv2d
    y = F.max_pool2d(torch.relu(conv(leaves[0], leaves[1], leaves[2], **KW)), 2)
    y.backward(dy.float())
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
    return [t.to(dtype).double() for t in (y.detach(), *grads)]


def _check_all(dtype, got, want):
    for name, a, e, L in zip(("y", "dx", "dw", "db"), got, want, (L_Y, L_DX, L_DW, N * (H // 2) ** 2)):
        assert_close(name, a, e, dtype, L)


def test_a_correct_kernel_passes(layer):
    dtype, x, w, b, dy, *want = layer
    _check_all(dtype, _kernel(x, w, b, dy, dtype), want)


def _round_sum(parts, dtype):
    """sum(parts) accumulated in dtype: every partial sum rounded (a kernel with a dtype accumulator)."""
    acc = torch.zeros_like(parts[0]).to(dtype)
    for p in parts:
        acc = (acc.float() + p.float()).to(dtype)
    return acc.float()


PLANTED = {
    "missing bias": lambda x, w, b, **kw: F.conv2d(x, w, None, **kw),
    "one tap dropped": lambda x, w, b, **kw: F.conv2d(x, w * _tap_mask(w), b, **kw),
    "accumulated in the storage dtype": None,  # per dtype, below
}


def _tap_mask(w):
    m = torch.ones_like(w)
    m[:, :, 0, 0] = 0
    return m


FORWARD_BUGS = ["missing bias", "one tap dropped", "accumulated in the storage dtype"]
WGRAD_BUGS = ["half dw", "one image dropped from wgrad", "a split-K part lost"]


def _planted(layer, bug):
    """(name, the buggy kernel's output, the oracle's, L) for one planted bug."""
    dtype, x, w, b, dy, y64, _, dw64, _ = layer
    if bug in FORWARD_BUGS:
        if bug == "accumulated in the storage dtype":
            if dtype == torch.float32:  # float32's own version: TF32 products where none are allowed
                def conv(x, w, b, **kw):
                    tf32 = lambda t: (t.view(torch.int32) & ~0x1FFF).view(torch.float32)  # noqa: E731
                    return F.conv2d(tf32(x), tf32(w), b, **kw)
            else:
                def conv(x, w, b, **kw):  # per input channel, partial sums rounded to dtype
                    parts = [F.conv2d(x[:, i:i + 1], w[:, i:i + 1], None, **kw) for i in range(x.shape[1])]
                    return _round_sum(parts, dtype) + b[None, :, None, None]
        else:
            conv = PLANTED[bug]
        return "y", _kernel(x, w, b, dy, dtype, conv)[0], y64, L_Y
    if bug == "half dw":
        dw = _kernel(x, w, b, dy, dtype)[2] * 0.5
    elif bug == "one image dropped from wgrad":
        dy_bug = dy.clone()
        dy_bug[-1] = 0
        dw = _kernel(x, w, b, dy_bug, dtype)[2]
    else:  # the reduction over pixels split in 8 chunks of rows, one chunk never added
        dy_bug = dy.clone()
        dy_bug[:, :, : dy.shape[2] // 8 or 1] = 0
        dw = _kernel(x, w, b, dy_bug, dtype)[2]
    return "dw", dw, dw64, L_DW


@pytest.mark.parametrize("bug", FORWARD_BUGS)
def test_planted_forward_bugs_are_rejected(layer, bug):
    name, got, want, L = _planted(layer, bug)
    with pytest.raises(AssertionError, match="elements off"):
        assert_close(name, got, want, layer[0], L)


@pytest.mark.parametrize("bug", WGRAD_BUGS)
def test_planted_weight_gradient_bugs_are_rejected(layer, bug):
    name, got, want, L = _planted(layer, bug)
    with pytest.raises(AssertionError, match="elements off"):
        assert_close(name, got, want, layer[0], L)


@pytest.mark.parametrize("backend", ["cuda", "triton", "vendor"])
@pytest.mark.parametrize("bug", FORWARD_BUGS + WGRAD_BUGS)
def test_planted_bugs_are_rejected_at_a_gpu_backends_tolerance(layer, bug, backend):
    """The tolerance the GPU tests apply (device cuda: TF32's eps for float32 where the backend
    multiplies in TF32 with cudnn.allow_tf32 on, float32's elsewhere) rejects the same bugs, and
    a correct kernel passes it. Computed on the CPU: only the tolerance depends on the device."""
    dtype = layer[0]
    tf32 = dtype == torch.float32 and acc_eps(dtype, "cuda", backend) != EPS[torch.float32]
    if tf32 and bug == "accumulated in the storage dtype":
        pytest.skip(f"TF32 products are {backend}'s float32 contract on a GPU with cudnn.allow_tf32 on")
    if tf32 and bug == "missing bias":
        # a bias of rms 1 on conv outputs of rms ~24 is inside TF32's rounding of a 576-term sum:
        # the TF32 bound cannot see it; the float32 GPU tests run with TF32 off (tests/conftest.py,
        # the ieee bound, which rejects it: the cuda backend's case here) and catch it there
        pytest.skip("a missing bias is within the TF32 bound at this size; the ieee float32 GPU tests catch it")
    name, got, want, L = _planted(layer, bug)
    with pytest.raises(AssertionError, match="elements off"):
        assert_close(name, got, want, dtype, L, "cuda", backend=backend)
    _, x, w, b, dy, *want_all = layer
    for n, a, e, L_ in zip(("y", "dx", "dw", "db"), _kernel(x, w, b, dy, dtype), want_all,
                          (L_Y, L_DX, L_DW, N * (H // 2) ** 2)):
        assert_close(n, a, e, dtype, L_, "cuda", backend=backend)


def test_tolerance_terms():
    e = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    tol = tolerance(e, torch.bfloat16, 100, EPS[torch.float32])
    rms = math.sqrt(5 / 3)
    assert torch.allclose(tol, 4 * 2**-7 * e.abs() + 4 * 2**-23 * 10 * rms)
    assert acc_eps(torch.bfloat16) == acc_eps(torch.float16) == acc_eps(torch.float32) == 2**-23
    assert acc_eps(torch.float64) == 2**-52


def test_exact_comparison_for_pool_values():
    e = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert_close("y", e.clone(), e, torch.float32, 0)
    with pytest.raises(AssertionError, match="differ from the exact result"):
        assert_close("y", e + 2**-30, e, torch.float64, 0)
