"""fastconv.relu vs torch.relu."""
import pytest
import torch

import fastconv
from fastconv import ops
from oracle import check_relu


@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 4), (0, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_reference_matches_oracle(shape, dtype):
    check_relu("reference", shape, dtype)


def test_relu_nan_inf_and_gradient_at_zero():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 2.0], requires_grad=True)
    y = fastconv.relu(x)
    ref = torch.relu(x.detach())
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y[1:], ref[1:])
    y.sum().backward()
    assert x.grad.tolist()[1:] == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_opcheck_and_channels_last():
    x = torch.randn(2, 3, 4, 5, requires_grad=True).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.relu_fwd, (x,))
    assert fastconv.relu(x).is_contiguous(memory_format=torch.channels_last)
