"""fastconv.max_pool2d (reference backend) vs torch, and the op contract."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import ops
from oracle import POOL_CASES, check_pool


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_reference_matches_oracle(case, layout):
    check_pool("reference", case, torch.float32, layout=layout)


def test_gradcheck_overlapping_windows():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    with fastconv.use_backend("reference"):
        assert torch.autograd.gradcheck(lambda x: fastconv.max_pool2d(x, 3, 2, 1, ceil_mode=True), (x,))


def test_opcheck():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    torch.library.opcheck(ops.max_pool2d_fwd, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))
    torch.library.opcheck(ops.max_pool2d_fwd, (x.contiguous(memory_format=torch.channels_last),
                                               [2, 2], [2, 2], [0, 0], [1, 1], False))


def test_ties_route_to_first_like_torch():
    x = torch.zeros(1, 1, 5, 5, requires_grad=True)
    fastconv.max_pool2d(x, 3, 2).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    F.max_pool2d(x2, 3, 2).sum().backward()
    assert torch.equal(x.grad, x2.grad)


def test_nan_propagates():
    x = torch.randn(1, 1, 4, 4)
    x[0, 0, 0, 1] = float("nan")
    y = fastconv.max_pool2d(x, 2)
    assert y[0, 0, 0, 0].isnan() and not y[0, 0, 1, 1].isnan()


def test_unbatched_and_empty():
    x = torch.randn(3, 6, 6)
    torch.testing.assert_close(fastconv.max_pool2d(x, 2), F.max_pool2d(x, 2))
    e = torch.randn(0, 3, 6, 6, requires_grad=True)
    y = fastconv.max_pool2d(e, 2)
    assert y.shape == (0, 3, 3, 3)
    y.sum().backward()
    assert e.grad.shape == e.shape


@settings(max_examples=30, deadline=None)
@given(H=st.integers(3, 12), W=st.integers(3, 12), k=st.integers(1, 4), s=st.integers(1, 3),
       d=st.integers(1, 2), ceil=st.booleans(), data=st.data())
def test_fuzz_against_torch(H, W, k, s, d, ceil, data):
    p = data.draw(st.integers(0, k // 2))
    assume(d * (k - 1) + 1 <= min(H, W) + 2 * p)
    x = torch.randn(1, 2, H, W, dtype=torch.float64, requires_grad=True)
    y = fastconv.max_pool2d(x, k, s, p, d, ceil)
    ref = F.max_pool2d(x, k, s, p, d, ceil)
    torch.testing.assert_close(y, ref)
