"""The triton backend's packed weights (fastconv/backends/triton/_pack.py): the layout, and every
update of a weight seen by the next call, those through .data included."""
import torch
import torch.nn.functional as F

from triton_cases import DEV, TRITON_TESTS

import fastconv  # noqa: E402
from fastconv.backends.triton import _pack  # noqa: E402
from oracle import assert_close  # noqa: E402

pytestmark = TRITON_TESTS


def test_weight_packing_layout():
    w = torch.randn(4, 3, 3, 3, device=DEV)
    p = _pack.packed_weight(w)
    assert p.shape == (4, 3, 3, 3) and p.is_contiguous() and torch.equal(p, w.permute(0, 2, 3, 1))
    wcl = torch.randn(4, 3, 3, 3, device=DEV).contiguous(memory_format=torch.channels_last)
    assert _pack.packed_weight(wcl).data_ptr() == wcl.data_ptr()  # already [K, R, S, C]: a view


def test_weight_update_between_calls_is_seen():
    x = torch.randn(1, 3, 6, 6, device=DEV)
    w = torch.randn(4, 3, 3, 3, device=DEV)
    with fastconv.use_backend("triton", strict=True):
        fastconv.conv2d(x, w, padding=1)
        with torch.no_grad():
            w.mul_(-2.0)
        y = fastconv.conv2d(x, w, padding=1)
        assert_close("y", y, F.conv2d(x.cpu().double(), w.cpu().double(), padding=1), torch.float32, 27, DEV)
        w.data.mul_(-0.5)  # does not bump w._version: a cache keyed on it would serve the old weights
        y = fastconv.conv2d(x, w, padding=1)
        assert_close("y", y, F.conv2d(x.cpu().double(), w.cpu().double(), padding=1), torch.float32, 27, DEV)
        wp = torch.nn.Parameter(w.detach().clone())
        fastconv.conv2d(x, wp, padding=1).sum().backward()  # forward and backward of one call
        wp.data.copy_(torch.randn_like(wp))
        y = fastconv.conv2d(x, wp, padding=1)
    assert_close("y", y, F.conv2d(x.cpu().double(), wp.detach().cpu().double(), padding=1), torch.float32, 27, DEV)
