"""The triton backend's packed-weight cache (fastconv/backends/triton/_pack.py)."""
import gc

import torch
import torch.nn.functional as F

from triton_cases import DEV, TRITON_TESTS

import fastconv  # noqa: E402
from fastconv.backends.triton import _pack  # noqa: E402
from oracle import assert_close  # noqa: E402

pytestmark = TRITON_TESTS


def test_weight_packing_is_cached_per_version():
    w = torch.randn(4, 3, 3, 3, device=DEV)
    p1 = _pack.packed_weight(w)
    assert p1.shape == (4, 3, 3, 3) and p1.is_contiguous()
    assert torch.equal(p1, w.permute(0, 2, 3, 1))
    assert _pack.packed_weight(w) is p1
    with torch.no_grad():
        w.add_(1.0)
    p2 = _pack.packed_weight(w)
    assert p2 is not p1 and torch.equal(p2, w.permute(0, 2, 3, 1))
    key = id(w)
    assert key in _pack._cache
    del w, p1, p2
    gc.collect()
    assert key not in _pack._cache  # the entry goes with its weight
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
